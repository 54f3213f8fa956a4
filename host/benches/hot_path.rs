//! The tool-call hot path: each figure beside its native baseline, measured
//! in the same run, and the ratio.
//!
//! - instantiate: the probe component in a fresh store (no native
//!   equivalent: a native function needs no instance);
//! - a trivial call through the host (`PluginSet::call`: admission, the hop
//!   to a call thread and back, WASI context, instance, call, drop), against
//!   an empty task sent the same way to the same kind of call threads;
//! - the file tools through wasm against the same work done natively
//!   (std::fs and the same ripgrep crates) on a generated tree of 20 000
//!   files / 200 MB.
//!
//! Run: `cargo bench -p yoi-host --bench hot_path`
//! The tree is generated once under `target/bench-fs-tree` and reused.
//!
//! `cargo bench -p yoi-host --bench hot_path -- profile TOOL INPUT_JSON N`
//! runs only that call, N times (`Noop {}` for the trivial call), to run
//! under `perf record`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobSetBuilder};
use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use serde_json::json;
use support::{guest, p50_p99, pod_writing, show};
use yoi_host::plugin::workers::Workers;
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginSet, PluginSource, truncate};

mod support;

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

// ---- native equivalents of what the tools do -------------------------------

/// Read's own line code (`plugins/fs-tools/src/lines.rs`), compiled natively.
#[path = "../../plugins/fs-tools/src/lines.rs"]
// Its unit tests run in tests/fs_tools.rs.
#[allow(dead_code, unused_imports)]
mod lines;

/// What Read does, natively: the file in chunks of the same size, hashed
/// for the read tracker, its default window numbered by the same code.
fn native_read(path: &Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut chunk = vec![0; 256 << 10];
    let mut seen = xxhash_rust::xxh3::Xxh3::new();
    let mut window = lines::Window::new(0, 2000);
    loop {
        let n = file.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        seen.update(&chunk[..n]);
        window.feed(&chunk[..n]);
    }
    std::hint::black_box(seen.digest128());
    truncate(&window.finish().text, OUTPUT_CAP)
}

fn native_glob(root: &Path) -> Vec<PathBuf> {
    let glob = GlobBuilder::new("**/*.rs").literal_separator(true).build().unwrap();
    let matcher = GlobSetBuilder::new().add(glob).build().unwrap();
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

/// A p50 and a p99.
type P50P99 = (Duration, Duration);

/// Like `p50_p99` for a walk of the tree, after one untimed round that
/// brings the tree into the page cache. Both sides are meant to be timed
/// on cached files; if the kernel read from the disk all the same (memory
/// pressure from other work on the machine), the figure says so.
fn from_page_cache<T>(what: &str, rounds: usize, mut f: impl FnMut() -> T) -> P50P99 {
    std::hint::black_box(f());
    let before = blocks_read();
    let figures = p50_p99(rounds, f);
    let read = blocks_read().saturating_sub(before) * 512;
    if read > 0 {
        eprintln!(
            "note: {what} read {:.1} MB from the disk while timed: its figure includes disk I/O",
            read as f64 / 1e6
        );
    }
    figures
}

/// Blocks of 512 bytes this process has read from storage so far.
fn blocks_read() -> u64 {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_inblock as u64
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-fs-tree");
    let t = std::time::Instant::now();
    generate_tree(&root).unwrap();
    let root = root.canonicalize().unwrap();
    eprintln!("tree ready in {:.1} s: {} files", t.elapsed().as_secs_f64(), DIRS * FILES_PER_DIR + 2);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache");
    let options = HostOptions { cache_dir: cache, allocator: Allocator::Pooling, ceilings: Default::default() };
    let mut host = rt.block_on(PluginSet::with_plugins(&options, &[])).unwrap();
    rt.block_on(host.add(PluginSource::from_file(&guest("probe")).unwrap())).unwrap();
    let pod = pod_writing(&root, CallLimits { output_max_bytes: OUTPUT_CAP, ..CallLimits::default() });
    let call = |tool: &str, input: &serde_json::Value| {
        let out = rt.block_on(host.call(&pod, tool, &input.to_string())).unwrap();
        std::hint::black_box(out)
    };

    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "profile") {
        let input: serde_json::Value = serde_json::from_str(&args[pos + 2]).unwrap();
        let n: usize = args[pos + 3].parse().unwrap();
        let (p50, p99) = p50_p99(n, || call(&args[pos + 1], &input));
        println!("{} p50 {} p99 {}", args[pos + 1], show(p50), show(p99));
        return;
    }

    // Both sides must agree before they are timed.
    let grep_input = json!({"pattern": format!("{NEEDLE}[0-9]+"), "output_mode": "content"});
    let wasm_lines = call("Grep", &grep_input).content.unwrap();
    assert_eq!(wasm_lines, native_grep(&root).join("\n"));
    let glob_input = json!({"pattern": "**/*.rs"});
    let wasm_glob = call("Glob", &glob_input).content.unwrap();
    let native_listing: Vec<String> = native_glob(&root).iter().map(|p| p.display().to_string()).collect();
    assert_eq!(wasm_glob, native_listing.join("\n"));
    let wasm_read = call("Read", &json!({"file_path": root.join("big.txt")})).content.unwrap();
    assert_eq!(wasm_read, native_read(&root.join("big.txt")));

    // The native side of a trivial call: nothing, sent to call threads of
    // the same number and priority, and awaited.
    let workers = Workers::start(std::thread::available_parallelism().map_or(2, |n| n.get())).unwrap();
    let big = root.join("big.txt");
    let small = root.join("small.txt");
    let (read_small, read_big) = (json!({"file_path": small}), json!({"file_path": big}));
    let (inst50, inst99) = rt.block_on(support::instantiate(Allocator::Pooling, 5000));
    let rows: Vec<(&str, P50P99, Option<P50P99>)> = vec![
        ("instantiate (probe, fresh store)", (inst50, inst99), None),
        (
            "trivial call end to end (native: an empty task through the call threads)",
            p50_p99(5000, || call("Noop", &json!({}))),
            Some(p50_p99(5000, || rt.block_on(workers.spawn(async {})).unwrap())),
        ),
        (
            "Read small file (2 KB), end to end",
            p50_p99(2000, || call("Read", &read_small)),
            Some(p50_p99(2000, || native_read(&small))),
        ),
        ("Read 1 MB file", p50_p99(50, || call("Read", &read_big)), Some(p50_p99(50, || native_read(&big)))),
        (
            "Grep content mode over the tree",
            from_page_cache("Grep (wasm)", 5, || call("Grep", &grep_input)),
            Some(from_page_cache("Grep (native)", 5, || native_grep(&root))),
        ),
        (
            "Glob **/*.rs over the tree",
            from_page_cache("Glob (wasm)", 5, || call("Glob", &glob_input)),
            Some(from_page_cache("Glob (native)", 5, || native_glob(&root))),
        ),
    ];
    println!("\n## Tool-call hot path: wasm vs native ({} files, {} MB in the tree)\n", DIRS * FILES_PER_DIR + 2, 200);
    println!("| measure | wasm p50 | wasm p99 | native p50 | wasm / native (p50) |");
    println!("|---|---|---|---|---|");
    for (name, (p50, p99), native) in rows {
        let (native, ratio) = match native {
            Some((n50, _)) => (show(n50), format!("{:.2}x", p50.as_secs_f64() / n50.as_secs_f64())),
            None => ("-".to_string(), "-".to_string()),
        };
        println!("| {name} | {} | {} | {native} | {ratio} |", show(p50), show(p99));
    }
}
