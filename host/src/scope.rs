//! A pod's filesystem scope: the allow and deny rules of its manifest,
//! resolved to canonical paths, the access they give to any path, and the
//! preopened directories they become for a plugin call.
//!
//! This module judges paths and knows nothing of wasmtime; `plugin` turns
//! [`Scope::preopens`] into WASI preopens and never re-judges a path.
//!
//! Delegation: while a child pod holds part of a pod's write scope, the pod's
//! effective scope is [`Scope::lending`] that part. The lent tree, and the
//! directories on the way down to it, become read-only both in the rules the
//! tools check and in the preopens themselves (DESIGN §5).
//!
//! How rules judge a canonical path lives in the `yoi-scope-rules` crate,
//! which the builtin tools share, so both sides of the wasm boundary apply the
//! very same semantics (DESIGN §5).

use std::ops::Deref;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use yoi_scope_rules::{Access, Permission, Rule, Rules};

/// A rule as written in a manifest: the target may be relative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The directory (or, for deny rules, file) the rule is about.
    pub target: PathBuf,
    /// What the rule grants or takes away.
    pub permission: Permission,
    /// Whether the rule covers the whole tree below the target.
    #[serde(default = "default_recursive")]
    pub recursive: bool,
}

fn default_recursive() -> bool {
    true
}

/// One rule in words: `write /p/src` or `read /p (non-recursive)`.
pub fn describe_rule(rule: &Rule) -> String {
    let perm = match rule.permission {
        Permission::Read => "read",
        Permission::Write => "write",
    };
    let depth = if rule.recursive { "" } else { " (non-recursive)" };
    format!("{perm} {}{depth}", rule.target.display())
}

/// One directory a plugin call gets as a WASI preopen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    /// Canonical absolute directory; also the path the guest sees.
    pub dir: PathBuf,
    /// Read-write when true, read-only otherwise.
    pub writable: bool,
}

/// Why a scope could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// An allow rule's target is missing or not a directory.
    #[error("scope.allow[{index}]: target {target}: {reason}")]
    BadAllowTarget {
        /// Position in the allow list.
        index: usize,
        /// The target as resolved.
        target: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A deny rule's target could not be resolved.
    #[error("scope.deny[{index}]: target {target}: {reason}")]
    BadDenyTarget {
        /// Position in the deny list.
        index: usize,
        /// The target as written.
        target: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A resolved scope: canonical allow and deny rules (see [`Rules`] for how
/// they judge a path), plus what the host derives from them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    rules: Rules,
    /// Trees lent to child pods (see [`Scope::lending`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lent: Vec<PathBuf>,
}

impl Deref for Scope {
    type Target = Rules;

    fn deref(&self) -> &Rules {
        &self.rules
    }
}

impl Scope {
    /// Resolves manifest rules: relative targets against `base`, then to
    /// canonical form. Allow targets must be existing directories; deny
    /// targets may be files or not exist yet.
    pub fn resolve(allow: &[RuleSpec], deny: &[RuleSpec], base: &Path) -> Result<Scope, ScopeError> {
        let mut scope = Rules::default();
        for (index, spec) in allow.iter().enumerate() {
            let joined = base.join(&spec.target);
            let target = std::fs::canonicalize(&joined).map_err(|e| ScopeError::BadAllowTarget {
                index,
                target: joined.clone(),
                reason: e.to_string(),
            })?;
            if !target.is_dir() {
                return Err(ScopeError::BadAllowTarget {
                    index,
                    target,
                    reason: "not a directory (allow rules grant directories)".into(),
                });
            }
            scope.allow.push(Rule { target, permission: spec.permission, recursive: spec.recursive });
        }
        for (index, spec) in deny.iter().enumerate() {
            let target = canonicalize(&base.join(&spec.target)).map_err(|reason| ScopeError::BadDenyTarget {
                index,
                target: spec.target.clone(),
                reason,
            })?;
            scope.deny.push(Rule { target, permission: spec.permission, recursive: spec.recursive });
        }
        Ok(Scope { rules: scope, lent: Vec::new() })
    }

    /// A scope of already canonical rules.
    pub fn from_rules(rules: Rules) -> Scope {
        Scope { rules, lent: Vec::new() }
    }

    /// This scope while the trees in `lent` (canonical, each inside a write
    /// rule) belong to child pods. Each lent tree is capped at read. So is
    /// every directory from the write rule's target down to the lent tree
    /// (those directories and their direct entries): renaming or removing
    /// one of them would move the child's tree. Everything else keeps its
    /// access; [`Scope::preopens`] gives those parts writable preopens of
    /// their own.
    pub fn lending(&self, lent: &[PathBuf]) -> Scope {
        let mut rules = self.rules.clone();
        let cap = |rules: &mut Rules, target: &Path, recursive: bool| {
            let rule = Rule { target: target.to_path_buf(), permission: Permission::Write, recursive };
            if !rules.deny.contains(&rule) {
                rules.deny.push(rule);
            }
        };
        for tree in lent {
            cap(&mut rules, tree, true);
            for rule in self.allow.iter().filter(|r| r.permission == Permission::Write) {
                if tree == &rule.target || !tree.starts_with(&rule.target) {
                    continue;
                }
                for dir in tree.ancestors().skip(1).take_while(|d| d.starts_with(&rule.target)) {
                    cap(&mut rules, dir, false);
                }
            }
        }
        Scope { rules, lent: lent.to_vec() }
    }

    /// The trees lent to child pods.
    pub fn lent(&self) -> &[PathBuf] {
        &self.lent
    }

    /// The directories a plugin call gets: one per allow rule, read-write for
    /// write rules, read-only when a deny rule caps the whole tree at read,
    /// left out when a deny rule removes the whole tree. A preopen inside
    /// another one with at least its permission adds nothing and is dropped.
    ///
    /// Deny rules on part of a tree and non-recursive rules cannot be
    /// expressed as preopens; tools that take paths from the model enforce
    /// them with [`Scope::access`] (see `docs/security.md`).
    pub fn preopens(&self) -> Vec<Preopen> {
        let mut candidates: Vec<Preopen> = Vec::new();
        for rule in &self.allow {
            let denied = self.deny.iter().filter(|d| d.covers_tree(&rule.target));
            let mut writable = rule.permission == Permission::Write;
            let mut removed = false;
            for d in denied {
                match d.permission {
                    Permission::Read => removed = true,
                    Permission::Write => writable = false,
                }
            }
            if removed {
                continue;
            }
            match candidates.iter_mut().find(|p| p.dir == rule.target) {
                Some(p) => p.writable |= writable,
                None => candidates.push(Preopen { dir: rule.target.clone(), writable }),
            }
        }
        let recursive_dirs: Vec<&Path> =
            self.allow.iter().filter(|r| r.recursive).map(|r| r.target.as_path()).collect();
        let kept: Vec<Preopen> = candidates
            .iter()
            .filter(|p| {
                !candidates.iter().any(|outer| {
                    outer.dir != p.dir
                        && p.dir.starts_with(&outer.dir)
                        && recursive_dirs.contains(&outer.dir.as_path())
                        && outer.writable >= p.writable
                })
            })
            .cloned()
            .collect();
        if self.lent.is_empty() {
            return kept;
        }
        let mut split = Vec::new();
        for preopen in kept {
            if preopen.writable && self.lent.iter().any(|t| t != &preopen.dir && t.starts_with(&preopen.dir)) {
                split.push(Preopen { dir: preopen.dir.clone(), writable: false });
                self.writable_around_lent(&preopen.dir, &mut split);
            } else {
                split.push(preopen);
            }
        }
        split
    }

    /// Writable preopens for the subdirectories of `dir` that hold no lent
    /// tree, descending into those on the way to one. Files directly in
    /// `dir` stay read-only (the caller preopened `dir` read-only). Symlinks
    /// are not followed: a link's target is judged where it lies.
    fn writable_around_lent(&self, dir: &Path, out: &mut Vec<Preopen>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot list a directory around a lent tree: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if self.lent.iter().any(|t| t == &path) {
                continue;
            }
            if self.lent.iter().any(|t| t.starts_with(&path)) {
                self.writable_around_lent(&path, out);
            } else if !self.deny.iter().any(|d| d.covers_tree(&path)) {
                // A non-recursive cap on `dir` covers `path` itself (it may
                // not be renamed) but not what lies inside it.
                out.push(Preopen { dir: path, writable: true });
            }
        }
    }

    /// One line per rule, for greetings and error messages.
    pub fn summary(&self) -> String {
        let allow = self.allow.iter().map(|r| format!("allow {}", describe_rule(r)));
        let deny = self.deny.iter().map(|r| format!("deny {}", describe_rule(r)));
        allow.chain(deny).collect::<Vec<_>>().join("\n")
    }
}

/// The canonical form of `path`, which need not exist: its nearest existing
/// ancestor canonicalized (symlinks resolved), then the remaining components.
/// A `..` in the remaining part is rejected, since its meaning would depend on
/// what is created later. `path` must be absolute.
pub fn canonicalize(path: &Path) -> Result<PathBuf, String> {
    canonicalize_within(path, 0)
}

/// How many dangling symlinks [`canonicalize`] follows before giving up,
/// like the kernel's own limit on symlink chains.
const MAX_LINK_DEPTH: usize = 40;

fn canonicalize_within(path: &Path, depth: usize) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if depth > MAX_LINK_DEPTH {
        return Err(format!("{}: too many levels of symbolic links", path.display()));
    }
    let mut existing = path;
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        let found = match std::fs::canonicalize(existing) {
            Ok(canonical) => Some(canonical),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symlink names where a new file would really go.
                match std::fs::read_link(existing) {
                    Ok(text) => {
                        let parent = existing.parent().unwrap_or(Path::new("/"));
                        Some(canonicalize_within(&parent.join(text), depth + 1)?)
                    }
                    Err(_) => None,
                }
            }
            Err(e) => return Err(format!("{}: {e}", existing.display())),
        };
        if let Some(mut canonical) = found {
            for part in rest.iter().rev() {
                canonical.push(part);
            }
            return Ok(canonical);
        }
        let Some(parent) = existing.parent() else {
            return Err(format!("{}: no existing ancestor", path.display()));
        };
        match existing.components().next_back() {
            Some(Component::Normal(name)) => rest.push(name),
            Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                return Err(format!("{}: `..` after a path that does not exist", path.display()));
            }
            _ => return Err(format!("{}: no existing ancestor", path.display())),
        }
        existing = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: &Path, permission: Permission, recursive: bool) -> Rule {
        Rule { target: target.to_path_buf(), permission, recursive }
    }

    fn scope(rules: Rules) -> Scope {
        Scope::from_rules(rules)
    }

    fn spec(target: &str, permission: Permission) -> RuleSpec {
        RuleSpec { target: target.into(), permission, recursive: true }
    }

    #[test]
    fn preopens_follow_rules_and_whole_tree_denies() {
        let scope = scope(Rules {
            allow: vec![
                rule(Path::new("/a"), Permission::Write, true),
                rule(Path::new("/a/inner"), Permission::Read, true),
                rule(Path::new("/b"), Permission::Write, true),
                rule(Path::new("/c"), Permission::Read, true),
                rule(Path::new("/c/w"), Permission::Write, true),
            ],
            deny: vec![rule(Path::new("/b"), Permission::Write, true), rule(Path::new("/c/w"), Permission::Read, true)],
        });
        assert_eq!(
            scope.preopens(),
            vec![
                Preopen { dir: "/a".into(), writable: true },
                Preopen { dir: "/b".into(), writable: false },
                Preopen { dir: "/c".into(), writable: false },
            ]
        );
    }

    #[test]
    fn writable_preopen_inside_read_only_one_is_kept() {
        let scope = scope(Rules {
            allow: vec![
                rule(Path::new("/c"), Permission::Read, true),
                rule(Path::new("/c/w"), Permission::Write, true),
            ],
            deny: vec![],
        });
        assert_eq!(scope.preopens().len(), 2);
    }

    #[test]
    fn lent_tree_and_the_way_down_to_it_become_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().canonicalize().unwrap();
        for dir in ["src/lent/deep", "src/other", "docs", "notes"] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        std::fs::write(p.join("README"), "x").unwrap();
        std::os::unix::fs::symlink(p.join("src/lent"), p.join("alias")).unwrap();
        let own = scope(Rules {
            allow: vec![rule(&p, Permission::Write, true)],
            deny: vec![rule(&p.join("notes"), Permission::Write, true)],
        });
        let lending = own.lending(&[p.join("src/lent")]);

        // The rules the tools check.
        assert_eq!(lending.access(&p.join("src/lent/deep/f.rs")), Access::Read);
        assert_eq!(lending.access(&p.join("src/lent")), Access::Read);
        assert_eq!(lending.access(&p.join("README")), Access::Read);
        assert_eq!(lending.access(&p.join("src/main.rs")), Access::Read);
        assert_eq!(lending.access(&p.join("src/other/f.rs")), Access::Write);
        assert_eq!(lending.access(&p.join("docs/f.md")), Access::Write);

        // The capability: no writable preopen reaches the lent tree, by any path.
        let mut preopens = lending.preopens();
        preopens.sort_by(|a, b| a.dir.cmp(&b.dir));
        let expect = |dir: &str, writable: bool| Preopen { dir: p.join(dir), writable };
        assert_eq!(preopens, vec![expect("", false), expect("docs", true), expect("src/other", true)]);
        for preopen in preopens.iter().filter(|p| p.writable) {
            assert!(!p.join("src/lent").starts_with(&preopen.dir));
        }

        // Given back, the whole tree is writable again.
        assert_eq!(own.lending(&[]).preopens(), own.preopens());
        assert_eq!(own.preopens(), vec![expect("", true)]);
    }

    #[test]
    fn resolve_makes_targets_canonical_and_checks_allow_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("proj")).unwrap();
        std::fs::write(real.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(real.join("proj"), real.join("link")).unwrap();

        let scope =
            Scope::resolve(&[spec("link", Permission::Write)], &[spec("proj/not-yet/deeper", Permission::Read)], &real)
                .unwrap();
        assert_eq!(scope.allow[0].target, real.join("proj"));
        assert_eq!(scope.deny[0].target, real.join("proj/not-yet/deeper"));

        let err = Scope::resolve(&[spec("file", Permission::Read)], &[], &real).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = Scope::resolve(&[spec("missing", Permission::Read)], &[], &real).unwrap_err();
        assert!(err.to_string().starts_with("scope.allow[0]"), "{err}");
    }

    #[test]
    fn canonicalize_resolves_symlinks_and_rejects_dotdot_in_missing_part() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("in")).unwrap();
        std::os::unix::fs::symlink("/", real.join("in/root")).unwrap();
        assert_eq!(canonicalize(&real.join("in/root/etc")).unwrap(), Path::new("/etc"));
        assert_eq!(canonicalize(&real.join("in/new/file")).unwrap(), real.join("in/new/file"));
        assert!(canonicalize(&real.join("in/new/../../x")).is_err());
        assert!(canonicalize(Path::new("relative")).is_err());
        // An existing path with `..` is resolved by the OS.
        assert_eq!(canonicalize(&real.join("in/../in")).unwrap(), real.join("in"));
        // A dangling symlink is judged by where it points.
        std::os::unix::fs::symlink(real.join("elsewhere/new"), real.join("in/dangling")).unwrap();
        assert_eq!(canonicalize(&real.join("in/dangling")).unwrap(), real.join("elsewhere/new"));
        std::os::unix::fs::symlink("loop", real.join("in/loop")).unwrap();
        assert!(canonicalize(&real.join("in/loop/x")).is_err());
    }
}
