//! Many pods in one process. Prints three tables:
//! - idle pods: start N = 100, 1 000 and 10 000 idle pods (scripted
//!   provider, reached through their handles, each writing a directory of
//!   its own): start time, resident memory and open files per pod;
//! - load: 1 000 pods each making tool calls at once: calls/s, p50/p99 of a
//!   call (its wait for a slot included), failures, the longest wait for an
//!   instance slot;
//! - starvation: another pod's `get_history` round trip and a trivial tool
//!   call, p50/p99, while 4 pods loop a CPU-bound call up to its deadline,
//!   against the same with those pods idle, and the ratio.
//!
//! Run: `cargo bench -p yoi-host --bench pods [-- idle|load|starvation] [N...]`
//! (N: the idle pod counts, default 100 1000 10000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use yoi_host::identity::Namespace;
use yoi_host::manifest::Manifest;
use yoi_host::plugin::{Allocator, HostOptions, PluginSet, PodContext};
use yoi_host::pod::{Exposure, PodHandle, PodSpec, WeakPod, pod_context, start};
use yoi_host::protocol::Method;
use yoi_host::provider::{Provider, RetryPolicy, scripted};
use yoi_host::scope_lock::ScopeLock;
use yoi_host::session::SessionStore;

/// One process's roots and plugins (the builtins and the test probe).
struct Host {
    root: PathBuf,
    _tmp: tempfile::TempDir,
    _plugin_dir: tempfile::TempDir,
    plugins: Arc<PluginSet>,
}

impl Host {
    async fn new() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let plugin_dir = tempfile::tempdir().unwrap();
        let probe = Path::new(env!("YOI_GUEST_DIR")).join("probe.wasm");
        std::fs::copy(probe, plugin_dir.path().join("probe.wasm")).unwrap();
        let options = HostOptions {
            cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"),
            allocator: Allocator::Pooling,
            ceilings: Default::default(),
        };
        let plugins = Arc::new(PluginSet::with_plugins(&options, &[plugin_dir.path().to_path_buf()]).await.unwrap());
        Host { root, _tmp: tmp, _plugin_dir: plugin_dir, plugins }
    }

    /// The manifest of pod `name`, writing `<root>/work/<name>`.
    fn manifest(&self, name: &str, extra: &str) -> yoi_host::manifest::LoadedManifest {
        let work = self.root.join("work").join(name);
        std::fs::create_dir_all(&work).unwrap();
        let text = format!(
            "[pod]\nname = \"{name}\"\n[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"unused.json\"\n\
             [[scope.allow]]\ntarget = \"{}\"\npermission = \"write\"\n{extra}",
            work.display()
        );
        Manifest::parse(&text).unwrap().resolve(&self.root, self.root.join(format!("{name}.toml"))).unwrap()
    }

    async fn start(&self, name: &str) -> PodHandle {
        let manifest = self.manifest(name, "");
        let script = serde_json::from_value(json!({"turns": []})).unwrap();
        let provider: Arc<dyn Provider> = Arc::new(scripted::Scripted::new("m", script, &manifest.working_dir));
        start(PodSpec {
            manifest,
            plugins: self.plugins.clone(),
            provider: Some(provider),
            retry: RetryPolicy::default(),
            sessions: SessionStore::new(self.root.join("sessions")),
            runtime_root: self.root.join("run"),
            resume: None,
            scope_lock: ScopeLock::new(self.root.join("run/scope.lock")),
            data_root: self.root.join("data"),
            namespace: Namespace::operator(),
            exposure: Exposure::HostOnly,
            env: yoi_host::pod::process_environment(),
            metering: None,
        })
        .await
        .unwrap()
    }

    /// A tool-call context as pod `name` would have it.
    fn context(&self, name: &str, extra: &str) -> Arc<PodContext> {
        let manifest = self.manifest(name, extra);
        Arc::new(pod_context(&manifest, &self.plugins, &self.root.join("data"), &|_| None, None).unwrap())
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn stop_all(pods: Vec<PodHandle>) {
    let weak: Vec<WeakPod> = pods.iter().map(PodHandle::downgrade).collect();
    drop(pods);
    for pod in weak {
        pod.wait().await;
    }
}

async fn idle(counts: &[usize]) {
    println!("## Idle pods (host-only, scripted provider, one write scope each)\n");
    println!("| pods | start per pod | RSS per pod | open files per pod | total RSS |");
    println!("|---|---|---|---|---|");
    for &n in counts {
        let host = Host::new().await;
        for i in 0..n {
            std::fs::create_dir_all(host.root.join("work").join(format!("p{i}"))).unwrap();
        }
        let (rss0, files0) = (rss_kib(), open_files());
        let started = Instant::now();
        let mut pods = Vec::with_capacity(n);
        for i in 0..n {
            pods.push(host.start(&format!("p{i}")).await);
        }
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss1, files1) = (rss_kib(), open_files());
        println!(
            "| {n} | {} | {:.1} KiB | {:.2} | {:.0} MiB |",
            us(elapsed / n as u32),
            rss1.saturating_sub(rss0) as f64 / n as f64,
            files1.saturating_sub(files0) as f64 / n as f64,
            rss1 as f64 / 1024.0
        );
        stop_all(pods).await;
    }
}

async fn load() {
    let (pods, per_pod) = (1000, 4);
    let host = Arc::new(Host::new().await);
    let contexts: Vec<Arc<PodContext>> = (0..pods).map(|i| host.context(&format!("l{i}"), "")).collect();
    // Warm up: one call per pod.
    for context in contexts.iter().take(10) {
        host.plugins.call(context, "Noop", "{}").await.unwrap();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for context in &contexts {
        for _ in 0..per_pod {
            let (host, context) = (host.clone(), context.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let result = host.plugins.call(&context, "Noop", "{}").await;
                (t.elapsed(), result.is_ok())
            }));
        }
    }
    let mut times = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (time, ok) = task.await.unwrap();
        times.push(time);
        failed += usize::from(!ok);
    }
    let elapsed = started.elapsed();
    let calls = times.len();
    println!("\n## Load: {pods} pods, {per_pod} calls each at once (probe Noop; 256 instance slots)\n");
    println!("| calls | calls/s | p50 | p99 | failed | longest wait for a slot |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {calls} | {:.0} | {} | {} | {failed} | {} |",
        calls as f64 / elapsed.as_secs_f64(),
        us(percentile(&mut times, 0.5)),
        us(percentile(&mut times, 0.99)),
        us(host.plugins.runtime().admission().longest_wait())
    );
}

/// p50/p99 of `rounds` get_history round trips and trivial calls of one pod.
async fn probe_latency(host: &Host, pod: &PodHandle, context: &Arc<PodContext>, rounds: usize) -> [Duration; 4] {
    let (mut history, mut calls) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        pod.request(Method::GetHistory {}).await.unwrap();
        history.push(t.elapsed());
        let t = Instant::now();
        host.plugins.call(context, "Noop", "{}").await.unwrap();
        calls.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    [
        percentile(&mut history, 0.5),
        percentile(&mut history, 0.99),
        percentile(&mut calls, 0.5),
        percentile(&mut calls, 0.99),
    ]
}

async fn starvation() {
    let host = Arc::new(Host::new().await);
    let pod = host.start("quiet").await;
    let context = host.context("quiet-tools", "");
    let rounds = 1000;
    let _ = probe_latency(&host, &pod, &context, 20).await;
    let calm = probe_latency(&host, &pod, &context, rounds).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hogs = Vec::new();
    for i in 0..4 {
        let hog = host.context(&format!("hog{i}"), "[limits]\ntool_timeout_ms = 250\n");
        let (host, stop) = (host.clone(), stop.clone());
        hogs.push(tokio::spawn(async move {
            let mut spins = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = host.plugins.call(&hog, "Spin", "{}").await;
                spins += 1;
            }
            spins
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = probe_latency(&host, &pod, &context, rounds).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut spins = 0;
    for hog in hogs {
        spins += hog.await.unwrap();
    }
    println!("\n## Starvation: 4 pods loop a CPU-bound call (deadline 250 ms) beside a quiet pod\n");
    println!("| measure | idle p50 | idle p99 | busy p50 | busy p99 | p99 busy / idle |");
    println!("|---|---|---|---|---|---|");
    for (label, i) in [("get_history round trip", 0), ("trivial tool call (Noop)", 2)] {
        println!(
            "| {label} | {} | {} | {} | {} | {:.1}x |",
            us(calm[i]),
            us(calm[i + 1]),
            us(busy[i]),
            us(busy[i + 1]),
            busy[i + 1].as_secs_f64() / calm[i + 1].as_secs_f64()
        );
    }
    println!("\n({spins} CPU-bound calls ran to their deadline meanwhile.)");
    stop_all(vec![pod]).await;
}

fn main() {
    let limit = yoi_host::os::raise_open_file_limit().unwrap();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![100, 1_000, 10_000] } else { counts };
    let only = |mode: &str| args.iter().all(|a| a.parse::<usize>().is_ok()) || args.iter().any(|a| a == mode);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("(open-file limit {limit})\n");
    if only("idle") {
        rt.block_on(idle(&counts));
    }
    if only("load") {
        rt.block_on(load());
    }
    if only("starvation") {
        rt.block_on(starvation());
    }
}
