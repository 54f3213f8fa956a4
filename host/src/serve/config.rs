//! `serve.toml`: where the server listens, where it keeps its data, the
//! default quotas of every tenant and the host-wide ceilings on a call.
//! Relative paths resolve against the file's own directory; unknown keys
//! are errors naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::quota::Quotas;
use crate::plugin::Ceilings;

/// The server's configuration as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: SocketAddr,
    data_dir: PathBuf,
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    quotas: Quotas,
    #[serde(default)]
    ceilings: CeilingsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    mcp: McpSection,
}

/// `[ceilings]`: caps on every call whatever a tenant's quota says.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CeilingsSection {
    #[serde(default = "default_ceiling_timeout_ms")]
    tool_timeout_ms: u64,
    #[serde(default = "default_ceiling_memory_mb")]
    tool_memory_mb: u64,
}

impl Default for CeilingsSection {
    fn default() -> Self {
        CeilingsSection { tool_timeout_ms: default_ceiling_timeout_ms(), tool_memory_mb: default_ceiling_memory_mb() }
    }
}

fn default_ceiling_timeout_ms() -> u64 {
    10 * 60 * 1000
}

fn default_ceiling_memory_mb() -> u64 {
    1024
}

/// `[http]`: limits of the HTTP layer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Largest request body (a file, a plugin, a tar), in MiB.
    #[serde(default = "default_max_body_mb")]
    pub max_body_mb: u64,
    /// Longest time a request (other than an event stream) may take, in seconds.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection { max_body_mb: default_max_body_mb(), request_timeout_s: default_request_timeout_s() }
    }
}

fn default_max_body_mb() -> u64 {
    256
}

fn default_request_timeout_s() -> u64 {
    15 * 60
}

/// `[mcp]`: the pods' MCP endpoints (`/v1/pods/{name}/mcp`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// `Host` values the endpoints answer (`name` or `name:port`); others
    /// are refused (DNS rebinding). Empty: `localhost`, `127.0.0.1`, `::1`
    /// and the listen address.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the endpoints
    /// (`https://app.example.com:443`, `http://localhost:*`); a request with
    /// any other `Origin` is refused (requests without one, from programs
    /// rather than pages, pass). Unset: pages on this machine only
    /// (`localhost`, `127.0.0.1`, `[::1]`, any port); `[]`: no page at all.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// MCP sessions (2025-11-25 clients) open at once on one pod.
    #[serde(default = "default_max_sessions")]
    pub max_sessions_per_pod: usize,
    /// A session unused this long (seconds) is closed; a call in flight
    /// does not count as use, so keep it above the longest call.
    #[serde(default = "default_session_idle_s")]
    pub session_idle_s: u64,
}

impl Default for McpSection {
    fn default() -> Self {
        McpSection {
            allowed_hosts: Vec::new(),
            allowed_origins: None,
            max_sessions_per_pod: default_max_sessions(),
            session_idle_s: default_session_idle_s(),
        }
    }
}

fn default_max_sessions() -> usize {
    32
}

fn default_session_idle_s() -> u64 {
    30 * 60
}

/// The server's configuration, checked and resolved.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where `/metrics` is also served without a token, if set.
    pub metrics_listen: Option<SocketAddr>,
    /// Where everything lives (absolute).
    pub data_dir: PathBuf,
    /// Every tenant's quotas unless its own override them.
    pub quotas: Quotas,
    /// Caps on every call.
    pub ceilings: Ceilings,
    /// Limits of the HTTP layer.
    pub http: HttpSection,
    /// The MCP endpoints.
    pub mcp: McpSection,
}

impl ServeConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<ServeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let base = std::path::absolute(path)?.parent().map(Path::to_path_buf).unwrap_or_default();
        ServeConfig::parse(&text, &base).with_context(|| format!("invalid server configuration {}", path.display()))
    }

    /// Parses `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<ServeConfig> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.quotas.validate().context("[quotas]")?;
        if file.ceilings.tool_timeout_ms == 0 || file.ceilings.tool_memory_mb == 0 {
            bail!("[ceilings]: tool_timeout_ms and tool_memory_mb must be at least 1");
        }
        if file.http.max_body_mb == 0 || file.http.request_timeout_s == 0 {
            bail!("[http]: max_body_mb and request_timeout_s must be at least 1");
        }
        if file.mcp.max_sessions_per_pod == 0 || file.mcp.session_idle_s == 0 {
            bail!("[mcp]: max_sessions_per_pod and session_idle_s must be at least 1");
        }
        if let Some(origin) = file.mcp.allowed_origins.iter().flatten().find(|o| *o != "null" && !o.contains("://")) {
            bail!("[mcp]: allowed_origins: {origin:?} needs a scheme, as in https://{origin}");
        }
        let mut mcp = file.mcp;
        if mcp.allowed_origins.is_none() {
            let loopback = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];
            mcp.allowed_origins = Some(loopback.map(String::from).to_vec());
        }
        if mcp.allowed_hosts.is_empty() {
            mcp.allowed_hosts = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if !file.listen.ip().is_unspecified() {
                mcp.allowed_hosts.push(file.listen.ip().to_string());
            }
        }
        let ceilings = Ceilings {
            timeout: Duration::from_millis(file.ceilings.tool_timeout_ms),
            memory_bytes: file.ceilings.tool_memory_mb.saturating_mul(1 << 20),
        };
        Ok(ServeConfig {
            listen: file.listen,
            metrics_listen: file.metrics_listen,
            data_dir: base.join(file.data_dir),
            quotas: file.quotas,
            ceilings,
            http: file.http,
            mcp,
        })
    }

    /// Where the tenants' directories are.
    pub fn tenants_dir(&self) -> PathBuf {
        self.data_dir.join("tenants")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_gets_every_default_and_paths_resolve_against_it() {
        let config =
            ServeConfig::parse("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n", Path::new("/etc/yoi")).unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/yoi/data"));
        assert_eq!(config.quotas, Quotas::default());
        assert_eq!(config.ceilings.memory_bytes, 1 << 30);
    }

    #[test]
    fn unknown_keys_and_zero_limits_are_named() {
        let err =
            ServeConfig::parse("listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\nport = 1\n", Path::new("/")).unwrap_err();
        assert!(format!("{err:#}").contains("port"), "{err:#}");
        let err =
            ServeConfig::parse("listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[quotas]\nlive_pods = 0\n", Path::new("/"))
                .unwrap_err();
        assert!(format!("{err:#}").contains("live_pods"), "{err:#}");
    }
}
