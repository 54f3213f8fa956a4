//! The directories a pod's calls preopen, opened once and handed to every
//! later call of the same plugin while they are still what the scope names.
//!
//! Opening a scope directory safely costs two path walks per call (the
//! directory opened without following links, then reopened by wasmtime
//! through `/proc/self/fd`). A pod's calls instead share the descriptors of
//! its first call: each call checks with one `stat` per directory that the
//! path still leads to the directory that was opened (a directory deleted
//! and made again, or swapped for a link, is opened afresh, with the same
//! rules as the first time). Sharing a directory descriptor between calls
//! shares nothing a guest can change: a preopen has no offset or working
//! directory of its own, and every store still gets its own handles.
//!
//! Descriptors are a process-wide resource, so the number held this way is
//! bounded ([`budget`]); past it, a call opens its directories for itself
//! and closes them when it ends, as every call once did.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::scope::Scope;

/// The directories opened for one pod, per plugin, for the scope they were
/// opened for.
#[derive(Default)]
pub struct Preopens {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// The scope these were opened for; another scope empties the table.
    scope: Option<Arc<Scope>>,
    by_plugin: HashMap<Arc<str>, Opened>,
}

/// What a call needs opened besides the scope: the plugin's data directory.
pub struct Extra<'a> {
    /// The plugin's name.
    pub plugin: &'a Arc<str>,
    /// Its data directory, if granted one.
    pub data_dir: Option<&'a Path>,
    /// The pod's name (for the log).
    pub pod: &'a str,
}

/// A filesystem context and the identity of each directory in it.
struct Opened {
    filesystem: WasiFilesystemCtx,
    dirs: Vec<DirId>,
    _descriptors: Descriptors,
}

/// Which directory a path led to when it was opened.
#[derive(Clone, PartialEq, Eq)]
struct DirId {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DirId {
    /// Whether `path` still leads to this directory.
    fn still_there(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Preopens {
    /// The filesystem context for a call of `extra.plugin` under `scope`:
    /// the held one if its directories are still in place, else one opened
    /// now (and held, within the budget).
    pub fn filesystem(&self, scope: &Arc<Scope>, extra: &Extra<'_>) -> WasiFilesystemCtx {
        let mut held = self.held.lock();
        if !held.scope.as_ref().is_some_and(|s| Arc::ptr_eq(s, scope)) {
            held.by_plugin.clear();
            held.scope = Some(scope.clone());
        }
        if let Some(opened) = held.by_plugin.get(extra.plugin)
            && opened.dirs.iter().all(DirId::still_there)
        {
            return opened.filesystem.clone();
        }
        held.by_plugin.remove(extra.plugin);
        let (filesystem, dirs, complete) = open(scope, extra);
        // One left out is tried again by the next call.
        if complete && let Some(descriptors) = Descriptors::take(dirs.len()) {
            let opened = Opened { filesystem: filesystem.clone(), dirs, _descriptors: descriptors };
            held.by_plugin.insert(extra.plugin.clone(), opened);
        }
        filesystem
    }

    /// Closes what is held (the scope changed; calls that start later open
    /// theirs).
    pub fn clear(&self) {
        let mut held = self.held.lock();
        held.by_plugin.clear();
        held.scope = None;
    }
}

/// Opens the scope's directories (without following links, and handed to
/// wasmtime by descriptor, not by path again: a link swapped into the path
/// cannot redirect a preopen) and the data directory. Also says whether all
/// of them opened.
fn open(scope: &Scope, extra: &Extra<'_>) -> (WasiFilesystemCtx, Vec<DirId>, bool) {
    let mut builder = WasiCtxBuilder::new();
    builder.allow_blocking_current_thread(true);
    let mut dirs = Vec::new();
    let mut complete = true;
    for preopen in scope.preopens() {
        let perms = if preopen.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        let guest_path = preopen.dir.to_string_lossy().into_owned();
        let opened = crate::os::open_dir_no_symlinks(&preopen.dir).map_err(wasmtime::Error::new).and_then(|fd| {
            let meta = rustix::fs::fstat(&fd).map_err(|e| wasmtime::Error::new(std::io::Error::from(e)))?;
            let by_descriptor = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            builder.preopened_dir(by_descriptor, guest_path, perms)?;
            Ok(DirId { path: preopen.dir.clone(), dev: meta.st_dev, ino: meta.st_ino })
        });
        match opened {
            Ok(id) => dirs.push(id),
            Err(e) => {
                complete = false;
                tracing::warn!(pod = %extra.pod, dir = %preopen.dir.display(), "scope directory left out of the call: {e:?}")
            }
        }
    }
    if let Some(dir) = extra.data_dir {
        let guest_path = dir.to_string_lossy().into_owned();
        let opened = std::fs::metadata(dir).map_err(wasmtime::Error::new).and_then(|meta| {
            builder.preopened_dir(dir, guest_path, FsPerms::ReadWrite)?;
            Ok(DirId { path: dir.to_path_buf(), dev: meta.dev(), ino: meta.ino() })
        });
        match opened {
            Ok(id) => dirs.push(id),
            Err(e) => {
                complete = false;
                tracing::warn!(pod = %extra.pod, plugin = %extra.plugin, "data directory left out of the call: {e:?}")
            }
        }
    }
    let mut wasi = builder.build();
    (wasi.filesystem().clone(), dirs, complete)
}

/// Descriptors held for preopens across the process, and the most that may be.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many descriptors the process may hold for preopens between calls: a
/// quarter of its open-file limit, so that sockets, session logs and the
/// calls' own files always have the rest.
pub fn budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let limit = crate::os::open_file_limit().unwrap_or(1024);
        usize::try_from(limit / 4).unwrap_or(usize::MAX)
    })
}

/// A share of the budget, given back when dropped.
struct Descriptors(usize);

impl Descriptors {
    fn take(n: usize) -> Option<Descriptors> {
        HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            let after = held.checked_add(n)?;
            (after <= budget()).then_some(after)
        })
        .ok()
        .map(|_| Descriptors(n))
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptors_held_stay_within_the_budget() {
        assert!(budget() > 0);
        assert!(Descriptors::take(budget() + 1).is_none());
        let before = HELD.load(Ordering::Acquire);
        let held = Descriptors::take(1).expect("one descriptor fits");
        assert!(HELD.load(Ordering::Acquire) >= 1);
        drop(held);
        assert!(HELD.load(Ordering::Acquire) <= before + 1);
    }
}
