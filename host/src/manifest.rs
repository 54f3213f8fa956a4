//! The pod manifest: a TOML file naming the pod, its model, its prompt and
//! limits, and its filesystem scope. This module owns parsing and validation;
//! `docs/manifest.md` is the reference for every key.
//!
//! Unknown keys and values of the wrong type are errors that name the key
//! and the line. Relative scope targets and the working directory resolve
//! against the manifest's own directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::plugin::CallLimits;
use crate::provider::{RetryPolicy, Timeouts};
use crate::scope::{Access, RuleSpec, Scope};

/// A manifest as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[pod]`
    pub pod: PodSection,
    /// `[provider]`: optional until the pod runs a model.
    pub provider: Option<ProviderSection>,
    /// `[agent]`
    #[serde(default)]
    pub agent: AgentSection,
    /// `[scope]`: `[[scope.allow]]` and `[[scope.deny]]` rules.
    #[serde(default)]
    pub scope: ScopeSection,
    /// `[limits]` for every plugin call.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[compaction]`
    #[serde(default)]
    pub compaction: CompactionSection,
    /// `[plugins]`: `[[plugins.grant]]`, what each plugin may use beyond the scope.
    #[serde(default)]
    pub plugins: PluginsSection,
}

/// `[plugins]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// One grant per plugin.
    #[serde(default)]
    pub grant: Vec<crate::plugin::Grant>,
}

/// `[compaction]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionSection {
    /// Compact when the last request's input tokens exceed this.
    #[serde(default = "default_threshold_tokens")]
    pub threshold_tokens: u64,
    /// User turns kept verbatim.
    #[serde(default = "default_keep_turns")]
    pub keep_turns: usize,
}

impl Default for CompactionSection {
    fn default() -> Self {
        CompactionSection { threshold_tokens: default_threshold_tokens(), keep_turns: default_keep_turns() }
    }
}

fn default_threshold_tokens() -> u64 {
    150_000
}

fn default_keep_turns() -> usize {
    2
}

/// `[pod]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSection {
    /// The pod's name: 1–64 characters from `A-Z a-z 0-9 _ - .`, not starting with a dot.
    pub name: String,
    /// The pod's working directory; defaults to the first allow rule's target.
    pub working_dir: Option<PathBuf>,
}

/// `[provider]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Which wire format.
    pub kind: ProviderKind,
    /// The model name the provider knows.
    pub model: String,
    /// Overrides the provider's default endpoint.
    pub base_url: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The script file of the `scripted` provider.
    pub script: Option<PathBuf>,
    /// Connection timeout, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the first event of a response, in milliseconds.
    #[serde(default = "default_first_event_timeout_ms")]
    pub first_event_timeout_ms: u64,
    /// Longest silence between events, in milliseconds.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Retries of a transient failure before anything streamed.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds (doubles each time).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
}

/// The wire formats yoi-host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions and compatible servers.
    Openai,
    /// Google Gemini.
    Gemini,
    /// Offline playback of a script.
    Scripted,
}

// The provider defaults are `Timeouts::default()`'s and
// `RetryPolicy::default()`'s, written once there.
fn default_connect_timeout_ms() -> u64 {
    Timeouts::default().connect.as_millis() as u64
}

fn default_first_event_timeout_ms() -> u64 {
    Timeouts::default().first_event.as_millis() as u64
}

fn default_idle_timeout_ms() -> u64 {
    Timeouts::default().idle.as_millis() as u64
}

fn default_max_retries() -> u32 {
    RetryPolicy::default().max_retries
}

fn default_retry_base_ms() -> u64 {
    RetryPolicy::default().base_delay.as_millis() as u64
}

/// `[agent]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The system prompt, inline.
    pub prompt: Option<String>,
    /// The system prompt, from a file (relative to the manifest).
    pub prompt_file: Option<PathBuf>,
    /// Cap on each response's tokens.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Most model requests in one run.
    #[serde(default = "default_max_turns")]
    pub max_turns: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// The byte cap on a tool result's content handed to the model.
    #[serde(default = "default_tool_output_max_bytes")]
    pub tool_output_max_bytes: usize,
    /// Tools whose calls pause the run until a client sends `resume`.
    #[serde(default)]
    pub pause_before: Vec<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            prompt: None,
            prompt_file: None,
            max_tokens: default_max_tokens(),
            max_turns: default_max_turns(),
            temperature: None,
            tool_output_max_bytes: default_tool_output_max_bytes(),
            pause_before: Vec::new(),
        }
    }
}

fn default_max_tokens() -> u32 {
    8192
}

fn default_max_turns() -> u32 {
    50
}

fn default_tool_output_max_bytes() -> usize {
    CallLimits::DEFAULT.output_max_bytes
}

/// `[scope]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSection {
    /// `[[scope.allow]]`
    #[serde(default)]
    pub allow: Vec<RuleSpec>,
    /// `[[scope.deny]]`
    #[serde(default)]
    pub deny: Vec<RuleSpec>,
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Wall-clock deadline of one tool call, in milliseconds (waiting for
    /// a free slot counts).
    #[serde(default = "default_tool_timeout_ms")]
    pub tool_timeout_ms: u64,
    /// Linear memory cap of one tool call, in MiB.
    #[serde(default = "default_tool_memory_mb")]
    pub tool_memory_mb: u64,
    /// Tool calls of this pod running at once; more wait their turn.
    #[serde(default = "default_concurrent_tool_calls")]
    pub concurrent_tool_calls: usize,
    /// Live child pods this pod may have at once.
    #[serde(default = "default_max_children")]
    pub max_children: usize,
    /// Deepest a tree of pods may grow below an operator's pod (1: children
    /// only, no grandchildren).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            tool_timeout_ms: default_tool_timeout_ms(),
            tool_memory_mb: default_tool_memory_mb(),
            concurrent_tool_calls: default_concurrent_tool_calls(),
            max_children: default_max_children(),
            max_depth: default_max_depth(),
        }
    }
}

// The per-call defaults are `CallLimits::DEFAULT`'s, written once there.
fn default_tool_timeout_ms() -> u64 {
    CallLimits::DEFAULT.timeout.as_millis() as u64
}

fn default_tool_memory_mb() -> u64 {
    CallLimits::DEFAULT.memory_bytes >> 20
}

fn default_concurrent_tool_calls() -> usize {
    CallLimits::DEFAULT.concurrent_calls
}

fn default_max_children() -> usize {
    8
}

fn default_max_depth() -> usize {
    3
}

/// The largest memory cap a manifest may ask for, in MiB (what the engine
/// reserves per instance; a host may set a lower ceiling).
pub const MAX_TOOL_MEMORY_MB: u64 = (crate::plugin::engine::MAX_MEMORY_BYTES >> 20) as u64;

/// The most concurrent tool calls a manifest may ask for.
pub const MAX_CONCURRENT_TOOL_CALLS: usize = 64;

/// A manifest read from disk, validated, with its scope resolved.
#[derive(Clone, Debug)]
pub struct LoadedManifest {
    /// The manifest as written.
    pub manifest: Manifest,
    /// Where it was read from.
    pub path: PathBuf,
    /// The resolved scope.
    pub scope: Scope,
    /// The pod's working directory (canonical).
    pub working_dir: PathBuf,
    /// When set (a tenant's workspace, canonical), every file the manifest
    /// makes the host read (prompt file, AGENTS.md, script) must lie in it.
    pub root: Option<PathBuf>,
}

impl LoadedManifest {
    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> anyhow::Result<LoadedManifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
        let manifest = Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))?;
        let path = std::path::absolute(path)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        manifest.resolve(base, path.clone()).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// The per-call limits for plugin calls made by this pod.
    pub fn call_limits(&self) -> CallLimits {
        self.manifest.call_limits()
    }
}

impl Manifest {
    /// Parses TOML text; syntax, unknown keys and wrong types are errors that
    /// name the key and line.
    pub fn parse(text: &str) -> anyhow::Result<Manifest> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses JSON (the same keys as the TOML form), validated alike.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> anyhow::Result<()> {
        validate_pod_name(&self.pod.name).context("key `pod.name`")?;
        let limits = &self.limits;
        if limits.tool_timeout_ms == 0 {
            bail!("key `limits.tool_timeout_ms`: must be at least 1");
        }
        if limits.tool_memory_mb == 0 || limits.tool_memory_mb > MAX_TOOL_MEMORY_MB {
            bail!("key `limits.tool_memory_mb`: must be between 1 and {MAX_TOOL_MEMORY_MB}");
        }
        if limits.concurrent_tool_calls == 0 || limits.concurrent_tool_calls > MAX_CONCURRENT_TOOL_CALLS {
            bail!("key `limits.concurrent_tool_calls`: must be between 1 and {MAX_CONCURRENT_TOOL_CALLS}");
        }
        if limits.max_depth == 0 {
            bail!("key `limits.max_depth`: must be at least 1 (use max_children = 0 for no children)");
        }
        if self.agent.tool_output_max_bytes < 256 {
            bail!("key `agent.tool_output_max_bytes`: must be at least 256");
        }
        if self.compaction.keep_turns == 0 {
            bail!("key `compaction.keep_turns`: must be at least 1");
        }
        if self.agent.max_tokens == 0 || self.agent.max_turns == 0 {
            bail!("keys `agent.max_tokens` and `agent.max_turns`: must be at least 1");
        }
        if self.agent.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            bail!("key `agent.temperature`: must be between 0 and 2");
        }
        if self.agent.prompt.is_some() && self.agent.prompt_file.is_some() {
            bail!("keys `agent.prompt` and `agent.prompt_file`: give one, not both");
        }
        if let Some(p) = &self.provider
            && p.kind == ProviderKind::Scripted
            && p.script.is_none()
        {
            bail!("key `provider.script`: the scripted provider needs a script file");
        }
        for grant in &self.plugins.grant {
            grant.validate().map_err(|e| anyhow::anyhow!("key `plugins.grant`: {e}"))?;
        }
        Ok(())
    }

    /// Resolves the scope and working directory against `base`.
    pub fn resolve(self, base: &Path, path: PathBuf) -> anyhow::Result<LoadedManifest> {
        let scope = Scope::resolve(&self.scope.allow, &self.scope.deny, base)?;
        let working_dir = match (&self.pod.working_dir, scope.allow.first()) {
            (Some(dir), _) => std::fs::canonicalize(base.join(dir))
                .with_context(|| format!("key `pod.working_dir`: {}", base.join(dir).display()))?,
            (None, Some(first)) => first.target.clone(),
            (None, None) => base.to_path_buf(),
        };
        if !scope.allow.is_empty() && scope.access(&working_dir) == Access::None {
            bail!("key `pod.working_dir`: {} lies outside the pod's scope", working_dir.display());
        }
        Ok(LoadedManifest { manifest: self, path, scope, working_dir, root: None })
    }

    /// The per-call limits for plugin calls made by this pod.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            timeout: Duration::from_millis(self.limits.tool_timeout_ms),
            memory_bytes: self.limits.tool_memory_mb * 1024 * 1024,
            output_max_bytes: self.agent.tool_output_max_bytes,
            concurrent_calls: self.limits.concurrent_tool_calls,
        }
    }
}

/// Pod names end up in paths and socket names, so they are kept plain.
pub fn validate_pod_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        bail!("{name:?} is not a valid pod name (1-64 characters from A-Z a-z 0-9 _ - ., not starting with a dot)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse("[pod]\nname = \"coder\"\n").unwrap();
        let limits = m.call_limits();
        assert_eq!(limits.timeout, Duration::from_secs(30));
        assert_eq!(limits.memory_bytes, 256 << 20);
        assert_eq!(limits.output_max_bytes, 16 * 1024);
        assert!(m.provider.is_none());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Manifest::parse("[pod]\nname = \"coder\"\n\n[limits]\ntool_timeout = 5\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("tool_timeout") && text.contains("line 5"), "{text}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let err = Manifest::parse("[pod]\nname = \"coder\"\n[limits]\ntool_memory_mb = \"lots\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 4") && text.contains("tool_memory_mb"), "{text}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Manifest::parse("[pod]\nname = \"../etc\"\n").is_err());
        assert!(Manifest::parse("[pod]\nname = \"a\"\n[limits]\ntool_memory_mb = 0\n").is_err());
        assert!(Manifest::parse("[pod]\nname = \"a\"\n[limits]\ntool_timeout_ms = 0\n").is_err());
    }

    #[test]
    fn relative_targets_resolve_against_the_manifest_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("proj")).unwrap();
        let path = dir.join("pod.toml");
        std::fs::write(
            &path,
            "[pod]\nname = \"p\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"write\"\n\
             [[scope.deny]]\ntarget = \"proj/.git\"\npermission = \"write\"\n",
        )
        .unwrap();
        let loaded = LoadedManifest::load(&path).unwrap();
        assert_eq!(loaded.scope.allow[0].target, dir.join("proj"));
        assert_eq!(loaded.scope.deny[0].target, dir.join("proj/.git"));
        assert_eq!(loaded.working_dir, dir.join("proj"));
    }

    #[test]
    fn working_dir_outside_scope_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("proj")).unwrap();
        std::fs::create_dir(dir.join("other")).unwrap();
        let path = dir.join("pod.toml");
        std::fs::write(
            &path,
            "[pod]\nname = \"p\"\nworking_dir = \"other\"\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"read\"\n",
        )
        .unwrap();
        let err = LoadedManifest::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("outside the pod's scope"), "{err:#}");
    }
}
