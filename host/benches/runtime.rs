//! Plugin runtime benchmark: prints a table of
//! - cold compile vs cache load per plugin,
//! - instantiate time with the pooling vs the on-demand allocator,
//! - a whole trivial tool call (fresh store + instance + call + drop), p50/p99,
//!   through `PluginSet::call` with each allocator.
//!
//! Run: `cargo bench -p yoi-host --bench runtime`
//!
//! `cargo bench -p yoi-host --bench runtime -- languages` instead compares
//! plugins written in Rust, Python and JavaScript (the examples, and the
//! starters of `plugins new`, which do identical work): size, cold compile,
//! cache load and per-call time, with Rust as the baseline. It installs the
//! guest toolchains and builds the components first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{call_times, guest, instantiate, ms, pod_writing, us};
use yoi_host::plugin::cache::{CacheOutcome, ComponentCache};
use yoi_host::plugin::engine::build_engine;
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginSet, PluginSource};

#[path = "../../tests/common/builds.rs"]
mod builds;
mod support;

/// Cold compile and cache load of one component, best of a few rounds.
fn compile_vs_cache(name: &str, bytes: &[u8]) -> (Duration, Duration) {
    let engine = build_engine(Allocator::Pooling).unwrap();
    let digest = format!("{name}-bench");
    let (mut cold, mut warm) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path());
        let t = Instant::now();
        let (_, outcome) = cache.load_or_compile(&engine, bytes, &digest).unwrap();
        cold = cold.min(t.elapsed());
        assert_eq!(outcome, CacheOutcome::Compiled);
        for _ in 0..5 {
            let t = Instant::now();
            let (_, outcome) = cache.load_or_compile(&engine, bytes, &digest).unwrap();
            warm = warm.min(t.elapsed());
            assert_eq!(outcome, CacheOutcome::Hit);
        }
    }
    (cold, warm)
}

/// p50/p99 of a whole trivial call through the host.
async fn trivial_call(allocator: Allocator, rounds: usize) -> (Duration, Duration) {
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions { cache_dir: cache.path().to_path_buf(), allocator, ceilings: Default::default() };
    let mut host = PluginSet::new(&options).unwrap();
    host.add(PluginSource::from_file(&guest("probe")).unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (p50, p99, ok) = call_times(&host, &pod_writing(dir.path(), CallLimits::default()), "Noop", "{}", rounds).await;
    assert!(ok);
    (p50, p99)
}

/// The `languages` mode: Rust, Python and JavaScript plugins side by side.
async fn languages() {
    let work = tempfile::tempdir().unwrap();
    let examples = builds::examples();
    let yoi_host = Path::new(env!("CARGO_BIN_EXE_yoi-host"));
    let mut starters = Vec::new();
    for (lang, name) in [("rust", "count-rs"), ("python", "count-py"), ("js", "count-js")] {
        let dir = work.path().join(name);
        builds::build_starter(yoi_host, lang, name, &dir);
        starters.push(dir.join("dist").join(format!("{}.wasm", name.replace('-', "_"))));
    }
    let csv: String = std::iter::once("id,name,score\n".to_string())
        .chain((0..100).map(|i| format!("{i},name{},{}.5\n", i % 7, i * 3 % 101)))
        .collect();
    std::fs::write(work.path().join("data.csv"), csv).unwrap();
    let doc = serde_json::json!({"items": (0..100).map(|i| serde_json::json!({"id": i, "tags": ["a", "b"]})).collect::<Vec<_>>()});
    let text = "the quick brown fox\njumps over the lazy dog\n".repeat(20);
    let rows: [(&str, PathBuf, &str, String); 6] = [
        (
            "Rust example HttpGet (refused URL: no network)",
            examples.join("http_get.wasm"),
            "HttpGet",
            serde_json::json!({"url": "http://127.0.0.1:9/"}).to_string(),
        ),
        (
            "Python example CsvStats (100 rows)",
            examples.join("csv_stats.wasm"),
            "CsvStats",
            serde_json::json!({"path": "data.csv"}).to_string(),
        ),
        (
            "JS example JsonQuery (100 items)",
            examples.join("json_query.wasm"),
            "JsonQuery",
            serde_json::json!({"json": doc.to_string(), "path": "items[*].id"}).to_string(),
        ),
        ("Rust starter (count words)", starters[0].clone(), "CountRs", serde_json::json!({"text": text}).to_string()),
        ("Python starter (same work)", starters[1].clone(), "CountPy", serde_json::json!({"text": text}).to_string()),
        ("JS starter (same work)", starters[2].clone(), "CountJs", serde_json::json!({"text": text}).to_string()),
    ];
    println!("## Plugins by language (compile: best of 3; cache load: best of 15; calls: 300 after warm-up)\n");
    println!("| component | size | cold compile | cache load | call p50 | call p99 | p50 vs Rust starter |");
    println!("|---|---|---|---|---|---|---|");
    let cache = tempfile::tempdir().unwrap();
    let options = HostOptions {
        cache_dir: cache.path().to_path_buf(),
        allocator: Allocator::Pooling,
        ceilings: Default::default(),
    };
    let mut host = PluginSet::new(&options).unwrap();
    let mut baseline = None;
    for (label, path, tool, input) in &rows {
        let bytes = std::fs::read(path).unwrap();
        let (cold, warm) = compile_vs_cache(label, &bytes);
        host.add(PluginSource::from_file(path).unwrap()).await.unwrap();
        let pod = pod_writing(work.path(), CallLimits::default());
        let (p50, p99, ok) = call_times(&host, &pod, tool, input, 300).await;
        // The HttpGet row times a request the host refuses (no grant).
        assert_eq!(ok, *tool != "HttpGet", "{label}");
        if label.starts_with("Rust starter") {
            baseline = Some(p50);
        }
        let ratio = baseline.map(|b| format!("{:.1}x", p50.as_secs_f64() / b.as_secs_f64())).unwrap_or("-".into());
        println!(
            "| {label} | {:.1} MiB | {} | {} | {} | {} | {ratio} |",
            bytes.len() as f64 / (1 << 20) as f64,
            ms(cold),
            ms(warm),
            us(p50),
            us(p99)
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    if std::env::args().any(|a| a == "languages") {
        rt.block_on(languages());
        return;
    }

    println!("## Compile vs cache load (best of 3 / of 15)\n");
    println!("| plugin | size | cold compile | cache load | ratio |");
    println!("|---|---|---|---|---|");
    let mut plugins: Vec<(String, Vec<u8>)> =
        PluginSource::builtin().into_iter().map(|s| (s.name, s.bytes.to_vec())).collect();
    plugins.push(("probe (test)".into(), std::fs::read(guest("probe")).unwrap()));
    for (name, bytes) in &plugins {
        let (cold, warm) = compile_vs_cache(name, bytes);
        let ratio = cold.as_secs_f64() / warm.as_secs_f64();
        println!("| {name} | {} KiB | {} | {} | {ratio:.0}x |", bytes.len() / 1024, ms(cold), us(warm));
    }

    let rounds = 5000;
    println!("\n## Per call ({rounds} rounds, one thread)\n");
    println!("| measure | pooling p50 | pooling p99 | on-demand p50 | on-demand p99 | on-demand / pooling (p50) |");
    println!("|---|---|---|---|---|---|");
    let (pi50, pi99) = rt.block_on(instantiate(Allocator::Pooling, rounds));
    let (oi50, oi99) = rt.block_on(instantiate(Allocator::OnDemand, rounds));
    println!(
        "| instantiate (fresh store) | {} | {} | {} | {} | {:.2}x |",
        us(pi50),
        us(pi99),
        us(oi50),
        us(oi99),
        oi50.as_secs_f64() / pi50.as_secs_f64()
    );
    let (pc50, pc99) = rt.block_on(trivial_call(Allocator::Pooling, rounds));
    let (oc50, oc99) = rt.block_on(trivial_call(Allocator::OnDemand, rounds));
    println!(
        "| trivial call end to end (WASI ctx with 1 preopen + store + instance + call + drop) | {} | {} | {} | {} | {:.2}x |",
        us(pc50),
        us(pc99),
        us(oc50),
        us(oc99),
        oc50.as_secs_f64() / pc50.as_secs_f64()
    );
}
