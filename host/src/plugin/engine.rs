//! The one wasmtime [`Engine`] of a host, its configuration, and the thread
//! that advances its epoch (the clock behind every call's deadline).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances. Deadlines are checked, and running guests
/// yield to the async executor, at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Largest linear memory any call may have (the manifest's cap is at most this).
pub const MAX_MEMORY_BYTES: usize = 4 << 30;

/// How instances get their memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots with copy-on-write memory images: instantiation costs
    /// microseconds. Caps concurrency at [`POOL_COMPONENT_INSTANCES`] calls.
    Pooling,
    /// mmap per instance; no concurrency cap. Used to compare in benchmarks.
    OnDemand,
}

/// Most elements of one table.
const TABLE_ELEMENTS: usize = 100_000;

/// How long the epoch keeps ticking after the last call ends, in ticks:
/// calls that follow one another then never wait for the ticker thread to
/// wake up.
const TICKER_LINGER_TICKS: u32 = 50;

/// Most component instances (so, concurrent tool calls) the pool holds.
pub const POOL_COMPONENT_INSTANCES: u32 = 256;

/// Builds the engine. Every host uses this one configuration, and the
/// compiled-component cache is keyed by it.
pub fn build_engine(allocator: Allocator) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.parallel_compilation(true);
    if allocator == Allocator::Pooling {
        let mut pool = PoolingAllocationConfig::new();
        // Sized for guests from any toolchain: a Rust component uses 3 core
        // instances, a Python one about 14, a JavaScript one 4.
        pool.total_component_instances(POOL_COMPONENT_INSTANCES);
        pool.total_core_instances(POOL_COMPONENT_INSTANCES * 16);
        pool.max_core_instances_per_component(64);
        pool.total_memories(POOL_COMPONENT_INSTANCES * 2);
        pool.max_memories_per_component(8);
        pool.max_memories_per_module(1);
        pool.total_tables(POOL_COMPONENT_INSTANCES * 16);
        pool.max_tables_per_component(64);
        pool.table_elements(TABLE_ELEMENTS);
        // Each call gives its memory back itself. Batching (one madvise per
        // 16 finished calls) made the trivial call faster alone (p50 32 µs
        // against 37 µs), but the call that completed a batch paid for the
        // others' memory: with another tenant's calls filling 256 MiB each,
        // a trivial call's p99 through the API was 24 ms batched by 16,
        // 16 ms by 4, 5-8 ms unbatched (`cargo bench --bench serve -- noisy`,
        // YOI_NOISY=Hog). Keeping memory resident was slower still: with
        // PAGEMAP_SCAN, 45-60 µs then and 1.6-2x now; with memset, dropping
        // the store took 90 µs instead of 20 (the stack comes first in a
        // Rust guest's memory, so the whole 1 MiB stack is zeroed).
        pool.decommit_batch_size(1);
        // A table is reset by zeroing its used part instead of an madvise:
        // on a machine of several cores, each madvise of a multi-threaded
        // process interrupts the other cores to flush their TLBs. Trivial
        // call p50 97 µs against 104 µs (paired runs, performance.md).
        // All of a table may stay resident (elements of 8 bytes).
        pool.table_keep_resident(TABLE_ELEMENTS * 8);
        pool.total_stacks(POOL_COMPONENT_INSTANCES);
        pool.max_memory_size(MAX_MEMORY_BYTES);
        pool.max_core_instance_size(4 << 20);
        pool.max_component_instance_size(4 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e:?}"))
}

/// A stable digest of everything in the engine that a compiled artifact
/// depends on (wasmtime version, target, settings).
pub fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any call runs,
/// until dropped. Once no call has run for [`TICKER_LINGER_TICKS`] ticks it
/// sleeps, so an idle host costs no CPU for its clock.
pub struct EpochTicker {
    state: Arc<TickerState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct TickerState {
    /// Calls running now.
    active: AtomicUsize,
    /// Calls started so far (a call that begins and ends between two ticks
    /// still counts as activity).
    started: AtomicUsize,
    stop: AtomicBool,
}

/// Keeps the epoch ticking while a call runs; made by [`EpochTicker::running`].
pub struct Ticking {
    state: Arc<TickerState>,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: Engine) -> EpochTicker {
        let state = Arc::new(TickerState {
            active: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let ticker = state.clone();
        let thread = std::thread::Builder::new()
            .name("yoi-epoch".into())
            .spawn(move || {
                // Ticks in a row with no call running or started.
                let mut idle = 0;
                let mut seen = 0;
                while !ticker.stop.load(Ordering::Acquire) {
                    let started = ticker.started.load(Ordering::Acquire);
                    if ticker.active.load(Ordering::Acquire) > 0 || started != seen {
                        idle = 0;
                        seen = started;
                    } else {
                        idle += 1;
                    }
                    if idle > TICKER_LINGER_TICKS {
                        // Woken by the next call (or the stop); a spurious
                        // wake-up just looks again.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("cannot start the epoch thread");
        EpochTicker { state, thread: Some(thread) }
    }

    /// Marks a call as running until the returned guard drops.
    pub fn running(&self) -> Ticking {
        self.state.started.fetch_add(1, Ordering::AcqRel);
        if self.state.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        Ticking { state: self.state.clone() }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
