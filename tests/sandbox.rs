//! A hostile plugin against the preopens: every attack goes through raw
//! `wasi:filesystem` calls of the probe plugin, and every attack must leave
//! the files outside the scope (and inside read-only rules) untouched.
//!
//! Includes reproductions of the 2026 WASI filesystem advisories:
//! GHSA-vqjp-4c8c-hfgg (trailing slash / symlink escape),
//! GHSA-4ch3-9j33-3pmj (link/rename destination permissions),
//! GHSA-2r75-cxrj-cmph (truncate through a read-only open).

mod common;

use std::os::unix::fs::symlink;
use std::sync::Arc;

use common::{Sandbox, host_with, pod, rule};
use serde_json::json;
use yoi_host::plugin::{CallLimits, PluginSet, PodContext, ToolError, ToolOutput};
use yoi_host::scope::Permission::{Read, Write};

/// The layout every test starts from: `ro/` granted read, `rw/` granted
/// write, `outside/` not granted; a secret in each of `ro/` and `outside/`.
struct Arena {
    sb: Sandbox,
    host: PluginSet,
    pod: Arc<PodContext>,
}

impl Arena {
    async fn new() -> Arena {
        let sb = Sandbox::new();
        sb.file("ro/keep.txt", "read-only data");
        sb.file("outside/secret.txt", "outside data");
        sb.dir("rw");
        let pod = pod(&[rule(&sb.root.join("ro"), Read), rule(&sb.root.join("rw"), Write)], &[], CallLimits::default());
        Arena { host: host_with(&["probe"]).await, sb, pod }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.sb.root.display())
    }

    async fn fs(&self, op: &str, path: &str, extra: serde_json::Value) -> Result<ToolOutput, ToolError> {
        let mut input = json!({"op": op, "path": path});
        input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.host.call(&self.pod, "Fs", &input.to_string()).await
    }

    /// Runs an operation that must fail, and says what the plugin got.
    async fn denied(&self, op: &str, path: &str, extra: serde_json::Value) -> ToolError {
        match self.fs(op, path, extra.clone()).await {
            Ok(out) => panic!("{op} {path} {extra} succeeded: {out:?}"),
            Err(e) => e,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(self.sb.read("ro/keep.txt").as_deref(), Some("read-only data"));
        assert_eq!(self.sb.read("outside/secret.txt").as_deref(), Some("outside data"));
        let outside: Vec<_> = std::fs::read_dir(self.sb.root.join("outside")).unwrap().collect();
        assert_eq!(outside.len(), 1, "something was created outside the scope");
    }
}

/// Reading and writing inside the rules works as granted.
#[tokio::test]
async fn granted_access_works() {
    let a = Arena::new().await;
    let read = a.fs("read", &a.path("ro/keep.txt"), json!({})).await.unwrap();
    assert_eq!(read.content.as_deref(), Some("read-only data"));
    a.fs("write", &a.path("rw/new.txt"), json!({"content": "fresh"})).await.unwrap();
    assert_eq!(a.sb.read("rw/new.txt").as_deref(), Some("fresh"));
}

/// A read rule is read-only at the capability level: no write, create,
/// delete, mkdir or truncate inside it.
#[tokio::test]
async fn read_rule_is_read_only() {
    let a = Arena::new().await;
    a.denied("write", &a.path("ro/keep.txt"), json!({"content": "pwned"})).await;
    a.denied("write", &a.path("ro/new.txt"), json!({"content": "pwned"})).await;
    a.denied("remove", &a.path("ro/keep.txt"), json!({})).await;
    a.denied("mkdir", &a.path("ro/sub"), json!({})).await;
    a.denied("symlink", &a.path("ro/link"), json!({"content": "keep.txt"})).await;
    assert!(a.sb.read("ro/new.txt").is_none());
    assert!(!a.sb.root.join("ro/sub").exists() && !a.sb.root.join("ro/link").exists());
    a.assert_untouched();
}

/// `..`, absolute paths and paths outside every preopen reach nothing.
#[tokio::test]
async fn dotdot_and_absolute_paths_do_not_escape() {
    let a = Arena::new().await;
    for path in [
        a.path("ro/../outside/secret.txt"),
        a.path("rw/../outside/secret.txt"),
        a.path("rw/x/../../outside/secret.txt"),
        a.path("ro/../../../../../../etc/passwd"),
        a.path("rw//etc/passwd"),
        a.path("outside/secret.txt"),
        "/etc/passwd".to_string(),
    ] {
        let err = a.denied("read", &path, json!({})).await;
        assert!(!err.message.contains("outside data"), "{err}");
    }
    a.denied("write", &a.path("rw/../outside/secret.txt"), json!({"content": "pwned"})).await;
    a.denied("write", &a.path("rw/../outside/new.txt"), json!({"content": "pwned"})).await;
    a.denied("list", &a.path("rw/.."), json!({})).await;
    a.assert_untouched();
}

/// Symlinks planted in the scope that point out of it (absolute, relative,
/// chained, to files and to directories) cannot be followed.
#[tokio::test]
async fn planted_symlinks_do_not_escape() {
    let a = Arena::new().await;
    let outside = a.sb.root.join("outside");
    symlink(outside.join("secret.txt"), a.sb.root.join("ro/abs-file")).unwrap();
    symlink(&outside, a.sb.root.join("rw/abs-dir")).unwrap();
    symlink("../outside/secret.txt", a.sb.root.join("ro/rel-file")).unwrap();
    symlink("../outside", a.sb.root.join("rw/rel-dir")).unwrap();
    symlink("rel-dir", a.sb.root.join("rw/chain")).unwrap();
    for path in ["ro/abs-file", "ro/rel-file", "rw/abs-dir/secret.txt", "rw/rel-dir/secret.txt", "rw/chain/secret.txt"]
    {
        a.denied("read", &a.path(path), json!({})).await;
    }
    for path in ["rw/abs-dir/new.txt", "rw/rel-dir/new.txt", "rw/chain/new.txt", "rw/rel-dir/secret.txt"] {
        a.denied("write", &a.path(path), json!({"content": "pwned"})).await;
    }
    a.denied("list", &a.path("rw/abs-dir"), json!({})).await;
    a.assert_untouched();
}

/// GHSA-vqjp-4c8c-hfgg: trailing slashes on symlinks, planted by the host or
/// created by the guest in its writable directory, do not escape.
#[tokio::test]
async fn trailing_slash_symlink_escape_is_denied() {
    let a = Arena::new().await;
    symlink(a.sb.root.join("outside"), a.sb.root.join("rw/planted")).unwrap();
    // The guest plants its own escaping links; creating them may succeed,
    // following them must not.
    let _ = a.fs("symlink", &a.path("rw/made"), json!({"content": "../outside/"})).await;
    let _ = a.fs("symlink", &a.path("rw/made-file"), json!({"content": "../outside/secret.txt/"})).await;
    for link in ["rw/planted", "rw/made"] {
        for suffix in ["/", "//", "/.", "/secret.txt", "/secret.txt/"] {
            let path = a.path(&format!("{link}{suffix}"));
            a.denied("read", &path, json!({})).await;
            a.denied("list", &path, json!({})).await;
            a.denied("stat", &path, json!({})).await;
        }
        a.denied("write", &a.path(&format!("{link}/new.txt")), json!({"content": "pwned"})).await;
        a.denied("write", &a.path(&format!("{link}/secret.txt")), json!({"content": "pwned"})).await;
        a.denied("mkdir", &a.path(&format!("{link}/newdir/")), json!({})).await;
    }
    a.denied("read", &a.path("rw/made-file"), json!({})).await;
    a.denied("write", &a.path("rw/made-file"), json!({"content": "pwned"})).await;
    a.assert_untouched();
}

/// GHSA-4ch3-9j33-3pmj: hard links and renames whose destination is a
/// read-only directory, or whose source is, are refused.
#[tokio::test]
async fn link_and_rename_respect_destination_permissions() {
    let a = Arena::new().await;
    a.sb.file("rw/mine.txt", "mine");
    let ro_target = a.path("ro/planted.txt");
    a.denied("link", &a.path("rw/mine.txt"), json!({"to": ro_target})).await;
    a.denied("rename", &a.path("rw/mine.txt"), json!({"to": ro_target})).await;
    a.denied("rename", &a.path("rw/mine.txt"), json!({"to": a.path("ro/keep.txt")})).await;
    a.denied("rename", &a.path("ro/keep.txt"), json!({"to": a.path("rw/stolen.txt")})).await;
    a.denied("link", &a.path("ro/keep.txt"), json!({"to": a.path("rw/alias.txt")})).await;
    assert!(a.sb.read("ro/planted.txt").is_none());
    assert_eq!(a.sb.read("rw/mine.txt").as_deref(), Some("mine"));
    assert!(a.sb.read("rw/stolen.txt").is_none() && a.sb.read("rw/alias.txt").is_none());
    // A hard link to an outside file cannot be made from inside either.
    a.denied("link", &a.path("rw/../outside/secret.txt"), json!({"to": a.path("rw/alias.txt")})).await;
    a.assert_untouched();
}

/// GHSA-2r75-cxrj-cmph: opening a read-only file with the truncate flag, or
/// shrinking it through a read-only descriptor, is refused.
#[tokio::test]
async fn truncate_through_read_only_open_is_denied() {
    let a = Arena::new().await;
    a.denied("open_truncate_readonly", &a.path("ro/keep.txt"), json!({})).await;
    a.denied("set_size", &a.path("ro/keep.txt"), json!({})).await;
    a.assert_untouched();
}
