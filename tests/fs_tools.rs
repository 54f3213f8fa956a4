//! The builtin file tools (Read, Write, Edit, Glob, Grep) through the real
//! component: what a coding agent relies on, and what the model must never
//! reach.

mod common;

use std::os::unix::fs::symlink;
use std::sync::Arc;

use common::{Sandbox, host_with, pod, rule};
use serde_json::{Value, json};
use yoi_host::plugin::{CallLimits, PluginSet, PodContext, ToolError, ToolErrorKind, ToolOutput};
use yoi_host::scope::Permission::{Read, Write};
use yoi_host::scope::RuleSpec;

/// A pod over a sandbox: `proj/` writable, `ro/` read-only, `outside/` not
/// granted, plus whatever extra rules a test asks for.
struct Agent {
    sb: Sandbox,
    host: PluginSet,
    pod: Arc<PodContext>,
}

impl Agent {
    async fn new() -> Agent {
        Agent::with_rules(|_| (vec![], vec![])).await
    }

    async fn with_rules(extra: impl FnOnce(&Sandbox) -> (Vec<RuleSpec>, Vec<RuleSpec>)) -> Agent {
        let sb = Sandbox::new();
        sb.dir("proj");
        sb.file("ro/keep.txt", "read-only data\n");
        sb.file("outside/secret.txt", "outside data\n");
        let (mut allow, deny) = extra(&sb);
        allow.insert(0, rule(&sb.root.join("proj"), Write));
        allow.push(rule(&sb.root.join("ro"), Read));
        let pod = pod(&allow, &deny, CallLimits::default());
        Agent { host: host_with(&[]).await, sb, pod }
    }

    fn p(&self, rel: &str) -> String {
        format!("{}/{rel}", self.sb.root.display())
    }

    async fn call(&self, tool: &str, input: Value) -> Result<ToolOutput, ToolError> {
        self.host.call(&self.pod, tool, &input.to_string()).await
    }

    async fn ok(&self, tool: &str, input: Value) -> ToolOutput {
        self.call(tool, input.clone()).await.unwrap_or_else(|e| panic!("{tool} {input}: {e}"))
    }

    async fn err(&self, tool: &str, input: Value) -> ToolError {
        match self.call(tool, input.clone()).await {
            Ok(out) => panic!("{tool} {input} succeeded: {out:?}"),
            Err(e) => e,
        }
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(self.sb.read("outside/secret.txt").as_deref(), Some("outside data\n"));
        assert_eq!(self.sb.read("ro/keep.txt").as_deref(), Some("read-only data\n"));
        assert_eq!(std::fs::read_dir(self.sb.root.join("outside")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(self.sb.root.join("ro")).unwrap().count(), 1);
    }
}

/// Read's line code, compiled natively so that its unit tests run here
/// (building the whole plugin natively just for them would cost CI a minute).
#[path = "../plugins/fs-tools/src/lines.rs"]
mod lines;

fn ten_lines() -> String {
    (1..=10).map(|i| format!("line {i}\n")).collect()
}

// ---------------------------------------------------------------- Read

#[tokio::test]
async fn read_numbers_lines_and_pages() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/ten.txt", &ten_lines());
    let out = a.ok("Read", json!({"file_path": f, "offset": 1, "limit": 3})).await;
    assert_eq!(out.content.as_deref(), Some("     2\tline 2\n     3\tline 3\n     4\tline 4"));
    assert!(out.summary.starts_with(&format!("Read 3 lines [2..4] of 10 from {}", f.display())), "{}", out.summary);
    let all = a.ok("Read", json!({"file_path": f})).await;
    assert!(all.summary.starts_with("Read 10 lines [1..10] of 10"), "{}", all.summary);
    assert!(all.content.unwrap().ends_with("    10\tline 10"));
    let err = a.err("Read", json!({"file_path": f, "offset": 10})).await;
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
}

#[tokio::test]
async fn read_edge_cases_have_their_own_errors() {
    let a = Agent::new().await;
    let empty = a.sb.file("proj/empty.txt", "");
    let out = a.ok("Read", json!({"file_path": empty})).await;
    assert!(out.summary.starts_with("Read 0 lines of 0"), "{}", out.summary);

    let dir = a.err("Read", json!({"file_path": a.p("proj")})).await;
    assert!(dir.message.contains("is a directory"), "{dir}");
    let rel = a.err("Read", json!({"file_path": "proj/ten.txt"})).await;
    assert_eq!(rel.kind, ToolErrorKind::InvalidInput);
    assert!(rel.message.contains("absolute"), "{rel}");
    let missing = a.err("Read", json!({"file_path": a.p("proj/nope.txt")})).await;
    assert_eq!(missing.kind, ToolErrorKind::NotFound, "{missing}");
    let outside = a.err("Read", json!({"file_path": a.p("outside/secret.txt")})).await;
    assert_eq!(outside.kind, ToolErrorKind::PermissionDenied, "{outside}");
    assert!(outside.message.contains("outside the pod's scope"), "{outside}");

    std::fs::write(a.sb.root.join("proj/latin1.txt"), b"caf\xe9 ok\n").unwrap();
    let lossy = a.ok("Read", json!({"file_path": a.p("proj/latin1.txt")})).await;
    assert_eq!(lossy.content.as_deref(), Some("     1\tcaf\u{fffd} ok"));
}

#[tokio::test]
async fn a_file_of_many_read_chunks_pages_and_edits_like_a_small_one() {
    let a = Agent::new().await;
    // About 1.2 MB: several of the pieces Read takes at a time, with
    // multi-byte characters on every line (so some straddle a piece's end),
    // CRLF line ends and no final newline.
    let lines: Vec<String> = (1..=40_000).map(|i| format!("row {i:05} ééé ✓ {}", "x".repeat(i % 7))).collect();
    let body = lines.join("\r\n");
    let f = a.sb.file("proj/many.txt", &body);
    // A window of 300 lines around the end of the first 256 KiB piece.
    let boundary = body.as_bytes()[..256 << 10].iter().filter(|&&b| b == b'\n').count();
    let offset = boundary - 150;
    let window = a.ok("Read", json!({"file_path": f, "offset": offset, "limit": 300})).await;
    let expected = format!("Read 300 lines [{}..{}] of 40000", offset + 1, offset + 300);
    assert!(window.summary.starts_with(&expected), "{}", window.summary);
    let shown: Vec<&str> = window.content.as_deref().unwrap().split('\n').collect();
    assert_eq!(shown.len(), 300);
    for (i, line) in shown.iter().enumerate() {
        assert_eq!(*line, format!("{:6}\t{}", offset + 1 + i, lines[offset + i]));
    }
    let last = a.ok("Read", json!({"file_path": f, "offset": 39_999})).await;
    assert_eq!(last.content.unwrap(), format!(" 40000\t{}", lines[39_999]));
    // The hash taken piece by piece is the one Edit checks against.
    a.ok("Edit", json!({"file_path": f, "old_string": "row 39999 ", "new_string": "ROW 39999 "})).await;
    assert!(a.sb.read("proj/many.txt").unwrap().contains("ROW 39999 ééé"));
}

#[tokio::test]
async fn a_file_larger_than_the_memory_cap_can_still_be_read() {
    let a = Agent::new().await;
    let limits = CallLimits { memory_bytes: 16 << 20, ..CallLimits::default() };
    let pod = pod(&[rule(&a.sb.root.join("proj"), Write)], &[], limits);
    // 48 MB of log: three times what the call's memory may hold.
    let line = format!("{}\n", "log entry ".repeat(9));
    let f = a.sb.file("proj/huge.log", &line.repeat(480_000));
    let input = json!({"file_path": f, "offset": 200_000, "limit": 2}).to_string();
    let out = a.host.call(&pod, "Read", &input).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.summary.starts_with("Read 2 lines [200001..200002] of 480000"), "{}", out.summary);
    let line = line.strip_suffix('\n').unwrap();
    assert_eq!(out.content.unwrap(), format!("200001\t{line}\n200002\t{line}"));
}

#[tokio::test]
async fn long_output_is_cut_at_the_pod_cap() {
    let a = Agent::new().await;
    let big: String = (0..5000).map(|i| format!("line number {i} ééé\n")).collect();
    let f = a.sb.file("proj/big.txt", &big);
    let out = a.ok("Read", json!({"file_path": f})).await;
    let content = out.content.unwrap();
    assert!(content.len() < 16 * 1024 + 200, "{}", content.len());
    assert!(
        content.contains("more bytes cut: output exceeds the 16384-byte cap"),
        "{}",
        &content[content.len() - 200..]
    );
}

// ---------------------------------------------------------------- Write / Edit

#[tokio::test]
async fn write_creates_and_overwrites_only_after_read() {
    let a = Agent::new().await;
    let new = a.p("proj/a/b/new.txt");
    let out = a.ok("Write", json!({"file_path": new, "content": "hello\n"})).await;
    assert_eq!(out.summary, format!("Created {new} (6 bytes)"));
    assert_eq!(a.sb.read("proj/a/b/new.txt").as_deref(), Some("hello\n"));
    // It wrote the file, so it may write it again.
    let out = a.ok("Write", json!({"file_path": new, "content": "again\n"})).await;
    assert!(out.summary.starts_with("Overwrote"), "{}", out.summary);

    let existing = a.sb.file("proj/existing.txt", "old\n");
    let err = a.err("Write", json!({"file_path": existing, "content": "x"})).await;
    assert!(err.message.contains("Read it first"), "{err}");
    assert_eq!(a.sb.read("proj/existing.txt").as_deref(), Some("old\n"));
    a.ok("Read", json!({"file_path": existing})).await;
    std::fs::write(&existing, "changed behind our back\n").unwrap();
    let err = a.err("Write", json!({"file_path": existing, "content": "x"})).await;
    assert!(err.message.contains("changed since"), "{err}");
    a.ok("Read", json!({"file_path": existing})).await;
    a.ok("Write", json!({"file_path": existing, "content": "new\n"})).await;
    assert_eq!(a.sb.read("proj/existing.txt").as_deref(), Some("new\n"));

    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(a.sb.root.join("proj"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".yoi-")), "{names:?}");
    let err = a.err("Write", json!({"file_path": a.p("proj/a"), "content": "x"})).await;
    assert!(err.message.contains("is a directory"), "{err}");
}

#[tokio::test]
async fn edit_replaces_exactly_and_explains_failures() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/code.rs", "fn a() {}\nfn b() {}\nfn a() {}\n");
    let input = |old: &str, new: &str| json!({"file_path": f, "old_string": old, "new_string": new});
    let err = a.err("Edit", input("fn b", "fn c")).await;
    assert!(err.message.contains("Read it first"), "{err}");
    a.ok("Read", json!({"file_path": f})).await;

    assert_eq!(a.err("Edit", input("", "x")).await.kind, ToolErrorKind::InvalidInput);
    assert_eq!(a.err("Edit", input("fn b", "fn b")).await.kind, ToolErrorKind::InvalidInput);
    let none = a.err("Edit", input("fn z", "fn y")).await;
    assert!(none.message.contains("not found"), "{none}");
    let many = a.err("Edit", input("fn a", "fn x")).await;
    assert!(many.message.contains("2 times"), "{many}");

    let out = a.ok("Edit", input("fn b() {}", "fn b() {\n    todo!()\n}")).await;
    assert_eq!(out.summary, format!("Edited {} (1 replacement)", f.display()));
    assert!(out.content.as_deref().unwrap().contains("     3\t    todo!()"), "{:?}", out.content);
    // The edit counts as a read: a second edit needs no new Read.
    let out =
        a.ok("Edit", json!({"file_path": f, "old_string": "fn a", "new_string": "fn x", "replace_all": true})).await;
    assert!(out.summary.contains("2 replacements"));
    assert_eq!(a.sb.read("proj/code.rs").as_deref(), Some("fn x() {}\nfn b() {\n    todo!()\n}\nfn x() {}\n"));

    let missing =
        a.err("Edit", json!({"file_path": a.p("proj/missing.rs"), "old_string": "a", "new_string": "b"})).await;
    assert_eq!(missing.kind, ToolErrorKind::NotFound);
}

#[tokio::test]
async fn edit_keeps_crlf_line_ends() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/win.txt", "one\r\ntwo\r\nthree\r\n");
    a.ok("Read", json!({"file_path": f})).await;
    a.ok("Edit", json!({"file_path": f, "old_string": "one\ntwo", "new_string": "1\n2"})).await;
    assert_eq!(a.sb.read("proj/win.txt").as_deref(), Some("1\r\n2\r\nthree\r\n"));
}

/// The host can list the files a pod touched, from the tools' state.
#[tokio::test]
async fn host_sees_the_files_a_pod_touched() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/x.txt", "x");
    a.ok("Read", json!({"file_path": f})).await;
    a.ok("Write", json!({"file_path": a.p("proj/y.txt"), "content": "y"})).await;
    let touched = a.pod.state.keys("fs_tools", "read:");
    assert_eq!(touched, vec![format!("read:{}", a.p("proj/x.txt")), format!("read:{}", a.p("proj/y.txt"))]);
}

// ---------------------------------------------------------------- Glob

#[tokio::test]
async fn glob_lists_newest_first_including_hidden() {
    let a = Agent::new().await;
    let old = a.sb.file("proj/src/old.rs", "");
    let set_age = |path: &std::path::Path, secs_ago: u64| {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    };
    set_age(&old, 1000);
    let new = a.sb.file("proj/src/deep/new.rs", "");
    set_age(&new, 10);
    let hidden = a.sb.file("proj/.hidden/h.rs", "");
    set_age(&hidden, 500);
    a.sb.file("proj/src/notes.txt", "");
    a.sb.file("proj/.git/objects/x.rs", "");
    let out = a.ok("Glob", json!({"pattern": "**/*.rs", "path": a.p("proj")})).await;
    let listed: Vec<&str> = out.content.as_deref().unwrap().lines().collect();
    assert_eq!(listed, vec![new.to_str().unwrap(), hidden.to_str().unwrap(), old.to_str().unwrap()]);
    assert!(out.summary.starts_with("Found 3 files matching **/*.rs"), "{}", out.summary);
    // The default path is the working directory; `*` does not cross `/`.
    let top = a.ok("Glob", json!({"pattern": "src/*.rs"})).await;
    assert_eq!(top.content.as_deref(), Some(old.to_str().unwrap()));
    let abs = a.ok("Glob", json!({"pattern": format!("{}/src/**/*.rs", a.p("proj"))})).await;
    assert_eq!(abs.content.unwrap().lines().count(), 2);
    let bad = a.err("Glob", json!({"pattern": "src/[*.rs"})).await;
    assert_eq!(bad.kind, ToolErrorKind::InvalidInput);
}

/// Files of the same time are listed in path order, component by
/// component (`a/b` before `a-b`), and patterns of every shape select what
/// they say: extension, literal name, a class, `*` within one directory.
#[tokio::test]
async fn glob_orders_ties_by_path_and_matches_every_pattern_shape() {
    let a = Agent::new().await;
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
    let names = ["proj/t/a/b.rs", "proj/t/a-b.rs", "proj/t/a.rs", "proj/t/B.rs", "proj/t/a/c/d.rs", "proj/t/x.txt"];
    for name in names {
        let path = a.sb.file(name, "");
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }
    let a = &a;
    let listed = |pattern: &'static str| async move {
        let out = a.ok("Glob", json!({"pattern": pattern, "path": a.p("proj/t")})).await;
        let root = format!("{}/", a.p("proj/t"));
        out.content.unwrap_or_default().lines().map(|l| l.strip_prefix(&root).unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(listed("**/*.rs").await, ["B.rs", "a/b.rs", "a/c/d.rs", "a-b.rs", "a.rs"]);
    assert_eq!(listed("*.rs").await, ["B.rs", "a-b.rs", "a.rs"]);
    assert_eq!(listed("**/b.rs").await, ["a/b.rs"]);
    assert_eq!(listed("a/*").await, ["a/b.rs"]);
    assert_eq!(listed("[aB].rs").await, ["B.rs", "a.rs"]);
    assert_eq!(listed("**/*.{txt,md}").await, ["x.txt"]);
    assert_eq!(listed("a/**").await, ["a/b.rs", "a/c/d.rs"]);
}

#[tokio::test]
async fn glob_stops_at_1000_and_says_so() {
    let a = Agent::new().await;
    for i in 0..1005 {
        a.sb.file(&format!("proj/many/f{i}.txt"), "");
    }
    let out = a.ok("Glob", json!({"pattern": "many/*.txt"})).await;
    // The listing itself is then cut by the pod's 16 KiB output cap.
    assert!(out.content.unwrap().contains("more bytes cut"));
    assert!(
        out.summary.contains("Found 1005 files") && out.summary.contains("showing the 1000 newest"),
        "{}",
        out.summary
    );
}

// ---------------------------------------------------------------- Grep

async fn grep_fixture() -> Agent {
    let a = Agent::new().await;
    a.sb.file("proj/src/lib.rs", "pub fn alpha() {}\n// TODO: beta\nfn gamma() { alpha() }\n");
    a.sb.file("proj/src/main.py", "def alpha():\n    pass\n");
    a.sb.file("proj/README.md", "Alpha project\n");
    a.sb.file("proj/.hidden.rs", "fn alpha() {}\n");
    a.sb.file("proj/target/gen.rs", "fn alpha() {}\n");
    a.sb.file("proj/.gitignore", "target/\n");
    std::fs::write(a.sb.root.join("proj/blob.bin"), b"alpha\0\x01\x02binary").unwrap();
    a
}

#[tokio::test]
async fn grep_modes_filters_and_ignores() {
    let a = grep_fixture().await;
    let lib = a.p("proj/src/lib.rs");
    let py = a.p("proj/src/main.py");

    let files = a.ok("Grep", json!({"pattern": "alpha"})).await;
    let mut listed: Vec<&str> = files.content.as_deref().unwrap().lines().collect();
    listed.sort();
    assert_eq!(listed, vec![lib.as_str(), py.as_str()], "hidden, ignored and binary files are skipped");

    let content = a.ok("Grep", json!({"pattern": "alpha", "output_mode": "content", "type": "rust"})).await;
    assert_eq!(
        content.content.as_deref(),
        Some(format!("{lib}:1:pub fn alpha() {{}}\n{lib}:3:fn gamma() {{ alpha() }}").as_str())
    );
    let ctx = a.ok("Grep", json!({"pattern": "TODO", "output_mode": "content", "-C": 1, "glob": "*.rs"})).await;
    assert_eq!(
        ctx.content.as_deref(),
        Some(format!("{lib}-1-pub fn alpha() {{}}\n{lib}:2:// TODO: beta\n{lib}-3-fn gamma() {{ alpha() }}").as_str())
    );
    let no_n = a.ok("Grep", json!({"pattern": "TODO", "output_mode": "content", "-n": false})).await;
    assert_eq!(no_n.content.as_deref(), Some(format!("{lib}:// TODO: beta").as_str()));
    let count = a.ok("Grep", json!({"pattern": "alpha", "output_mode": "count", "-i": true})).await;
    let mut counts: Vec<&str> = count.content.as_deref().unwrap().lines().collect();
    counts.sort();
    let readme = a.p("proj/README.md");
    assert_eq!(counts, vec![format!("{readme}:1"), format!("{lib}:2"), format!("{py}:1")]);
    let multi = a.ok("Grep", json!({"pattern": "alpha.*?TODO", "multiline": true, "output_mode": "content"})).await;
    assert!(multi.content.unwrap().contains(":2:// TODO: beta"));

    let bad = a.err("Grep", json!({"pattern": "("})).await;
    assert!(bad.message.contains("invalid regex"), "{bad}");
    let unknown = a.err("Grep", json!({"pattern": "a", "type": "nosuchlang"})).await;
    assert!(unknown.message.contains("unknown file type"), "{unknown}");
    // An explicit file is searched even though the walk would skip it.
    let single = a.ok("Grep", json!({"pattern": "alpha", "path": a.p("proj/target/gen.rs")})).await;
    assert!(single.content.unwrap().ends_with("gen.rs"));
}

#[tokio::test]
async fn grep_paginates_with_head_limit_and_offset() {
    let a = Agent::new().await;
    let text: String = (1..=30).map(|i| format!("hit {i}\n")).collect();
    a.sb.file("proj/hits.txt", &text);
    let page = a.ok("Grep", json!({"pattern": "hit", "output_mode": "content", "head_limit": 10, "offset": 5})).await;
    let lines: Vec<&str> = page.content.as_deref().unwrap().lines().collect();
    assert_eq!(lines.len(), 10);
    assert!(lines[0].ends_with(":6:hit 6") && lines[9].ends_with(":15:hit 15"), "{lines:?}");
    assert!(page.summary.contains("showing entries 6..15") && page.summary.contains("offset=15"), "{}", page.summary);
    let last = a.ok("Grep", json!({"pattern": "hit", "output_mode": "content", "offset": 25})).await;
    assert_eq!(last.content.unwrap().lines().count(), 5);
    assert!(!last.summary.contains("cut"), "{}", last.summary);
}

// ---------------------------------------------------------------- attacks

/// `..` in every position, absolute paths outside, and odd spellings never
/// reach outside the scope.
#[tokio::test]
async fn dotdot_and_outside_paths_are_refused() {
    let a = Agent::new().await;
    a.sb.file("proj/in.txt", "in\n");
    a.sb.dir("proj/x");
    let attempts = [
        a.p("proj/../outside/secret.txt"),
        a.p("proj/./../outside/./secret.txt"),
        a.p("proj/sub/../../outside/secret.txt"),
        a.p("proj/in.txt/../../outside/secret.txt"),
        format!("{}/../../../../../../../etc/passwd", a.p("proj")),
        a.p("outside/secret.txt"),
        "/etc/passwd".into(),
        "/".into(),
        format!("//{}", a.p("outside/secret.txt")),
    ];
    for path in &attempts {
        let e = a.err("Read", json!({"file_path": path})).await;
        assert!(matches!(e.kind, ToolErrorKind::PermissionDenied | ToolErrorKind::InvalidInput), "{path}: {e}");
        let e = a.err("Write", json!({"file_path": path, "content": "pwned"})).await;
        assert!(matches!(e.kind, ToolErrorKind::PermissionDenied | ToolErrorKind::InvalidInput), "{path}: {e}");
        a.err("Edit", json!({"file_path": path, "old_string": "outside", "new_string": "pwned"})).await;
        a.err("Glob", json!({"pattern": "*", "path": path})).await;
        a.err("Grep", json!({"pattern": "data", "path": path})).await;
    }
    // `..` that stays inside is fine.
    let ok = a.ok("Read", json!({"file_path": a.p("proj/x/../in.txt")})).await;
    assert_eq!(ok.content.as_deref(), Some("     1\tin"));
    let abs_glob = a.err("Glob", json!({"pattern": format!("{}/**/*", a.p("outside"))})).await;
    assert_eq!(abs_glob.kind, ToolErrorKind::PermissionDenied);
    a.assert_outside_untouched();
}

/// Symlinks out of the scope (file and directory, relative and absolute,
/// chains) are refused by every tool, and walks never list what they point to.
#[tokio::test]
async fn symlinks_out_of_scope_are_refused() {
    let a = Agent::new().await;
    let outside = a.sb.root.join("outside");
    symlink(outside.join("secret.txt"), a.sb.root.join("proj/abs-file")).unwrap();
    symlink("../outside/secret.txt", a.sb.root.join("proj/rel-file")).unwrap();
    symlink(&outside, a.sb.root.join("proj/abs-dir")).unwrap();
    symlink("../outside", a.sb.root.join("proj/rel-dir")).unwrap();
    symlink("rel-dir", a.sb.root.join("proj/chain1")).unwrap();
    symlink("chain1/secret.txt", a.sb.root.join("proj/chain2")).unwrap();
    symlink(outside.join("new.txt"), a.sb.root.join("proj/dangling")).unwrap();
    for link in ["abs-file", "rel-file", "abs-dir/secret.txt", "rel-dir/secret.txt", "chain1/secret.txt", "chain2"] {
        let e = a.err("Read", json!({"file_path": a.p(&format!("proj/{link}"))})).await;
        assert_eq!(e.kind, ToolErrorKind::PermissionDenied, "{link}: {e}");
        assert!(!e.message.contains("outside data"));
        a.err("Write", json!({"file_path": a.p(&format!("proj/{link}")), "content": "pwned"})).await;
    }
    for dir in ["abs-dir", "rel-dir", "chain1", "abs-dir/", "rel-dir/."] {
        a.err("Glob", json!({"pattern": "*", "path": a.p(&format!("proj/{dir}"))})).await;
        a.err("Grep", json!({"pattern": "data", "path": a.p(&format!("proj/{dir}"))})).await;
    }
    // A dangling link would create its target outside.
    let e = a.err("Write", json!({"file_path": a.p("proj/dangling"), "content": "pwned"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied, "{e}");
    let walked = a.ok("Grep", json!({"pattern": "outside data", "path": a.p("proj")})).await;
    assert!(walked.content.is_none(), "{walked:?}");
    let globbed = a.ok("Glob", json!({"pattern": "**/secret.txt", "path": a.p("proj")})).await;
    assert!(globbed.content.is_none(), "{globbed:?}");
    a.assert_outside_untouched();
}

/// A file swapped for a symlink between Read and Write is judged afresh:
/// the write is refused and the link target is untouched.
#[tokio::test]
async fn symlink_swapped_in_between_read_and_write() {
    let a = Agent::with_rules(|sb| (vec![], vec![rule(&sb.root.join("proj/secret"), Read)])).await;
    let f = a.sb.file("proj/notes.txt", "notes\n");
    a.sb.file("proj/secret/key", "denied key\n");
    a.ok("Read", json!({"file_path": f})).await;
    for target in [a.sb.root.join("outside/secret.txt"), a.sb.root.join("proj/secret/key")] {
        std::fs::remove_file(&f).ok();
        symlink(&target, &f).unwrap();
        let e = a.err("Write", json!({"file_path": f, "content": "pwned"})).await;
        assert_eq!(e.kind, ToolErrorKind::PermissionDenied, "{e}");
        a.err("Edit", json!({"file_path": f, "old_string": "data", "new_string": "pwned"})).await;
    }
    assert_eq!(a.sb.read("proj/secret/key").as_deref(), Some("denied key\n"));
    a.assert_outside_untouched();
}

/// A pod's calls share the descriptors of its scope's directories, but a
/// directory deleted and made again, moved away, or swapped for a link (to
/// itself moved, or to outside) is noticed: the next call works in what the
/// path names now, or, for a link, reaches nothing until a directory is back.
#[tokio::test]
async fn a_scope_directory_replaced_between_calls_is_opened_afresh() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/a.txt", "first\n");
    a.ok("Read", json!({"file_path": f})).await;
    std::fs::remove_dir_all(a.sb.root.join("proj")).unwrap();
    a.sb.file("proj/a.txt", "second\n");
    assert_eq!(a.ok("Read", json!({"file_path": f})).await.content.as_deref(), Some("     1\tsecond"));
    a.ok("Write", json!({"file_path": a.p("proj/new.txt"), "content": "made\n"})).await;
    assert_eq!(a.sb.read("proj/new.txt").as_deref(), Some("made\n"));

    std::fs::rename(a.sb.root.join("proj"), a.sb.root.join("moved")).unwrap();
    a.sb.file("proj/a.txt", "third\n");
    assert_eq!(a.ok("Read", json!({"file_path": f})).await.content.as_deref(), Some("     1\tthird"));

    // A link to the very directory the pod had: links are not followed
    // into a scope, so it reaches nothing either.
    std::fs::rename(a.sb.root.join("proj"), a.sb.root.join("moved-again")).unwrap();
    symlink(a.sb.root.join("moved-again"), a.sb.root.join("proj")).unwrap();
    a.err("Read", json!({"file_path": f})).await;
    a.err("Write", json!({"file_path": a.p("proj/planted.txt"), "content": "x"})).await;
    assert!(!a.sb.root.join("moved-again/planted.txt").exists());

    std::fs::remove_file(a.sb.root.join("proj")).unwrap();
    symlink(a.sb.root.join("outside"), a.sb.root.join("proj")).unwrap();
    let e = a.err("Read", json!({"file_path": a.p("proj/secret.txt")})).await;
    assert!(!e.message.contains("outside data"), "{e}");
    a.err("Write", json!({"file_path": a.p("proj/planted.txt"), "content": "pwned"})).await;
    a.assert_outside_untouched();

    // A directory again: reachable again.
    std::fs::remove_file(a.sb.root.join("proj")).unwrap();
    a.sb.file("proj/a.txt", "fourth\n");
    assert_eq!(a.ok("Read", json!({"file_path": f})).await.content.as_deref(), Some("     1\tfourth"));
}

/// A pod's calls reuse the descriptors of its first call: calling on
/// leaves no more of the sandbox's files open in the host.
#[tokio::test]
async fn calls_of_a_pod_leave_no_descriptors_behind() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/a.txt", "x\n");
    let open_files = || {
        let entries = std::fs::read_dir("/proc/self/fd").unwrap();
        entries.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter(|t| t.starts_with(&a.sb.root)).count()
    };
    a.ok("Read", json!({"file_path": f})).await;
    let after_first = open_files();
    for _ in 0..50 {
        a.ok("Read", json!({"file_path": f})).await;
    }
    assert!(open_files() <= after_first, "{} files open after 50 calls, {after_first} after one", open_files());
}

/// Writing through a hard link to a file outside the scope replaces the
/// link (atomic rename) and never modifies the outside file.
#[tokio::test]
async fn hard_links_do_not_carry_writes_outside() {
    let a = Agent::new().await;
    let link = a.sb.root.join("proj/hard.txt");
    std::fs::hard_link(a.sb.root.join("outside/secret.txt"), &link).unwrap();
    a.ok("Read", json!({"file_path": link})).await;
    a.ok("Edit", json!({"file_path": link, "old_string": "outside", "new_string": "inside"})).await;
    a.ok("Read", json!({"file_path": link})).await;
    a.ok("Write", json!({"file_path": link, "content": "replaced\n"})).await;
    assert_eq!(a.sb.read("proj/hard.txt").as_deref(), Some("replaced\n"));
    a.assert_outside_untouched();
}

/// Trailing slashes, NUL bytes, invalid UTF-8 and very long paths get clear
/// errors and reach nothing.
#[tokio::test]
async fn odd_paths_get_clear_errors() {
    let a = Agent::new().await;
    let f = a.sb.file("proj/file.txt", "x\n");
    symlink(a.sb.root.join("outside"), a.sb.root.join("proj/out")).unwrap();
    for path in [format!("{}/", f.display()), a.p("proj/out/"), a.p("proj/out/secret.txt/")] {
        a.err("Read", json!({"file_path": path})).await;
        a.err("Write", json!({"file_path": path, "content": "pwned"})).await;
    }
    let e = a.err("Grep", json!({"pattern": "data", "path": a.p("proj/out/")})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    let nul = a.err("Read", json!({"file_path": format!("{}\0/../../outside/secret.txt", f.display())})).await;
    assert!(nul.message.contains("NUL"), "{nul}");
    // A lone surrogate cannot be turned into a path.
    let raw = format!(r#"{{"file_path": "{}\udc80"}}"#, a.p("proj/x"));
    let bad_utf8 = a.host.call(&a.pod, "Read", &raw).await.unwrap_err();
    assert_eq!(bad_utf8.kind, ToolErrorKind::InvalidInput, "{bad_utf8}");
    let long = a.err("Read", json!({"file_path": format!("{}/{}", a.p("proj"), "a/".repeat(3000))})).await;
    assert_eq!(long.kind, ToolErrorKind::InvalidInput, "{long}");
    let long_name =
        a.err("Write", json!({"file_path": a.p(&format!("proj/{}", "n".repeat(300))), "content": "x"})).await;
    assert!(!long_name.message.is_empty());
    a.assert_outside_untouched();
}

/// A read-only rule: Write and Edit are refused and the file is untouched.
#[tokio::test]
async fn read_only_rule_refuses_write_and_edit() {
    let a = Agent::new().await;
    let f = a.p("ro/keep.txt");
    assert_eq!(a.ok("Read", json!({"file_path": f})).await.content.as_deref(), Some("     1\tread-only data"));
    let e = a.err("Write", json!({"file_path": f, "content": "pwned"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    assert!(e.message.contains("allows only reading"), "{e}");
    let e = a.err("Edit", json!({"file_path": f, "old_string": "read", "new_string": "pwned"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    a.err("Write", json!({"file_path": a.p("ro/new.txt"), "content": "pwned"})).await;
    a.assert_outside_untouched();
}

/// A denied subtree inside an allowed one is invisible to Read, Glob and
/// Grep, and a `deny write` subtree is read-only.
#[tokio::test]
async fn denied_subtrees_inside_the_scope() {
    let a = Agent::with_rules(|sb| {
        (vec![], vec![rule(&sb.root.join("proj/secrets"), Read), rule(&sb.root.join("proj/vendor"), Write)])
    })
    .await;
    a.sb.file("proj/secrets/token.txt", "token alpha\n");
    a.sb.file("proj/vendor/lib.txt", "vendored alpha\n");
    a.sb.file("proj/main.txt", "main alpha\n");
    symlink("secrets/token.txt", a.sb.root.join("proj/innocent")).unwrap();

    for path in ["proj/secrets/token.txt", "proj/innocent", "proj/vendor/../secrets/token.txt"] {
        let e = a.err("Read", json!({"file_path": a.p(path)})).await;
        assert_eq!(e.kind, ToolErrorKind::PermissionDenied, "{path}: {e}");
    }
    a.err("Glob", json!({"pattern": "*", "path": a.p("proj/secrets")})).await;
    a.err("Grep", json!({"pattern": "alpha", "path": a.p("proj/secrets")})).await;
    let globbed = a.ok("Glob", json!({"pattern": "**/*.txt"})).await;
    let listed = globbed.content.unwrap();
    assert!(!listed.contains("token") && listed.contains("lib.txt") && listed.contains("main.txt"), "{listed}");
    let grepped = a.ok("Grep", json!({"pattern": "alpha", "output_mode": "content"})).await.content.unwrap();
    assert!(!grepped.contains("token") && grepped.contains("vendored alpha"), "{grepped}");

    a.ok("Read", json!({"file_path": a.p("proj/vendor/lib.txt")})).await;
    let e = a.err("Write", json!({"file_path": a.p("proj/vendor/lib.txt"), "content": "pwned"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    a.err("Write", json!({"file_path": a.p("proj/secrets/new.txt"), "content": "pwned"})).await;
    assert_eq!(a.sb.read("proj/vendor/lib.txt").as_deref(), Some("vendored alpha\n"));
    assert!(a.sb.read("proj/secrets/new.txt").is_none());
    assert_eq!(a.sb.read("proj/secrets/token.txt").as_deref(), Some("token alpha\n"));
}

/// A non-recursive rule covers the directory and its direct children only.
#[tokio::test]
async fn non_recursive_rule_stops_at_direct_children() {
    let a = Agent::with_rules(|sb| {
        sb.file("flat/top.txt", "top alpha\n");
        sb.file("flat/sub/deep.txt", "deep alpha\n");
        let spec = RuleSpec { target: sb.root.join("flat"), permission: Write, recursive: false };
        (vec![spec], vec![])
    })
    .await;
    a.ok("Read", json!({"file_path": a.p("flat/top.txt")})).await;
    let e = a.err("Read", json!({"file_path": a.p("flat/sub/deep.txt")})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    let e = a.err("Write", json!({"file_path": a.p("flat/sub/new.txt"), "content": "x"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    let e = a.err("Write", json!({"file_path": a.p("flat/newdir/new.txt"), "content": "x"})).await;
    assert_eq!(e.kind, ToolErrorKind::PermissionDenied);
    a.ok("Write", json!({"file_path": a.p("flat/new.txt"), "content": "x"})).await;
    let globbed = a.ok("Glob", json!({"pattern": "**/*.txt", "path": a.p("flat")})).await.content.unwrap();
    assert!(globbed.contains("top.txt") && !globbed.contains("deep.txt"), "{globbed}");
    let grepped = a.ok("Grep", json!({"pattern": "alpha", "path": a.p("flat")})).await.content.unwrap();
    assert!(!grepped.contains("deep.txt"), "{grepped}");
    assert_eq!(a.sb.read("flat/sub/deep.txt").as_deref(), Some("deep alpha\n"));
}
