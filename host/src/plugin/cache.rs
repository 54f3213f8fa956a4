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

/// Compiled components on disk.
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> ComponentCache {
        ComponentCache { dir: dir.into() }
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
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
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
        Ok(())
    }
}
