//! The file tools through wasm versus the same work done natively in the same
//! run (std::fs and the same ripgrep crates), on a generated tree of 20 000
//! files / 200 MB. Prints a table with the wasm/native ratio per operation.
//!
//! Run: `cargo bench -p yoi-host --bench fs_tools`
//! The tree is generated once under `target/bench-fs-tree` and reused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use globset::GlobBuilder;
use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use serde_json::json;
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginSet, PodContext, truncate};
use yoi_host::scope::{Permission, RuleSpec, Scope};

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 100;
const FILE_BYTES: usize = 10 * 1024;
/// The pods' output cap here: large enough that results are not cut, so
/// both sides produce the same text.
const OUTPUT_CAP: usize = 4 << 20;
/// A word planted in one file of every 400, so a search must scan every file.
const NEEDLE: &str = "XYZZY";

/// Deterministic text: lines of pseudo-random words.
fn text(seed: usize, bytes: usize) -> String {
    const WORDS: [&str; 16] = [
        "alpha", "beta", "gamma", "delta", "fn", "let", "match", "struct", "impl", "return", "value", "index",
        "buffer", "error", "result", "option",
    ];
    let mut state = seed as u64 * 6364136223846793005 + 1442695040888963407;
    let mut out = String::with_capacity(bytes + 80);
    while out.len() < bytes {
        for _ in 0..8 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push_str(WORDS[(state >> 60) as usize]);
            out.push(' ');
        }
        out.push('\n');
    }
    out
}

fn generate_tree(root: &Path) -> io::Result<()> {
    let marker = root.join(".complete");
    if marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(root);
    for d in 0..DIRS {
        let dir = root.join(format!("mod{:03}/sub{}", d, d % 7));
        std::fs::create_dir_all(&dir)?;
        for f in 0..FILES_PER_DIR {
            let n = d * FILES_PER_DIR + f;
            let ext = ["rs", "py", "txt", "md"][n % 4];
            let mut body = text(n, FILE_BYTES);
            if n % 400 == 7 {
                body.push_str(&format!("the {NEEDLE}{n} marker\n"));
            }
            std::fs::write(dir.join(format!("file{n:05}.{ext}")), body)?;
        }
    }
    std::fs::write(root.join("big.txt"), text(1, 1 << 20))?;
    std::fs::write(root.join("small.txt"), text(2, 2000))?;
    std::fs::write(&marker, "")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

// ---- native equivalents of what the tools do -------------------------------

fn native_read(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    std::hint::black_box(xxhash_rust::xxh3::xxh3_128(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    let mut out = String::new();
    for (i, line) in text.split('\n').take(2000).enumerate() {
        out.push_str(&format!("{:6}\t{}\n", i + 1, line));
    }
    truncate(&out, OUTPUT_CAP)
}

fn native_glob(root: &Path) -> Vec<PathBuf> {
    let matcher = GlobBuilder::new("**/*.rs").literal_separator(true).build().unwrap().compile_matcher();
    let mut found: Vec<(SystemTime, PathBuf)> = Vec::new();
    for entry in ignore::WalkBuilder::new(root).standard_filters(false).build() {
        let entry = entry.unwrap();
        if entry.file_type().is_some_and(|t| t.is_file()) && matcher.is_match(entry.path().strip_prefix(root).unwrap())
        {
            found.push((entry.metadata().unwrap().modified().unwrap(), entry.into_path()));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().take(1000).map(|(_, p)| p).collect()
}

fn native_grep(root: &Path) -> Vec<String> {
    let matcher = RegexMatcherBuilder::new().multi_line(true).build(&format!("{NEEDLE}[0-9]+")).unwrap();
    let mut searcher = SearcherBuilder::new().binary_detection(BinaryDetection::quit(0)).line_number(true).build();
    let mut lines = Vec::new();
    let walk = ignore::WalkBuilder::new(root).require_git(false).sort_by_file_name(|a, b| a.cmp(b)).build();
    for entry in walk {
        let entry = entry.unwrap();
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path().display().to_string();
        searcher
            .search_path(
                &matcher,
                entry.path(),
                Lossy(|n, line| {
                    lines.push(format!("{path}:{n}:{}", line.trim_end_matches(['\n', '\r'])));
                    Ok(true)
                }),
            )
            .unwrap();
    }
    lines
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-fs-tree");
    let t = Instant::now();
    generate_tree(&root).unwrap();
    let root = root.canonicalize().unwrap();
    eprintln!("tree ready in {:.1} s: {} files", t.elapsed().as_secs_f64(), DIRS * FILES_PER_DIR + 2);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache");
    let options = HostOptions { cache_dir: cache, allocator: Allocator::Pooling, ceilings: Default::default() };
    let host = rt.block_on(PluginSet::with_plugins(&options, &[])).unwrap();
    let rule = RuleSpec { target: root.clone(), permission: Permission::Write, recursive: true };
    let pod = Arc::new(PodContext::new(
        "bench",
        root.clone(),
        Scope::resolve(&[rule], &[], Path::new("/")).unwrap(),
        CallLimits { output_max_bytes: OUTPUT_CAP, ..CallLimits::default() },
    ));
    let call = |tool: &str, input: serde_json::Value| {
        let out = rt.block_on(host.call(&pod, tool, &input.to_string())).unwrap();
        std::hint::black_box(out)
    };

    // `fs_tools profile TOOL INPUT_JSON N`: only that call, N times, for profiling.
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "profile") {
        let input: serde_json::Value = serde_json::from_str(&args[pos + 2]).unwrap();
        let n: usize = args[pos + 3].parse().unwrap();
        let d = time(n, || call(&args[pos + 1], input.clone()));
        println!("{} median {}", args[pos + 1], show(d));
        return;
    }

    // Both sides must agree before they are timed.
    let grep_input = json!({"pattern": format!("{NEEDLE}[0-9]+"), "output_mode": "content"});
    let wasm_lines = call("Grep", grep_input.clone()).content.unwrap();
    assert_eq!(wasm_lines, native_grep(&root).join("\n"));
    let wasm_glob = call("Glob", json!({"pattern": "**/*.rs"})).content.unwrap();
    assert_eq!(wasm_glob.lines().count(), native_glob(&root).len());

    let big = root.join("big.txt");
    let small = root.join("small.txt");
    let rows: Vec<(&str, Duration, Duration)> = vec![
        (
            "Read small file (2 KB), end to end",
            time(2000, || call("Read", json!({"file_path": small}))),
            time(2000, || native_read(&small)),
        ),
        ("Read 1 MB file", time(50, || call("Read", json!({"file_path": big}))), time(50, || native_read(&big))),
        (
            "Grep content mode over the tree",
            time(5, || call("Grep", grep_input.clone())),
            time(5, || native_grep(&root)),
        ),
        (
            "Glob **/*.rs over the tree",
            time(5, || call("Glob", json!({"pattern": "**/*.rs"}))),
            time(5, || native_glob(&root)),
        ),
    ];
    println!("\n## File tools: wasm component vs native ({} files, {} MB)\n", DIRS * FILES_PER_DIR + 2, 200);
    println!("| operation | wasm (median) | native (median) | wasm / native |");
    println!("|---|---|---|---|");
    for (name, wasm, native) in rows {
        println!("| {name} | {} | {} | {:.2}x |", show(wasm), show(native), wasm.as_secs_f64() / native.as_secs_f64());
    }
}
