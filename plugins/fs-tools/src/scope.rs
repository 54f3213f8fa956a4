//! Turns a path from the model into a canonical path this pod may use, or a
//! clear refusal.
//!
//! The preopens already confine every file operation to the allowed trees;
//! this layer adds the rules preopens cannot express (deny rules inside an
//! allowed tree, non-recursive rules) by judging the *canonical* path with
//! the same rule code the host uses. Canonicalization happens here, inside
//! the sandbox: each component is looked at through its preopen (`stat-at`
//! without following a final link), links are followed by hand (at most
//! 40), and `..` is applied to the real directory reached so far, so no
//! spelling of a path lands anywhere but where the filesystem says it does.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use yoi_plugin_sdk::{ToolError, context};
use yoi_scope_rules::{Access, Permission, Rule, Rules, is_within};

use crate::wasi_fs;

/// Longest path accepted from the model, in bytes (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;
/// Symlinks followed while resolving one path.
const MAX_LINKS: usize = 40;

/// The calling pod's scope and working directory.
pub struct Context {
    /// The pod's rules, with canonical targets.
    pub rules: Rules,
    /// The pod's working directory.
    pub working_dir: PathBuf,
}

impl Context {
    /// Asks the host about the calling pod.
    pub fn current() -> Context {
        let pod = context::pod();
        let rule = |r: context::ScopeRule| Rule {
            target: PathBuf::from(r.target),
            permission: match r.permission {
                context::Permission::Read => Permission::Read,
                context::Permission::Write => Permission::Write,
            },
            recursive: r.recursive,
        };
        Context {
            rules: Rules {
                allow: pod.allow.into_iter().map(rule).collect(),
                deny: pod.deny.into_iter().map(rule).collect(),
            },
            working_dir: PathBuf::from(pod.working_dir),
        }
    }

    /// The canonical form of the model's `path`, if the pod has at least
    /// `need` access to it. `what` names the argument in errors.
    pub fn resolve(&self, what: &str, path: &str, need: Access) -> Result<PathBuf, ToolError> {
        let canonical = self.canonicalize(what, path)?;
        let access = self.rules.access(&canonical);
        if access >= need {
            return Ok(canonical);
        }
        let verb = if need == Access::Write { "write" } else { "read" };
        let shown = if canonical.as_os_str() == path {
            path.to_string()
        } else {
            format!("{path} (= {})", canonical.display())
        };
        let why = if self.rules.allow.iter().any(|r| r.covers(&canonical)) {
            match access {
                Access::Read => "the pod's scope allows only reading it",
                _ => "the pod's scope denies access to it",
            }
        } else {
            "it is outside the pod's scope"
        };
        Err(ToolError::PermissionDenied(format!("cannot {verb} {shown}: {why}. The pod may {}", self.scope_summary())))
    }

    /// Like [`Context::resolve`] for a path that must name a file: a
    /// trailing slash is refused rather than silently dropped.
    pub fn resolve_file(&self, path: &str, need: Access) -> Result<PathBuf, ToolError> {
        if path.ends_with('/') {
            return Err(ToolError::InvalidInput(format!("file_path {path:?} ends with a slash; name a file")));
        }
        self.resolve("file_path", path, need)
    }

    /// The optional directory argument of Glob and Grep, defaulting to the
    /// working directory.
    pub fn resolve_dir_or_cwd(&self, path: Option<&str>) -> Result<PathBuf, ToolError> {
        match path {
            Some(p) => self.resolve("path", p, Access::Read),
            None => Ok(self.working_dir.clone()),
        }
    }

    /// One line naming what the pod may reach.
    pub fn scope_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .rules
            .allow
            .iter()
            .map(|r| {
                let verb = if r.permission == Permission::Write { "write" } else { "read" };
                let depth = if r.recursive { "" } else { " (not subdirectories)" };
                format!("{verb} {}{depth}", r.target.display())
            })
            .collect();
        parts.extend(self.rules.deny.iter().map(|r| {
            let verb = if r.permission == Permission::Write { "not write" } else { "not read" };
            let depth = if r.recursive { "" } else { " (itself and its direct entries)" };
            format!("{verb} {}{depth}", r.target.display())
        }));
        if parts.is_empty() { "reach no files".to_string() } else { parts.join(", ") }
    }

    /// Whether `dir` lies strictly above some allowed tree: such directories
    /// are outside every preopen, so the sandbox cannot look at them, and
    /// their real form is known from the canonical rule targets.
    fn above_a_root(&self, dir: &Path) -> bool {
        self.rules.allow.iter().any(|r| r.target != dir && is_within(&r.target, dir))
    }

    fn canonicalize(&self, what: &str, path: &str) -> Result<PathBuf, ToolError> {
        if path.is_empty() {
            return Err(ToolError::InvalidInput(format!("{what} is empty")));
        }
        if path.contains('\0') {
            return Err(ToolError::InvalidInput(format!("{what} contains a NUL byte")));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(ToolError::InvalidInput(format!("{what} is longer than {MAX_PATH_BYTES} bytes")));
        }
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(ToolError::InvalidInput(format!(
                "{what} must be an absolute path, not {path:?} (the working directory is {})",
                self.working_dir.display()
            )));
        }
        let mut pending: VecDeque<OsString> = parts(given);
        let mut out = PathBuf::from("/");
        let mut links = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                out.pop();
                continue;
            }
            let candidate = out.join(&part);
            if self.above_a_root(&candidate) {
                out = candidate;
                continue;
            }
            match wasi_fs::is_symlink(&candidate) {
                Ok(true) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(ToolError::Failed(format!("{path}: too many levels of symbolic links")));
                    }
                    let target = wasi_fs::read_link(&candidate).map_err(|e| io_error(path, e))?;
                    if target.is_absolute() {
                        out = PathBuf::from("/");
                    }
                    for p in parts(&target).into_iter().rev() {
                        pending.push_front(p);
                    }
                }
                Ok(false) => out = candidate,
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::PermissionDenied => {
                    // Nothing there (or nothing this sandbox can see): the
                    // rest names what would be created.
                    out = candidate;
                    for rest in pending.drain(..) {
                        if rest == ".." {
                            return Err(ToolError::InvalidInput(format!(
                                "{path}: `..` after a directory that does not exist"
                            )));
                        }
                        out.push(rest);
                    }
                }
                Err(e) => return Err(io_error(path, e)),
            }
        }
        Ok(out)
    }
}

/// The normal and `..` components of `path`, without `.` and the root.
fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// An I/O error on `path` as a tool error the model can act on.
pub fn io_error(path: impl std::fmt::Display, e: io::Error) -> ToolError {
    match e.kind() {
        io::ErrorKind::NotFound => ToolError::NotFound(format!("{path} does not exist")),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ToolError::PermissionDenied(format!("{path}: permission denied ({e})"))
        }
        io::ErrorKind::IsADirectory => ToolError::InvalidInput(format!("{path} is a directory")),
        io::ErrorKind::NotADirectory => ToolError::InvalidInput(format!("{path}: a component is not a directory")),
        _ => ToolError::Failed(format!("{path}: {e}")),
    }
}
