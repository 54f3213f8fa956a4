//! Metering and the quotas that depend on it, for one tenant.
//!
//! [`Usage`] is the tenant's [`CallMeter`]: it admits each tool call
//! against the concurrent-calls, CPU-per-minute and workspace quotas, and
//! takes each call's record. A [`MeteredProvider`] does the same for model
//! requests against the tokens-per-day quota. Every call and request
//! appends one line to the tenant's usage log
//! (`DATA/tenants/NAME/usage/YYYY-MM-DD.jsonl`, UTC days), feeds the
//! server's Prometheus metrics, and adds to the counters `GET /v1/usage`
//! shows. Today's log is read back when the tenant is opened, so a restart
//! does not reset the day's token count.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::quota::Quotas;
use crate::plugin::{CallMeter, CallRecord, PodContext, ToolError};
use crate::provider::{DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError};
use crate::scope::Permission;

/// One line of the usage log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UsageEntry {
    /// A tool call.
    Call {
        /// Seconds since the Unix epoch.
        at: u64,
        /// The pod.
        pod: String,
        /// The tool.
        tool: String,
        /// The plugin.
        plugin: String,
        /// The component's SHA-256.
        digest: String,
        /// Wall time, µs.
        wall_us: u64,
        /// CPU time, µs.
        cpu_us: u64,
        /// Peak linear memory, bytes.
        peak_memory: u64,
        /// `ok` or the error's kind.
        outcome: String,
    },
    /// A model request.
    Model {
        /// Seconds since the Unix epoch.
        at: u64,
        /// The pod.
        pod: String,
        /// The provider and model.
        model: String,
        /// Wall time, µs.
        wall_us: u64,
        /// Input tokens.
        tokens_in: u64,
        /// Output tokens.
        tokens_out: u64,
        /// `ok` or `error`.
        outcome: String,
    },
}

/// What a pod (or the tenant) used in the current day.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Tool calls.
    pub tool_calls: u64,
    /// Tool calls that failed.
    pub tool_errors: u64,
    /// Tool CPU time, ms.
    pub tool_cpu_ms: u64,
    /// Tool wall time, ms.
    pub tool_wall_ms: u64,
    /// Model requests.
    pub model_requests: u64,
    /// Model input tokens.
    pub tokens_in: u64,
    /// Model output tokens.
    pub tokens_out: u64,
}

impl Counters {
    fn add(&mut self, entry: &UsageEntry) {
        match entry {
            UsageEntry::Call { wall_us, cpu_us, outcome, .. } => {
                self.tool_calls += 1;
                self.tool_errors += u64::from(outcome != "ok");
                self.tool_cpu_ms += cpu_us / 1000;
                self.tool_wall_ms += wall_us / 1000;
            }
            UsageEntry::Model { tokens_in, tokens_out, .. } => {
                self.model_requests += 1;
                self.tokens_in = self.tokens_in.saturating_add(*tokens_in);
                self.tokens_out = self.tokens_out.saturating_add(*tokens_out);
            }
        }
    }
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The UTC day of `secs` since the epoch, as `YYYY-MM-DD`.
pub fn day_of(secs: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

struct Day {
    day: String,
    total: Counters,
    pods: BTreeMap<String, Counters>,
    log: Option<std::fs::File>,
}

/// A tenant's metering, and the quotas that need it.
pub struct Usage {
    tenant: String,
    dir: PathBuf,
    quotas: Arc<dyn Fn() -> Quotas + Send + Sync>,
    metrics: Arc<Metrics>,
    day: Mutex<Day>,
    /// Tool calls running now.
    running: AtomicU64,
    /// (minute since the epoch, CPU µs spent in it).
    minute: Mutex<(u64, u64)>,
    /// Set when the workspace is over its quota (kept by the server's
    /// measurements).
    pub workspace_full: std::sync::atomic::AtomicBool,
    /// Set when a pod that may write has made a call since the last
    /// measurement of the workspace.
    pub workspace_stale: std::sync::atomic::AtomicBool,
}

/// Held while a call runs.
struct Running(Arc<Usage>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Usage {
    /// The metering of tenant `tenant` in its directory `dir`, with today's
    /// log read back.
    pub fn open(
        tenant: &str,
        dir: PathBuf,
        quotas: Arc<dyn Fn() -> Quotas + Send + Sync>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Usage>> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir.join("usage"))?;
        let usage = Arc::new(Usage {
            tenant: tenant.to_string(),
            dir,
            quotas,
            metrics,
            day: Mutex::new(Day { day: String::new(), total: Counters::default(), pods: BTreeMap::new(), log: None }),
            running: AtomicU64::new(0),
            minute: Mutex::new((0, 0)),
            workspace_full: Default::default(),
            workspace_stale: Default::default(),
        });
        usage.roll(&day_of(now().as_secs()));
        Ok(usage)
    }

    fn log_path(&self, day: &str) -> PathBuf {
        self.dir.join("usage").join(format!("{day}.jsonl"))
    }

    /// Starts day `day` if it is not the current one: its counters are read
    /// back from its log.
    fn roll(&self, day: &str) {
        let mut current = self.day.lock();
        if current.day == day {
            return;
        }
        let mut fresh = Day { day: day.to_string(), total: Counters::default(), pods: BTreeMap::new(), log: None };
        if let Ok(file) = std::fs::File::open(self.log_path(day)) {
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<UsageEntry>(&line) {
                    let pod = match &entry {
                        UsageEntry::Call { pod, .. } | UsageEntry::Model { pod, .. } => pod.clone(),
                    };
                    fresh.total.add(&entry);
                    fresh.pods.entry(pod).or_default().add(&entry);
                }
            }
        }
        *current = fresh;
    }

    /// Appends `entry` to today's log and counts it.
    fn keep(&self, pod: &str, entry: UsageEntry) {
        let today = day_of(now().as_secs());
        self.roll(&today);
        let mut day = self.day.lock();
        day.total.add(&entry);
        day.pods.entry(pod.to_string()).or_default().add(&entry);
        if day.log.is_none() {
            let opened = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(&today));
            match opened {
                Ok(file) => day.log = Some(file),
                Err(e) => tracing::error!(tenant = %self.tenant, "cannot open the usage log: {e}"),
            }
        }
        if let Some(log) = &mut day.log {
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = log.write_all(&line) {
                tracing::error!(tenant = %self.tenant, "cannot append to the usage log: {e}");
            }
        }
    }

    /// Today's counters: in total and per pod.
    pub fn today(&self) -> (String, Counters, BTreeMap<String, Counters>) {
        self.roll(&day_of(now().as_secs()));
        let day = self.day.lock();
        (day.day.clone(), day.total.clone(), day.pods.clone())
    }

    /// Tool CPU spent in the current minute, ms, and the minute's start.
    pub fn this_minute(&self) -> (u64, u64) {
        let minute = now().as_secs() / 60;
        let (at, cpu_us) = *self.minute.lock();
        (minute * 60, if at == minute { cpu_us / 1000 } else { 0 })
    }

    /// Refuses a model request once today's tokens reach the quota.
    fn admit_model_request(&self) -> Result<(), String> {
        let quota = (self.quotas)().model_tokens_per_day;
        self.roll(&day_of(now().as_secs()));
        let used = {
            let day = self.day.lock();
            day.total.tokens_in.saturating_add(day.total.tokens_out)
        };
        if used >= quota {
            return Err(format!(
                "quota `model_tokens_per_day`: {used} tokens used today (UTC), the quota is {quota}; it refills at midnight UTC"
            ));
        }
        Ok(())
    }

    fn record_model_request(&self, pod: &str, model: String, wall: Duration, usage: Option<crate::provider::Usage>) {
        let (tokens_in, tokens_out) = usage.map_or((0, 0), |u| (u.input_tokens, u.output_tokens));
        self.metrics.model_request(&self.tenant, tokens_in, tokens_out, usage.is_some());
        let entry = UsageEntry::Model {
            at: now().as_secs(),
            pod: pod.to_string(),
            model,
            wall_us: wall.as_micros().try_into().unwrap_or(u64::MAX),
            tokens_in,
            tokens_out,
            outcome: if usage.is_some() { "ok" } else { "error" }.to_string(),
        };
        self.keep(pod, entry);
    }
}

/// A pod's calls are admitted against the tenant's quotas.
pub struct Meter(pub Arc<Usage>);

impl CallMeter for Meter {
    fn admit(&self, pod: &PodContext, _tool: &str) -> Result<Box<dyn Send + Sync>, ToolError> {
        let usage = &self.0;
        let quotas = (usage.quotas)();
        let running = usage.running.fetch_add(1, Ordering::AcqRel);
        let ticket = Running(usage.clone());
        if running >= quotas.concurrent_tool_calls {
            let message = format!("{} tool calls of this tenant are running already", quotas.concurrent_tool_calls);
            return Err(ToolError::quota("concurrent_tool_calls", message, Some(Duration::from_secs(1))));
        }
        let now = now();
        let (minute_start, cpu_ms) = usage.this_minute();
        if cpu_ms >= quotas.tool_cpu_ms_per_minute {
            let wait = Duration::from_secs(minute_start + 60).saturating_sub(now).max(Duration::from_millis(1));
            let message = format!(
                "the tenant's tools used {cpu_ms} ms of CPU this minute, the quota is {}",
                quotas.tool_cpu_ms_per_minute
            );
            return Err(ToolError::quota("tool_cpu_ms_per_minute", message, Some(wait)));
        }
        let writes = pod.scope().allow.iter().any(|r| r.permission == Permission::Write)
            || pod.grants.values().any(|g| g.data_dir.is_some());
        if writes {
            usage.workspace_stale.store(true, Ordering::Relaxed);
            if usage.workspace_full.load(Ordering::Relaxed) {
                let message =
                    format!("the workspace holds more than {} MiB; delete files to write again", quotas.workspace_mb);
                return Err(ToolError::quota("workspace_mb", message, None));
            }
        }
        Ok(Box::new(ticket))
    }

    fn record(&self, record: CallRecord) {
        let usage = &self.0;
        let cpu_us: u64 = record.cpu.as_micros().try_into().unwrap_or(u64::MAX);
        {
            let minute = now().as_secs() / 60;
            let mut current = usage.minute.lock();
            if current.0 != minute {
                *current = (minute, 0);
            }
            current.1 = current.1.saturating_add(cpu_us);
        }
        usage.metrics.tool_call(&usage.tenant, record.outcome, record.wall, record.cpu);
        let entry = UsageEntry::Call {
            at: now().as_secs(),
            pod: record.pod.clone(),
            tool: record.tool,
            plugin: record.plugin.to_string(),
            digest: record.digest,
            wall_us: record.wall.as_micros().try_into().unwrap_or(u64::MAX),
            cpu_us,
            peak_memory: record.peak_memory,
            outcome: record.outcome.to_string(),
        };
        usage.keep(&record.pod, entry);
    }
}

/// A tenant pod's model: each request is admitted against the tokens-per-day
/// quota and metered.
pub struct MeteredProvider {
    /// The model.
    pub inner: Arc<dyn Provider>,
    /// The tenant's metering.
    pub usage: Arc<Usage>,
    /// The pod.
    pub pod: String,
}

#[async_trait::async_trait]
impl Provider for MeteredProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn stream(
        &self,
        request: &ModelRequest<'_>,
        sink: &mut DeltaSink<'_>,
    ) -> Result<ModelResponse, ProviderError> {
        if let Err(message) = self.usage.admit_model_request() {
            return Err(ProviderError::fatal(self.inner.name(), message));
        }
        let started = std::time::Instant::now();
        let result = self.inner.stream(request, sink).await;
        let model = format!("{} {}", self.inner.name(), self.inner.model());
        let usage = result.as_ref().ok().map(|r| r.usage);
        self.usage.record_model_request(&self.pod, model, started.elapsed(), usage);
        result
    }
}
