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
        match depth_below(path, &self.target) {
            Some(depth) => self.recursive || depth <= 1,
            None => false,
        }
    }

    /// Whether this rule covers `dir` and everything below it.
    pub fn covers_tree(&self, dir: &Path) -> bool {
        self.recursive && is_within(dir, &self.target)
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
            || self.allow.iter().any(|r| is_within(&r.target, dir) && self.access(&r.target) > Access::None)
    }
}

/// Whether `path` is `dir` or lies below it, component by component, as
/// [`Path::starts_with`] says.
pub fn is_within(path: &Path, dir: &Path) -> bool {
    depth_below(path, dir).is_some()
}

/// `path` relative to `dir` as text (`""` for `dir` itself), when `path` is
/// `dir` or lies below it and the rest is UTF-8.
pub fn relative<'a>(path: &'a Path, dir: &Path) -> Option<&'a str> {
    match rest_below(path, dir)? {
        Rest::Bytes(rest) => std::str::from_utf8(rest).ok(),
        Rest::Parsed(rest) => rest.to_str(),
    }
}

/// How far below `dir` the path lies: 0 for `dir` itself, 1 for a direct
/// child, 2 for anything deeper; `None` when it is not below.
fn depth_below(path: &Path, dir: &Path) -> Option<usize> {
    Some(match rest_below(path, dir)? {
        Rest::Bytes([]) => 0,
        Rest::Bytes(rest) => 1 + usize::from(rest.contains(&b'/')),
        Rest::Parsed(rest) => rest.components().take(2).count(),
    })
}

/// What lies below a directory, found one way or the other.
enum Rest<'a> {
    /// Found as bytes: normal form, no leading separator.
    Bytes(&'a [u8]),
    /// Found by parsing components.
    Parsed(&'a Path),
}

/// `path` below `dir`, if it is `dir` or lies below it.
///
/// Walks ask this of every entry and every rule, so paths in normal form
/// (absolute, no empty or `.` components, no trailing slash: what canonical
/// paths and paths joined from them look like) are compared as bytes. Any
/// other spelling goes through [`Path::strip_prefix`], which parses
/// components; both give the same answer for every spelling.
fn rest_below<'a>(path: &'a Path, dir: &Path) -> Option<Rest<'a>> {
    match (normal_form(path), normal_form(dir)) {
        (Some(path), Some(dir)) => {
            let rest = path.strip_prefix(dir)?;
            let rest = if dir == b"/" || rest.is_empty() { rest } else { rest.strip_prefix(b"/")? };
            Some(Rest::Bytes(rest))
        }
        _ => path.strip_prefix(dir).ok().map(Rest::Parsed),
    }
}

/// The bytes of `path`, if it is absolute and spelled in normal form.
fn normal_form(path: &Path) -> Option<&[u8]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let rest = bytes.strip_prefix(b"/")?;
    let normal = rest.is_empty() || rest.split(|&b| b == b'/').all(|part| !part.is_empty() && part != b".");
    normal.then_some(bytes)
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

    #[test]
    fn relative_agrees_with_component_comparison_for_every_spelling() {
        let spellings = [
            "/",
            "/p",
            "/p/",
            "/p//",
            "/pp",
            "/p/a",
            "/p//a",
            "/p/./a",
            "/p/a/",
            "/p/a/.",
            "/p/a/b",
            "/p/ab",
            "/p/a/b/c",
            "/p/../p/a",
            "/p/..",
            "/./p",
            "//p/a",
            "p",
            "p/a",
            "",
            "/é/ü",
            "/é/üx",
        ];
        for path in spellings {
            for dir in spellings {
                let (path, dir) = (Path::new(path), Path::new(dir));
                let expected = path.strip_prefix(dir).ok().and_then(|rest| rest.to_str());
                assert_eq!(relative(path, dir), expected, "{path:?} relative to {dir:?}");
                assert_eq!(is_within(path, dir), path.starts_with(dir), "{path:?} within {dir:?}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_judged_like_any_other() {
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/p/secret/\xff"));
        let rules = Rules {
            allow: vec![rule("/p", Permission::Write, true)],
            deny: vec![rule("/p/secret", Permission::Read, true)],
        };
        assert!(is_within(odd, Path::new("/p/secret")));
        assert_eq!(rules.access(odd), Access::None);
        assert_eq!(rules.access(odd.parent().unwrap()), Access::None);
        assert_eq!(relative(odd, Path::new("/p")), None);
    }

    #[test]
    fn covers_agrees_with_component_comparison_for_every_spelling() {
        for target in ["/", "/p", "/p/a"] {
            for recursive in [true, false] {
                let rule = rule(target, Permission::Read, recursive);
                for path in ["/", "/p", "/p/", "/p//a", "/p/./a", "/p/a/", "/p/a/b", "/p/a/b/", "/pa", "/q"] {
                    let path = Path::new(path);
                    let expected = if recursive {
                        path.starts_with(target)
                    } else {
                        path == Path::new(target) || path.parent() == Some(Path::new(target))
                    };
                    assert_eq!(rule.covers(path), expected, "{rule:?} covers {path:?}");
                }
            }
        }
    }
}
