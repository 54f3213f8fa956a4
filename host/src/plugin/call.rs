//! One tool call: a fresh [`Store`] and instance, a WASI context built from
//! the calling pod's scope, the call's limits, and the classification of
//! whatever went wrong.
//!
//! Nothing survives a call: the store, the instance, its memory and the
//! preopened directory handles are dropped when it returns. A trap poisons
//! only that instance.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{Plugin, PluginPre};
use super::engine::EPOCH_TICK;
use super::network::HttpPolicy;
use super::output::Capture;
use super::pod_context::{CallLimits, PodContext};
use super::preopens::Extra;
use super::result::{ToolError, ToolErrorKind};

/// The data of a call's [`Store`].
pub struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_policy: HttpPolicy,
    table: ResourceTable,
    limiter: MemoryCap,
    /// The plugin's name (namespace in the state store, tag in the log).
    pub(crate) plugin: Arc<str>,
    /// The calling pod.
    pub(crate) pod: Arc<PodContext>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_policy }
    }
}

/// Caps linear memory and remembers whether the cap was hit, so that the
/// trap a guest raises when an allocation fails is reported as what it is.
struct MemoryCap {
    max_bytes: usize,
    hit: bool,
    /// The most linear memory granted.
    peak: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Why the epoch callback stopped a call.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Identifies a plugin in error messages: its name and where it came from.
#[derive(Clone, Debug)]
pub struct PluginLabel {
    /// The plugin's name.
    pub name: Arc<str>,
    /// The file it was loaded from, or `builtin`.
    pub origin: String,
}

impl std::fmt::Display for PluginLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin `{}` ({})", self.name, self.origin)
    }
}

/// Runs `body` against a fresh instance of `pre` for `pod`, within
/// `limits` and by `deadline`, and turns every way it can fail into a
/// [`ToolError`] naming the plugin. Once it has computed for a tick, it
/// computes only while holding a permit of `long_calls` (if given). The
/// most linear memory the instance had is left in `peak_memory`.
/// Dropping the returned future cancels the call at once.
#[allow(clippy::too_many_arguments)]
pub async fn with_fresh_instance<R>(
    pre: &PluginPre<CallState>,
    label: &PluginLabel,
    pod: &Arc<PodContext>,
    limits: CallLimits,
    deadline: Instant,
    long_calls: Option<Arc<Semaphore>>,
    peak_memory: &std::sync::atomic::AtomicU64,
    body: impl AsyncFnOnce(&mut Store<CallState>, &Plugin) -> wasmtime::Result<R>,
) -> Result<R, ToolError> {
    let stdout = Capture::default();
    let stderr = Capture::default();
    let wasi = wasi_context(pod, &label.name, &stdout, &stderr);
    let http_policy = HttpPolicy {
        plugin: label.name.clone(),
        pod: pod.name.clone(),
        access: pod.grants.get(&*label.name).map(|g| g.http.clone()).unwrap_or_default(),
    };
    let state = CallState {
        wasi,
        http: WasiHttpCtx::new(),
        http_policy,
        table: ResourceTable::new(),
        limiter: MemoryCap {
            max_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            hit: false,
            peak: 0,
        },
        plugin: label.name.clone(),
        pod: pod.clone(),
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    let started = Instant::now();
    // The permit of the long-call lane this call holds, if any; given back
    // when the call ends (the store drops the callback).
    let held: Arc<Mutex<Option<OwnedSemaphorePermit>>> = Arc::default();
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        match &long_calls {
            // A call still computing after its first tick is a long call:
            // it computes only while it holds a permit, and at every tick
            // gives it back and queues again. Long calls so take turns on
            // the lane's cores and leave the others to short calls and
            // the threads that serve clients.
            Some(lane) if started.elapsed() >= EPOCH_TICK => {
                held.lock().take();
                let (lane, held) = (lane.clone(), held.clone());
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        if let Ok(permit) = lane.acquire_owned().await {
                            *held.lock() = Some(permit);
                        }
                    }),
                ))
            }
            // Let other tasks on this thread run between ticks.
            _ => Ok(UpdateDeadline::Yield(1)),
        }
    });

    let instance = match pre.instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(e) => {
            return Err(ToolError::new(ToolErrorKind::HostError, format!("{label}: cannot instantiate: {e:#}")));
        }
    };
    // The epoch callback stops a guest that computes past its deadline; this
    // stops one that waits past it in a host call (a socket or HTTP response
    // that never comes, a long sleep), by dropping the call.
    let result = match tokio::time::timeout_at(deadline.into(), body(&mut store, &instance)).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
    };
    log_output(label, &stdout, &stderr);
    peak_memory.store(store.data().limiter.peak as u64, std::sync::atomic::Ordering::Relaxed);
    result.map_err(|e| classify_fault(label, &e, &limits, store.data().limiter.hit, &stderr))
}

/// WASI file calls run on the calling thread (the call threads are there
/// for it) instead of hopping to a blocking pool; the shared preopens are
/// built with the same setting.
pub(super) const FILE_CALLS_INLINE: bool = true;

/// The WASI context of a call: the pod's scope as preopens (opened once per
/// pod and plugin, see [`super::preopens`]), stdio captured,
/// and what the plugin was granted (environment variables, its data
/// directory); nothing else (no args, network or inherited stdio).
fn wasi_context(pod: &PodContext, plugin: &Arc<str>, stdout: &Capture, stderr: &Capture) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .allow_blocking_current_thread(FILE_CALLS_INLINE)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let granted = pod.grants.get(&**plugin);
    if let Some(granted) = granted {
        if !granted.sockets.is_none() {
            let access = Arc::new(granted.sockets.clone());
            builder.allow_tcp(true).allow_udp(true).socket_addr_check(move |addr, usage| {
                let allowed = access.allows(addr, usage);
                Box::pin(async move { allowed })
            });
        }
        for (var, value) in &granted.env {
            builder.env(var, value);
        }
        if let Some(dir) = &granted.data_dir {
            builder.env("YOI_DATA_DIR", dir.to_string_lossy());
        }
    }
    let extra = Extra { plugin, data_dir: granted.and_then(|g| g.data_dir.as_deref()), pod: &pod.name };
    let mut wasi = builder.build();
    *wasi.filesystem() = pod.preopens.filesystem(&pod.scope(), || pod.scope(), &extra);
    wasi
}

fn log_output(label: &PluginLabel, stdout: &Capture, stderr: &Capture) {
    let plugin = &*label.name;
    if !stdout.is_empty() {
        tracing::info!(plugin, "stdout: {}", stdout.text());
    }
    if !stderr.is_empty() {
        tracing::info!(plugin, "stderr: {}", stderr.text());
    }
}

/// How much of the plugin's stderr goes into the message of a trap.
const STDERR_IN_ERROR: usize = 1024;

fn classify_fault(
    label: &PluginLabel,
    err: &wasmtime::Error,
    limits: &CallLimits,
    hit_memory_cap: bool,
    stderr: &Capture,
) -> ToolError {
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return ToolError::new(
            ToolErrorKind::Timeout,
            format!("{label} did not finish within its deadline of {} ms", limits.timeout.as_millis()),
        );
    }
    let stderr_tail = stderr.tail(STDERR_IN_ERROR);
    let said = if stderr_tail.is_empty() { String::new() } else { format!("; it wrote: {stderr_tail}") };
    if hit_memory_cap {
        return ToolError::new(
            ToolErrorKind::OutOfMemory,
            format!("{label} ran out of memory: its linear memory cap is {} MiB{said}", limits.memory_bytes >> 20),
        );
    }
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return ToolError::new(ToolErrorKind::Trap, format!("{label} crashed ({trap}){said}"));
    }
    ToolError::new(ToolErrorKind::MalformedOutput, format!("{label} broke the plugin contract: {err:#}"))
}
