//! Where yoi-host keeps its files: `$YOI_HOME`, or `~/.yoi` when unset.
//!
//! The home is passed down explicitly (never a process-wide global), so one
//! process can serve several roots, as tenants will need.

use std::path::{Path, PathBuf};

/// The root of yoi-host's files and the directories under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `$YOI_HOME`, else `$HOME/.yoi`.
    pub fn from_env() -> anyhow::Result<Home> {
        if let Some(root) = std::env::var_os("YOI_HOME").filter(|v| !v.is_empty()) {
            return Ok(Home::new(std::path::absolute(PathBuf::from(root))?));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow::anyhow!("neither YOI_HOME nor HOME is set"))?;
        Ok(Home::new(PathBuf::from(home).join(".yoi")))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The machine-wide scope lock: `$YOI_SCOPE_LOCK`, else `run/scope.lock`.
    pub fn scope_lock(&self) -> PathBuf {
        match std::env::var_os("YOI_SCOPE_LOCK").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => self.root.join("run").join("scope.lock"),
        }
    }

    /// Compiled components, keyed by component hash and engine configuration.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
}
