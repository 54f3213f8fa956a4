//! The on-disk cache of compiled components under `$YOI_HOME/cache`.
//!
//! An entry is keyed by the SHA-256 of the component and the engine's
//! fingerprint, so a changed plugin or a different wasmtime build never picks
//! up a stale artifact, and a warm restart compiles nothing. Entries are
//! written to a temporary file and renamed into place, so concurrent hosts
//! and crashes leave either no entry or a whole one. An entry that fails to
//! load is compiled again and replaced.
//!
//! Loading an entry maps native code into the process, so the cache directory
//! must be as trusted as the binary itself: it is created with mode 0700 in
//! the user's own home.
//!
//! The cache holds at most [`DEFAULT_MAX_BYTES`]: when a new entry takes it
//! past that, the entries used longest ago go (a hit marks its entry used),
//! so that uploads of ever new components, on a server, cannot fill the
//! disk. A removed entry is compiled again when it is next needed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::engine_fingerprint;

/// Whether a component came from the cache or was compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a compiled artifact from disk.
    Hit,
    /// Compiled now (and stored, if the cache is writable).
    Compiled,
}

/// Most bytes the cache keeps.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

/// Compiled components on disk.
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ComponentCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> ComponentCache {
        ComponentCache::with_limit(dir, DEFAULT_MAX_BYTES)
    }

    /// A cache in `dir` that keeps at most `max_bytes`.
    pub fn with_limit(dir: impl Into<PathBuf>, max_bytes: u64) -> ComponentCache {
        ComponentCache { dir: dir.into(), max_bytes }
    }

    /// The compiled form of `bytes`, from the cache or freshly compiled.
    /// `digest` is the hex SHA-256 of `bytes`.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.dir.join(format!("{digest}-{}.cwasm", engine_fingerprint(engine)));
        if path.exists() {
            // SAFETY: entries are written only by this cache, from
            // `Component::serialize`, into a 0700 directory of the user's;
            // their names carry the engine fingerprint, and wasmtime checks
            // the artifact's header against the engine before use.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    // Marks the entry used, for the eviction of old entries.
                    if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                        let _ = file.set_modified(std::time::SystemTime::now());
                    }
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(e) => tracing::warn!(path = %path.display(), "discarding unusable cache entry: {e}"),
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the component cache: {e:#}");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let serialized = component.serialize().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&serialized)?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tmp.persist(path)?;
        self.evict(path);
        Ok(())
    }

    /// Removes the entries used longest ago while the cache holds more
    /// than its limit; `keep` (the entry just stored) stays.
    fn evict(&self, keep: &Path) {
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm") && e.path() != keep)
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let kept = std::fs::metadata(keep).map_or(0, |m| m.len());
        let mut total: u64 = kept + entries.iter().map(|(_, len, _)| len).sum::<u64>();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_limit_the_cache_drops_the_entries_used_longest_ago() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ComponentCache::with_limit(tmp.path(), 250);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (name, age) in [("a.cwasm", 3), ("b.cwasm", 1), ("c.cwasm", 2)] {
            let path = tmp.path().join(name);
            std::fs::write(&path, [0u8; 100]).unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(old - std::time::Duration::from_secs(age)).unwrap();
        }
        let new = tmp.path().join("new.cwasm");
        std::fs::write(&new, [0u8; 100]).unwrap();
        cache.evict(&new);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.cwasm", "new.cwasm"]);
    }
}
