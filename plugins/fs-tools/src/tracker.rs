//! The read-before-write rule. Read, Write and Edit record the content hash
//! of each file they saw under `read:<canonical path>` in the pod's state
//! store (every call is a fresh instance, so memory would not do); Write and
//! Edit of an existing file require a record whose hash still matches. The
//! host lists the files a pod touched from the same keys.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3;
use yoi_plugin_sdk::{ToolError, log, state};

fn key(path: &Path) -> String {
    format!("read:{}", path.display())
}

/// Remembers that the pod has seen `content` at `path`.
pub fn record(path: &Path, content: &[u8]) {
    Seen::of(content).record(path);
}

/// Checks that the pod has seen exactly `current` at `path`.
pub fn check(path: &Path, current: &[u8]) -> Result<(), ToolError> {
    match state::get(&key(path)) {
        None => Err(ToolError::Failed(format!(
            "{} already exists and has not been read in this pod: Read it first, then write or edit it",
            path.display()
        ))),
        Some(hash) if hash == Seen::of(current).digest() => Ok(()),
        Some(_) => Err(ToolError::Failed(format!(
            "{} has changed since this pod last read it (modified outside these tools): Read it again first",
            path.display()
        ))),
    }
}

/// A file's content hashed, whole or a chunk at a time as it is read: the
/// one hash the records are made and checked with.
pub struct Seen(Xxh3);

impl Seen {
    pub fn new() -> Seen {
        Seen(Xxh3::new())
    }

    fn of(content: &[u8]) -> Seen {
        let mut seen = Seen::new();
        seen.update(content);
        seen
    }

    /// The next bytes of the file.
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    fn digest(&self) -> [u8; 16] {
        self.0.digest128().to_le_bytes()
    }

    /// Remembers that the pod has seen what was fed in at `path`.
    pub fn record(self, path: &Path) {
        if let Err(e) = state::set(&key(path), &self.digest()) {
            // The model will be asked to read the file again; nothing is lost.
            log::log(log::Level::Warn, &format!("cannot record read of {}: {e}", path.display()));
        }
    }
}
