//! MCP benchmark: a `tools/call` round trip over stdio (a Read of a 2 KB
//! file) against `yoi-host mcp`, timed by the official Python SDK's client
//! in both protocol eras. Beside it, measured in the same run: the same
//! call through `PluginSet::call` in this process (the sandbox's own cost),
//! the same exchange with no SDK (`raw`: JSON lines written and read by
//! hand, the server's own round trip), and the SDK's client against a
//! server that answers at once with the same result (`canned`: the
//! client's own cost). Prints p50 and p99 of each.
//!
//! Run: `cargo bench -p yoi-host --bench mcp` (installs the MCP clients
//! with `scripts/mcp-clients` first). `YOI_MCP_CALLS` sets the number of
//! timed calls (default 2000).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use yoi_host::manifest::LoadedManifest;
use yoi_host::plugin::{Allocator, HostOptions, PluginSet};

// Only `repo` is used here.
#[allow(dead_code)]
#[path = "../../tests/common/builds.rs"]
mod builds;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn row(what: &str, p50_us: f64, p99_us: f64, baseline_p50_us: f64) {
    println!("| {what} | {p50_us:.0} µs | {p99_us:.0} µs | {:.2}x |", p50_us / baseline_p50_us);
}

/// The same Read, `calls` times, through the plugin set directly; and its
/// result as an MCP `tools/call` result.
fn direct(manifest: &Path, home: &Path, input: &str, calls: usize) -> (f64, f64, Value) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let loaded = LoadedManifest::load(manifest).unwrap();
        let options =
            HostOptions { cache_dir: home.join("cache"), allocator: Allocator::Pooling, ceilings: Default::default() };
        let plugins = PluginSet::with_plugins(&options, &[]).await.unwrap();
        let env = |_: &str| None;
        let pod = Arc::new(yoi_host::pod::pod_context(&loaded, &plugins, &home.join("data"), &env, None).unwrap());
        for _ in 0..calls / 10 {
            plugins.call(&pod, "Read", input).await.unwrap();
        }
        let reply = serde_json::to_value(yoi_host::mcp::tool_result(plugins.call(&pod, "Read", input).await)).unwrap();
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            plugins.call(&pod, "Read", input).await.unwrap();
            samples.push(start.elapsed());
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        (us(percentile(&mut samples, 0.5)), us(percentile(&mut samples, 0.99)), reply)
    })
}

fn main() {
    let calls: usize = std::env::var("YOI_MCP_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let out = Command::new(builds::repo().join("scripts/mcp-clients")).output().unwrap();
    assert!(out.status.success(), "installing the MCP clients failed: {}", String::from_utf8_lossy(&out.stderr));
    let python = Path::new(std::str::from_utf8(&out.stdout).unwrap().lines().next().unwrap()).join("python");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("project")).unwrap();
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklm\n";
    let text: String = line.repeat(2048 / line.len() + 1).chars().take(2048).collect();
    std::fs::write(dir.join("project/file.txt"), &text).unwrap();
    let manifest = dir.join("pod.toml");
    std::fs::write(
        &manifest,
        "[pod]\nname = \"bench\"\n\n[[scope.allow]]\ntarget = \"project\"\npermission = \"read\"\n",
    )
    .unwrap();
    let home = dir.join("home");
    let input = serde_json::json!({"file_path": dir.join("project/file.txt")}).to_string();

    println!("MCP tools/call over stdio: a Read of a 2 KB file, {calls} calls each, one at a time\n");
    let (direct_p50, direct_p99, reply) = direct(&manifest, &home, &input, calls);
    let reply_file = dir.join("reply.json");
    std::fs::write(&reply_file, reply.to_string()).unwrap();
    let bench = builds::repo().join("tests/mcp/bench.py");
    let yoi_host =
        [env!("CARGO_BIN_EXE_yoi-host").as_ref(), "mcp".as_ref(), "--manifest".as_ref(), manifest.as_os_str()];
    let canned = [python.as_os_str(), bench.as_os_str(), "--canned-server".as_ref(), reply_file.as_os_str()];
    let run = |client: &str, mode: &str, server: &[&std::ffi::OsStr]| -> Value {
        let out = Command::new(&python)
            .arg(&bench)
            .args(["--client", client, "--mode", mode, "--calls", &calls.to_string()])
            .args(["--tool", "Read", "--arguments", &input, "--stdio"])
            .args(server)
            .env("YOI_HOME", &home)
            .env("YOI_RUNTIME_DIR", dir.join("run"))
            .output()
            .unwrap();
        assert!(out.status.success(), "the client failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let figures = |report: &Value, what: &str| {
        (report[what]["p50_us"].as_f64().unwrap(), report[what]["p99_us"].as_f64().unwrap())
    };

    println!("| path | p50 | p99 | p50 vs PluginSet::call |");
    println!("|---|---|---|---|");
    row("PluginSet::call in-process (the sandbox's own cost)", direct_p50, direct_p99, direct_p50);
    let raw = run("raw", "legacy", &yoi_host);
    let (p50, p99) = figures(&raw, "call");
    row("no SDK (JSON lines) → yoi-host mcp: tools/call", p50, p99, direct_p50);
    let (p50, p99) = figures(&raw, "ping");
    row("no SDK (JSON lines) → yoi-host mcp: ping", p50, p99, direct_p50);
    let floor = run("sdk", "legacy", &canned);
    let (p50, p99) = figures(&floor, "call");
    row("Python SDK → canned server (the client's own cost): tools/call", p50, p99, direct_p50);
    for mode in ["legacy", "2026-07-28"] {
        let report = run("sdk", mode, &yoi_host);
        let era = if mode == "legacy" { "2025-11-25" } else { mode };
        let (p50, p99) = figures(&report, "call");
        row(&format!("**Python SDK → yoi-host mcp, {era}: tools/call**"), p50, p99, direct_p50);
        if report.get("ping").is_some() {
            let (p50, p99) = figures(&report, "ping");
            row(&format!("Python SDK → yoi-host mcp, {era}: ping"), p50, p99, direct_p50);
        }
    }
    println!("\naim: Python client → yoi-host mcp p50 ≤ 440 µs");
}
