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
