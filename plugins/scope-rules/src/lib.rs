//! How scope rules judge a path, in one place for both sides of the wasm
//! boundary: the host builds preopens and checks paths with it, and the
//! builtin tools enforce what preopens cannot express (deny rules inside an
//! allowed tree, non-recursive rules) with the very same code.
//!
//! Semantics: write implies read. A recursive rule covers its target and
//! everything below it; a non-recursive rule covers the target directory and
//! its direct children. The access to a path is the strongest allow rule
//! covering it, capped by every deny rule covering it (`deny read` removes
//! access, `deny write` caps it at read). Paths must be canonical (absolute,
//! symlinks resolved, no `.` or `..`); resolving them is the caller's job.

use std::path::{Path, PathBuf};

/// What a rule grants (allow) or takes away (deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum Permission {
    /// allow: read only; deny: no access at all.
    Read,
    /// allow: read and write; deny: at most read.
    Write,
}

/// A rule whose target is a canonical absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Rule {
    /// Canonical absolute target.
    pub target: PathBuf,
    /// What the rule grants or takes away.
    pub permission: Permission,
    /// Whether the rule covers the whole tree below the target.
    pub recursive: bool,
}

impl Rule {
    /// Whether this rule is about `path`.
    pub fn covers(&self, path: &Path) -> bool {
        if self.recursive {
            path.starts_with(&self.target)
        } else {
            path == self.target || path.parent() == Some(self.target.as_path())
        }
    }

    /// Whether this rule covers `dir` and everything below it.
    pub fn covers_tree(&self, dir: &Path) -> bool {
        self.recursive && dir.starts_with(&self.target)
    }
}

/// The access a set of rules gives to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Neither read nor write.
    None,
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

/// Allow rules and the deny rules that cut into them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Rules {
    /// Rules that grant access.
    pub allow: Vec<Rule>,
    /// Rules that take access away.
    pub deny: Vec<Rule>,
}

impl Rules {
    /// The access to `path` (canonical).
    pub fn access(&self, path: &Path) -> Access {
        let granted = self
            .allow
            .iter()
            .filter(|r| r.covers(path))
            .map(|r| match r.permission {
                Permission::Read => Access::Read,
                Permission::Write => Access::Write,
            })
            .max()
            .unwrap_or(Access::None);
        self.deny.iter().filter(|r| r.covers(path)).fold(granted, |access, r| match r.permission {
            Permission::Read => Access::None,
            Permission::Write => access.min(Access::Read),
        })
    }

    /// Whether a walk through `dir` could still find something readable:
    /// `dir` itself is readable, or an allow rule starts below it.
    pub fn worth_entering(&self, dir: &Path) -> bool {
        self.access(dir) > Access::None
            || self.allow.iter().any(|r| r.target.starts_with(dir) && self.access(&r.target) > Access::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: &str, permission: Permission, recursive: bool) -> Rule {
        Rule { target: target.into(), permission, recursive }
    }

    #[test]
    fn access_is_the_strongest_allow_capped_by_deny() {
        let rules = Rules {
            allow: vec![rule("/p", Permission::Read, true), rule("/p/src", Permission::Write, true)],
            deny: vec![rule("/p/src/gen", Permission::Write, true), rule("/p/src/secret", Permission::Read, true)],
        };
        assert_eq!(rules.access(Path::new("/p/readme")), Access::Read);
        assert_eq!(rules.access(Path::new("/p/src/a/b.rs")), Access::Write);
        assert_eq!(rules.access(Path::new("/p/src/gen/x.rs")), Access::Read);
        assert_eq!(rules.access(Path::new("/p/src/secret/key")), Access::None);
        assert_eq!(rules.access(Path::new("/elsewhere")), Access::None);
        // A sibling whose name merely starts with the target is not covered.
        assert_eq!(rules.access(Path::new("/p/src2/x")), Access::Read);
        assert_eq!(rules.access(Path::new("/pp")), Access::None);
    }

    #[test]
    fn non_recursive_rule_covers_only_direct_children() {
        let rules = Rules { allow: vec![rule("/p", Permission::Write, false)], deny: vec![] };
        assert_eq!(rules.access(Path::new("/p")), Access::Write);
        assert_eq!(rules.access(Path::new("/p/file")), Access::Write);
        assert_eq!(rules.access(Path::new("/p/dir/file")), Access::None);
    }

    #[test]
    fn walks_enter_directories_that_lead_to_allowed_trees() {
        let rules = Rules {
            allow: vec![rule("/p", Permission::Read, false), rule("/p/a/b/c", Permission::Read, true)],
            deny: vec![rule("/p/secret", Permission::Read, true)],
        };
        assert!(rules.worth_entering(Path::new("/p/a")));
        assert!(rules.worth_entering(Path::new("/p/a/b")));
        assert!(!rules.worth_entering(Path::new("/p/x/y")));
        assert!(!rules.worth_entering(Path::new("/p/secret")));
    }
}
