//! Who a pod is: a [`PodId`] unique to each pod this process starts, and
//! the [`Namespace`] its name lives in.
//!
//! Names are unique only within a namespace (a tenant's pods, or the
//! operator's own). Everything a pod keeps on disk (runtime directory,
//! session logs, plugin data) lives under its namespace's directory, and
//! its scope-lock claim is keyed by its id, so two pods with the same name
//! in different namespaces never collide.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// A pod's unique id: 128 random bits, as 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodId(String);

impl PodId {
    /// A new id.
    pub fn new() -> PodId {
        PodId(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PodId {
    fn default() -> Self {
        PodId::new()
    }
}

impl std::fmt::Display for PodId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The namespace of pod names: the operator's own (the default, what the
/// command line uses) or a named one (a tenant's).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The operator's own namespace.
    pub fn operator() -> Namespace {
        Namespace::default()
    }

    /// A named namespace (1-64 characters from `A-Z a-z 0-9 _ -`).
    pub fn named(name: &str) -> anyhow::Result<Namespace> {
        let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if name.is_empty() || name.len() > 64 || !plain {
            bail!("{name:?} is not a valid namespace (1-64 characters from A-Z a-z 0-9 _ -)");
        }
        Ok(Namespace(name.to_string()))
    }

    /// Whether this is the operator's own namespace.
    pub fn is_operator(&self) -> bool {
        self.0.is_empty()
    }

    /// This namespace's part of `root`: `root` itself for the operator's
    /// namespace, `root/@NAME` for a named one (pod names never start
    /// with `@`, so the two cannot meet).
    pub fn dir(&self, root: &Path) -> PathBuf {
        if self.is_operator() { root.to_path_buf() } else { root.join(format!("@{}", self.0)) }
    }

    /// `name` qualified for messages and the machine-wide lock:
    /// `name` in the operator's namespace, `NAMESPACE/name` otherwise.
    pub fn qualify(&self, name: &str) -> String {
        if self.is_operator() { name.to_string() } else { format!("{}/{name}", self.0) }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_operator() { "(operator)" } else { &self.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_keep_their_files_apart() {
        let root = Path::new("/r");
        assert_eq!(Namespace::operator().dir(root), root);
        let t = Namespace::named("acme").unwrap();
        assert_eq!(t.dir(root), Path::new("/r/@acme"));
        assert_eq!(t.qualify("coder"), "acme/coder");
        assert_eq!(Namespace::operator().qualify("coder"), "coder");
        for bad in ["", "a/b", "..", "a.b", &"x".repeat(65)] {
            assert!(Namespace::named(bad).is_err(), "{bad:?}");
        }
        assert_ne!(PodId::new(), PodId::new());
    }
}
