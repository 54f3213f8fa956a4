//! The process-wide plugin runtime: one engine (pooling allocator,
//! copy-on-write images), its epoch ticker, the compiled-component cache,
//! admission to the instance pool, and the threads tool calls run on. Every
//! [`PluginSet`](super::PluginSet) of the process shares it.
//!
//! A component is compiled (or loaded from the disk cache), linked and asked
//! to describe itself once per process while any set holds it: sets that
//! load the same bytes (every pod's builtins, a plugin two tenants upload)
//! share the prepared component. Sharing compiled code is safe; every call
//! still gets a fresh store and instance.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use super::admission::{Admission, PodKey};
use super::bindings::{Plugin, PluginPre, WitToolInfo};
use super::cache::{CacheOutcome, ComponentCache};
use super::call::{CallState, PluginLabel, with_fresh_instance};
use super::capabilities::{self, Declared};
use super::engine::{self, Allocator, EpochTicker};
use super::meter::{CallRecord, CpuSpent, CpuTimed};
use super::pod_context::{Ceilings, PodContext};
use super::result::{self, ToolError, ToolErrorKind, ToolOutput};
use super::workers::Workers;
use super::{HostOptions, LoadedPlugin, WIT_VERSION};

/// The admission key of the runtime's own calls (asking a plugin to
/// describe itself); pods' keys are addresses, never 0.
const RUNTIME_KEY: PodKey = 0;

/// A component compiled, linked and described, shared by every set that
/// loads the same bytes.
pub(super) struct Prepared {
    /// Hex SHA-256 of the component.
    pub digest: String,
    /// The names the component exports.
    pub exports: Vec<String>,
    /// The names the component imports.
    pub imports: Vec<String>,
    /// Ready to instantiate.
    pub pre: PluginPre<CallState>,
    /// What `describe` answered.
    pub described: Vec<WitToolInfo>,
}

/// The runtime of one process.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<CallState>,
    cache: ComponentCache,
    admission: Arc<Admission>,
    workers: Workers,
    /// Permits to compute for long calls: one fewer than the cores.
    long_calls: Arc<Semaphore>,
    ceilings: Ceilings,
    /// Prepared components by digest, while some set holds them.
    prepared: Mutex<HashMap<String, Weak<Prepared>>>,
    ticker: EpochTicker,
}

impl PluginRuntime {
    /// A runtime set up as `options` say.
    pub fn new(options: &HostOptions) -> anyhow::Result<Arc<PluginRuntime>> {
        let engine = engine::build_engine(options.allocator)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots = match options.allocator {
            Allocator::Pooling => engine::POOL_COMPONENT_INSTANCES as usize,
            // Not bounded by a pool; bounded anyway, for memory's sake.
            Allocator::OnDemand => 4 * engine::POOL_COMPONENT_INSTANCES as usize,
        };
        Ok(Arc::new(PluginRuntime {
            admission: Admission::new(slots),
            workers: Workers::start(cores)?,
            long_calls: Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))),
            ceilings: options.ceilings,
            ticker: EpochTicker::start(engine.clone()),
            cache: ComponentCache::new(&options.cache_dir),
            prepared: Mutex::new(HashMap::new()),
            engine,
            linker,
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Admission to the instance pool (slots in use, longest wait).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// What the operator allows any call.
    pub fn ceilings(&self) -> Ceilings {
        self.ceilings
    }

    /// Compiles (or loads from the cache), checks against what the plugin
    /// `declared` (before linking: an undeclared import must not link),
    /// links and describes `bytes`, or returns what another set already
    /// prepared from the same bytes (checked against this `declared`).
    pub(super) async fn prepare(
        &self,
        bytes: &Arc<[u8]>,
        label: &PluginLabel,
        declared: &Declared,
    ) -> Result<(Arc<Prepared>, CacheOutcome), String> {
        let digest = hex::encode(Sha256::digest(bytes));
        let memo = self.prepared.lock().get(&digest).and_then(Weak::upgrade);
        if let Some(prepared) = memo {
            check(&prepared.exports, &prepared.imports, declared)?;
            return Ok((prepared, CacheOutcome::Hit));
        }
        // Compiling takes seconds for a big component: not on an async thread.
        let (cache, engine, bytes, key) = (self.cache.clone(), self.engine.clone(), bytes.clone(), digest.clone());
        let (component, outcome) = tokio::task::spawn_blocking(move || cache.load_or_compile(&engine, &bytes, &key))
            .await
            .map_err(|e| format!("compiling failed inside the host: {e}"))?
            .map_err(|e| format!("not a valid WebAssembly component: {e:#}"))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        check(&exports, &imports, declared)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!("cannot link: {e:#} (a tool plugin imports only WASI 0.2 and yoi:plugin@{WIT_VERSION} interfaces)")
        })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            format!("does not export yoi:plugin/tool@{WIT_VERSION} (is it built for the `plugin` world?): {e:#}")
        })?;
        let detached = Arc::new(PodContext::detached());
        let limits = detached.limits;
        let described = {
            let _slot = self.admission.admit(RUNTIME_KEY).await;
            let _ticking = self.ticker.running();
            let deadline = Instant::now() + limits.timeout;
            let peak = std::sync::atomic::AtomicU64::new(0);
            with_fresh_instance(&pre, label, &detached, limits, deadline, None, &peak, async |store, plugin| {
                plugin.yoi_plugin_tool().call_describe(store).await
            })
            .await
            .map_err(|e| format!("describe failed: {}", e.message))?
        };
        let prepared = Arc::new(Prepared { digest: digest.clone(), exports, imports, pre, described });
        let mut memo = self.prepared.lock();
        memo.retain(|_, p| p.strong_count() > 0);
        memo.insert(digest, Arc::downgrade(&prepared));
        Ok((prepared, outcome))
    }

    /// Runs `tool` of `plugin` with `input` (JSON text) for `pod`, in a fresh
    /// instance.
    ///
    /// The call waits for its turn (the pod's `concurrent_calls`, then a
    /// slot of the instance pool, fairly across pods); the wait counts
    /// against its deadline. It runs on the call threads ([`Workers`]),
    /// where its filesystem calls run inline; dropping the future cancels
    /// it at once.
    pub(super) async fn call(
        &self,
        plugin: Arc<LoadedPlugin>,
        pod: &Arc<PodContext>,
        tool: &str,
        input: &str,
    ) -> Result<ToolOutput, ToolError> {
        let limits = pod.limits.capped(&self.ceilings);
        let started = Instant::now();
        let ticket = match &pod.meter {
            Some(meter) => match meter.admit(pod, tool) {
                Ok(ticket) => Some(ticket),
                Err(refusal) => {
                    // A refused call is on the record too.
                    meter.record(CallRecord {
                        pod: pod.name.clone(),
                        plugin: plugin.label.name.clone(),
                        digest: plugin.digest().to_string(),
                        tool: tool.to_string(),
                        wall: started.elapsed(),
                        cpu: std::time::Duration::ZERO,
                        peak_memory: 0,
                        outcome: refusal.kind.as_str(),
                    });
                    return Err(refusal);
                }
            },
            None => None,
        };
        // A child of the caller's span (the pod's, and its run's).
        let span = tracing::info_span!("tool_call", tool = %tool, plugin = %plugin.label.name);
        let (pod, tool, input, admission) = (pod.clone(), tool.to_string(), input.to_string(), self.admission.clone());
        let lane = Some(self.long_calls.clone());
        let ticking = self.ticker.running();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (meter_pod, meter_plugin, meter_tool, meter_peak) =
            (pod.clone(), plugin.clone(), tool.clone(), peak.clone());
        let call = async move {
            let deadline = Instant::now() + limits.timeout;
            let turn = async {
                let gate = pod.calls.acquire().await;
                // The pod's address tells its calls from other pods' (fairness only).
                let slot = admission.admit(Arc::as_ptr(&pod) as PodKey).await;
                (gate, slot)
            };
            let Ok((_gate, _slot)) = tokio::time::timeout_at(deadline.into(), turn).await else {
                return Err(ToolError::new(
                    ToolErrorKind::Timeout,
                    format!(
                        "{} found no free slot within its deadline of {} ms (the host is busy; try again)",
                        plugin.label,
                        limits.timeout.as_millis()
                    ),
                ));
            };
            let _ticking = ticking;
            let pre = &plugin.prepared.pre;
            let result =
                with_fresh_instance(pre, &plugin.label, &pod, limits, deadline, lane, &peak, async |store, i| {
                    i.yoi_plugin_tool().call_call(store, &tool, &input).await
                })
                .await?;
            match result {
                Ok(output) => result::normalize_output(plugin.name(), output, limits.output_max_bytes),
                Err(e) => Err(e.into()),
            }
        };
        // Records the call when it ends, or when its caller drops it
        // (a cancelled call is paid for too).
        let mut metering = ticket.map(|ticket| Metering {
            pod: meter_pod,
            plugin: meter_plugin,
            tool: meter_tool,
            started,
            cpu: CpuSpent::default(),
            peak: meter_peak,
            outcome: "cancelled",
            _ticket: ticket,
        });
        // Only a metered call reads the CPU clock around its polls.
        let cpu = metering.as_ref().map(|m| m.cpu.clone());
        let timed = async move {
            match cpu {
                Some(cpu) => CpuTimed::new(call, cpu).await,
                None => call.await,
            }
        };
        let result = match self.workers.spawn(tracing::Instrument::instrument(timed, span)).await {
            Ok(result) => result,
            Err(fault) => {
                Err(ToolError::new(ToolErrorKind::HostError, format!("the call failed inside the host: {fault}")))
            }
        };
        if let Some(metering) = &mut metering {
            metering.outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind.as_str(),
            };
        }
        result
    }
}

/// A metered call in flight: recorded with its pod's meter when dropped.
struct Metering {
    pod: Arc<PodContext>,
    plugin: Arc<LoadedPlugin>,
    tool: String,
    started: Instant,
    cpu: CpuSpent,
    peak: Arc<std::sync::atomic::AtomicU64>,
    outcome: &'static str,
    _ticket: Box<dyn Send + Sync>,
}

impl Drop for Metering {
    fn drop(&mut self) {
        let Some(meter) = &self.pod.meter else { return };
        meter.record(CallRecord {
            pod: self.pod.name.clone(),
            plugin: self.plugin.label.name.clone(),
            digest: self.plugin.digest().to_string(),
            tool: std::mem::take(&mut self.tool),
            wall: self.started.elapsed(),
            cpu: self.cpu.get(),
            peak_memory: self.peak.load(std::sync::atomic::Ordering::Relaxed),
            outcome: self.outcome,
        });
    }
}

fn check(exports: &[String], imports: &[String], declared: &Declared) -> Result<(), String> {
    capabilities::check_component(exports.iter().map(String::as_str), imports.iter().map(String::as_str), declared)
}
