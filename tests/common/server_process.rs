//! A `yoi-host serve` process for the tests and benchmarks that treat the
//! server as a service: started on 127.0.0.1 (port chosen by the system),
//! its address read from its log, and killed when dropped, so that a
//! failing test leaves no server behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `yoi-host` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_yoi-host");

/// A running server.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a `serve.toml` in `dir` (listening on a free port, data in
/// `dir/data`) with `extra` appended.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("serve.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}")).unwrap();
    config
}

impl ServerProcess {
    /// Starts `yoi-host serve --config CONFIG` and waits until it serves;
    /// with `echo`, its log goes to this process's stderr.
    pub fn start(config: &Path, echo: bool) -> ServerProcess {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("YOI_LOG", if echo { "warn" } else { "error" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[server] {line}");
                }
                if let Some(addr) = line.strip_prefix("yoi-host: serving on ") {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(120)).expect("the server did not start");
        ServerProcess { child, url, config: config.to_path_buf() }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM, waits for it, and checks it exited 0.
    pub fn stop(mut self) {
        // SAFETY: kill sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the server exited with {status}");
    }

    /// Runs `yoi-host tenant ARGS` against this server's configuration and
    /// returns what it printed.
    pub fn tenant(&self, args: &[&str]) -> String {
        let output = Command::new(BIN)
            .arg("tenant")
            .args(args.iter().take(1))
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(output.status.success(), "tenant {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}
