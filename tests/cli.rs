//! The `yoi-host` binary: `plugins list` and `tool call`, their output and
//! exit codes.

mod common;

use std::process::{Command, Output};

use common::{Sandbox, plugin_dir, shared_cache};
use serde_json::Value;

fn yoi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yoi-host"))
        .args(args)
        .env("YOI_HOME", shared_cache().parent().unwrap().join("cli-home"))
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn manifest(sb: &Sandbox, body: &str) -> String {
    sb.file("pod.toml", &format!("[pod]\nname = \"cli\"\n{body}")).display().to_string()
}

/// `plugins list --json` shows each plugin with its tools and schemas, and
/// reports the ones that did not load.
#[test]
fn plugins_list_json() {
    let dir = plugin_dir(&["probe", "command"]);
    let out = yoi(&["plugins", "list", "--plugins", dir.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = stdout_json(&out);
    let probe = doc["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "probe").unwrap();
    let echo = probe["tools"].as_array().unwrap().iter().find(|t| t["name"] == "Echo").unwrap();
    assert_eq!(echo["input_schema"]["properties"]["text"]["type"], "string");
    let error = &doc["errors"][0];
    assert!(error["origin"].as_str().unwrap().ends_with("command.wasm"), "{error}");

    let text = yoi(&["plugins", "list", "--plugins", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("probe (") && stdout.contains("  Echo: "), "{stdout}");
    assert!(String::from_utf8_lossy(&text.stderr).contains("command.wasm"));
}

/// `tool call` prints `{"ok":...}` and exits 0, or `{"error":...}` and exits 1,
/// with the manifest's scope in force.
#[test]
fn tool_call_ok_and_error() {
    let sb = Sandbox::new();
    sb.file("proj/a.txt", "alpha");
    let m = manifest(&sb, "[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n");
    let dir = plugin_dir(&["probe"]);
    let plugins = dir.path().to_str().unwrap();

    let path = sb.root.join("proj/a.txt").display().to_string();
    let input = serde_json::json!({"op": "read", "path": path}).to_string();
    let out = yoi(&["tool", "call", "--plugins", plugins, "--manifest", &m, "Fs", &input]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["ok"]["content"], "alpha");

    let input = serde_json::json!({"op": "write", "path": path, "content": "x"}).to_string();
    let out = yoi(&["tool", "call", "--plugins", plugins, "--manifest", &m, "Fs", &input]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "permission_denied");
    assert_eq!(sb.read("proj/a.txt").as_deref(), Some("alpha"));

    let out = yoi(&["tool", "call", "--plugins", plugins, "--manifest", &m, "Fs", "not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"]["kind"], "invalid_input");
}

/// Setup errors exit 2 with a message on stderr naming the culprit.
#[test]
fn setup_errors_exit_2() {
    let sb = Sandbox::new();
    let bad = manifest(&sb, "[limits]\ntool_timeout = 1\n");
    let out = yoi(&["tool", "call", "--manifest", &bad, "Noop", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("yoi-host: ") && stderr.contains("tool_timeout"), "{stderr}");

    let out = yoi(&["plugins", "list", "--plugins", "/no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));

    let out = yoi(&["tool", "call", "--manifest", "/no/such/pod.toml", "Noop", "{}"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A served pod driven by the client commands: `ps`, `send`, `history`,
/// `cancel` while idle, and `stop`.
#[test]
fn pod_commands_against_a_served_pod() {
    let sb = Sandbox::new();
    sb.file("proj/a.txt", "alpha\n");
    sb.file(
        "script.json",
        &serde_json::json!({"turns": [
            {"text": "Reading.", "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/a.txt"}}]},
            {"text": "It says alpha."}
        ]})
        .to_string(),
    );
    let m = sb.file(
        "pod.toml",
        "[pod]\nname = \"clipod\"\n[provider]\nkind = \"scripted\"\nmodel = \"s\"\nscript = \"script.json\"\n\
         [[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n",
    );
    let home = shared_cache().parent().unwrap().join("cli-home");
    let runtime = sb.root.join("run");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_yoi-host"));
        c.args(args).env("YOI_HOME", &home).env("YOI_RUNTIME_DIR", &runtime);
        c
    };
    let mut server = cmd(&["run", "--manifest", m.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = runtime.join("clipod/sock");
    for _ in 0..1200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ps = cmd(&["ps"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ps.stdout);
    assert!(listing.contains("clipod") && listing.contains("idle"), "{listing}");

    let sent = cmd(&["send", "clipod", "what does a.txt say?"]).output().unwrap();
    let out = String::from_utf8_lossy(&sent.stdout);
    assert_eq!(sent.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&sent.stderr));
    assert!(out.contains("⏺ Read(") && out.contains("It says alpha."), "{out}");

    let history = cmd(&["history", "clipod", "--json"]).output().unwrap();
    let event: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(event["type"], "history");
    assert_eq!(event["items"].as_array().unwrap().len(), 5);

    let cancel = cmd(&["cancel", "clipod"]).output().unwrap();
    assert_eq!(cancel.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("no run"));

    let stop = cmd(&["stop", "clipod"]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(server.wait().unwrap().success());
    assert!(!runtime.join("clipod").exists());
    let gone = cmd(&["send", "clipod", "hello?"]).output().unwrap();
    assert_eq!(gone.status.code(), Some(2));
}

/// The operator's ceilings (`YOI_MAX_TOOL_TIMEOUT_MS`,
/// `YOI_MAX_TOOL_MEMORY_MB`) cap what a manifest asks; a bad value is a
/// setup error naming the variable.
#[test]
fn operator_ceilings_cap_the_manifest() {
    let sb = Sandbox::new();
    let m = manifest(&sb, "[limits]\ntool_timeout_ms = 600000\n");
    let dir = plugin_dir(&["probe"]);
    let plugins = dir.path().to_str().unwrap();
    let call = |var: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_yoi-host"))
            .args(["tool", "call", "--plugins", plugins, "--manifest", &m, "Spin", "{}"])
            .env("YOI_HOME", shared_cache().parent().unwrap().join("cli-home"))
            .env(var, value)
            .output()
            .unwrap()
    };
    let out = call("YOI_MAX_TOOL_TIMEOUT_MS", "200");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let error = &stdout_json(&out)["error"];
    assert_eq!(error["kind"], "timeout", "{error}");
    assert!(error["message"].as_str().unwrap().contains("200 ms"), "{error}");
    let bad = call("YOI_MAX_TOOL_MEMORY_MB", "lots");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YOI_MAX_TOOL_MEMORY_MB=\"lots\""));
}
