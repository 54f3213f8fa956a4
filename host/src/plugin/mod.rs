//! The plugin runtime: loads tool plugins (WASI Preview 2 components of the
//! `yoi:plugin/plugin` world) and runs their tools inside a pod's scope.
//!
//! - One [`wasmtime::Engine`] per [`PluginHost`], with the pooling allocator
//!   and copy-on-write memory images; its epoch advances every 10 ms
//!   ([`engine`]).
//! - Components are compiled once and kept on disk ([`cache`]); each gets an
//!   `InstancePre` when it loads.
//! - Every call gets a fresh `Store` and instance whose WASI context is the
//!   calling pod's scope as preopened directories ([`call`]).
//! - The `yoi:plugin` imports (log, state, context) live in `host/`.
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
mod network;
mod output;
pub mod pod_context;
mod result;
pub mod workers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use admission::Admission;
use bindings::{Plugin, PluginPre};
use cache::{CacheOutcome, ComponentCache};
use call::{CallState, PluginLabel, with_fresh_instance};
pub use capabilities::{Declared, Grant, Granted, Grants};
pub use engine::Allocator;
use engine::EpochTicker;
pub use network::{HttpAccess, OriginPattern};
pub use pod_context::{CallLimits, Ceilings, ChildOutput, ChildSummary, PodContext, PodControl, Refusal, SpawnRequest};
pub use result::{ToolError, ToolErrorKind, ToolOutput, truncate};
use workers::Workers;

/// The admission key of the host's own calls (asking a plugin to describe itself).
const HOST_KEY: admission::PodKey = 0;

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
    digest: String,
    pre: PluginPre<CallState>,
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
        &self.digest
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

/// How a [`PluginHost`] is set up.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Where compiled components are cached (`$YOI_HOME/cache`).
    pub cache_dir: PathBuf,
    /// How instances get their memory.
    pub allocator: Allocator,
    /// What the operator allows any call, whatever a manifest asks.
    pub ceilings: Ceilings,
}

/// The plugin runtime of one host: an engine, its loaded plugins and their
/// tools.
pub struct PluginHost {
    admission: Arc<Admission>,
    workers: Workers,
    ceilings: Ceilings,
    engine: Engine,
    linker: Linker<CallState>,
    cache: ComponentCache,
    plugins: Vec<Arc<LoadedPlugin>>,
    tools: BTreeMap<String, usize>,
    errors: Vec<LoadError>,
    _ticker: EpochTicker,
}

impl PluginHost {
    /// A host with no plugins yet.
    pub fn new(options: &HostOptions) -> anyhow::Result<PluginHost> {
        let engine = engine::build_engine(options.allocator)?;
        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Plugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let slots = match options.allocator {
            Allocator::Pooling => engine::POOL_COMPONENT_INSTANCES as usize,
            // Not bounded by a pool; bounded anyway, for memory's sake.
            Allocator::OnDemand => 4 * engine::POOL_COMPONENT_INSTANCES as usize,
        };
        Ok(PluginHost {
            admission: Admission::new(slots),
            workers: Workers::per_core()?,
            ceilings: options.ceilings,
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            cache: ComponentCache::new(&options.cache_dir),
            plugins: Vec::new(),
            tools: BTreeMap::new(),
            errors: Vec::new(),
        })
    }

    /// A host with the builtin plugins and those in `extra_dirs`. Plugins
    /// that fail to load are listed in [`PluginHost::load_errors`].
    pub async fn with_plugins(options: &HostOptions, extra_dirs: &[PathBuf]) -> anyhow::Result<PluginHost> {
        let mut host = PluginHost::new(options)?;
        // Failures are recorded in `load_errors`; the other plugins still load.
        for source in PluginSource::builtin() {
            let _ = host.load(source).await;
        }
        for dir in extra_dirs {
            let (sources, errors) = PluginSource::from_dir(dir)?;
            host.errors.extend(errors);
            for source in sources {
                let _ = host.load(source).await;
            }
        }
        Ok(host)
    }

    /// Loads one plugin. On failure the error is recorded (and returned) and
    /// the host carries on without it.
    pub async fn load(&mut self, source: PluginSource) -> Result<(), LoadError> {
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
        let digest = hex::encode(Sha256::digest(&source.bytes));
        // Compiling takes seconds for a big component: not on an async thread.
        let (cache, engine, bytes, key) =
            (self.cache.clone(), self.engine.clone(), source.bytes.clone(), digest.clone());
        let (component, cache) = tokio::task::spawn_blocking(move || cache.load_or_compile(&engine, &bytes, &key))
            .await
            .map_err(|e| format!("compiling failed inside the host: {e}"))?
            .map_err(|e| format!("not a valid WebAssembly component: {e:#}"))?;
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(name, _)| name).collect();
        let imports: Vec<&str> = ty.imports(&self.engine).map(|(name, _)| name).collect();
        capabilities::check_component(exports, imports, &declared)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!("cannot link: {e:#} (a tool plugin imports only WASI 0.2 and yoi:plugin@{WIT_VERSION} interfaces)")
        })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            format!("does not export yoi:plugin/tool@{WIT_VERSION} (is it built for the `plugin` world?): {e:#}")
        })?;
        let label = PluginLabel { name: source.name.as_str().into(), origin: source.origin.clone() };
        let detached = Arc::new(PodContext::detached());
        let limits = detached.limits;
        let _slot = self.admission.admit(HOST_KEY).await;
        let deadline = Instant::now() + limits.timeout;
        let described = with_fresh_instance(&pre, &label, &detached, limits, deadline, async |store, plugin| {
            plugin.yoi_plugin_tool().call_describe(store).await
        })
        .await
        .map_err(|e| format!("describe failed: {}", e.message))?;
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
        Ok(LoadedPlugin { label, digest, pre, tools, declared, cache })
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

    /// Runs `tool` with `input` (JSON text) for `pod`, in a fresh instance.
    ///
    /// The call waits for its turn (the pod's `concurrent_calls`, then a
    /// slot of the instance pool, fairly across pods); the wait counts
    /// against its deadline. It runs on the call threads ([`workers`]),
    /// where its filesystem calls run inline; dropping the future cancels
    /// it at once.
    pub async fn call(&self, pod: &Arc<PodContext>, tool: &str, input: &str) -> Result<ToolOutput, ToolError> {
        let plugin = self
            .plugin_for(tool)
            .ok_or_else(|| ToolError::new(ToolErrorKind::UnknownTool, format!("there is no tool named `{tool}`")))?
            .clone();
        let limits = pod.limits.capped(&self.ceilings);
        let (pod, tool, input, admission) = (pod.clone(), tool.to_string(), input.to_string(), self.admission.clone());
        let call = async move {
            let deadline = Instant::now() + limits.timeout;
            let turn = async {
                let gate = pod.calls.acquire().await;
                // The pod's address tells its calls from other pods' (fairness only).
                let slot = admission.admit(Arc::as_ptr(&pod) as usize).await;
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
            let result = with_fresh_instance(&plugin.pre, &plugin.label, &pod, limits, deadline, async |store, i| {
                i.yoi_plugin_tool().call_call(store, &tool, &input).await
            })
            .await?;
            match result {
                Ok(output) => result::normalize_output(plugin.name(), output, limits.output_max_bytes),
                Err(e) => Err(e.into()),
            }
        };
        match self.workers.spawn(call).await {
            Ok(result) => result,
            Err(fault) => {
                Err(ToolError::new(ToolErrorKind::HostError, format!("the call failed inside the host: {fault}")))
            }
        }
    }

    /// The instance pool's admission (slots in use, longest wait).
    pub fn admission(&self) -> &Admission {
        &self.admission
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
