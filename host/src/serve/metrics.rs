//! The server's Prometheus metrics (`GET /metrics`): per tenant, tool calls
//! by outcome, their latency, tool CPU time, model requests and tokens.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    tenant: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    tenant: String,
    direction: String,
}

/// The metrics and their registry.
pub struct Metrics {
    registry: Registry,
    calls: Family<Outcome, Counter>,
    latency: Family<Tenant, Histogram>,
    cpu: Family<Tenant, Counter<f64>>,
    model_requests: Family<Outcome, Counter>,
    tokens: Family<Direction, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("yoi");
        let calls = Family::<Outcome, Counter>::default();
        registry.register("tool_calls", "Tool calls, by tenant and outcome (ok or the error's kind)", calls.clone());
        let latency = Family::<Tenant, Histogram>::new_with_constructor(|| {
            // 50 µs to about 30 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register("tool_call_seconds", "Tool call wall time, waiting for a turn included", latency.clone());
        let cpu = Family::<Tenant, Counter<f64>>::default();
        registry.register("tool_cpu_seconds", "CPU time spent in tool calls", cpu.clone());
        let model_requests = Family::<Outcome, Counter>::default();
        registry.register("model_requests", "Model requests, by tenant and outcome", model_requests.clone());
        let tokens = Family::<Direction, Counter>::default();
        registry.register("model_tokens", "Model tokens, by tenant and direction (in, out)", tokens.clone());
        Metrics { registry, calls, latency, cpu, model_requests, tokens }
    }
}

impl Metrics {
    /// Counts one tool call.
    pub fn tool_call(&self, tenant: &str, outcome: &str, wall: Duration, cpu: Duration) {
        let labels = Tenant { tenant: tenant.to_string() };
        self.calls.get_or_create(&Outcome { tenant: tenant.to_string(), outcome: outcome.to_string() }).inc();
        self.latency.get_or_create(&labels).observe(wall.as_secs_f64());
        self.cpu.get_or_create(&labels).inc_by(cpu.as_secs_f64());
    }

    /// Counts one model request.
    pub fn model_request(&self, tenant: &str, tokens_in: u64, tokens_out: u64, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.model_requests.get_or_create(&Outcome { tenant: tenant.to_string(), outcome: outcome.to_string() }).inc();
        for (direction, n) in [("in", tokens_in), ("out", tokens_out)] {
            self.tokens
                .get_or_create(&Direction { tenant: tenant.to_string(), direction: direction.to_string() })
                .inc_by(n);
        }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        text
    }
}
