//! What a plugin may use beyond its pod's files: the capability file beside
//! the component, the manifest's grants, digest pins, and the load-time
//! checks of the contract version and of the interfaces a plugin imports.

mod common;

use std::process::{Command, Output};

use common::{Sandbox, guest, host_with, plugin_dir, shared_cache};
use serde_json::{Value, json};

fn yoi(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = sb.root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(shared_cache()).unwrap();
    let _ = std::os::unix::fs::symlink(shared_cache(), home.join("cache"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yoi-host"));
    cmd.args(args).env("YOI_HOME", &home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok_content(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_str(doc["ok"]["content"].as_str().unwrap()).unwrap_or(Value::Null)
}

/// A plugin gets the environment variables and data directory it both
/// declared and was granted, and nothing else.
#[test]
fn declared_and_granted_env_and_data_dir() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let dir = plugin_dir(&["probe"]);
    std::fs::write(dir.path().join("probe.toml"), "env = [\"YOI_T_A\", \"YOI_T_B\"]\ndata_dir = true\n").unwrap();
    let plugins = dir.path().to_str().unwrap();
    let granted = sb.file(
        "granted.toml",
        "[pod]\nname = \"caps\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n\
         [[plugins.grant]]\nplugin = \"probe\"\nenv = [\"YOI_T_B\", \"YOI_T_C\"]\ndata_dir = true\n",
    );
    let bare =
        sb.file("bare.toml", "[pod]\nname = \"bare\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n");
    let env = [("YOI_T_A", "a"), ("YOI_T_B", "b"), ("YOI_T_C", "c")];

    let call = |manifest: &std::path::Path, tool: &str, input: Value| {
        let m = manifest.to_str().unwrap();
        yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m, tool, &input.to_string()], &env)
    };
    let seen = ok_content(&call(&granted, "Env", json!({})));
    let data = sb.root.join("home/data/caps/probe");
    assert_eq!(seen["vars"], json!({"YOI_T_B": "b", "YOI_DATA_DIR": data.display().to_string()}));
    // The data directory is writable, and only for this plugin in this pod.
    let path = data.join("kept.txt").display().to_string();
    let out = call(&granted, "Fs", json!({"op": "write", "path": path, "content": "kept"}));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_to_string(data.join("kept.txt")).unwrap(), "kept");

    // Without a grant: nothing.
    assert_eq!(ok_content(&call(&bare, "Env", json!({})))["vars"], json!({}));
    let out = call(&bare, "Fs", json!({"op": "read", "path": path}));
    assert_eq!(out.status.code(), Some(1));
}

/// A grant may pin the component's digest; another component of that name
/// is refused, and the message shows both digests.
#[test]
fn a_pinned_digest_refuses_another_component() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let dir = plugin_dir(&["probe"]);
    let plugins = dir.path().to_str().unwrap();
    use sha2::Digest;
    let real = hex::encode(sha2::Sha256::digest(std::fs::read(guest("probe")).unwrap()));
    let pinned = "ab".repeat(32);
    let manifest = |pin: &str| {
        sb.file(
            "pod.toml",
            &format!(
                "[pod]\nname = \"pin\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n\
                 [[plugins.grant]]\nplugin = \"probe\"\nsha256 = \"{pin}\"\n"
            ),
        )
    };
    let m = manifest(&pinned);
    let out = yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m.to_str().unwrap(), "Noop", "{}"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&real) && stderr.contains(&pinned), "{stderr}");
    let m = manifest(&real);
    let out = yoi(&sb, &["tool", "call", "--plugins", plugins, "--manifest", m.to_str().unwrap(), "Noop", "{}"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A component built against an incompatible contract version is refused
/// with both versions named; one importing an interface it did not declare
/// never loads.
#[tokio::test]
async fn version_and_undeclared_imports_are_refused_at_load() {
    let dir = plugin_dir(&["future"]);
    std::fs::copy(guest("pod_tools"), dir.path().join("spawner.wasm")).unwrap();
    let options =
        yoi_host::plugin::HostOptions { cache_dir: shared_cache(), allocator: yoi_host::plugin::Allocator::Pooling };
    let host = yoi_host::plugin::PluginHost::with_plugins(&options, &[dir.path().to_path_buf()]).await.unwrap();
    let error = |file: &str| {
        host.load_errors()
            .iter()
            .find(|e| e.origin.ends_with(file))
            .unwrap_or_else(|| panic!("{file} loaded"))
            .message
            .clone()
    };
    let future = error("future.wasm");
    assert!(future.contains("yoi:plugin@0.2.0") && future.contains("yoi:plugin@0.1.0"), "{future}");
    let spawner = error("spawner.wasm");
    assert!(spawner.contains("yoi:plugin/pods") && spawner.contains("pods = true"), "{spawner}");
    // The builtin pod tools declare it, and load.
    assert!(host_with(&[]).await.plugins().iter().any(|p| p.name() == "pod_tools"));
}
