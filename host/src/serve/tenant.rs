//! One tenant's live state on the server: its pods, its plugin set, its
//! secrets, its rate limiter and running-call count, and the directory
//! everything of it lives in (`DATA/tenants/NAME/`):
//!
//! - `workspace/`: its files; every pod's scope lies inside it.
//! - `pods/NAME.toml`: the manifest of each of its pods (restored on restart).
//! - `sessions/`, `data/`: its pods' session logs and plugins' private data.
//! - `plugins/`: its own plugins; `secrets.json` (mode 0600): its secrets.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};

use super::error::ApiError;
use super::quota::{Quotas, RateLimiter};
use super::tenants::TenantRecord;
use crate::identity::Namespace;
use crate::manifest::{LoadedManifest, Manifest};
use crate::plugin::{PluginRuntime, PluginSet};
use crate::pod::{Environment, Exposure, Metering, PodHandle, PodSpec};
use crate::provider::{self, Provider, RetryPolicy};
use crate::scope_lock::ScopeLock;
use crate::session::SessionStore;

/// A tenant on the server.
pub struct Tenant {
    /// Its name.
    pub name: String,
    dir: PathBuf,
    namespace: Namespace,
    record: Arc<RwLock<Arc<TenantRecord>>>,
    /// Its metering and the quotas that depend on it.
    pub usage: Arc<super::usage::Usage>,
    /// Its live pods, child pods included, against `live_pods`.
    slots: Arc<crate::pod::PodSlots>,
    /// Its pods by name. The lock is held only to look up or insert.
    pods: Mutex<BTreeMap<String, PodHandle>>,
    /// Names of pods being created (so two creations of one name start one).
    creating: Mutex<std::collections::HashSet<String>>,
    plugins: RwLock<Arc<PluginSet>>,
    /// Held while the plugin set changes (uploads and removals, one at a time).
    pub plugin_changes: tokio::sync::Mutex<()>,
    /// Held while the secrets change.
    pub secret_changes: tokio::sync::Mutex<()>,
    /// Held while an upload writes the workspace, so that uploads at once
    /// cannot each take the whole room left.
    pub uploads: tokio::sync::Mutex<()>,
    secrets: Arc<RwLock<BTreeMap<String, String>>>,
    /// API requests.
    pub limiter: RateLimiter,
    /// Bytes in the workspace, once measured (then kept up to date by the
    /// API's writes and re-measured when older than [`REMEASURE`]).
    workspace_used: Mutex<Option<(u64, std::time::Instant)>>,
    /// Its pods' MCP endpoints.
    pub mcp: crate::mcp::http::Endpoints,
}

/// How long a measurement of the workspace's size is trusted: tools write
/// to it too.
const REMEASURE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a tenant's pods get from the server.
pub struct Shared {
    /// The plugin runtime of the process.
    pub runtime: Arc<PluginRuntime>,
    /// The server's scope lock.
    pub scope_lock: ScopeLock,
    /// Default quotas.
    pub quotas: Quotas,
    /// The server's metrics.
    pub metrics: Arc<super::metrics::Metrics>,
}

fn make_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

impl Tenant {
    /// Opens tenant `record`'s directory (making what is missing) and loads
    /// its plugin set and secrets; its pods are restored by [`Tenant::restore`].
    pub async fn open(record: Arc<TenantRecord>, dir: PathBuf, shared: &Shared) -> anyhow::Result<Tenant> {
        for sub in ["workspace", "pods", "sessions", "data", "plugins"] {
            make_dir(&dir.join(sub))?;
        }
        // Archives a crash left half-extracted.
        let _ = std::fs::remove_dir_all(dir.join("staging"));
        let plugins = PluginSet::load(shared.runtime.clone(), &[dir.join("plugins")]).await?;
        for e in plugins.load_errors() {
            tracing::warn!(tenant = %record.name, "plugin not loaded: {e}");
        }
        let secrets = super::secrets::read(&dir)?;
        let name = record.name.clone();
        let record = Arc::new(RwLock::new(record));
        let quotas = {
            let (record, defaults) = (record.clone(), shared.quotas.clone());
            Arc::new(move || defaults.with(&record.read().quotas))
        };
        let usage = super::usage::Usage::open(&name, dir.clone(), quotas.clone(), shared.metrics.clone())?;
        let slots = crate::pod::PodSlots::new(move || usize::try_from(quotas().live_pods).unwrap_or(usize::MAX));
        Ok(Tenant {
            namespace: Namespace::named(&name)?,
            name,
            dir,
            record,
            usage,
            slots,
            pods: Mutex::new(BTreeMap::new()),
            creating: Mutex::new(Default::default()),
            plugins: RwLock::new(Arc::new(plugins)),
            plugin_changes: tokio::sync::Mutex::new(()),
            secret_changes: tokio::sync::Mutex::new(()),
            uploads: tokio::sync::Mutex::new(()),
            secrets: Arc::new(RwLock::new(secrets)),
            limiter: RateLimiter::default(),
            workspace_used: Mutex::new(None),
            mcp: Default::default(),
        })
    }

    /// The tenant's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its workspace, where its files are and its pods' scopes lie.
    pub fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    /// Bytes in the workspace now (measured again when the last
    /// measurement is older than [`REMEASURE`]).
    pub async fn workspace_used(&self, defaults: &Quotas) -> u64 {
        if let Some((used, at)) = *self.workspace_used.lock()
            && at.elapsed() < REMEASURE
        {
            return used;
        }
        self.measure_workspace(defaults).await
    }

    /// Measures the workspace (off the async threads), and tells the meter
    /// whether it is over its quota.
    pub async fn measure_workspace(&self, defaults: &Quotas) -> u64 {
        // Plugins' private data directories count too: the tenant's tools
        // write them just as they write the workspace.
        let roots = [self.workspace(), self.dir.join("data")];
        let used = tokio::task::spawn_blocking(move || {
            roots
                .iter()
                .map(|root| match super::files::open_workspace(root) {
                    Ok(dir) => super::files::tree_size(&dir, Path::new("")),
                    Err(_) => 0,
                })
                .sum()
        })
        .await
        .unwrap_or(0);
        self.note_workspace(used, defaults);
        used
    }

    fn note_workspace(&self, used: u64, defaults: &Quotas) {
        *self.workspace_used.lock() = Some((used, std::time::Instant::now()));
        let full = used > self.quotas(defaults).workspace_bytes();
        self.usage.workspace_full.store(full, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a write of `added` bytes that replaced `removed` bytes.
    pub fn charge_workspace(&self, added: u64, removed: u64, defaults: &Quotas) {
        let used = self.workspace_used.lock().map(|(used, _)| used.saturating_add(added).saturating_sub(removed));
        if let Some(used) = used {
            self.note_workspace(used, defaults);
        }
    }

    /// Whether `record` is this tenant's (and not one of the same name
    /// added after this one was removed).
    pub fn is(&self, record: &TenantRecord) -> bool {
        self.record.read().id == record.id
    }

    /// Keeps the registry's latest record (quotas, token).
    pub fn refresh(&self, record: Arc<TenantRecord>) {
        if **self.record.read() != *record {
            *self.record.write() = record;
        }
    }

    /// Its quotas now.
    pub fn quotas(&self, defaults: &Quotas) -> Quotas {
        defaults.with(&self.record.read().quotas)
    }

    /// Its secrets, as the environment of its pods.
    fn environment(&self) -> Environment {
        let secrets = self.secrets.clone();
        Arc::new(move |name: &str| secrets.read().get(name).cloned())
    }

    /// Its secrets' store.
    pub fn secrets(&self) -> &Arc<RwLock<BTreeMap<String, String>>> {
        &self.secrets
    }

    /// Its plugin set (builtins and its own plugins).
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.read().clone()
    }

    /// Replaces its plugin set (after an upload or a removal).
    pub fn set_plugins(&self, plugins: PluginSet) {
        *self.plugins.write() = Arc::new(plugins);
    }

    /// Pod `name`, if the tenant has it.
    pub fn pod(&self, name: &str) -> Option<PodHandle> {
        self.pods.lock().get(name).cloned()
    }

    /// Its pods, by name.
    pub fn pods(&self) -> Vec<PodHandle> {
        self.pods.lock().values().cloned().collect()
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{name}.toml"))
    }

    /// Creates and starts pod `name` from a manifest (TOML, or JSON when
    /// `json`), checked against the tenant's workspace and quotas, and
    /// keeps the manifest so that the pod comes back after a restart.
    pub async fn create_pod(
        &self,
        shared: &Shared,
        name: &str,
        body: &[u8],
        json: bool,
    ) -> Result<PodHandle, ApiError> {
        crate::manifest::validate_pod_name(name)
            .map_err(|e| ApiError::bad_request("invalid_name", format!("{e:#}")))?;
        let manifest =
            parse_manifest(body, json).map_err(|e| ApiError::unprocessable("invalid_manifest", format!("{e:#}")))?;
        if manifest.pod.name != name {
            return Err(ApiError::unprocessable(
                "invalid_manifest",
                format!("the manifest names pod {:?}, but the path names {name:?}", manifest.pod.name),
            ));
        }
        let quotas = self.quotas(&shared.quotas);
        let _claim = {
            let pods = self.pods.lock();
            let mut creating = self.creating.lock();
            if pods.contains_key(name) || creating.contains(name) {
                return Err(ApiError::conflict("already_exists", format!("pod {name:?} already exists")));
            }
            if (self.slots.live() + creating.len()) as u64 >= quotas.live_pods {
                return Err(ApiError::quota(
                    "live_pods",
                    format!("the quota of {} live pods is reached", quotas.live_pods),
                    None,
                ));
            }
            creating.insert(name.to_string());
            Creating { tenant: self, name: name.to_string() }
        };
        let handle = self.start(shared, manifest.clone(), None).await?;
        let text =
            toml::to_string(&manifest).map_err(|e| ApiError::internal(format!("cannot keep the manifest: {e}")))?;
        let path = self.manifest_path(name);
        if let Err(e) = super::write_file_atomic(&path, text.as_bytes()) {
            let _ = handle.request(crate::protocol::Method::Shutdown { detach_children: false }).await;
            return Err(ApiError::internal(format!("cannot keep the manifest: {e:#}")));
        }
        self.pods.lock().insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// Starts the pods whose manifests the tenant keeps, each continuing
    /// its latest session; a pod that cannot start is logged and skipped.
    pub async fn restore(&self, shared: &Shared) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
            .collect();
        names.sort();
        for name in names {
            let started = async {
                let text = std::fs::read(self.manifest_path(&name))?;
                let manifest = parse_manifest(&text, false)?;
                let sessions = SessionStore::new(self.dir.join("sessions"));
                let resume = sessions.resolve("latest", &name).ok();
                self.start(shared, manifest, resume).await.map_err(|e| anyhow::anyhow!("{}", e.message))
            };
            match started.await {
                Ok(handle) => {
                    self.pods.lock().insert(name, handle);
                }
                Err(e) => tracing::error!(tenant = %self.name, pod = %name, "cannot restore the pod: {e:#}"),
            }
        }
    }

    /// Stops pod `name` and forgets it (its sessions stay); `false` if
    /// the tenant has no such pod.
    pub async fn delete_pod(&self, name: &str) -> Result<bool, ApiError> {
        let Some(handle) = self.pods.lock().remove(name) else { return Ok(false) };
        self.mcp.forget(name);
        let _ = std::fs::remove_file(self.manifest_path(name));
        let _ = handle.request(crate::protocol::Method::Shutdown { detach_children: false }).await;
        handle.wait().await;
        Ok(true)
    }

    /// Stops every pod (the server is shutting down); their manifests stay.
    pub async fn stop_all(&self) {
        self.mcp.close_all();
        let pods: Vec<PodHandle> = std::mem::take(&mut *self.pods.lock()).into_values().collect();
        for pod in &pods {
            let _ = pod.request(crate::protocol::Method::Shutdown { detach_children: false }).await;
        }
        for pod in pods {
            pod.wait().await;
        }
    }

    async fn start(
        &self,
        shared: &Shared,
        mut manifest: Manifest,
        resume: Option<String>,
    ) -> Result<PodHandle, ApiError> {
        let quotas = self.quotas(&shared.quotas);
        let limits = &mut manifest.limits;
        limits.tool_memory_mb = limits.tool_memory_mb.min(quotas.tool_memory_mb);
        limits.tool_timeout_ms = limits.tool_timeout_ms.min(quotas.tool_timeout_ms);
        limits.concurrent_tool_calls = limits.concurrent_tool_calls.min(quotas.concurrent_tool_calls as usize);
        // Child pods count against nothing else: their number and depth are
        // held to the live-pod quota and a fixed depth.
        limits.max_children = limits.max_children.min(quotas.live_pods as usize);
        limits.max_depth = limits.max_depth.min(MAX_CHILD_DEPTH);
        let workspace = self.workspace();
        let loaded = resolve_in_workspace(manifest, &workspace)?;
        let env = self.environment();
        let name = loaded.manifest.pod.name.clone();
        let (provider, retry): (Option<Arc<dyn Provider>>, RetryPolicy) = match &loaded.manifest.provider {
            Some(section) => {
                let p = provider::from_manifest(
                    section,
                    &workspace,
                    &loaded.working_dir,
                    &name,
                    &*env,
                    loaded.root.as_deref(),
                )
                .map_err(|e| ApiError::unprocessable("invalid_provider", format!("{e:#}")))?;
                (Some(Arc::from(p)), provider::retry_policy(section))
            }
            None => (None, RetryPolicy::default()),
        };
        let spec = PodSpec {
            manifest: loaded,
            plugins: self.plugins(),
            provider,
            retry,
            sessions: SessionStore::new(self.dir.join("sessions")),
            runtime_root: self.dir.join("run"),
            resume,
            scope_lock: shared.scope_lock.clone(),
            data_root: self.dir.join("data"),
            namespace: self.namespace.clone(),
            exposure: Exposure::HostOnly,
            env,
            metering: Some(self.metering()),
        };
        crate::pod::start(spec).await.map_err(|e| match e.downcast_ref::<crate::pod::PodSlotsFull>() {
            Some(full) => ApiError::quota("live_pods", format!("{} pods (child pods included) are live", full.0), None),
            None => ApiError::unprocessable("cannot_start", format!("{e:#}")),
        })
    }
}

impl Tenant {
    /// The tenant's meter for its pods' calls and model requests.
    fn metering(&self) -> Metering {
        let usage = self.usage.clone();
        Metering {
            calls: Arc::new(super::usage::Meter(self.usage.clone())),
            pods: self.slots.clone(),
            models: Arc::new(move |inner: Arc<dyn Provider>, pod: &str| -> Arc<dyn Provider> {
                Arc::new(super::usage::MeteredProvider { inner, usage: usage.clone(), pod: pod.to_string() })
            }),
        }
    }
}

/// Clears a name's "being created" mark when its creation ends either way.
struct Creating<'a> {
    tenant: &'a Tenant,
    name: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.tenant.creating.lock().remove(&self.name);
    }
}

fn parse_manifest(body: &[u8], json: bool) -> anyhow::Result<Manifest> {
    if json {
        Manifest::from_json(body)
    } else {
        let text = std::str::from_utf8(body).context("the manifest is not UTF-8")?;
        Manifest::parse(text)
    }
}

/// Deepest tree of child pods a tenant's pod may grow.
const MAX_CHILD_DEPTH: usize = 4;

/// Resolves a tenant's manifest against its workspace: every path in it
/// (scope targets, working directory, prompt file, script) must be
/// relative, and must stay inside the workspace once `..` and symlinks are
/// resolved (`scope_outside_workspace`); other faults are `invalid_manifest`.
pub fn resolve_in_workspace(manifest: Manifest, workspace: &Path) -> Result<LoadedManifest, ApiError> {
    let outside = |e: String| ApiError::unprocessable("scope_outside_workspace", e);
    let root = std::fs::canonicalize(workspace)
        .map_err(|e| ApiError::internal(format!("cannot open the workspace {}: {e}", workspace.display())))?;
    let rule = "paths in a tenant's manifest are relative to its workspace and must stay inside it";
    let mut named: Vec<(String, &Path)> = Vec::new();
    for (i, r) in manifest.scope.allow.iter().enumerate() {
        named.push((format!("scope.allow[{i}].target"), &r.target));
    }
    for (i, r) in manifest.scope.deny.iter().enumerate() {
        named.push((format!("scope.deny[{i}].target"), &r.target));
    }
    if let Some(dir) = &manifest.pod.working_dir {
        named.push(("pod.working_dir".into(), dir));
    }
    if let Some(file) = &manifest.agent.prompt_file {
        named.push(("agent.prompt_file".into(), file));
    }
    if let Some(script) = manifest.provider.as_ref().and_then(|p| p.script.as_ref()) {
        named.push(("provider.script".into(), script));
    }
    for (key, path) in &named {
        if path.is_absolute() {
            return Err(outside(format!("key `{key}`: {} is absolute; {rule}", path.display())));
        }
        // One answer for every way out, so that nothing outside (another
        // tenant's files) can be probed through the error.
        let out = || outside(format!("key `{key}`: {} leads outside the workspace; {rule}", path.display()));
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(out());
        }
        match crate::scope::canonicalize(&root.join(path)) {
            Ok(canonical) if canonical.starts_with(&root) => {}
            _ => return Err(out()),
        }
    }
    let loaded = manifest
        .resolve(&root, root.join("manifest.toml"))
        .map_err(|e| ApiError::unprocessable("invalid_manifest", format!("{e:#}")))?;
    // What the scope resolved to is checked again, as the pod will use it.
    for rule_target in loaded.scope.allow.iter().chain(loaded.scope.deny.iter()).map(|r| &r.target) {
        if !rule_target.starts_with(&root) {
            return Err(outside(format!("{} leads outside the workspace; {rule}", rule_target.display())));
        }
    }
    if !loaded.working_dir.starts_with(&root) {
        let shown = loaded.working_dir.display();
        return Err(outside(format!("the working directory {shown} lies outside the workspace; {rule}")));
    }
    Ok(LoadedManifest { root: Some(root), ..loaded })
}
