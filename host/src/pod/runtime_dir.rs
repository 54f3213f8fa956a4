//! A pod's runtime directory, `<runtime root>/<pod>/`: the socket
//! (`sock`), `status.json`, `manifest.toml` and `history.json`, all written
//! atomically (temporary file + rename).
//!
//! The directory is claimed with an exclusive `flock` on `<dir>/lock` for
//! the pod's lifetime. A directory whose lock is free was left by a dead
//! process and is reused; a held lock means a live pod of that name, which is
//! a clear error. The directory is removed when the claim is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// Where runtime directories live: `$YOI_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/yoi`, else `$YOI_HOME/run`.
pub fn runtime_root(home: &Home) -> PathBuf {
    if let Some(dir) = std::env::var_os("YOI_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("yoi");
    }
    home.root().join("run")
}

/// What `status.json` says about a pod.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The pod's name.
    pub pod: String,
    /// The host process.
    pub pid: u32,
    /// idle, running or paused.
    pub state: String,
    /// The current session.
    pub session: String,
    /// The socket.
    pub socket: PathBuf,
    /// The working directory.
    pub cwd: PathBuf,
    /// Provider kind and model, if any.
    pub model: Option<String>,
}

/// A claimed runtime directory.
pub struct RuntimeDir {
    dir: PathBuf,
    _lock: File,
}

impl RuntimeDir {
    /// Claims `<root>/<pod>`, replacing what a dead process left there.
    pub fn claim(root: &Path, pod: &str) -> anyhow::Result<RuntimeDir> {
        let dir = root.join(pod);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("cannot open {}", dir.join("lock").display()))?;
        if lock.try_lock().is_err() {
            let owner = std::fs::read_to_string(dir.join("status.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<Status>(&s).ok())
                .map_or(String::new(), |s| format!(" (pid {}, socket {})", s.pid, s.socket.display()));
            bail!("a pod named {pod:?} is already running{owner}");
        }
        for stale in ["sock", "status.json", "history.json", "manifest.toml"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        Ok(RuntimeDir { dir, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// Writes `status.json`.
    pub fn write_status(&self, status: &Status) -> anyhow::Result<()> {
        self.write_atomic("status.json", &serde_json::to_vec_pretty(status)?)
    }

    /// Writes `name` in the directory atomically.
    pub fn write_atomic(&self, name: &str, content: &[u8]) -> anyhow::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(content)?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tmp.persist(self.dir.join(name)).with_context(|| format!("cannot write {name}"))?;
        Ok(())
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // The lock file goes last, while the lock is still held.
        for name in ["sock", "status.json", "history.json", "manifest.toml", "lock"] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether a pod's runtime directory is held by a live process.
pub fn is_live(dir: &Path) -> bool {
    match File::open(dir.join("lock")) {
        Ok(f) => match f.try_lock_shared() {
            Ok(()) => false,
            Err(_) => true,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_claim_is_refused_and_a_dead_one_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RuntimeDir::claim(tmp.path(), "p").unwrap();
        first
            .write_atomic(
                "status.json",
                br#"{"pod":"p","pid":1,"state":"idle","session":"s","socket":"/x","cwd":"/","model":null}"#,
            )
            .unwrap();
        let err = RuntimeDir::claim(tmp.path(), "p").err().unwrap();
        assert!(err.to_string().contains("already running (pid 1"), "{err}");
        assert!(is_live(first.path()));
        let mode = std::fs::metadata(first.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(first);
        // A dead owner's leftovers: files, and a lock nobody holds.
        let dead = tmp.path().join("q");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("sock"), "").unwrap();
        std::fs::write(dead.join("status.json"), "{}").unwrap();
        assert!(!is_live(&dead));
        let second = RuntimeDir::claim(tmp.path(), "q").unwrap();
        assert!(!second.socket().exists(), "stale socket removed");
        let path = second.path().to_path_buf();
        drop(second);
        assert!(!path.exists(), "removed on drop");
    }
}
