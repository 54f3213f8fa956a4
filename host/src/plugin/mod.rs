//! Tool plugins: WASI Preview 2 components of the `yoi:plugin/plugin`
//! world, run inside a pod's scope.
//!
//! Two layers:
//! - [`PluginRuntime`] ([`runtime`]), one per process: the
//!   [`wasmtime::Engine`] with the pooling allocator and copy-on-write memory
//!   images, its epoch ticker ([`engine`]), the compiled-component cache
//!   ([`cache`]), admission to the instance pool ([`admission`]) and the
//!   threads calls run on ([`workers`]).
//! - [`PluginSet`], one per pod (or shared by pods that load the same
//!   plugins): which plugins, their tool names, what a pod is offered.
//!   Two sets on one runtime may hold different plugins; a name clash is an
//!   error of the set that clashes.
//!
//! Every call gets a fresh `Store` and instance whose WASI context is the
//! calling pod's scope as preopened directories ([`call`]). The
//! `yoi:plugin` imports (log, state, context, pods) live in `host/`; what the
//! plugin layer knows of a pod is [`pod_context`].
//!
//! A plugin that fails to load is reported with the file it came from and
//! the others still load; two plugins offering one tool name is a load error
//! naming both.

pub mod admission;
mod bindings;
pub mod cache;
mod call;
pub mod capabilities;
pub mod engine;
mod host;
mod meter;
mod network;
mod output;
pub mod pod_context;
mod preopens;
mod result;
pub mod runtime;
pub mod workers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use cache::CacheOutcome;
use call::PluginLabel;
pub use capabilities::{Declared, Grant, Granted, Grants};
pub use engine::Allocator;
pub use meter::{CallMeter, CallRecord, CpuSpent, CpuTimed, thread_cpu_time};
pub use network::{HttpAccess, OriginPattern};
pub use pod_context::{CallLimits, Ceilings, ChildOutput, ChildSummary, PodContext, PodControl, Refusal, SpawnRequest};
pub use result::{ToolError, ToolErrorKind, ToolOutput, truncate};
pub use runtime::PluginRuntime;
use runtime::Prepared;

/// The version of the `yoi:plugin` WIT package this host speaks.
pub const WIT_VERSION: &str = "0.1.0";

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// One tool as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolInfo {
    /// The tool's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: serde_json::Value,
}

/// A component to load: its name, where it came from, its bytes.
#[derive(Clone, Debug)]
pub struct PluginSource {
    /// The plugin's name (the file name without `.wasm`).
    pub name: String,
    /// The file it was read from, or `builtin`.
    pub origin: String,
    /// The component.
    pub bytes: Arc<[u8]>,
    /// Its capability file, if any: (where it came from, its text).
    pub capabilities: Option<(String, String)>,
}

impl PluginSource {
    /// The components compiled into this binary.
    pub fn builtin() -> Vec<PluginSource> {
        builtin::BUILTIN_PLUGINS
            .iter()
            .map(|(file, bytes, capabilities)| PluginSource {
                name: file.trim_end_matches(".wasm").to_string(),
                origin: "builtin".to_string(),
                bytes: Arc::from(*bytes),
                capabilities: capabilities.map(|text| (format!("builtin {file} capabilities"), text.to_string())),
            })
            .collect()
    }

    /// Every `*.wasm` file in `dir`, in name order. Files that cannot be read
    /// are reported as load errors.
    pub fn from_dir(dir: &Path) -> anyhow::Result<(Vec<PluginSource>, Vec<LoadError>)> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read plugins directory {}: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        paths.sort();
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match PluginSource::from_file(&path) {
                Ok(source) => sources.push(source),
                Err(e) => errors.push(LoadError { origin: path.display().to_string(), message: format!("{e:#}") }),
            }
        }
        Ok((sources, errors))
    }

    /// One component file.
    pub fn from_file(path: &Path) -> anyhow::Result<PluginSource> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let toml = path.with_extension("toml");
        let capabilities = match std::fs::read_to_string(&toml) {
            Ok(text) => Some((toml.display().to_string(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("cannot read {}: {e}", toml.display()),
        };
        Ok(PluginSource { name, origin: path.display().to_string(), bytes: bytes.into(), capabilities })
    }
}

/// A plugin that did not load, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadError {
    /// The file (or `builtin`) it came from.
    pub origin: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// A plugin ready to run.
pub struct LoadedPlugin {
    label: PluginLabel,
    prepared: Arc<Prepared>,
    tools: Vec<ToolInfo>,
    declared: Declared,
    cache: CacheOutcome,
}

impl LoadedPlugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.label.name
    }

    /// Where it came from.
    pub fn origin(&self) -> &str {
        &self.label.origin
    }

    /// Hex SHA-256 of the component.
    pub fn digest(&self) -> &str {
        &self.prepared.digest
    }

    /// What it declared in its capability file.
    pub fn declared(&self) -> &Declared {
        &self.declared
    }

    /// Whether it is compiled into this binary.
    pub fn is_builtin(&self) -> bool {
        self.label.origin == "builtin"
    }

    /// Its tools, in the order it described them.
    pub fn tools(&self) -> &[ToolInfo] {
        &self.tools
    }

    /// Whether it was compiled now or loaded from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }
}

/// How a [`PluginRuntime`] is set up.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Where compiled components are cached (`$YOI_HOME/cache`).
    pub cache_dir: PathBuf,
    /// How instances get their memory.
    pub allocator: Allocator,
    /// What the operator allows any call, whatever a manifest asks.
    pub ceilings: Ceilings,
}

/// A set of loaded plugins and their tools, over a shared runtime.
pub struct PluginSet {
    runtime: Arc<PluginRuntime>,
    plugins: Vec<Arc<LoadedPlugin>>,
    tools: BTreeMap<String, usize>,
    errors: Vec<LoadError>,
}

impl PluginSet {
    /// An empty set on `runtime`.
    pub fn on(runtime: Arc<PluginRuntime>) -> PluginSet {
        PluginSet { runtime, plugins: Vec::new(), tools: BTreeMap::new(), errors: Vec::new() }
    }

    /// An empty set on a runtime of its own.
    pub fn new(options: &HostOptions) -> anyhow::Result<PluginSet> {
        Ok(PluginSet::on(PluginRuntime::new(options)?))
    }

    /// The runtime the set's calls run on.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// The builtin plugins and those in `extra_dirs`, on `runtime`. Plugins
    /// that fail to load are listed in [`PluginSet::load_errors`].
    pub async fn load(runtime: Arc<PluginRuntime>, extra_dirs: &[PathBuf]) -> anyhow::Result<PluginSet> {
        let mut set = PluginSet::on(runtime);
        // Failures are recorded in `load_errors`; the other plugins still load.
        for source in PluginSource::builtin() {
            let _ = set.add(source).await;
        }
        for dir in extra_dirs {
            let (sources, errors) = PluginSource::from_dir(dir)?;
            set.errors.extend(errors);
            for source in sources {
                let _ = set.add(source).await;
            }
        }
        Ok(set)
    }

    /// The builtin plugins and those in `extra_dirs`, on a runtime of
    /// their own.
    pub async fn with_plugins(options: &HostOptions, extra_dirs: &[PathBuf]) -> anyhow::Result<PluginSet> {
        PluginSet::load(PluginRuntime::new(options)?, extra_dirs).await
    }

    /// Adds one plugin. On failure the error is recorded (and returned) and
    /// the set carries on without it.
    pub async fn add(&mut self, source: PluginSource) -> Result<(), LoadError> {
        let origin = source.origin.clone();
        match self.try_load(source).await {
            Ok(plugin) => {
                let index = self.plugins.len();
                for tool in &plugin.tools {
                    self.tools.insert(tool.name.clone(), index);
                }
                tracing::debug!(plugin = plugin.name(), cache = ?plugin.cache, "plugin loaded");
                self.plugins.push(Arc::new(plugin));
                Ok(())
            }
            Err(message) => {
                let error = LoadError { origin, message };
                tracing::debug!("plugin not loaded: {error}");
                self.errors.push(error.clone());
                Err(error)
            }
        }
    }

    async fn try_load(&self, source: PluginSource) -> Result<LoadedPlugin, String> {
        if let Some(other) = self.plugins.iter().find(|p| p.name() == source.name) {
            return Err(format!("a plugin named `{}` is already loaded from {}", source.name, other.origin()));
        }
        let declared = match &source.capabilities {
            Some((origin, text)) => Declared::parse(text, origin)?,
            None => Declared::default(),
        };
        let label = PluginLabel { name: source.name.as_str().into(), origin: source.origin.clone() };
        let (prepared, cache) = self.runtime.prepare(&source.bytes, &label, &declared).await?;
        let described = prepared.described.clone();
        let mut tools: Vec<ToolInfo> = Vec::new();
        for info in described {
            let tool = validate_tool(info)?;
            if tools.iter().any(|t| t.name == tool.name) {
                return Err(format!("describes tool `{}` twice", tool.name));
            }
            if let Some(&index) = self.tools.get(&tool.name) {
                let other = &self.plugins[index];
                return Err(format!(
                    "tool `{}` is offered by both plugin `{}` ({}) and plugin `{}` ({}); `{}` was not loaded",
                    tool.name,
                    other.name(),
                    other.origin(),
                    source.name,
                    source.origin,
                    source.name
                ));
            }
            tools.push(tool);
        }
        Ok(LoadedPlugin { label, prepared, tools, declared, cache })
    }

    /// Plugins that loaded, in load order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Plugins that did not load, and why.
    pub fn load_errors(&self) -> &[LoadError] {
        &self.errors
    }

    /// Every tool, by name.
    pub fn tools(&self) -> impl Iterator<Item = &ToolInfo> {
        self.tools.iter().filter_map(|(name, &i)| self.plugins[i].tools.iter().find(|t| &t.name == name))
    }

    /// The plugin that offers `tool`.
    pub fn plugin_for(&self, tool: &str) -> Option<&Arc<LoadedPlugin>> {
        self.tools.get(tool).map(|&i| &self.plugins[i])
    }

    /// What each plugin has in the pod `pod`, whose manifest grants
    /// `grants`: declared ∩ granted (builtins get what they declare unless a
    /// grant names them). A grant for a plugin that is not loaded, or whose
    /// pinned digest differs, is an error.
    pub fn grants_for(
        &self,
        grants: &[Grant],
        pod: &str,
        data_root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Grants> {
        for grant in grants {
            let Some(plugin) = self.plugins.iter().find(|p| p.name() == grant.plugin) else {
                anyhow::bail!("[[plugins.grant]] names plugin `{}`, which is not loaded", grant.plugin);
            };
            if let Some(pinned) = &grant.sha256
                && !pinned.eq_ignore_ascii_case(plugin.digest())
            {
                anyhow::bail!(
                    "plugin `{}` ({}) is refused: its sha256 is {}, but the manifest pins {pinned}",
                    plugin.name(),
                    plugin.origin(),
                    plugin.digest()
                );
            }
        }
        let mut result = Grants::new();
        for plugin in &self.plugins {
            let grant = grants.iter().find(|g| g.plugin == plugin.name());
            let granted = capabilities::effective(
                plugin.name(),
                &plugin.declared,
                grant,
                plugin.is_builtin(),
                pod,
                data_root,
                env,
            )
            .map_err(|e| anyhow::anyhow!("plugin `{}`: {e}", plugin.name()))?;
            result.insert(plugin.name().to_string(), granted);
        }
        Ok(result)
    }

    /// The tools `pod` is offered, by name: a plugin that runs child pods
    /// is left out where the pod cannot have them (not granted, or not run
    /// by a host that runs child pods).
    pub fn tools_for<'a>(&'a self, pod: &'a PodContext) -> impl Iterator<Item = &'a ToolInfo> + 'a {
        self.tools.iter().filter_map(move |(name, &i)| {
            let plugin = &self.plugins[i];
            let usable = !plugin.declared.pods
                || (pod.control.is_some() && pod.grants.get(plugin.name()).is_some_and(|g| g.pods));
            if usable { plugin.tools.iter().find(|t| &t.name == name) } else { None }
        })
    }

    /// Runs `tool` with `input` (JSON text) for `pod`, in a fresh instance
    /// (see [`PluginRuntime::call`]).
    pub async fn call(&self, pod: &Arc<PodContext>, tool: &str, input: &str) -> Result<ToolOutput, ToolError> {
        let plugin = self
            .plugin_for(tool)
            .ok_or_else(|| ToolError::new(ToolErrorKind::UnknownTool, format!("there is no tool named `{tool}`")))?;
        self.runtime.call(plugin.clone(), pod, tool, input).await
    }
}

/// Longest tool name; LLM APIs accept up to 64 characters.
const MAX_TOOL_NAME: usize = 64;

fn validate_tool(info: bindings::WitToolInfo) -> Result<ToolInfo, String> {
    let name_ok = !info.name.is_empty()
        && info.name.len() <= MAX_TOOL_NAME
        && info.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(format!("tool name {:?} is not 1-64 characters from A-Z a-z 0-9 _ -", info.name));
    }
    if info.description.trim().is_empty() {
        return Err(format!("tool `{}` has no description", info.name));
    }
    let schema: serde_json::Value = serde_json::from_str(&info.input_schema)
        .map_err(|e| format!("tool `{}`: input schema is not JSON: {e}", info.name))?;
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        return Err(format!("tool `{}`: input schema must describe an object (\"type\": \"object\")", info.name));
    }
    Ok(ToolInfo { name: info.name, description: info.description, input_schema: schema })
}
