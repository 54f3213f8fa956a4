//! Many pods in one process: pod identity and namespaces, the lifecycle
//! every view reads, an honest actor (a stopped pod says so), the last
//! handle ending a pod, a fault in one pod leaving the others serving, and
//! per-pod plugin sets over one runtime.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Sandbox;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use yoi_host::history::Item;
use yoi_host::identity::Namespace;
use yoi_host::lifecycle::Lifecycle;
use yoi_host::manifest::LoadedManifest;
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginRuntime, PluginSet, ToolErrorKind};
use yoi_host::pod::{Answer, Exposure, PodError, PodHandle, PodSpec, Stamped, start};
use yoi_host::protocol::{ErrorCode, Method};
use yoi_host::provider::{DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError, RetryPolicy, scripted};
use yoi_host::scope::Permission;
use yoi_host::scope_lock::ScopeLock;
use yoi_host::session::SessionStore;

/// A model whose every request hits a bug in the host: it panics.
struct Faulty;

#[async_trait::async_trait]
impl Provider for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn model(&self) -> &str {
        "faulty"
    }

    async fn stream(&self, _: &ModelRequest<'_>, _: &mut DeltaSink<'_>) -> Result<ModelResponse, ProviderError> {
        panic!("injected fault");
    }
}

/// One process's roots (sessions, runtime dirs, data, the scope lock) and
/// its plugins, shared by the pods a test starts.
struct Host {
    sb: Sandbox,
    plugins: Arc<PluginSet>,
}

impl Host {
    async fn new() -> Host {
        Host { sb: Sandbox::new(), plugins: Arc::new(common::host_with(&[]).await) }
    }

    /// A host whose pods have the probe, which keeps a data directory.
    async fn with_probe_data(plugins: &Path) -> Host {
        std::fs::copy(common::guest("probe"), plugins.join("probe.wasm")).unwrap();
        std::fs::write(plugins.join("probe.toml"), "data_dir = true\n").unwrap();
        let options = HostOptions {
            cache_dir: common::shared_cache(),
            allocator: Allocator::Pooling,
            ceilings: Default::default(),
        };
        let set = PluginSet::with_plugins(&options, &[plugins.to_path_buf()]).await.unwrap();
        Host { sb: Sandbox::new(), plugins: Arc::new(set) }
    }

    fn run_root(&self) -> PathBuf {
        self.sb.root.join("run")
    }

    fn lock(&self) -> ScopeLock {
        ScopeLock::new(self.sb.root.join("run/scope.lock"))
    }

    /// A pod named `name` writing in `dir`, playing `turns` (or a faulty
    /// model).
    async fn start(
        &self,
        namespace: &Namespace,
        name: &str,
        dir: &str,
        turns: Option<Value>,
        exposure: Exposure,
    ) -> anyhow::Result<PodHandle> {
        self.start_with(namespace, name, dir, Some(turns), exposure, "").await
    }

    /// As [`Host::start`], with more manifest text; `None` for no model at
    /// all (no `[provider]`).
    async fn start_with(
        &self,
        namespace: &Namespace,
        name: &str,
        dir: &str,
        model: Option<Option<Value>>,
        exposure: Exposure,
        extra_toml: &str,
    ) -> anyhow::Result<PodHandle> {
        let work = self.sb.dir(dir);
        let provider_toml = match model {
            Some(_) => "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"s.json\"\n",
            None => "",
        };
        let toml = format!(
            "[pod]\nname = \"{name}\"\n{provider_toml}[[scope.allow]]\ntarget = \"{}\"\npermission = \"write\"\n{extra_toml}",
            work.display()
        );
        let manifest = self.sb.file(&format!("{dir}.toml"), &toml);
        let loaded = LoadedManifest::load(&manifest)?;
        let provider: Option<Arc<dyn Provider>> = match model {
            Some(Some(turns)) => {
                let script = serde_json::from_value(json!({ "turns": turns }))?;
                Some(Arc::new(scripted::Scripted::new("m", script, &work)))
            }
            Some(None) => Some(Arc::new(Faulty)),
            None => None,
        };
        start(PodSpec {
            manifest: loaded,
            plugins: self.plugins.clone(),
            provider,
            retry: RetryPolicy::default(),
            sessions: SessionStore::new(namespace.dir(&self.sb.root.join("sessions"))),
            runtime_root: namespace.dir(&self.run_root()),
            resume: None,
            scope_lock: self.lock(),
            data_root: namespace.dir(&self.sb.root.join("data")),
            namespace: namespace.clone(),
            exposure,
            env: yoi_host::pod::process_environment(),
            metering: None,
        })
        .await
    }
}

/// Waits for the next event of type `kind`.
async fn expect(events: &mut broadcast::Receiver<Stamped>, kind: &str) -> Value {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event"))
            .unwrap();
        let value = serde_json::to_value(&event).unwrap();
        if value["type"] == kind {
            return value;
        }
    }
}

async fn run_to_end(pod: &PodHandle, input: &str) -> Value {
    let mut events = pod.subscribe();
    assert_eq!(pod.request(Method::Run { input: input.into() }).await.unwrap(), Answer::Accepted);
    expect(&mut events, "run_end").await
}

fn status_state(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("status.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["state"].as_str().unwrap().to_string()
}

/// A panic inside one pod's run ends that pod with an `internal` error and
/// releases its runtime dir and claim; a pod beside it keeps serving, and
/// the stopped pod answers every request with an error naming it.
#[tokio::test]
async fn a_fault_in_one_pod_ends_only_that_pod() {
    let host = Host::new().await;
    let ns = Namespace::operator();
    let faulty = host.start(&ns, "faulty", "a", None, Exposure::Socket).await.unwrap();
    let steady = host.start(&ns, "steady", "b", Some(json!([{"text": "one"}, {"text": "two"}])), Exposure::Socket);
    let steady = steady.await.unwrap();
    assert_eq!(host.lock().claims().unwrap().len(), 2);

    let mut events = faulty.subscribe();
    assert_eq!(faulty.request(Method::Run { input: "go".into() }).await.unwrap(), Answer::Accepted);
    let error = expect(&mut events, "error").await;
    assert_eq!(error["code"], "internal", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("\"faulty\"") && message.contains("injected fault"), "{message}");
    expect(&mut events, "shutdown").await;
    faulty.wait().await;
    assert_eq!(faulty.lifecycle(), Lifecycle::Stopped);
    assert!(!host.run_root().join("faulty").exists(), "its runtime dir is removed");
    let claims = host.lock().claims().unwrap();
    assert_eq!(claims.iter().map(|c| c.pod.as_str()).collect::<Vec<_>>(), ["steady"]);
    let refused = faulty.request(Method::GetHistory {}).await.unwrap_err();
    assert_eq!(refused, PodError::Stopped("faulty".into()));
    assert_eq!(refused.to_string(), "pod \"faulty\" has stopped");
    assert!(faulty.notify("hello".into()).await.is_err());

    // The other pod has noticed nothing.
    assert_eq!(run_to_end(&steady, "first").await["outcome"], "finished");
    assert_eq!(run_to_end(&steady, "second").await["outcome"], "finished");
    let Answer::History { items, greeting } = steady.request(Method::GetHistory {}).await.unwrap() else {
        panic!("no history")
    };
    assert_eq!(items.len(), 4);
    assert_eq!(greeting.state, "idle");
    steady.request(Method::Shutdown { detach_children: false }).await.unwrap();
    steady.wait().await;
}

/// A pod lives while a handle to it does: dropping the last one shuts it
/// down and releases everything, like a shutdown request.
#[tokio::test]
async fn dropping_the_last_handle_shuts_the_pod_down() {
    let host = Host::new().await;
    let pod = host.start(&Namespace::operator(), "solo", "a", Some(json!([])), Exposure::HostOnly).await.unwrap();
    assert!(pod.socket.is_none());
    assert!(!host.run_root().join("solo").exists(), "a host-only pod has no runtime dir");
    let weak = pod.downgrade();
    let second = pod.clone();
    drop(pod);
    assert!(weak.upgrade().is_ok(), "one handle is left");
    drop(second);
    tokio::time::timeout(Duration::from_secs(10), weak.wait()).await.expect("the pod stops");
    assert_eq!(weak.lifecycle(), Lifecycle::Stopped);
    assert!(weak.upgrade().is_err());
    assert!(host.lock().claims().unwrap().is_empty());
}

/// Two tenants' pods may share a name: their runtime dirs, sessions and
/// scope claims are their own, and stopping one leaves the other's alone.
#[tokio::test]
async fn pods_named_alike_in_two_namespaces_do_not_collide() {
    let host = Host::new().await;
    let acme = Namespace::named("acme").unwrap();
    let globex = Namespace::named("globex").unwrap();
    let turns = json!([{"text": "hello"}]);
    let a = host.start(&acme, "coder", "acme-work", Some(turns.clone()), Exposure::Socket).await.unwrap();
    let b = host.start(&globex, "coder", "globex-work", Some(turns), Exposure::Socket).await.unwrap();
    assert_ne!(a.id, b.id);
    let (dir_a, dir_b) = (host.run_root().join("@acme/coder"), host.run_root().join("@globex/coder"));
    assert_eq!(a.socket.as_deref(), Some(dir_a.join("sock").as_path()));
    assert_eq!(b.socket.as_deref(), Some(dir_b.join("sock").as_path()));
    let mut claims: Vec<String> = host.lock().claims().unwrap().into_iter().map(|c| c.pod).collect();
    claims.sort();
    assert_eq!(claims, ["acme/coder", "globex/coder"]);

    // A third "coder" in acme is the one that collides.
    let err = host.start(&acme, "coder", "acme-other", Some(json!([])), Exposure::Socket).await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");

    assert_eq!(run_to_end(&a, "hi").await["outcome"], "finished");
    let sessions = host.sb.root.join("sessions");
    let (acme_sessions, globex_sessions) =
        (SessionStore::new(acme.dir(&sessions)), SessionStore::new(globex.dir(&sessions)));
    let in_acme = acme_sessions.resolve("latest", "coder").unwrap();
    let in_globex = globex_sessions.resolve("latest", "coder").unwrap();
    assert_ne!(in_acme, in_globex);
    assert_eq!(acme_sessions.load(&in_acme).unwrap().items.len(), 2);
    assert!(globex_sessions.load(&in_globex).unwrap().items.is_empty());

    a.request(Method::Shutdown { detach_children: false }).await.unwrap();
    a.wait().await;
    assert!(!dir_a.exists() && dir_b.join("sock").exists());
    let claims = host.lock().claims().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].id, b.id.as_str());
    b.request(Method::Shutdown { detach_children: false }).await.unwrap();
    b.wait().await;
}

/// `status.json`, `history.json`, the greeting and the handle all show the
/// one lifecycle the controller publishes.
#[tokio::test]
async fn every_view_follows_the_lifecycle() {
    let host = Host::new().await;
    let turns = json!([{"delay_ms": 400, "text": "slow"}]);
    let pod = host.start(&Namespace::operator(), "views", "a", Some(turns), Exposure::Socket).await.unwrap();
    let dir = host.run_root().join("views");
    let mut lifecycle = pod.watch_lifecycle();
    assert_eq!(status_state(&dir), "idle");
    assert_eq!(std::fs::read_to_string(dir.join("history.json")).unwrap(), "[]");

    let mut events = pod.subscribe();
    pod.request(Method::Run { input: "go".into() }).await.unwrap();
    lifecycle.wait_for(|s| *s == Lifecycle::Running).await.unwrap();
    assert_eq!(status_state(&dir), "running");
    let Answer::History { greeting, .. } = pod.request(Method::GetHistory {}).await.unwrap() else { panic!() };
    assert_eq!(greeting.state, "running");
    // A second run while busy is refused, with the protocol's code.
    let busy = pod.request(Method::Run { input: "again".into() }).await.unwrap();
    assert!(matches!(busy, Answer::Refused { code: ErrorCode::AlreadyRunning, .. }), "{busy:?}");

    expect(&mut events, "run_end").await;
    assert_eq!(pod.lifecycle(), Lifecycle::Idle);
    assert_eq!(status_state(&dir), "idle");
    let history: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    assert_eq!(history, json!([{"type": "user", "text": "go"}, {"type": "assistant", "text": "slow"}]));

    pod.request(Method::Shutdown { detach_children: false }).await.unwrap();
    let mut seen = Vec::new();
    while lifecycle.changed().await.is_ok() {
        seen.push(*lifecycle.borrow_and_update());
        if seen.last() == Some(&Lifecycle::Stopped) {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&Lifecycle::Stopped), "{seen:?}");
    assert!(!dir.exists());
}

/// Pods of one process may load different plugins over one runtime: each
/// set has its own tool names, a clash is an error of the set that has it,
/// and the pod tools are offered only to pods that can run children.
#[tokio::test]
async fn plugin_sets_differ_per_pod_over_one_runtime() {
    let options =
        HostOptions { cache_dir: common::shared_cache(), allocator: Allocator::Pooling, ceilings: Default::default() };
    let runtime = PluginRuntime::new(&options).unwrap();
    let (probe, clashing) = (common::plugin_dir(&["probe"]), common::plugin_dir(&["probe", "clash"]));
    let with_probe = PluginSet::load(runtime.clone(), &[probe.path().to_path_buf()]).await.unwrap();
    let with_clash = PluginSet::load(runtime.clone(), &[clashing.path().to_path_buf()]).await.unwrap();
    let builtins_only = PluginSet::load(runtime.clone(), &[]).await.unwrap();
    assert!(with_probe.load_errors().is_empty(), "{:?}", with_probe.load_errors());
    assert_eq!(with_clash.load_errors().len(), 1);
    assert!(with_clash.load_errors()[0].message.contains("`Noop`"), "{:?}", with_clash.load_errors());

    let sb = Sandbox::new();
    let pod = common::pod(&[common::rule(&sb.root, Permission::Write)], &[], CallLimits::default());
    let echo = json!({"text": "hi"}).to_string();
    assert!(with_probe.call(&pod, "Echo", &echo).await.is_ok());
    let unknown = builtins_only.call(&pod, "Echo", &echo).await.unwrap_err();
    assert_eq!(unknown.kind, ToolErrorKind::UnknownTool);

    // A context without child pods (as `yoi-host tool call` builds) is not
    // offered the pod tools; a pod run by a host is.
    let offered: Vec<&str> = builtins_only.tools_for(&pod).map(|t| t.name.as_str()).collect();
    assert!(offered.contains(&"Read") && !offered.contains(&"SpawnPod"), "{offered:?}");
    let host = Host::new().await;
    let served = host.start(&Namespace::operator(), "served", "a", Some(json!([])), Exposure::HostOnly).await.unwrap();
    let Answer::History { greeting, .. } = served.request(Method::GetHistory {}).await.unwrap() else { panic!() };
    assert!(greeting.tools.iter().any(|t| t == "SpawnPod"), "{:?}", greeting.tools);
}

/// Every event of one run, until its `run_end`.
async fn run_events(pod: &PodHandle, input: &str) -> Vec<Value> {
    let mut events = pod.subscribe();
    assert_eq!(pod.request(Method::Run { input: input.into() }).await.unwrap(), Answer::Accepted);
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("the run ended").unwrap();
        let value = serde_json::to_value(&event).unwrap();
        let last = value["type"] == "run_end";
        seen.push(value);
        if last {
            return seen;
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A model that fails ends the run with an `error` (the provider's, with
/// its message) and `run_end{failed}`, which the session log records too.
#[tokio::test]
async fn a_provider_failure_ends_the_run_as_failed() {
    let host = Host::new().await;
    let turns = json!([{"error": {"message": "the model is down"}}, {"text": "back"}]);
    let pod = host.start(&Namespace::operator(), "flaky", "a", Some(turns), Exposure::HostOnly).await.unwrap();
    let events = run_events(&pod, "hi").await;
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:#?}");
    assert_eq!(errors[0]["code"], "provider_error");
    assert!(errors[0]["message"].as_str().unwrap().contains("the model is down"), "{}", errors[0]);
    assert_eq!(events.last().unwrap()["outcome"], "failed");
    // The pod carries on.
    assert_eq!(run_events(&pod, "again").await.last().unwrap()["outcome"], "finished");
    let sessions = SessionStore::new(host.sb.root.join("sessions"));
    let log = sessions.load(&sessions.resolve("latest", "flaky").unwrap()).unwrap();
    assert_eq!(log.items.len(), 3, "user, user, assistant: nothing of the failed request: {:?}", log.items);
}

/// `max_turns` model requests in a run end it with `limit_reached`.
#[tokio::test]
async fn the_turn_limit_ends_the_run_with_limit_reached() {
    let host = Host::new().await;
    let glob = json!({"tool_calls": [{"name": "Glob", "arguments": {"pattern": "*"}}]});
    let turns = json!([glob, glob, glob]);
    let ns = Namespace::operator();
    let pod = host.start_with(&ns, "busy", "a", Some(Some(turns)), Exposure::HostOnly, "[agent]\nmax_turns = 2\n");
    let events = run_events(&pod.await.unwrap(), "loop").await;
    assert_eq!(of_type(&events, "turn_start").len(), 2);
    assert_eq!(events.last().unwrap()["outcome"], "limit_reached");
}

/// A pod without a `[provider]` serves tool calls only: `run` is refused
/// with a reason, and the pod stays idle.
#[tokio::test]
async fn run_on_a_pod_without_a_model_is_refused() {
    let host = Host::new().await;
    let pod = host.start_with(&Namespace::operator(), "tools", "a", None, Exposure::HostOnly, "").await.unwrap();
    let refused = pod.request(Method::Run { input: "hi".into() }).await.unwrap();
    let Answer::Refused { code, message } = refused else { panic!("{refused:?}") };
    assert_eq!(code, ErrorCode::ProviderError);
    assert!(message.contains("no [provider]"), "{message}");
    assert_eq!(pod.lifecycle(), Lifecycle::Idle);
}

/// A run streams, at pod level, each turn's start and end, the model's
/// usage, and a tool call's arguments as they arrive.
#[tokio::test]
async fn runs_stream_turns_usage_and_argument_deltas() {
    let host = Host::new().await;
    let glob = json!({"tool_calls": [{"name": "Glob", "arguments": {"pattern": "**/*.txt"}}]});
    let turns = json!([glob, {"text": "none found"}]);
    let pod = host.start(&Namespace::operator(), "chatty", "a", Some(turns), Exposure::HostOnly).await.unwrap();
    let events = run_events(&pod, "look").await;
    let ends = of_type(&events, "turn_end");
    assert_eq!(
        ends.iter().map(|e| (e["turn"].as_u64(), e["stop"].as_str())).collect::<Vec<_>>(),
        [(Some(1), Some("tool_use")), (Some(2), Some("end_turn"))]
    );
    let usage = of_type(&events, "usage");
    assert_eq!(usage.len(), 2);
    assert!(usage.iter().all(|u| u["input_tokens"].as_u64().unwrap() > 0 && u["output_tokens"].is_u64()), "{usage:?}");
    let deltas: String =
        of_type(&events, "tool_call_args_delta").iter().map(|d| d["delta"].as_str().unwrap().to_string()).collect();
    let start = of_type(&events, "tool_call_start");
    assert_eq!(start.len(), 1);
    assert!(of_type(&events, "tool_call_args_delta").iter().all(|d| d["id"] == start[0]["id"]));
    assert_eq!(serde_json::from_str::<Value>(&deltas).unwrap(), json!({"pattern": "**/*.txt"}));
    assert_eq!(of_type(&events, "tool_result")[0]["name"], "Glob");
}

/// A plugin's data directory is the pod's own in its namespace: two pods
/// named alike in two namespaces write to different places.
#[tokio::test]
async fn plugin_data_directories_are_kept_apart_by_namespace() {
    let plugins = tempfile::tempdir().unwrap();
    let host = Host::with_probe_data(plugins.path()).await;
    let grant = "[[plugins.grant]]\nplugin = \"probe\"\ndata_dir = true\n";
    let env_turns = json!([{"tool_calls": [{"name": "Env", "arguments": {}}]}, {"text": "seen"}]);
    let mut dirs = Vec::new();
    for (tenant, work) in [("acme", "acme-work"), ("globex", "globex-work")] {
        let ns = Namespace::named(tenant).unwrap();
        let pod = host.start_with(&ns, "coder", work, Some(Some(env_turns.clone())), Exposure::HostOnly, grant);
        let pod = pod.await.unwrap();
        run_to_end(&pod, "env?").await;
        let Answer::History { items, .. } = pod.request(Method::GetHistory {}).await.unwrap() else { panic!() };
        let content = items
            .iter()
            .find_map(|i| match i {
                Item::ToolResult { content, .. } => Some(content.clone()),
                _ => None,
            })
            .expect("the Env result");
        let vars: Value = serde_json::from_str(content.trim_start_matches("env").trim()).unwrap();
        dirs.push(vars["vars"]["YOI_DATA_DIR"].as_str().unwrap().to_string());
    }
    let data = host.sb.root.join("data");
    assert_eq!(
        dirs,
        [data.join("@acme/coder/probe").display().to_string(), data.join("@globex/coder/probe").display().to_string()]
    );
}
