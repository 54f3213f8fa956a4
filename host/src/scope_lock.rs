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
//! rules say.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One live pod's claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The pod's name.
    pub pod: String,
    /// The owning process.
    pub pid: u32,
    /// The owner's start time (clock ticks since boot), against pid reuse.
    pub started: u64,
    /// The pod's write targets (canonical).
    pub write: Vec<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    claims: Vec<Claim>,
}

/// The lock file.
#[derive(Clone, Debug)]
pub struct ScopeLock {
    path: PathBuf,
}

/// A claim held by this process; released when dropped.
#[derive(Debug)]
pub struct ClaimGuard {
    lock: ScopeLock,
    pod: String,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let pid = std::process::id();
        if let Err(e) = self.lock.update(|table| table.claims.retain(|c| !(c.pid == pid && c.pod == self.pod))) {
            tracing::warn!(pod = %self.pod, "cannot release the scope lock: {e:#}");
        }
    }
}

impl ScopeLock {
    /// The lock at `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> ScopeLock {
        ScopeLock { path: path.into() }
    }

    /// Claims `write` for `pod`, or explains which live pod holds an
    /// overlapping target.
    pub fn claim(&self, pod: &str, write: &[PathBuf]) -> anyhow::Result<ClaimGuard> {
        let me = Claim {
            pod: pod.to_string(),
            pid: std::process::id(),
            started: start_time(std::process::id()).unwrap_or(0),
            write: write.to_vec(),
        };
        self.update(|table| {
            for other in &table.claims {
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
        Ok(ClaimGuard { lock: self.clone(), pod: pod.to_string() })
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
        table.claims.retain(|c| start_time(c.pid).is_some_and(|t| c.started == 0 || t == c.started));
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
        let a = lock.claim("a", &["/p/src".into()]).unwrap();
        for overlapping in ["/p", "/p/src", "/p/src/deep"] {
            let err = lock.claim("b", &[overlapping.into()]).unwrap_err();
            assert!(err.to_string().contains("held by pod \"a\""), "{err}");
        }
        let b = lock.claim("b", &["/p/srcx".into(), "/q".into()]).unwrap();
        assert_eq!(lock.claims().unwrap().len(), 2);
        drop(a);
        let c = lock.claim("c", &["/p/src".into()]).unwrap();
        drop((b, c));
        assert!(lock.claims().unwrap().is_empty());
    }

    #[test]
    fn claims_of_dead_processes_are_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = ScopeLock::new(tmp.path().join("scope.lock"));
        let dead = Claim { pod: "ghost".into(), pid: u32::MAX - 1, started: 1, write: vec!["/p".into()] };
        let reused = Claim { pod: "old".into(), pid: std::process::id(), started: 1, write: vec!["/q".into()] };
        std::fs::write(lock.path.clone(), serde_json::to_vec(&Table { claims: vec![dead, reused] }).unwrap()).unwrap();
        let _p = lock.claim("new", &["/p".into(), "/q".into()]).unwrap();
        let claims = lock.claims().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].pod, "new");
        assert!(start_time(std::process::id()).is_some());
    }
}
