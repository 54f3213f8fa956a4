//! `yoi-host serve` measured as a service: a real server process on
//! 127.0.0.1 and HTTP clients. Prints four tables:
//! - noisy: tenant B's trivial tool call through the API, p50/p99, alone
//!   and while tenant A saturates its quotas with endless loops, memory
//!   bombs, Grep storms and a flood of requests; and the ratio;
//! - capacity: 100 tenants × 10 idle pods: the server's resident memory in
//!   total and per pod;
//! - throughput: tool calls per second through the API with 64 concurrent
//!   clients, p50/p99;
//! - fanout: 100 event-stream subscribers on one pod: the added latency per
//!   event against one subscriber.
//!
//! Run: `cargo bench -p yoi-host --bench serve [-- noisy|capacity|throughput|fanout]`;
//! `YOI_NOISY=Spin,Hog,Grep,flood` picks the parts of tenant A's load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../../tests/common/server_process.rs"]
#[allow(dead_code)]
mod server_process;

use server_process::{ServerProcess, write_config};

/// A server of its own in a temporary directory.
struct Server {
    process: ServerProcess,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let process = ServerProcess::start(&write_config(tmp.path(), ""), false);
        Server { process, _tmp: tmp }
    }

    fn admin(&self) -> Api {
        Api::new(&self.process.url, &self.process.tenant(&["admin-token"]))
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: &str, token: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        Api { http, base: base.to_string(), token: token.to_string() }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.request(reqwest::Method::POST, path).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self.request(reqwest::Method::PUT, path).body(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A new tenant with `quotas`, through the admin API.
    async fn tenant(&self, name: &str, quotas: Value) -> Api {
        let (status, body) = self.post("/v1/admin/tenants", json!({"name": name, "quotas": quotas})).await;
        assert_eq!(status, 201, "{body}");
        Api::new(&self.base, body["token"].as_str().unwrap())
    }

    async fn upload_probe(&self) {
        let probe = std::fs::read(Path::new(env!("YOI_GUEST_DIR")).join("probe.wasm")).unwrap();
        let (status, body) = self.put("/v1/plugins/probe", probe).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn pod(&self, name: &str, toml: &str) {
        let (status, body) = self.put(&format!("/v1/pods/{name}"), toml.to_string()).await;
        assert_eq!(status, 201, "{body}");
    }

    /// One trivial tool call's round trip.
    async fn noop(&self, pod: &str) -> Duration {
        let start = Instant::now();
        let (status, body) = self.post(&format!("/v1/pods/{pod}/tools/Noop"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["ok"].is_object(), "{body}");
        start.elapsed()
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `n` trivial calls, one at a time, from a thread and runtime of their
/// own (so that the load's client tasks do not delay them in this process).
async fn noop_samples(api: &Api, pod: &str, n: usize) -> Vec<Duration> {
    let (api, pod) = (Api::new(&api.base, &api.token), pod.to_string());
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                samples.push(api.noop(&pod).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap()
}

async fn noisy(server: &Server) {
    let admin = server.admin();
    let quiet = admin.tenant("quiet", json!({"requests_per_second": 10000})).await;
    quiet.upload_probe().await;
    quiet.pod("p", "[pod]\nname = \"p\"\n").await;
    let noisy = admin
        .tenant("noisy", json!({"tool_timeout_ms": 2000, "tool_memory_mb": 256, "requests_per_second": 200}))
        .await;
    noisy.upload_probe().await;
    // A workspace for Grep to search: 200 files of 64 KiB.
    let line = "the quick brown fox jumps over the lazy dog 0123456789\n".repeat(1200);
    for i in 0..200 {
        noisy.put(&format!("/v1/files/src/f{i}.txt"), line.clone()).await;
    }
    noisy
        .pod("n", "[pod]\nname = \"n\"\n[limits]\nconcurrent_tool_calls = 16\n[[scope.allow]]\ntarget = \"src\"\npermission = \"read\"\n")
        .await;
    let greeting =
        noisy.request(reqwest::Method::GET, "/v1/pods/n").send().await.unwrap().json::<Value>().await.unwrap();
    let src = greeting["greeting"]["cwd"].as_str().unwrap().to_string();

    let n = 400;
    for _ in 0..20 {
        quiet.noop("p").await;
    }
    let mut alone = noop_samples(&quiet, "p", n).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    let kinds = [
        ("Spin", json!({})),
        ("Hog", json!({})),
        ("Grep", json!({"pattern": "l[a-z]+y d.g", "path": src, "output_mode": "count"})),
    ];
    // YOI_NOISY=Spin,Hog,Grep,flood picks parts of the load (all by default).
    let parts = std::env::var("YOI_NOISY").unwrap_or_else(|_| "Spin,Hog,Grep,flood".into());
    let kinds: Vec<_> = kinds.into_iter().filter(|(tool, _)| parts.split(',').any(|p| p == *tool)).collect();
    for i in 0..if kinds.is_empty() { 0 } else { 16 } {
        let (tool, input) = kinds[i % kinds.len()].clone();
        let (noisy, stop) = (noisy.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = noisy.post(&format!("/v1/pods/n/tools/{tool}"), input.clone()).await;
                calls += 1;
            }
            calls
        }));
    }
    for _ in 0..if parts.contains("flood") { 4 } else { 0 } {
        // Requests past the tenant's rate: refused at the door.
        let (noisy, stop) = (noisy.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = noisy.request(reqwest::Method::GET, "/v1/pods").send().await;
                calls += 1;
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut loaded = noop_samples(&quiet, "p", n).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut noisy_requests = 0;
    for task in load {
        noisy_requests += task.await.unwrap();
    }
    let (a50, a99) = (percentile(&mut alone, 0.5), percentile(&mut alone, 0.99));
    let (l50, l99) = (percentile(&mut loaded, 0.5), percentile(&mut loaded, 0.99));
    println!("\n## noisy neighbour: tenant B's trivial tool call through the API ({n} calls each)");
    println!("| B's call | p50 | p99 |");
    println!("|---|---|---|");
    println!("| alone | {} | {} |", ms(a50), ms(a99));
    println!("| A loops, bombs memory, greps, floods ({noisy_requests} requests) | {} | {} |", ms(l50), ms(l99));
    println!(
        "| ratio | {:.2}x | {:.2}x (aim ≤ 1.5x) |",
        l50.as_secs_f64() / a50.as_secs_f64(),
        l99.as_secs_f64() / a99.as_secs_f64()
    );
}

async fn capacity(server: &Server) {
    let admin = server.admin();
    let tenants = 100;
    let pods = 10;
    let mut apis = Vec::new();
    for t in 0..tenants {
        let api = admin.tenant(&format!("t{t}"), json!({})).await;
        // The tenant's state opens on its first request.
        api.request(reqwest::Method::GET, "/v1/pods").send().await.unwrap();
        apis.push(api);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let started = Instant::now();
    for api in &apis {
        for p in 0..pods {
            api.pod(&format!("p{p}"), &format!("[pod]\nname = \"p{p}\"\n")).await;
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    let total = tenants * pods;
    println!("\n## capacity: {tenants} tenants × {pods} idle pods");
    println!("| server RSS with the tenants open | with {total} pods | per pod | created in |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.2} s ({:.2} ms per pod) |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / total as f64,
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / total as f64
    );
}

async fn throughput(server: &Server) {
    let admin = server.admin();
    let api = admin.tenant("busy", json!({"concurrent_tool_calls": 256, "requests_per_second": 1000000})).await;
    api.upload_probe().await;
    api.pod("p", "[pod]\nname = \"p\"\n[limits]\nconcurrent_tool_calls = 64\n").await;
    for _ in 0..50 {
        api.noop("p").await;
    }
    let clients = 64;
    let window = Duration::from_secs(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while started.elapsed() < window {
                samples.push(api.noop("p").await);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    println!(
        "\n## throughput: trivial tool calls through the API, {clients} concurrent clients, {} s",
        window.as_secs()
    );
    println!("| calls/s | p50 | p99 |");
    println!("|---|---|---|");
    let rate = samples.len() as f64 / elapsed.as_secs_f64();
    println!("| {rate:.0} | {} | {} |", ms(percentile(&mut samples, 0.5)), ms(percentile(&mut samples, 0.99)));
}

/// Receipt times of the text deltas of one run, from the message's POST.
async fn deltas(api: &Api, subscribers: usize) -> Vec<Vec<Duration>> {
    let mut streams = Vec::new();
    for _ in 0..subscribers {
        let response = api.request(reqwest::Method::GET, "/v1/pods/talker/events").send().await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let posted = Instant::now();
    let (status, body) = api.post("/v1/pods/talker/messages", json!({"input": "talk"})).await;
    assert_eq!(status, 202, "{body}");
    let mut readers = Vec::new();
    for mut response in streams {
        readers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut buffer = String::new();
            loop {
                let chunk = response.chunk().await.unwrap().expect("the stream ended");
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if block.contains("\"type\":\"text_delta\"") {
                        times.push(posted.elapsed());
                    }
                    if block.contains("\"type\":\"run_end\"") {
                        return times;
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for reader in readers {
        all.push(reader.await.unwrap());
    }
    all
}

async fn fanout(server: &Server) {
    let admin = server.admin();
    let api = admin.tenant("talk", json!({"requests_per_second": 100000})).await;
    let text: String = (0..200).map(|i| format!("word{i} ")).collect();
    let turns: Vec<Value> = (0..4).map(|_| json!({"text": text, "chunk_delay_ms": 2})).collect();
    api.put("/v1/files/script.json", json!({ "turns": turns }).to_string()).await;
    api.pod(
        "talker",
        "[pod]\nname = \"talker\"\n[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n",
    )
    .await;
    deltas(&api, 1).await; // warm-up
    let baseline = deltas(&api, 1).await.remove(0);
    let many = deltas(&api, 100).await;
    let n = baseline.len();
    let mut added = Vec::new();
    for times in &many {
        assert_eq!(times.len(), n, "a subscriber missed deltas");
        for (t, base) in times.iter().zip(&baseline) {
            added.push(t.saturating_sub(*base));
        }
    }
    println!("\n## fan-out: 100 event-stream subscribers on one pod ({n} text deltas, against one subscriber)");
    println!("| added latency per event p50 | p99 | max |");
    println!("|---|---|---|");
    let max = *added.iter().max().unwrap();
    println!("| {} | {} | {} |", ms(percentile(&mut added, 0.5)), ms(percentile(&mut added, 0.99)), ms(max));
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let all = which.is_empty();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        for (name, run) in [("noisy", 0), ("capacity", 1), ("throughput", 2), ("fanout", 3)] {
            if !all && !which.iter().any(|w| w == name) {
                continue;
            }
            // A fresh server for each, so one's state does not weigh on another.
            let server = Server::start();
            match run {
                0 => noisy(&server).await,
                1 => capacity(&server).await,
                2 => throughput(&server).await,
                _ => fanout(&server).await,
            }
        }
    });
}
