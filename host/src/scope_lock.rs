//! The machine-wide scope lock: one JSON file, held under an exclusive
//! `flock` while it is read and rewritten, that records every live pod's
//! write scope with its owner process. A pod may start only if none of its
//! write targets overlaps another live pod's, so two pods (in one host
//! process or in several) never write the same tree.
//!
//! Entries of processes that no longer exist (`kill -9`, a crash) are
//! reclaimed whenever the lock is taken; a process is identified by its pid
//! and its start time, so a reused pid does not keep a dead entry alive.
//!
//! Overlap is judged conservatively on targets: two write targets overlap
//! when one contains the other, whatever their `recursive` flags and deny
//! rules say. The one exception is delegation: a child pod's claim lies
//! inside its ancestors' claims (the ancestors no longer write there, see
//! `Scope::lending`), so a claim may overlap those of its own ancestors in
//! the same process. When a claim goes, whether released or reclaimed from
//! a dead process, the claims of its children pass to its own parent.
//!
//! Claims are keyed by the pod's unique id (not its name, which repeats
//! across namespaces); the name is kept for messages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One live pod's claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The pod's unique id.
    #[serde(default)]
    pub id: String,
    /// The pod's name, qualified by its namespace (for messages).
    pub pod: String,
    /// The owning process.
    pub pid: u32,
    /// The owner's start time (clock ticks since boot), against pid reuse.
    pub started: u64,
    /// The id of the pod that delegated this scope, if any (same process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The pod's write targets (canonical).
    pub write: Vec<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    claims: Vec<Claim>,
}

impl Table {
    /// Removes the claims `gone` picks; their children pass to their parent.
    fn remove(&mut self, gone: impl Fn(&Claim) -> bool) {
        let (removed, kept): (Vec<Claim>, Vec<Claim>) = self.claims.drain(..).partition(|c| gone(c));
        self.claims = kept;
        for claim in &mut self.claims {
            // Climb past every removed ancestor (at most all of them: a
            // hand-edited file could hold a cycle).
            for _ in 0..=removed.len() {
                let Some(parent) = removed.iter().find(|r| r.pid == claim.pid && Some(&r.id) == claim.parent.as_ref())
                else {
                    break;
                };
                claim.parent = parent.parent.clone();
            }
        }
    }

    /// Whether `other` is the parent (by id), grandparent, ... of a claim of
    /// process `pid` whose parent is `parent`.
    fn is_ancestor(&self, other: &Claim, pid: u32, parent: Option<&str>) -> bool {
        let mut next = parent;
        // A chain longer than the table is a cycle in a damaged file.
        for _ in 0..=self.claims.len() {
            let Some(name) = next else { return false };
            if other.pid == pid && other.id == name {
                return true;
            }
            next = self.claims.iter().find(|c| c.pid == pid && c.id == name).and_then(|c| c.parent.as_deref());
        }
        false
    }
}

/// The lock file.
#[derive(Clone, Debug)]
pub struct ScopeLock {
    path: PathBuf,
}

/// A claim held by this process; released when dropped.
/// Releasing it takes the file lock: drop it where blocking is fine.
#[derive(Debug)]
pub struct ClaimGuard {
    lock: ScopeLock,
    id: String,
    pod: String,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let pid = std::process::id();
        if let Err(e) = self.lock.update(|table| table.remove(|c| c.pid == pid && c.id == self.id)) {
            tracing::warn!(pod = %self.pod, "cannot release the scope lock: {e:#}");
        }
    }
}

impl ScopeLock {
    /// The lock at `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> ScopeLock {
        ScopeLock { path: path.into() }
    }

    /// Claims `write` for the pod with id `id` (named `pod`), a child of the
    /// pod with id `parent` (of this process) if given, or explains which live
    /// pod holds an overlapping target. This takes the file lock: call it
    /// where blocking is fine.
    pub fn claim(&self, id: &str, pod: &str, parent: Option<&str>, write: &[PathBuf]) -> anyhow::Result<ClaimGuard> {
        let pid = std::process::id();
        let me = Claim {
            id: id.to_string(),
            pod: pod.to_string(),
            pid,
            started: start_time(pid).unwrap_or(0),
            parent: parent.map(str::to_string),
            write: write.to_vec(),
        };
        self.update(|table| {
            for other in table.claims.iter().filter(|o| !table.is_ancestor(o, pid, parent)) {
                for mine in write {
                    if let Some(theirs) = other.write.iter().find(|t| t.starts_with(mine) || mine.starts_with(t)) {
                        bail!(
                            "write scope {} overlaps {} held by pod {:?} (pid {}); two live pods may not write the same tree",
                            mine.display(),
                            theirs.display(),
                            other.pod,
                            other.pid
                        );
                    }
                }
            }
            table.claims.push(me.clone());
            Ok(())
        })??;
        Ok(ClaimGuard { lock: self.clone(), id: id.to_string(), pod: pod.to_string() })
    }

    /// The live claims.
    pub fn claims(&self) -> anyhow::Result<Vec<Claim>> {
        self.update(|table| table.claims.clone())
    }

    /// Runs `change` on the table under the file lock, after dropping the
    /// claims of dead processes, and writes the result back.
    fn update<R>(&self, change: impl FnOnce(&mut Table) -> R) -> anyhow::Result<R> {
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .with_context(|| format!("cannot open the scope lock {}", self.path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", self.path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut table: Table = if text.trim().is_empty() {
            Table::default()
        } else {
            serde_json::from_str(&text).with_context(|| format!("{} is damaged", self.path.display()))?
        };
        table.remove(|c| !start_time(c.pid).is_some_and(|t| c.started == 0 || t == c.started));
        let result = change(&mut table);
        write_table(&mut file, &table)?;
        Ok(result)
    }
}

fn write_table(file: &mut File, table: &Table) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(table)?;
    file.seek(SeekFrom::Start(0))?;
    file.set_len(0)?;
    file.write_all(&text)?;
    file.sync_data()?;
    Ok(())
}

/// A live process's start time (field 22 of `/proc/PID/stat`), or `None`
/// when it does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_write_scopes_are_refused_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("run/scope.lock"));
        let a = lock.claim("a", "a", None, &["/p/src".into()]).unwrap();
        for overlapping in ["/p", "/p/src", "/p/src/deep"] {
            let err = lock.claim("b", "b", None, &[overlapping.into()]).unwrap_err();
            assert!(err.to_string().contains("held by pod \"a\""), "{err}");
        }
        let b = lock.claim("b", "b", None, &["/p/srcx".into(), "/q".into()]).unwrap();
        assert_eq!(lock.claims().unwrap().len(), 2);
        drop(a);
        let c = lock.claim("c", "c", None, &["/p/src".into()]).unwrap();
        drop((b, c));
        assert!(lock.claims().unwrap().is_empty());
    }

    #[test]
    fn claims_of_dead_processes_are_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("scope.lock"));
        let claim = |pod: &str, pid, parent: Option<&str>, write: &str| Claim {
            id: pod.into(),
            pod: pod.into(),
            pid,
            started: 1,
            parent: parent.map(str::to_string),
            write: vec![write.into()],
        };
        let dead = claim("ghost", u32::MAX - 1, None, "/p");
        let reused = claim("old", std::process::id(), None, "/q");
        std::fs::write(lock.path.clone(), serde_json::to_vec(&Table { claims: vec![dead, reused] }).unwrap()).unwrap();
        let _p = lock.claim("new", "new", None, &["/p".into(), "/q".into()]).unwrap();
        let claims = lock.claims().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].pod, "new");
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn a_parent_cycle_in_a_damaged_file_does_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("scope.lock"));
        let pid = std::process::id();
        let claim = |pod: &str, parent: &str, write: &str| Claim {
            id: pod.into(),
            pod: pod.into(),
            pid,
            started: 0,
            parent: Some(parent.into()),
            write: vec![write.into()],
        };
        let mut d = claim("d", "a", "/p/d");
        d.parent = None;
        let table = Table { claims: vec![claim("a", "b", "/p/a"), claim("b", "a", "/p/b"), d] };
        std::fs::write(&lock.path, serde_json::to_vec(&table).unwrap()).unwrap();
        let err = lock.claim("c", "c", Some("a"), &["/p/d/x".into()]).unwrap_err();
        assert!(err.to_string().contains("held by pod \"d\""), "{err}");
        // Releasing a claim inside the cycle terminates too.
        drop(lock.claim("e", "e", Some("b"), &["/q".into()]).unwrap());
    }

    #[test]
    fn children_overlap_only_their_ancestors_and_pass_to_the_grandparent() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("scope.lock"));
        let lead = lock.claim("lead", "lead", None, &["/p".into()]).unwrap();
        let worker = lock.claim("lead.w", "lead.w", Some("lead"), &["/p/src".into()]).unwrap();
        let _helper = lock.claim("lead.w.h", "lead.w.h", Some("lead.w"), &["/p/src/a".into()]).unwrap();
        // A sibling may not overlap the worker, nor a stranger the lead.
        let err = lock.claim("lead.v", "lead.v", Some("lead"), &["/p/src/b".into()]).unwrap_err();
        assert!(err.to_string().contains("held by pod \"lead.w\""), "{err}");
        assert!(lock.claim("other", "other", None, &["/p/docs".into()]).is_err());
        let _sibling = lock.claim("lead.v", "lead.v", Some("lead"), &["/p/docs".into()]).unwrap();
        // The worker goes: its child now belongs to the lead.
        drop(worker);
        let claims = lock.claims().unwrap();
        let helper = claims.iter().find(|c| c.pod == "lead.w.h").unwrap();
        assert_eq!(helper.parent.as_deref(), Some("lead"));
        drop(lead);
        let claims = lock.claims().unwrap();
        assert!(claims.iter().all(|c| c.parent.is_none()), "{claims:?}");
    }

    #[test]
    fn pods_named_alike_hold_their_own_claims() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("scope.lock"));
        let a = lock.claim("id-a", "acme/coder", None, &["/a".into()]).unwrap();
        let b = lock.claim("id-b", "globex/coder", None, &["/b".into()]).unwrap();
        let _a_child = lock.claim("id-c", "acme/coder.w", Some("id-a"), &["/a/w".into()]).unwrap();
        // The other "coder" is no ancestor of a child of the first.
        let err = lock.claim("id-d", "globex/coder.w", Some("id-b"), &["/a/x".into()]).unwrap_err();
        assert!(err.to_string().contains("acme/coder"), "{err}");
        drop(b);
        let claims = lock.claims().unwrap();
        assert_eq!(claims.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["id-a", "id-c"]);
        drop(a);
    }
}
