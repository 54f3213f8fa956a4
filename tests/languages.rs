//! Plugins in every language a third party might write them in: the example
//! plugins (Rust, Python, JavaScript) and the starters `plugins new` writes,
//! built here with the pinned toolchains (installed from PyPI and npm by
//! `scripts/guest-toolchains`), loaded into the host and called.

mod common;

use std::process::Command;

use common::builds::{build_starter, examples};
use common::{Sandbox, pod, rule, shared_cache};
use serde_json::{Value, json};
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginSet, ToolErrorKind};
use yoi_host::scope::Permission;

fn content(output: &yoi_host::plugin::ToolOutput) -> &str {
    output.content.as_deref().unwrap_or("")
}

/// Each example loads next to the builtins and does its job; bad input is a
/// clear error; and the Python tool, which opens files with Python's own
/// `open`, reaches only what the pod's scope preopens.
#[tokio::test]
async fn example_plugins_in_every_language() {
    let options =
        HostOptions { cache_dir: shared_cache(), allocator: Allocator::Pooling, ceilings: Default::default() };
    let host = PluginSet::with_plugins(&options, &[examples().to_path_buf()]).await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    for tool in ["CsvStats", "JsonQuery", "HttpGet"] {
        assert!(host.plugin_for(tool).is_some(), "{tool} missing");
    }

    let sb = Sandbox::new();
    let proj = sb.dir("proj");
    sb.file("proj/sales.csv", "region;units;price\nnorth;10;2.5\nsouth;30;3.5\nnorth;20;4.5\n");
    sb.file("proj/secret/keys.csv", "key\nhunter2\n");
    let outside = sb.file("outside.csv", "a\n1\n");
    let pod =
        pod(&[rule(&proj, Permission::Read)], &[rule(&proj.join("secret"), Permission::Read)], CallLimits::default());
    let call = |tool: &'static str, input: Value| {
        let host = &host;
        let pod = pod.clone();
        async move { host.call(&pod, tool, &input.to_string()).await }
    };

    // Python: statistics of a file in scope, with the delimiter guessed.
    let out = call("CsvStats", json!({"path": "sales.csv"})).await.unwrap();
    assert!(out.summary.contains("3 rows, 3 columns, delimiter ';'"), "{}", out.summary);
    assert!(
        content(&out).contains("units: 3 values, numeric: min 10, max 30, mean 20, median 20"),
        "{}",
        content(&out)
    );
    assert!(content(&out).contains("region: 3 values, 2 distinct, most common: 'north' ×2"), "{}", content(&out));
    // Outside the scope the file does not exist for the component, by
    // absolute path or by `..`; a deny rule inside the scope is honoured.
    for path in [outside.display().to_string(), "../outside.csv".to_string()] {
        let err = call("CsvStats", json!({"path": path})).await.unwrap_err();
        assert_eq!(err.kind, ToolErrorKind::NotFound, "{path}: {}", err.message);
    }
    assert!(outside.exists());
    let err = call("CsvStats", json!({"path": "secret/keys.csv"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::PermissionDenied, "{}", err.message);
    let err = call("CsvStats", json!({"file": "sales.csv"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{}", err.message);

    // JavaScript: a path query, and a document that is not JSON.
    let doc = json!({"items": [{"id": 1, "tags": ["a"]}, {"id": 2}], "meta": {"id": 9}}).to_string();
    let out = call("JsonQuery", json!({"json": doc, "path": "..id"})).await.unwrap();
    assert_eq!(out.summary, "3 matches for ..id");
    assert_eq!(content(&out), "$.items[0].id = 1\n$.items[1].id = 2\n$.meta.id = 9");
    let out = call("JsonQuery", json!({"json": doc, "path": "items[-1]"})).await.unwrap();
    assert_eq!(content(&out), "$.items[1] = {\"id\":2}");
    let err = call("JsonQuery", json!({"json": "{\"a\": ", "path": "a"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
    assert!(err.message.contains("not valid JSON"), "{}", err.message);

    // Rust: a URL that is not one (the network cases are in capabilities.rs).
    let err = call("HttpGet", json!({"url": "ftp://example.com/x"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{}", err.message);
}

/// `plugins new` writes a starter that builds with its language's toolchain
/// and runs unchanged through `tool call`, with the manifest it ships.
#[test]
fn starters_build_and_run_unchanged() {
    let sb = Sandbox::new();
    for (lang, name, tool) in
        [("rust", "line-count", "LineCount"), ("python", "py_count", "PyCount"), ("js", "js-count", "JsCount")]
    {
        let dir = sb.root.join(name);
        let yoi = |args: &[&str]| {
            let home = sb.root.join("home");
            std::fs::create_dir_all(&home).unwrap();
            let _ = std::os::unix::fs::symlink(shared_cache(), home.join("cache"));
            Command::new(env!("CARGO_BIN_EXE_yoi-host")).args(args).current_dir(&dir).env("YOI_HOME", &home).output()
        };
        build_starter(env!("CARGO_BIN_EXE_yoi-host").as_ref(), lang, name, &dir);

        let out = yoi(&[
            "tool",
            "call",
            "--plugins",
            "dist",
            "--manifest",
            "pod.toml",
            tool,
            r#"{"text": "one two\nthree"}"#,
        ])
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{lang}: {}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["ok"]["summary"], "2 lines, 3 words, 13 characters", "{lang}: {doc}");
        let out = yoi(&["tool", "call", "--plugins", "dist", "--manifest", "pod.toml", tool, "{}"]).unwrap();
        assert_eq!(out.status.code(), Some(1), "{lang}");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["error"]["kind"], "invalid_input", "{lang}: {doc}");
    }
}
