//! A tenant's quotas: their keys and defaults, per-tenant overrides, and
//! the request rate limiter. Where each quota is enforced is written in
//! docs/serve.md.

use std::time::{Duration, Instant};

use anyhow::bail;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Every quota of a tenant. `serve.toml`'s `[quotas]` sets the defaults;
/// a tenant's own values override them key by key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Pods that exist at once.
    pub live_pods: u64,
    /// Tool calls running at once, over all the tenant's pods.
    pub concurrent_tool_calls: u64,
    /// Linear memory of one call, in MiB (capped by the host's ceiling).
    pub tool_memory_mb: u64,
    /// Wall-clock deadline of one call, in ms (capped by the host's ceiling).
    pub tool_timeout_ms: u64,
    /// CPU time of all the tenant's tool calls in one minute, in ms.
    pub tool_cpu_ms_per_minute: u64,
    /// Model tokens (in and out) in one UTC day.
    pub model_tokens_per_day: u64,
    /// Workspace size, in MiB.
    pub workspace_mb: u64,
    /// Uploaded plugins.
    pub plugins: u64,
    /// Size of all uploaded plugins together, in MiB.
    pub plugin_mb: u64,
    /// API requests per second (a burst of as many is allowed).
    pub requests_per_second: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            live_pods: 50,
            concurrent_tool_calls: 16,
            tool_memory_mb: 256,
            tool_timeout_ms: 60_000,
            tool_cpu_ms_per_minute: 60_000,
            model_tokens_per_day: 5_000_000,
            workspace_mb: 1024,
            plugins: 16,
            plugin_mb: 128,
            requests_per_second: 100,
        }
    }
}

/// The keys, in the order they are shown.
pub const KEYS: &[&str] = &[
    "live_pods",
    "concurrent_tool_calls",
    "tool_memory_mb",
    "tool_timeout_ms",
    "tool_cpu_ms_per_minute",
    "model_tokens_per_day",
    "workspace_mb",
    "plugins",
    "plugin_mb",
    "requests_per_second",
];

impl Quotas {
    fn slot(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "live_pods" => &mut self.live_pods,
            "concurrent_tool_calls" => &mut self.concurrent_tool_calls,
            "tool_memory_mb" => &mut self.tool_memory_mb,
            "tool_timeout_ms" => &mut self.tool_timeout_ms,
            "tool_cpu_ms_per_minute" => &mut self.tool_cpu_ms_per_minute,
            "model_tokens_per_day" => &mut self.model_tokens_per_day,
            "workspace_mb" => &mut self.workspace_mb,
            "plugins" => &mut self.plugins,
            "plugin_mb" => &mut self.plugin_mb,
            "requests_per_second" => &mut self.requests_per_second,
            _ => return None,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.clone().slot(key).map(|v| *v)
    }

    /// Checks every value (each must be at least 1; memory within what a
    /// manifest may ask).
    pub fn validate(&self) -> anyhow::Result<()> {
        for key in KEYS {
            if self.get(key) == Some(0) {
                bail!("quota `{key}` must be at least 1");
            }
        }
        if self.tool_memory_mb > crate::manifest::MAX_TOOL_MEMORY_MB {
            bail!("quota `tool_memory_mb` must be at most {}", crate::manifest::MAX_TOOL_MEMORY_MB);
        }
        Ok(())
    }

    /// These quotas with `overrides` applied.
    pub fn with(&self, overrides: &Overrides) -> Quotas {
        let mut quotas = self.clone();
        for (key, value) in &overrides.0 {
            if let Some(slot) = quotas.slot(key) {
                *slot = *value;
            }
        }
        quotas
    }

    /// Workspace size in bytes.
    pub fn workspace_bytes(&self) -> u64 {
        self.workspace_mb.saturating_mul(1 << 20)
    }

    /// Size of all plugins in bytes.
    pub fn plugin_bytes(&self) -> u64 {
        self.plugin_mb.saturating_mul(1 << 20)
    }
}

/// A tenant's own quota values, key by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Overrides(pub std::collections::BTreeMap<String, u64>);

impl Overrides {
    /// Sets `key=value` (as given on the command line or to the admin API).
    pub fn set(&mut self, assignment: &str) -> anyhow::Result<()> {
        let Some((key, value)) = assignment.split_once('=') else {
            bail!("{assignment:?}: a quota is set as KEY=VALUE");
        };
        let key = key.trim();
        let value: u64 =
            value.trim().parse().map_err(|_| anyhow::anyhow!("quota `{key}`: {value:?} is not a whole number"))?;
        self.insert(key, value)
    }

    /// Sets one key, checked.
    pub fn insert(&mut self, key: &str, value: u64) -> anyhow::Result<()> {
        if !KEYS.contains(&key) {
            bail!("there is no quota `{key}` (quotas: {})", KEYS.join(", "));
        }
        let mut check = Quotas::default();
        *check.slot(key).expect("a known key") = value;
        check.validate()?;
        self.0.insert(key.to_string(), value);
        Ok(())
    }
}

/// A token bucket: `rate` requests per second, bursts of up to `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<(f64, Instant)>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter { state: Mutex::new((f64::MAX, Instant::now())) }
    }
}

impl RateLimiter {
    /// Takes one request at `rate` per second, or says how long until one
    /// would be allowed.
    pub fn take(&self, rate: u64) -> Result<(), Duration> {
        let rate = rate.max(1) as f64;
        let mut state = self.state.lock();
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens.min(rate) + now.duration_since(last).as_secs_f64() * rate).min(rate);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_key_by_key_and_bad_ones_are_named() {
        let mut o = Overrides::default();
        o.set("live_pods=3").unwrap();
        o.set(" requests_per_second = 7 ").unwrap();
        let q = Quotas::default().with(&o);
        assert_eq!((q.live_pods, q.requests_per_second), (3, 7));
        assert_eq!(q.tool_memory_mb, Quotas::default().tool_memory_mb);
        assert!(o.set("pods=1").unwrap_err().to_string().contains("no quota `pods`"));
        assert!(o.set("live_pods=0").unwrap_err().to_string().contains("at least 1"));
        assert!(o.set("live_pods").is_err());
        assert!(o.set("live_pods=-1").is_err());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_paces() {
        let limiter = RateLimiter::default();
        for _ in 0..5 {
            limiter.take(5).unwrap();
        }
        let wait = limiter.take(5).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    }
}
