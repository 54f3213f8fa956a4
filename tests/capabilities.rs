//! What a plugin may use beyond its pod's files: the capability file beside
//! the component, the manifest's grants, digest pins, and the load-time
//! checks of the contract version and of the interfaces a plugin imports.

mod common;

use std::process::{Command, Output};

use common::{Sandbox, guest, host_with, plugin_dir, shared_cache};
use serde_json::{Value, json};

fn yoi(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = sb.root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(shared_cache()).unwrap();
    let _ = std::os::unix::fs::symlink(shared_cache(), home.join("cache"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yoi-host"));
    cmd.args(args).env("YOI_HOME", &home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Writes `NAME.toml`: a pod named NAME that may read `proj/`, followed by
/// `extra` (limits, grants).
fn pod_manifest(sb: &Sandbox, name: &str, extra: &str) -> std::path::PathBuf {
    let pod = format!("[pod]\nname = \"{name}\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n");
    sb.file(&format!("{name}.toml"), &format!("{pod}{extra}"))
}

fn ok_content(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_str(doc["ok"]["content"].as_str().unwrap()).unwrap_or(Value::Null)
}

/// A plugin gets the environment variables and data directory it both
/// declared and was granted, and nothing else.
#[test]
fn declared_and_granted_env_and_data_dir() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let dir = plugin_dir(&["probe"]);
    std::fs::write(dir.path().join("probe.toml"), "env = [\"YOI_T_A\", \"YOI_T_B\"]\ndata_dir = true\n").unwrap();
    let plugins = dir.path().to_str().unwrap();
    let granted = pod_manifest(
        &sb,
        "caps",
        "[[plugins.grant]]\nplugin = \"probe\"\nenv = [\"YOI_T_B\", \"YOI_T_C\"]\ndata_dir = true\n",
    );
    let bare = pod_manifest(&sb, "bare", "");
    let env = [("YOI_T_A", "a"), ("YOI_T_B", "b"), ("YOI_T_C", "c")];

    let call = |manifest: &std::path::Path, tool: &str, input: Value| {
        let m = manifest.to_str().unwrap();
        yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m, tool, &input.to_string()], &env)
    };
    let seen = ok_content(&call(&granted, "Env", json!({})));
    let data = sb.root.join("home/data/caps/probe");
    assert_eq!(seen["vars"], json!({"YOI_T_B": "b", "YOI_DATA_DIR": data.display().to_string()}));
    // The data directory is writable, and only for this plugin in this pod.
    let path = data.join("kept.txt").display().to_string();
    let out = call(&granted, "Fs", json!({"op": "write", "path": path, "content": "kept"}));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_to_string(data.join("kept.txt")).unwrap(), "kept");

    // Without a grant: nothing.
    assert_eq!(ok_content(&call(&bare, "Env", json!({})))["vars"], json!({}));
    let out = call(&bare, "Fs", json!({"op": "read", "path": path}));
    assert_eq!(out.status.code(), Some(1));
}

/// A grant may pin the component's digest; another component of that name
/// is refused, and the message shows both digests.
#[test]
fn a_pinned_digest_refuses_another_component() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let dir = plugin_dir(&["probe"]);
    let plugins = dir.path().to_str().unwrap();
    use sha2::Digest;
    let real = hex::encode(sha2::Sha256::digest(std::fs::read(guest("probe")).unwrap()));
    let pinned = "ab".repeat(32);
    let manifest =
        |pin: &str| pod_manifest(&sb, "pin", &format!("[[plugins.grant]]\nplugin = \"probe\"\nsha256 = \"{pin}\"\n"));
    let m = manifest(&pinned);
    let out = yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m.to_str().unwrap(), "Noop", "{}"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&real) && stderr.contains(&pinned), "{stderr}");
    let m = manifest(&real);
    let out = yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m.to_str().unwrap(), "Noop", "{}"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A component built against an incompatible contract version is refused
/// with both versions named; one importing an interface it did not declare
/// never loads.
#[tokio::test]
async fn version_and_undeclared_imports_are_refused_at_load() {
    let dir = plugin_dir(&["future"]);
    std::fs::copy(guest("pod_tools"), dir.path().join("spawner.wasm")).unwrap();
    let options = yoi_host::plugin::HostOptions {
        cache_dir: shared_cache(),
        allocator: yoi_host::plugin::Allocator::Pooling,
        ceilings: Default::default(),
    };
    let host = yoi_host::plugin::PluginSet::with_plugins(&options, &[dir.path().to_path_buf()]).await.unwrap();
    let error = |file: &str| {
        host.load_errors()
            .iter()
            .find(|e| e.origin.ends_with(file))
            .unwrap_or_else(|| panic!("{file} loaded"))
            .message
            .clone()
    };
    let future = error("future.wasm");
    assert!(future.contains("yoi:plugin@0.2.0") && future.contains("yoi:plugin@0.1.0"), "{future}");
    let spawner = error("spawner.wasm");
    assert!(spawner.contains("yoi:plugin/pods") && spawner.contains("pods = true"), "{spawner}");
    // The builtin pod tools declare it, and load.
    assert!(host_with(&[]).await.plugins().iter().any(|p| p.name() == "pod_tools"));
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for the outbound HTTP tests: answers
/// `/ok` with a body, `/to?URL` with a redirect to URL, and counts requests.
struct TestServer {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TestServer {
    fn start() -> TestServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
                let reply = match target.split_once('?') {
                    Some(("/to", url)) => {
                        format!(
                            "HTTP/1.1 302 Found\r\nlocation: {url}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                    }
                    _ => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n\
                         hello from {port}{target}",
                        format!("hello from {port}{target}").len()
                    ),
                };
                let _ = stream.write_all(reply.as_bytes());
                // Read what the client still sends (an empty chunked body)
                // before closing, so that the close is not a reset.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            }
        });
        TestServer { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Outbound HTTP goes through wasi:http, and the host checks scheme, host
/// and port of every request, redirects included, against what the plugin
/// declared and the pod granted. A refused request is an error inside the
/// plugin, made before any connection.
#[test]
fn http_requests_reach_only_granted_origins() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let granted = TestServer::start();
    let other = TestServer::start();
    let dir = plugin_dir(&["http_get"]);
    let caps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples/http-get/capabilities.toml");
    std::fs::copy(caps, dir.path().join("http_get.toml")).unwrap();
    let plugins = dir.path().to_str().unwrap();
    let grant = |port: u16| format!("[[plugins.grant]]\nplugin = \"http_get\"\nhttp = [\"http://127.0.0.1:{port}\"]\n");
    let manifest = pod_manifest(&sb, "web", &grant(granted.port));
    let bare = pod_manifest(&sb, "bare", "");
    let get = |manifest: &std::path::Path, url: String| {
        let input = json!({ "url": url }).to_string();
        let out = yoi(
            &sb,
            &["tool", "call", "--plugins", plugins, "--manifest", manifest.to_str().unwrap(), "HttpGet", &input],
            &[],
        );
        let doc: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), doc)
    };
    let denied = |(code, doc): (Option<i32>, Value), url: &str| {
        assert_eq!(code, Some(1), "{doc}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains("refused") && message.contains(url), "{message}");
    };
    let g = granted.port;
    let o = other.port;

    let (code, doc) = get(&manifest, format!("http://127.0.0.1:{g}/ok"));
    assert_eq!(code, Some(0), "{doc}");
    assert!(doc["ok"]["content"].as_str().unwrap().contains(&format!("hello from {g}/ok")), "{doc}");
    // A redirect within the granted origin is followed.
    let (code, doc) = get(&manifest, format!("http://127.0.0.1:{g}/to?/ok"));
    assert_eq!(code, Some(0), "{doc}");
    assert!(doc["ok"]["content"].as_str().unwrap().contains("redirect: 302"), "{doc}");
    let before = granted.hits();

    // Another port, another host name for the same address, and redirects
    // to either: refused, and nothing reaches the other server.
    denied(get(&manifest, format!("http://127.0.0.1:{o}/ok")), &format!("http://127.0.0.1:{o}/ok"));
    denied(get(&manifest, format!("http://localhost:{g}/ok")), &format!("http://localhost:{g}/ok"));
    denied(get(&manifest, format!("https://127.0.0.1:{g}/ok")), &format!("https://127.0.0.1:{g}/ok"));
    denied(get(&manifest, format!("http://127.0.0.1:{g}/to?http://127.0.0.1:{o}/ok")), &format!("127.0.0.1:{o}"));
    denied(get(&manifest, format!("http://127.0.0.1:{g}/to?http://localhost:{g}/ok")), &format!("localhost:{g}"));
    assert_eq!(other.hits(), 0, "a refused request reached a server");
    assert_eq!(granted.hits(), before + 2, "only the two redirecting requests went out");

    // A granted server that never answers: the call ends at its deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = silent.local_addr().unwrap().port();
    let slow = pod_manifest(&sb, "slow", &format!("[limits]\ntool_timeout_ms = 700\n{}", grant(s)));
    let started = std::time::Instant::now();
    let (code, doc) = get(&slow, format!("http://127.0.0.1:{s}/"));
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["error"]["kind"], "timeout", "{doc}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the call outlived its deadline");
    drop(silent);

    // No grant: nothing. A grant but no declaration: nothing either.
    denied(get(&bare, format!("http://127.0.0.1:{g}/ok")), "127.0.0.1");
    std::fs::remove_file(dir.path().join("http_get.toml")).unwrap();
    denied(get(&manifest, format!("http://127.0.0.1:{g}/ok")), "127.0.0.1");
    assert_eq!(granted.hits(), before + 2);
}

/// Raw sockets are refused unless declared and granted; then a connection
/// reaches exactly the granted addresses.
#[test]
fn sockets_reach_only_granted_addresses() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (open, other) = (open.local_addr().unwrap(), other.local_addr().unwrap());
    let dir = plugin_dir(&["probe"]);
    std::fs::write(dir.path().join("probe.toml"), "sockets = [\"127.0.0.1:*\"]\n").unwrap();
    let plugins = dir.path().to_str().unwrap();
    let manifest = |grant: &str| {
        pod_manifest(&sb, "net", &format!("[[plugins.grant]]\nplugin = \"probe\"\nsockets = [{grant}]\n"))
    };
    let connect = |manifest: &std::path::Path, addr: std::net::SocketAddr| {
        let input = json!({ "connect": addr.to_string() }).to_string();
        let m = manifest.to_str().unwrap();
        ok_content(&yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m, "Env", &input], &[]))["connect"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let granted = manifest(&format!("\"{open}\""));
    assert_eq!(connect(&granted, open), "connected");
    assert!(connect(&granted, other).starts_with("refused"));
    let none = manifest("");
    assert!(connect(&none, open).starts_with("refused"));
    // A bad pattern in the grant is a manifest error naming the key.
    let bad = manifest("\"localhost:80\"");
    let out = yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", bad.to_str().unwrap(), "Noop", "{}"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugins.grant"), "{}", String::from_utf8_lossy(&out.stderr));
}
