//! The directories a pod's calls preopen, opened once and handed to every
//! later call of the same plugin while they are still what the scope names.
//!
//! Opening a scope directory safely costs two path walks per call (the
//! directory opened without following links, then reopened by wasmtime
//! through `/proc/self/fd`). A pod's calls instead share the descriptors of
//! its first call: each call checks with one `lstat` per directory that the
//! path still leads to the very directory that was opened (device and
//! inode). A directory deleted and made again, moved away, or swapped for a
//! link is opened afresh, by the same rules as the first time; a link in a
//! parent that still leads to the same directory changes nothing, since the
//! descriptor is that directory. Sharing a directory descriptor between
//! calls shares nothing a guest can change: wasmtime opens a directory
//! again (`.`) to list it, so the shared descriptor's own offset is never
//! used, a preopen has no working directory, and every store gets its own
//! handles.
//!
//! Only what was opened for the pod's current scope is kept (a call that
//! started under an older scope opens its own), and no filesystem work is
//! done while the table is locked. Descriptors are a process-wide resource,
//! so the number held this way is bounded ([`Budget`]); past it, a call
//! opens its directories for itself and closes them when it ends, as every
//! call once did.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

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
    /// The scope these were opened for.
    scope: Option<Arc<Scope>>,
    by_plugin: HashMap<Arc<str>, Arc<Opened>>,
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
    _descriptors: Descriptors<'static>,
}

/// Which directory a path led to when it was opened.
#[derive(Clone, PartialEq, Eq)]
struct DirId {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DirId {
    /// Whether `path` still leads to this directory (a link there now, even
    /// to the same directory, does not).
    fn still_there(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Preopens {
    /// The filesystem context for a call of `extra.plugin` under `scope`:
    /// the held one if its directories are still in place, else one opened
    /// now (and held, within the budget, if `scope` is still the pod's
    /// scope as `current` reads it).
    pub fn filesystem(
        &self,
        scope: &Arc<Scope>,
        current: impl Fn() -> Arc<Scope>,
        extra: &Extra<'_>,
    ) -> WasiFilesystemCtx {
        let held = {
            let held = self.held.lock();
            let same_scope = held.scope.as_ref().is_some_and(|s| Arc::ptr_eq(s, scope));
            if same_scope { held.by_plugin.get(extra.plugin).cloned() } else { None }
        };
        if let Some(opened) = held
            && opened.dirs.iter().all(DirId::still_there)
        {
            return opened.filesystem.clone();
        }
        let (filesystem, dirs, complete) = open(scope, extra);
        // One left out is tried again by the next call.
        if !complete {
            return filesystem;
        }
        let Some(descriptors) = BUDGET.take(dirs.len()) else { return filesystem };
        let opened = Arc::new(Opened { filesystem: filesystem.clone(), dirs, _descriptors: descriptors });
        let _replaced = {
            let mut held = self.held.lock();
            // Checked under the lock: `set_scope` changes the scope before it
            // clears this table, so nothing of an older scope stays behind.
            if !Arc::ptr_eq(&current(), scope) {
                return filesystem;
            }
            let stale = if held.scope.as_ref().is_some_and(|s| Arc::ptr_eq(s, scope)) {
                HashMap::new()
            } else {
                held.scope = Some(scope.clone());
                std::mem::take(&mut held.by_plugin)
            };
            (stale, held.by_plugin.insert(extra.plugin.clone(), opened))
        };
        // What was replaced is closed here, outside the lock.
        filesystem
    }

    /// Closes what is held (the scope changed; calls that start later open
    /// theirs).
    pub fn clear(&self) {
        let _closed = {
            let mut held = self.held.lock();
            held.scope = None;
            std::mem::take(&mut held.by_plugin)
        };
    }
}

/// Opens the scope's directories (without following links, and handed to
/// wasmtime by descriptor, not by path again: a link swapped into the path
/// cannot redirect a preopen) and the data directory. Also says whether all
/// of them opened.
fn open(scope: &Scope, extra: &Extra<'_>) -> (WasiFilesystemCtx, Vec<DirId>, bool) {
    let mut builder = WasiCtxBuilder::new();
    builder.allow_blocking_current_thread(super::call::FILE_CALLS_INLINE);
    let in_scope = scope.preopens().into_iter().map(|p| {
        let perms = if p.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        (p.dir, perms, true)
    });
    // The host made the data directory: its path is followed as given.
    let data_dir = extra.data_dir.map(|d| (d.to_path_buf(), FsPerms::ReadWrite, false));
    let mut dirs = Vec::new();
    let mut complete = true;
    for (dir, perms, scope_dir) in in_scope.chain(data_dir) {
        let fd = if scope_dir {
            crate::os::open_dir_no_symlinks(&dir)
        } else {
            std::fs::File::open(&dir).map(std::os::fd::OwnedFd::from)
        };
        match fd.map_err(wasmtime::Error::new).and_then(|fd| hand_over(&mut builder, &fd, &dir, perms)) {
            Ok(id) => dirs.push(id),
            Err(e) => {
                complete = false;
                tracing::warn!(pod = %extra.pod, plugin = %extra.plugin, dir = %dir.display(), "directory left out of the call: {e:?}");
            }
        }
    }
    let mut wasi = builder.build();
    (wasi.filesystem().clone(), dirs, complete)
}

/// Preopens the directory open as `fd` under its own path, handed to
/// wasmtime as that very directory (by its entry in `/proc/self/fd`), and
/// returns its identity.
fn hand_over(
    builder: &mut WasiCtxBuilder,
    fd: &std::os::fd::OwnedFd,
    dir: &Path,
    perms: FsPerms,
) -> wasmtime::Result<DirId> {
    let meta = rustix::fs::fstat(fd).map_err(|e| wasmtime::Error::new(std::io::Error::from(e)))?;
    let by_descriptor = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    builder.preopened_dir(by_descriptor, dir.to_string_lossy(), perms)?;
    Ok(DirId { path: dir.to_path_buf(), dev: meta.st_dev, ino: meta.st_ino })
}

/// The descriptors held for preopens between calls, across the process.
static BUDGET: LazyLock<Budget> = LazyLock::new(|| {
    // A quarter of the open-file limit, so that sockets, session logs and
    // the calls' own files always have the rest.
    let limit = crate::os::open_file_limit().unwrap_or(1024);
    Budget::new(usize::try_from(limit / 4).unwrap_or(usize::MAX))
});

/// A count of descriptors held, and the most that may be.
struct Budget {
    limit: usize,
    in_use: AtomicUsize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { limit, in_use: AtomicUsize::new(0) }
    }

    /// A share of `n` descriptors, if they fit.
    fn take(&self, n: usize) -> Option<Descriptors<'_>> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use.checked_add(n).filter(|after| *after <= self.limit)
            })
            .ok()
            .map(|_| Descriptors { budget: self, n })
    }
}

/// A share of a [`Budget`], given back when dropped.
struct Descriptors<'a> {
    budget: &'a Budget,
    n: usize,
}

impl Drop for Descriptors<'_> {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Permission, RuleSpec};

    #[test]
    fn a_budget_gives_out_at_most_its_limit_and_takes_back_what_is_dropped() {
        let budget = Budget::new(3);
        let two = budget.take(2).expect("two fit");
        assert!(budget.take(2).is_none());
        let one = budget.take(1).expect("one more fits");
        assert_eq!(budget.in_use.load(Ordering::Acquire), 3);
        drop(two);
        assert_eq!(budget.in_use.load(Ordering::Acquire), 1);
        drop(one);
        assert_eq!(budget.in_use.load(Ordering::Acquire), 0);
    }

    fn scope_of(dir: &Path) -> Arc<Scope> {
        let rule = RuleSpec { target: dir.to_path_buf(), permission: Permission::Write, recursive: true };
        Arc::new(Scope::resolve(&[rule], &[], Path::new("/")).unwrap())
    }

    fn held_dirs(preopens: &Preopens) -> Vec<PathBuf> {
        let held = preopens.held.lock();
        held.by_plugin.values().flat_map(|o| o.dirs.iter().map(|d| d.path.clone())).collect()
    }

    /// Only the pod's current scope is held: a new scope replaces it, a call
    /// under an older one holds nothing, and clearing closes all.
    #[test]
    fn only_the_current_scope_is_held() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a_path, b_path) = (a.path().canonicalize().unwrap(), b.path().canonicalize().unwrap());
        let (first, second) = (scope_of(&a_path), scope_of(&b_path));
        let plugin: Arc<str> = Arc::from("fs");
        let extra = Extra { plugin: &plugin, data_dir: None, pod: "p" };
        let preopens = Preopens::default();

        preopens.filesystem(&first, || first.clone(), &extra);
        assert_eq!(held_dirs(&preopens), vec![a_path.clone()]);
        preopens.filesystem(&second, || second.clone(), &extra);
        assert_eq!(held_dirs(&preopens), vec![b_path.clone()]);
        // A call that started under the first scope after the pod moved on.
        preopens.filesystem(&first, || second.clone(), &extra);
        assert_eq!(held_dirs(&preopens), vec![b_path]);
        preopens.clear();
        assert!(held_dirs(&preopens).is_empty());
    }
}
