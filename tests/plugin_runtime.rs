//! The plugin runtime end to end: loading, describing and calling real
//! components; limits and faults; what a call can and cannot reach.

mod common;

use std::time::Duration;

use common::{Sandbox, guest, host_with, plugin_dir, pod, rule, shared_cache};
use serde_json::{Value, json};
use yoi_host::plugin::{
    Allocator, CallLimits, Ceilings, HostOptions, PluginSet, PluginSource, ToolErrorKind, ToolOutput,
    cache::CacheOutcome,
};
use yoi_host::scope::Permission::{Read, Write};

fn content_json(out: &ToolOutput) -> Value {
    serde_json::from_str(out.content.as_deref().unwrap()).unwrap()
}

/// A plugin loads, describes its tools with their schemas, and runs them.
#[tokio::test]
async fn load_describe_and_call() {
    let host = host_with(&["probe"]).await;
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    let noop = host.tools().find(|t| t.name == "Noop").expect("probe describes Noop");
    assert_eq!(noop.input_schema["type"], "object");
    assert_eq!(host.plugin_for("Echo").unwrap().name(), "probe");

    let sb = Sandbox::new();
    let pod = pod(&[rule(&sb.root, Read)], &[], CallLimits::default());
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
    let out = host.call(&pod, "Echo", r#"{"text":"héllo"}"#).await.unwrap();
    assert_eq!(out.content.as_deref(), Some("héllo"));

    let err = host.call(&pod, "Nope", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::UnknownTool);
    let err = host.call(&pod, "Echo", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{err}");
}

/// The plugin sees no environment, no arguments and no network; its stdout
/// and stderr go to the log without disturbing the call.
#[tokio::test]
async fn no_env_args_or_network() {
    let host = host_with(&["probe"]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pod = pod(&[], &[], CallLimits::default());
    let out = host.call(&pod, "Env", &json!({"connect": addr.to_string()}).to_string()).await.unwrap();
    let env = content_json(&out);
    assert_eq!(env["vars"], json!({}));
    assert_eq!(env["args"], 0);
    assert!(env["connect"].as_str().unwrap().starts_with("refused"), "{env}");
    assert_eq!(host.call(&pod, "Print", r#"{"text":"hi"}"#).await.unwrap().summary, "printed");
}

/// State set in one call is there in the next (each call is a fresh
/// instance), is private to the pod, and the host can read it.
#[tokio::test]
async fn state_outlives_a_call_and_stays_in_its_pod() {
    let host = host_with(&["probe"]).await;
    let a = pod(&[], &[], CallLimits::default());
    let b = pod(&[], &[], CallLimits::default());
    host.call(&a, "State", r#"{"op":"set","key":"read:/x","value":"h1"}"#).await.unwrap();
    let got = host.call(&a, "State", r#"{"op":"get","key":"read:/x"}"#).await.unwrap();
    assert_eq!(got.content.as_deref(), Some("h1"));
    let other = host.call(&b, "State", r#"{"op":"get","key":"read:/x"}"#).await.unwrap();
    assert_eq!(other.content, None);
    assert_eq!(a.state.entries("probe").get("read:/x").map(Vec::as_slice), Some(&b"h1"[..]));
    // The quota refuses inside the plugin; the call itself succeeds.
    let fill = host.call(&a, "State", r#"{"op":"fill","key":"big"}"#).await.unwrap();
    assert!(fill.content.unwrap().contains("would exceed"));
}

/// The context interface reports the pod's name, working dir and rules.
#[tokio::test]
async fn context_reports_the_scope() {
    let host = host_with(&["probe"]).await;
    let sb = Sandbox::new();
    let secret = sb.dir("p/secret");
    let pod = pod(&[rule(&sb.root.join("p"), Write)], &[rule(&secret, Read)], CallLimits::default());
    let ctx = content_json(&host.call(&pod, "Context", "{}").await.unwrap());
    assert_eq!(ctx["working_dir"], sb.root.join("p").to_str().unwrap());
    assert_eq!(ctx["allow"][0]["write"], true);
    assert_eq!(ctx["deny"][0]["target"], secret.to_str().unwrap());
}

/// An endless loop ends at the deadline with an error naming the plugin, and
/// the host carries on.
#[tokio::test]
async fn infinite_loop_hits_the_deadline() {
    let host = host_with(&["probe"]).await;
    let limits = CallLimits { timeout: Duration::from_millis(300), ..CallLimits::default() };
    let pod = pod(&[], &[], limits);
    let started = std::time::Instant::now();
    let err = host.call(&pod, "Spin", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::Timeout, "{err}");
    assert!(err.message.contains("plugin `probe`") && err.message.contains("300 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
}

/// A pod's calls beyond its `concurrent_calls` wait their turn, and the
/// wait counts against their deadline: with one call at a time, a call
/// started 200 ms after one that spins to its 1 s deadline starts only then
/// and ends at its own deadline (1.2 s), not a whole deadline after it
/// started running (2 s). Another pod is not held up.
#[tokio::test]
async fn calls_beyond_the_pods_concurrency_wait_within_their_deadline() {
    let host = std::sync::Arc::new(host_with(&["probe"]).await);
    let limits = CallLimits { timeout: Duration::from_secs(1), concurrent_calls: 1, ..CallLimits::default() };
    let pod = pod(&[], &[], limits);
    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let (host, pod) = (host.clone(), pod.clone());
        async move { host.call(&pod, "Spin", "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = common::pod(&[], &[], CallLimits::default());
    assert_eq!(host.call(&other, "Noop", "{}").await.unwrap().summary, "ok", "another pod runs at once");
    let second = host.call(&pod, "Spin", "{}").await.unwrap_err();
    let ended = started.elapsed();
    assert_eq!(second.kind, ToolErrorKind::Timeout, "{second}");
    assert_eq!(first.await.unwrap().unwrap_err().kind, ToolErrorKind::Timeout);
    assert!(ended < Duration::from_millis(1700), "the wait did not count against the deadline: {ended:?}");
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
}

/// The host's ceilings cap what a manifest asks: a pod allowed an hour
/// and 4 GiB per call gets the operator's 300 ms and 64 MiB.
#[tokio::test]
async fn host_ceilings_cap_the_manifests_limits() {
    let dir = plugin_dir(&["probe"]);
    let ceilings = Ceilings { timeout: Duration::from_millis(300), memory_bytes: 64 << 20 };
    let options = HostOptions { cache_dir: shared_cache(), allocator: Allocator::Pooling, ceilings };
    let host = PluginSet::with_plugins(&options, &[dir.path().to_path_buf()]).await.unwrap();
    let generous = CallLimits { timeout: Duration::from_secs(3600), memory_bytes: 4 << 30, ..CallLimits::default() };
    let pod = pod(&[], &[], generous);
    let spin = host.call(&pod, "Spin", "{}").await.unwrap_err();
    assert!(spin.kind == ToolErrorKind::Timeout && spin.message.contains("300 ms"), "{spin}");
    let hog = host.call(&pod, "Hog", "{}").await.unwrap_err();
    assert!(hog.kind == ToolErrorKind::OutOfMemory && hog.message.contains("64 MiB"), "{hog}");
}

/// Dropping the future of a running call stops the guest: cancellation
/// does not wait for the deadline.
#[tokio::test]
async fn dropping_a_call_cancels_it() {
    let host = host_with(&["probe"]).await;
    let pod = pod(&[], &[], CallLimits::default()); // 30 s deadline
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_millis(200), host.call(&pod, "Spin", "{}")).await;
    assert!(outcome.is_err(), "the spin call cannot have finished");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
}

/// A memory bomb stops at the cap and is reported as out of memory.
#[tokio::test]
async fn memory_bomb_hits_the_cap() {
    let host = host_with(&["probe"]).await;
    let limits = CallLimits { memory_bytes: 32 << 20, ..CallLimits::default() };
    let pod = pod(&[], &[], limits);
    let err = host.call(&pod, "Hog", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::OutOfMemory, "{err}");
    assert!(err.message.contains("plugin `probe`") && err.message.contains("32 MiB"), "{err}");
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
}

/// A panic becomes a trap error carrying the panic message.
#[tokio::test]
async fn trapping_plugin_is_reported_with_its_message() {
    let host = host_with(&["probe"]).await;
    let pod = pod(&[], &[], CallLimits::default());
    let err = host.call(&pod, "Panic", r#"{"message":"the flux capacitor broke"}"#).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::Trap, "{err}");
    assert!(err.message.contains("plugin `probe`"), "{err}");
    assert!(err.message.contains("the flux capacitor broke"), "{err}");
    assert_eq!(host.call(&pod, "Noop", "{}").await.unwrap().summary, "ok");
}

/// Output over the cap is cut at a character boundary with a marker; output
/// that breaks the contract is an error naming the plugin.
#[tokio::test]
async fn oversized_and_malformed_output() {
    let host = host_with(&["probe"]).await;
    let limits = CallLimits { output_max_bytes: 1001, ..CallLimits::default() };
    let pod = pod(&[], &[], limits);
    let out = host.call(&pod, "Flood", r#"{"bytes": 5000000}"#).await.unwrap();
    let content = out.content.unwrap();
    assert!(content.starts_with(&"é".repeat(500)), "cut inside a character");
    assert!(content.contains("[... 4999000 more bytes cut"), "{}", &content[1000..]);

    let err = host.call(&pod, "BadUtf8", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::MalformedOutput, "{err}");
    assert!(err.message.contains("plugin `probe`"), "{err}");
    let err = host.call(&pod, "EmptySummary", "{}").await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::MalformedOutput, "{err}");
}

/// Two plugins offering one tool name: the second in name order (probe,
/// after clash) is refused with both named; corrupt and wrong-world components are refused naming their
/// files; everything else still loads.
#[tokio::test]
async fn load_errors_name_the_file_and_others_still_load() {
    let dir = plugin_dir(&["probe", "clash", "command"]);
    std::fs::write(dir.path().join("corrupt.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    std::fs::write(dir.path().join("text.wasm"), b"this is not wasm").unwrap();
    let options =
        HostOptions { cache_dir: shared_cache(), allocator: Allocator::Pooling, ceilings: Default::default() };
    let host = PluginSet::with_plugins(&options, &[dir.path().to_path_buf()]).await.unwrap();

    let loaded: Vec<&str> = host.plugins().iter().map(|p| p.name()).collect();
    assert_eq!(loaded, ["fs_tools", "pod_tools", "clash"]);
    let errors = host.load_errors();
    let find = |file: &str| {
        errors
            .iter()
            .find(|e| e.origin.ends_with(file))
            .unwrap_or_else(|| panic!("no load error for {file}: {errors:?}"))
    };
    let clash = find("probe.wasm");
    assert!(clash.message.contains("`Noop`") && clash.message.contains("clash.wasm"), "{clash}");
    assert!(find("command.wasm").message.contains("yoi:plugin/tool"), "{:?}", find("command.wasm"));
    assert!(find("corrupt.wasm").message.contains("not a valid WebAssembly component"));
    assert!(find("text.wasm").message.contains("not a valid WebAssembly component"));
    assert_eq!(errors.len(), 4, "{errors:?}");
}

/// A second host with the same cache compiles nothing.
#[tokio::test]
async fn warm_start_compiles_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions {
        cache_dir: cache.path().to_path_buf(),
        allocator: Allocator::Pooling,
        ceilings: Default::default(),
    };
    let load = || async {
        let mut host = PluginSet::new(&options).unwrap();
        host.add(PluginSource::from_file(&guest("probe")).unwrap()).await.unwrap();
        host.plugins()[0].cache_outcome()
    };
    assert_eq!(load().await, CacheOutcome::Compiled);
    assert_eq!(load().await, CacheOutcome::Hit);
    // A damaged entry is replaced, not fatal.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"junk").unwrap();
    }
    assert_eq!(load().await, CacheOutcome::Compiled);
    assert_eq!(load().await, CacheOutcome::Hit);
}

/// Many calls at once each get their own instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_isolated() {
    let host = std::sync::Arc::new(host_with(&["probe"]).await);
    let pod = pod(&[], &[], CallLimits::default());
    let calls = (0..64).map(|i| {
        let (host, pod) = (host.clone(), pod.clone());
        tokio::spawn(async move { host.call(&pod, "Echo", &json!({"text": i.to_string()}).to_string()).await })
    });
    for (i, call) in calls.enumerate() {
        assert_eq!(call.await.unwrap().unwrap().content.unwrap(), i.to_string());
    }
}
