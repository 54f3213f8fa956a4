//! What the benchmarks share: the testing guests, timing and percentiles,
//! and the two measures of a call's fixed cost (a bare instantiate, and a
//! whole trivial call through the host).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use yoi_host::plugin::engine::build_engine;
use yoi_host::plugin::{Allocator, CallLimits, PluginSet, PodContext};
use yoi_host::scope::{Permission, RuleSpec, Scope};

/// A testing guest built by the host's build script.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("YOI_GUEST_DIR")).join(format!("{name}.wasm"))
}

/// The `p` percentile (0..=1) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// p50 and p99 of `rounds` runs of `f`.
pub fn p50_p99<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99))
}

/// A duration in µs or ms, whichever reads better.
pub fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A pod that may write `dir`.
pub fn pod_writing(dir: &Path, limits: CallLimits) -> Arc<PodContext> {
    let rule = RuleSpec { target: dir.to_path_buf(), permission: Permission::Write, recursive: true };
    let scope = Scope::resolve(&[rule], &[], Path::new("/")).unwrap();
    Arc::new(PodContext::new("bench", dir.to_path_buf(), scope, limits))
}

struct Bare {
    wasi: WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// p50/p99 of instantiating the probe component (imports it does not use at
/// instantiation are stubbed) in a fresh store (made and dropped untimed).
pub async fn instantiate(allocator: Allocator, rounds: usize) -> (Duration, Duration) {
    let engine = build_engine(allocator).unwrap();
    let component = Component::from_file(&engine, guest("probe")).unwrap();
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut store = Store::new(
            &engine,
            Bare { wasi: WasiCtx::builder().build(), table: wasmtime::component::ResourceTable::new() },
        );
        store.set_epoch_deadline(u64::MAX / 2);
        let t = Instant::now();
        pre.instantiate_async(&mut store).await.unwrap();
        samples.push(t.elapsed());
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99))
}

/// p50/p99 of calls of `tool` with `input` for `pod` (after a warm-up), and
/// whether they succeeded (every call must end alike).
pub async fn call_times(
    host: &PluginSet,
    pod: &Arc<PodContext>,
    tool: &str,
    input: &str,
    rounds: usize,
) -> (Duration, Duration, bool) {
    let ok = host.call(pod, tool, input).await.is_ok();
    for _ in 0..rounds.div_ceil(20) {
        assert_eq!(host.call(pod, tool, input).await.is_ok(), ok);
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let result = host.call(pod, tool, input).await;
        samples.push(t.elapsed());
        assert_eq!(result.is_ok(), ok);
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99), ok)
}
