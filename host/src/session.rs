//! The session log: one append-only JSON-lines file per session under
//! `$YOI_HOME/sessions/`, written as things happen so that a crash loses at
//! most the line being written.
//!
//! Line kinds (`"kind"` field): `meta` (first line: pod name, creation time,
//! the session it continues, if any), `item` (one history item), `usage`,
//! `turn_end`, `run_end`. Each line is written whole and flushed to the OS
//! at once. On load a torn last line (from `kill -9` mid-write) is dropped;
//! a bad line elsewhere is an error naming it.
//!
//! [`SessionStore`] is the small interface the pod uses, so that a shared
//! store can stand in for local files later.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::agent::Outcome;
use crate::history::Item;
use crate::provider::Usage;

/// One line of a session log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The first line.
    Meta {
        /// The pod's name.
        pod: String,
        /// Seconds since the Unix epoch.
        created: u64,
        /// The session this one continues (after compaction), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        continues: Option<String>,
    },
    /// A history item.
    Item {
        /// The item.
        item: Item,
    },
    /// Token counts of one request.
    Usage {
        /// The counts.
        #[serde(flatten)]
        usage: Usage,
    },
    /// A turn ended.
    TurnEnd {
        /// The turn within its run.
        turn: u32,
        /// Why the model stopped (absent in logs written before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop: Option<crate::provider::StopReason>,
    },
    /// A run ended.
    RunEnd {
        /// How.
        outcome: Outcome,
    },
}

/// What a session log holds, read back.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The pod it belongs to.
    pub pod: String,
    /// The session it continues.
    pub continues: Option<String>,
    /// The history, rebuilt from its items.
    pub items: Vec<Item>,
    /// The last usage record.
    pub last_usage: Option<Usage>,
    /// Whether a torn last line was dropped.
    pub dropped_torn_line: bool,
    /// Whether items follow the last `run_end`: a run was going on when
    /// the log was last written.
    pub run_open: bool,
}

/// Where sessions live.
#[derive(Clone, Debug)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// Sessions in `dir` (created on first use, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> SessionStore {
        SessionStore { dir: dir.into() }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Starts a new session for `pod`.
    pub fn create(&self, pod: &str, continues: Option<&str>) -> anyhow::Result<SessionWriter> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create the sessions directory {}", self.dir.display()))?;
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let id = format!("{pod}-{created}-{:08x}", nanos ^ fastrand::u32(..));
        let path = self.path(&id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create the session log {}", path.display()))?;
        let mut writer = SessionWriter { id, path, file, lines: 0, bytes: 0 };
        writer.append(&Entry::Meta { pod: pod.to_string(), created, continues: continues.map(str::to_string) })?;
        Ok(writer)
    }

    /// Reopens session `id` to append to it. A torn last line (the host
    /// was killed while writing it) is cut off first, so that what is
    /// appended starts a line of its own.
    pub fn reopen(&self, id: &str) -> anyhow::Result<SessionWriter> {
        let path = self.path(id);
        let text = std::fs::read(&path).with_context(|| format!("cannot open the session log {}", path.display()))?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the session log {}", path.display()))?;
        if whole < text.len() {
            file.set_len(whole as u64).with_context(|| format!("cannot cut the torn line of {}", path.display()))?;
        }
        let lines = text[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(SessionWriter { id: id.to_string(), path, file, lines, bytes: whole as u64 })
    }

    /// The entries of session `id` after its first `skip` lines, each with
    /// its line number (from 1). A torn last line is left out.
    pub fn entries_after(&self, id: &str, skip: u64) -> anyhow::Result<Vec<(u64, Entry)>> {
        if id.contains('/') {
            bail!("no session {id:?}");
        }
        let path = self.path(id);
        let file = File::open(&path).with_context(|| format!("cannot open the session log {}", path.display()))?;
        let mut entries = Vec::new();
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))? == 0 {
                break;
            }
            if !line.ends_with('\n') {
                break;
            }
            number += 1;
            if number <= skip {
                continue;
            }
            let entry = serde_json::from_str::<Entry>(&line)
                .with_context(|| format!("{}: line {number} is not a session entry", path.display()))?;
            entries.push((number, entry));
        }
        Ok(entries)
    }

    /// Resolves `latest` (the newest session of `pod`) or checks that `id` exists.
    pub fn resolve(&self, id_or_latest: &str, pod: &str) -> anyhow::Result<String> {
        if id_or_latest != "latest" {
            if id_or_latest.contains('/') || !self.path(id_or_latest).exists() {
                bail!("no session {id_or_latest:?} in {}", self.dir.display());
            }
            return Ok(id_or_latest.to_string());
        }
        let prefix = format!("{pod}-");
        let mut newest: Option<(SystemTime, String)> = None;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".jsonl") else { continue };
            // `POD-SECONDS-HEX`: pod `a` must not take the sessions of `a-b`.
            let Some(rest) = id.strip_prefix(&prefix) else { continue };
            let ours = rest.split_once('-').is_some_and(|(secs, hex)| {
                !secs.is_empty()
                    && secs.bytes().all(|b| b.is_ascii_digit())
                    && hex.len() == 8
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !ours {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, id.to_string()));
            }
        }
        newest.map(|(_, id)| id).ok_or_else(|| anyhow::anyhow!("pod {pod:?} has no sessions in {}", self.dir.display()))
    }

    /// Reads session `id` back.
    pub fn load(&self, id: &str) -> anyhow::Result<Loaded> {
        let path = self.path(id);
        let file = File::open(&path).with_context(|| format!("cannot open the session log {}", path.display()))?;
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut loaded = Loaded::default();
        let count = lines.len();
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry = match serde_json::from_str::<Entry>(line) {
                Ok(e) => e,
                Err(_) if n + 1 == count => {
                    loaded.dropped_torn_line = true;
                    break;
                }
                Err(e) => bail!("{}: line {} is not a session entry: {e}", path.display(), n + 1),
            };
            match entry {
                Entry::Meta { pod, continues, .. } => {
                    loaded.pod = pod;
                    loaded.continues = continues;
                }
                Entry::Item { item } => {
                    loaded.items.push(item);
                    loaded.run_open = true;
                }
                Entry::Usage { usage } => loaded.last_usage = Some(usage),
                Entry::RunEnd { .. } => loaded.run_open = false,
                Entry::TurnEnd { .. } => {}
            }
        }
        Ok(loaded)
    }
}

/// Appends to one session log.
pub struct SessionWriter {
    id: String,
    path: PathBuf,
    file: File,
    /// Lines in the log.
    lines: u64,
    /// Bytes in the log.
    bytes: u64,
}

impl SessionWriter {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many lines the log holds.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends one entry as one line and hands it to the OS.
    pub fn append(&mut self, entry: &Entry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        // One write call per line: a crash leaves at most this line torn.
        if let Err(e) = self.file.write_all(&line) {
            // A partial line (a full disk) is cut off, so the next append
            // starts a line of its own.
            let _ = self.file.set_len(self.bytes);
            return Err(e).with_context(|| format!("cannot append to {}", self.path.display()));
        }
        self.file.flush()?;
        self.lines += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_round_trips_and_a_torn_line_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path().join("sessions"));
        let mut w = store.create("coder", None).unwrap();
        w.append(&Entry::Item { item: Item::User { text: "hi".into() } }).unwrap();
        w.append(&Entry::Usage { usage: Usage { input_tokens: 7, ..Usage::default() } }).unwrap();
        w.append(&Entry::RunEnd { outcome: Outcome::Finished }).unwrap();
        let id = w.id().to_string();
        drop(w);
        std::fs::OpenOptions::new()
            .append(true)
            .open(store.path(&id))
            .unwrap()
            .write_all(b"{\"kind\":\"item\",\"it")
            .unwrap();

        let loaded = store.load(&id).unwrap();
        assert_eq!(loaded.pod, "coder");
        assert_eq!(loaded.items, vec![Item::User { text: "hi".into() }]);
        assert_eq!(loaded.last_usage.unwrap().input_tokens, 7);
        assert!(loaded.dropped_torn_line);
        assert_eq!(store.resolve("latest", "coder").unwrap(), id);
        assert!(store.resolve("latest", "other").is_err());
        // A newer session of `coder-2` is not `coder`'s.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = store.create("coder-2", None).unwrap();
        assert_eq!(store.resolve("latest", "coder").unwrap(), id);
        assert_eq!(store.resolve("latest", "coder-2").unwrap(), other.id());
        assert!(store.resolve("../etc/passwd", "coder").is_err());
    }

    #[test]
    fn reopening_cuts_a_torn_line_so_that_appends_stay_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let mut w = store.create("p", None).unwrap();
        w.append(&Entry::Item { item: Item::User { text: "kept".into() } }).unwrap();
        let id = w.id().to_string();
        drop(w);
        let mut f = std::fs::OpenOptions::new().append(true).open(store.path(&id)).unwrap();
        f.write_all(b"{\"kind\":\"item\",\"it").unwrap();
        let mut w = store.reopen(&id).unwrap();
        assert_eq!(w.lines(), 2);
        w.append(&Entry::Item { item: Item::User { text: "after".into() } }).unwrap();
        let loaded = store.load(&id).unwrap();
        assert!(!loaded.dropped_torn_line);
        assert_eq!(loaded.items.len(), 2);
        let after: Vec<u64> = store.entries_after(&id, 1).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(after, [2, 3]);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let w = store.create("p", None).unwrap();
        let id = w.id().to_string();
        drop(w);
        let mut f = std::fs::OpenOptions::new().append(true).open(store.path(&id)).unwrap();
        f.write_all(b"garbage\n{\"kind\":\"turn_end\",\"turn\":1}\n").unwrap();
        let err = store.load(&id).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
