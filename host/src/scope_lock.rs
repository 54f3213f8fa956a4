//! The machine-wide scope lock: one file, held under an exclusive `flock`
//! while it is read and written, that records every live pod's write scope
//! with its owner process. A pod may start only if none of its write targets
//! overlaps another live pod's, so two pods (in one host process or in
//! several) never write the same tree.
//!
//! The file is a log of JSON lines: an `epoch` header, then `claim` and
//! `release` records, appended under the lock. Each process keeps the table
//! the log describes in memory and reads only what others appended since its
//! last look, and a claim is checked against an index of write targets, so
//! taking or releasing a claim costs the same with ten claims or ten
//! thousand. When the log has grown well past the live claims it is
//! rewritten in place under a new epoch; a process that sees another epoch
//! reads the log afresh. Durability is not needed: after a crash the
//! crashed process's claims are dead anyway.
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

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Weak};

use anyhow::{Context, bail};
use parking_lot::Mutex;
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

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    /// The first line: which generation of the log this is.
    Epoch { epoch: String },
    /// A claim was taken.
    Claim(Claim),
    /// The claim `id` of process `pid` went.
    Release { pid: u32, id: String },
}

/// The format before the log: one JSON object holding every claim.
#[derive(Serialize, Deserialize)]
struct Legacy {
    claims: Vec<Claim>,
}

type Key = (u32, String);

/// The live claims, indexed by owner and id, by write target, and by
/// parent.
#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Claims in arrival order.
    claims: BTreeMap<u64, Claim>,
    ids: HashMap<Key, u64>,
    targets: BTreeMap<PathBuf, Vec<u64>>,
    children: HashMap<Key, Vec<u64>>,
    /// Claims per owning process (pid, start time).
    owners: HashMap<(u32, u64), usize>,
}

impl Table {
    fn insert(&mut self, claim: Claim) {
        let key = (claim.pid, claim.id.clone());
        if self.ids.contains_key(&key) {
            self.remove(&key);
        }
        let seq = self.next;
        self.next += 1;
        self.ids.insert(key, seq);
        for target in &claim.write {
            self.targets.entry(target.clone()).or_default().push(seq);
        }
        if let Some(parent) = &claim.parent {
            self.children.entry((claim.pid, parent.clone())).or_default().push(seq);
        }
        *self.owners.entry((claim.pid, claim.started)).or_default() += 1;
        self.claims.insert(seq, claim);
    }

    /// Removes one claim; its children pass to its parent.
    fn remove(&mut self, key: &Key) -> Option<Claim> {
        let seq = self.ids.remove(key)?;
        let claim = self.claims.remove(&seq)?;
        for target in &claim.write {
            if let Some(seqs) = self.targets.get_mut(target) {
                seqs.retain(|s| *s != seq);
                if seqs.is_empty() {
                    self.targets.remove(target);
                }
            }
        }
        if let Some(parent) = &claim.parent
            && let Some(siblings) = self.children.get_mut(&(claim.pid, parent.clone()))
        {
            siblings.retain(|s| *s != seq);
        }
        let owner = (claim.pid, claim.started);
        if let Some(count) = self.owners.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(&owner);
            }
        }
        for child in self.children.remove(key).unwrap_or_default() {
            let Some(c) = self.claims.get_mut(&child) else { continue };
            c.parent = claim.parent.clone();
            if let Some(grandparent) = &claim.parent {
                self.children.entry((claim.pid, grandparent.clone())).or_default().push(child);
            }
        }
        Some(claim)
    }

    /// Claims whose write targets overlap `path` (contain it, or lie in it).
    fn overlapping<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = (&'a Claim, &'a PathBuf)> + 'a {
        let above = path.ancestors().filter_map(|a| self.targets.get_key_value(a));
        let below = self
            .targets
            .range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
            .take_while(move |(t, _)| t.starts_with(path));
        above.chain(below).flat_map(move |(target, seqs)| seqs.iter().map(move |s| (&self.claims[s], target)))
    }

    /// Whether `other` is the claim with id `parent` of process `pid`, or
    /// that claim's parent, grandparent, ...
    fn is_ancestor(&self, other: &Claim, pid: u32, parent: Option<&str>) -> bool {
        let mut next = parent.map(str::to_string);
        // A chain longer than the table is a cycle in a damaged file.
        for _ in 0..=self.claims.len() {
            let Some(id) = next else { return false };
            if other.pid == pid && other.id == id {
                return true;
            }
            next = self.ids.get(&(pid, id)).and_then(|s| self.claims[s].parent.clone());
        }
        false
    }

    /// Removes the claims of processes that are gone; returns them.
    fn reclaim_dead(&mut self) -> Vec<Claim> {
        let dead: Vec<(u32, u64)> = self
            .owners
            .keys()
            .filter(|(pid, started)| !start_time(*pid).is_some_and(|t| *started == 0 || t == *started))
            .copied()
            .collect();
        if dead.is_empty() {
            return Vec::new();
        }
        let keys: Vec<Key> = self
            .claims
            .values()
            .filter(|c| dead.contains(&(c.pid, c.started)))
            .map(|c| (c.pid, c.id.clone()))
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }
}

/// What a process knows of the log: the table, and how far it has read.
#[derive(Debug, Default)]
struct Cache {
    table: Table,
    epoch: String,
    offset: u64,
    /// Records in the log, against compaction.
    records: usize,
}

/// The lock file. Clones share what they have read of it.
#[derive(Clone, Debug)]
pub struct ScopeLock {
    path: PathBuf,
    cache: Arc<Mutex<Cache>>,
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
        let key = (std::process::id(), self.id.clone());
        let released = self.lock.update(|table| {
            table.remove(&key);
            Ok(vec![Record::Release { pid: key.0, id: key.1.clone() }])
        });
        if let Err(e) = released {
            tracing::warn!(pod = %self.pod, "cannot release the scope lock: {e:#}");
        }
    }
}

/// Rewrite the log when it holds this many more records than live claims.
const COMPACT_SLACK: usize = 1024;

impl ScopeLock {
    /// The lock at `path` (created on first use). Every `ScopeLock` of one
    /// path in this process shares what has been read of the file, so
    /// thousands of claims keep one table, not one each.
    pub fn new(path: impl Into<PathBuf>) -> ScopeLock {
        static VIEWS: LazyLock<Mutex<HashMap<PathBuf, Weak<Mutex<Cache>>>>> = LazyLock::new(Mutex::default);
        let path = path.into();
        let mut views = VIEWS.lock();
        let cache = match views.get(&path).and_then(Weak::upgrade) {
            Some(cache) => cache,
            None => {
                views.retain(|_, v| v.strong_count() > 0);
                let cache = Arc::<Mutex<Cache>>::default();
                views.insert(path.clone(), Arc::downgrade(&cache));
                cache
            }
        };
        ScopeLock { path, cache }
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
            for mine in write {
                let clash = table.overlapping(mine).find(|(other, _)| !table.is_ancestor(other, pid, parent));
                if let Some((other, theirs)) = clash {
                    bail!(
                        "write scope {} overlaps {} held by pod {:?} (pid {}); two live pods may not write the same tree",
                        mine.display(),
                        theirs.display(),
                        other.pod,
                        other.pid
                    );
                }
            }
            table.insert(me.clone());
            Ok(vec![Record::Claim(me.clone())])
        })?;
        Ok(ClaimGuard { lock: self.clone(), id: id.to_string(), pod: pod.to_string() })
    }

    /// The live claims, in the order they were taken.
    pub fn claims(&self) -> anyhow::Result<Vec<Claim>> {
        let mut claims = Vec::new();
        self.update(|table| {
            claims = table.claims.values().cloned().collect();
            Ok(Vec::new())
        })?;
        Ok(claims)
    }

    /// Under the file lock: catches up with the log, reclaims the claims of
    /// dead processes, runs `change` on the table and appends the records
    /// it returns (or rewrites the log, when it has grown long).
    fn update(&self, change: impl FnOnce(&mut Table) -> anyhow::Result<Vec<Record>>) -> anyhow::Result<()> {
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
        let mut cache = self.cache.lock();
        let rewrite = self.catch_up(&mut file, &mut cache)?;
        let mut records: Vec<Record> =
            cache.table.reclaim_dead().into_iter().map(|c| Record::Release { pid: c.pid, id: c.id }).collect();
        // What was reclaimed is written even when the change is refused.
        let changed = change(&mut cache.table);
        if let Ok(more) = &changed {
            records.extend(more.iter().cloned());
        }
        if rewrite || cache.records + records.len() > cache.table.claims.len() * 2 + COMPACT_SLACK {
            self.rewrite(&mut file, &mut cache)?;
        } else {
            append(&mut file, &mut cache, &records)?;
        }
        changed.map(drop)
    }

    /// Reads what was appended since this process last looked (all of it,
    /// after a rewrite by another process). Says whether the file must be
    /// rewritten (it was empty, in the old format, or ends in a torn line).
    fn catch_up(&self, file: &mut File, cache: &mut Cache) -> anyhow::Result<bool> {
        let damaged = || format!("{} is damaged", self.path.display());
        let mut head = [0u8; 64];
        let n = file.read_at(&mut head, 0)?;
        let first = head[..n].split(|b| *b == b'\n').next().unwrap_or_default();
        let epoch = match serde_json::from_slice::<Record>(first) {
            Ok(Record::Epoch { epoch }) => Some(epoch),
            _ => None,
        };
        match epoch {
            Some(epoch) if epoch == cache.epoch => {}
            Some(epoch) => *cache = Cache { epoch, ..Cache::default() },
            None => {
                // Empty, or the old single-object format: take its claims.
                let mut text = String::new();
                file.seek(SeekFrom::Start(0))?;
                file.read_to_string(&mut text)?;
                *cache = Cache::default();
                if !text.trim().is_empty() {
                    let legacy: Legacy = serde_json::from_str(&text).with_context(damaged)?;
                    for claim in legacy.claims {
                        cache.table.insert(claim);
                    }
                }
                return Ok(true);
            }
        }
        let mut text = Vec::new();
        file.seek(SeekFrom::Start(cache.offset))?;
        file.read_to_end(&mut text)?;
        let mut torn = false;
        let mut read = 0;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if !line.ends_with(b"\n") {
                // A writer died mid-line: the next write replaces it.
                torn = true;
                break;
            }
            read += line.len();
            cache.records += 1;
            match serde_json::from_slice::<Record>(line).with_context(damaged)? {
                Record::Epoch { .. } => {}
                Record::Claim(claim) => cache.table.insert(claim),
                Record::Release { pid, id } => {
                    cache.table.remove(&(pid, id));
                }
            }
        }
        cache.offset += read as u64;
        if torn {
            file.set_len(cache.offset)?;
        }
        Ok(false)
    }

    /// Writes the live claims as a new log under a new epoch.
    fn rewrite(&self, file: &mut File, cache: &mut Cache) -> anyhow::Result<()> {
        let epoch = format!("{:016x}", fastrand::u64(..));
        let mut text = line(&Record::Epoch { epoch: epoch.clone() })?;
        for claim in cache.table.claims.values() {
            text.extend(line(&Record::Claim(claim.clone()))?);
        }
        file.set_len(0)?;
        file.write_all_at(&text, 0)?;
        cache.epoch = epoch;
        cache.offset = text.len() as u64;
        cache.records = cache.table.claims.len() + 1;
        Ok(())
    }
}

fn line(record: &Record) -> anyhow::Result<Vec<u8>> {
    let mut text = serde_json::to_vec(record)?;
    text.push(b'\n');
    Ok(text)
}

/// Appends `records` at the end of the log.
fn append(file: &mut File, cache: &mut Cache, records: &[Record]) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut text = Vec::new();
    for record in records {
        text.extend(line(record)?);
    }
    file.write_all_at(&text, cache.offset)?;
    cache.offset += text.len() as u64;
    cache.records += records.len();
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
        std::fs::write(lock.path.clone(), serde_json::to_vec(&Legacy { claims: vec![dead, reused] }).unwrap()).unwrap();
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
        let table = Legacy { claims: vec![claim("a", "b", "/p/a"), claim("b", "a", "/p/b"), d] };
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
