//! `yoi-host serve`: one process hosting many tenants' pods behind an HTTP
//! API (docs/serve.md, docs/api.md).
//!
//! Parts: `config` (serve.toml), `tenants` (the registry of tenants and
//! tokens), `quota` (quota keys and the rate limiter), `tenant` (a
//! tenant's live state and its pods), `files` (the workspace through the
//! API), `plugins` (a tenant's own plugins), `secrets`, `error` (the one error shape) and `api` (routes and
//! handlers).
//!
//! All tenants share one plugin runtime (engine, compiled code, call
//! threads, admission) and one scope lock; each has its own plugin set,
//! namespace and directory.

mod api;
pub mod config;
mod error;
mod files;
mod metrics;
mod plugins;
pub mod quota;
mod secrets;
mod tenant;
pub mod tenants;
mod usage;

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::plugin::{Allocator, HostOptions, PluginRuntime};
use crate::scope_lock::ScopeLock;
pub use config::ServeConfig;
use error::ApiError;
use tenant::Tenant;
use tenants::{Registry, TenantRecord, TenantStore};

/// The server: its configuration, the tenant registry, the shared plugin
/// runtime and the tenants it has opened.
pub struct Server {
    config: ServeConfig,
    registry: Registry,
    pods: tenant::Shared,
    tenants: Mutex<HashMap<String, Arc<OnceCell<Arc<Tenant>>>>>,
    /// Cancelled when the server begins to shut down: event streams end.
    stopping: tokio_util::sync::CancellationToken,
}

/// Writes `bytes` to `path` through a temporary file and a rename, mode 0600.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}-{:016x}", std::process::id(), fastrand::u64(..)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot replace {}", path.display()));
    if written.is_err() {
        // The old file stays whole; the partial new one goes.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl Server {
    /// Opens the data directory and the registry, and starts the plugin
    /// runtime. Tenants are opened by [`Server::restore`] or on first use.
    pub async fn new(config: ServeConfig) -> anyhow::Result<Arc<Server>> {
        let store = TenantStore::open(&config.data_dir)?;
        let registry = Registry::new(store)?;
        let options = HostOptions {
            cache_dir: config.data_dir.join("cache"),
            allocator: Allocator::Pooling,
            ceilings: config.ceilings,
        };
        let runtime = PluginRuntime::new(&options)?;
        let pods = tenant::Shared {
            runtime,
            scope_lock: ScopeLock::new(config.data_dir.join("scope.lock")),
            quotas: config.quotas.clone(),
            metrics: Arc::new(metrics::Metrics::default()),
        };
        let tenants = Mutex::new(HashMap::new());
        Ok(Arc::new(Server { config, registry, pods, tenants, stopping: Default::default() }))
    }

    /// Opens every tenant and brings back its pods, idle, with their history.
    pub async fn restore(&self) {
        for record in self.registry.tenants() {
            match self.tenant(record.clone()).await {
                Ok(tenant) => tenant.restore(&self.pods).await,
                Err(e) => tracing::error!(tenant = %record.name, "cannot open the tenant: {}", e.message),
            }
        }
    }

    /// The live state of the tenant `record` names, opened on first use.
    async fn tenant(&self, record: Arc<TenantRecord>) -> Result<Arc<Tenant>, ApiError> {
        let stale = self.tenants.lock().get(&record.name).and_then(|c| c.get().cloned()).filter(|t| !t.is(&record));
        if let Some(old) = stale {
            // Removed and added again since it was opened: the old one goes.
            self.forget_tenant(&old.name).await;
        }
        let cell = self.tenants.lock().entry(record.name.clone()).or_default().clone();
        let dir = self.registry.store().dir(&record.name);
        let tenant = cell
            .get_or_try_init(|| async {
                let tenant = Tenant::open(record.clone(), dir, &self.pods).await?;
                anyhow::Ok(Arc::new(tenant))
            })
            .await
            .map_err(|e| ApiError::internal(format!("cannot open tenant {:?}: {e:#}", record.name)))?;
        tenant.refresh(record);
        Ok(tenant.clone())
    }

    fn opened(&self) -> Vec<Arc<Tenant>> {
        self.tenants.lock().values().filter_map(|c| c.get().cloned()).collect()
    }

    fn live_tenants(&self) -> usize {
        self.opened().len()
    }

    fn live_pods(&self) -> usize {
        self.opened().iter().map(|t| t.pods().len()).sum()
    }

    /// Stops a tenant's pods and forgets its live state (it is being removed).
    async fn forget_tenant(&self, name: &str) {
        let cell = self.tenants.lock().remove(name);
        if let Some(tenant) = cell.and_then(|c| c.get().cloned()) {
            tenant.stop_all().await;
        }
    }

    /// Measures the workspaces that pods may have written to since their
    /// last measurement (the workspace quota's enforcement for tools).
    async fn measure_workspaces(&self) {
        for tenant in self.opened() {
            if tenant.usage.workspace_stale.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tenant.measure_workspace(&self.config.quotas).await;
            }
        }
    }

    /// Forgets tenants the registry no longer has (removed by `yoi-host
    /// tenant rm` while the server runs).
    async fn sync_with_registry(&self) {
        // Gone: removed, or removed and added again as another tenant.
        let gone: Vec<String> = self
            .tenants
            .lock()
            .iter()
            .filter(|(name, cell)| match (self.registry.tenant(name), cell.get()) {
                (None, _) => true,
                (Some(record), Some(tenant)) => !tenant.is(&record),
                (Some(_), None) => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            tracing::info!(tenant = %name, "the tenant was removed; stopping its pods");
            self.forget_tenant(&name).await;
        }
        // Quota changes reach tenants whose pods run with no API traffic.
        for tenant in self.opened() {
            if let Some(record) = self.registry.tenant(&tenant.name) {
                tenant.refresh(record);
            }
        }
    }

    /// Stops every pod of every tenant (their manifests stay for the next start).
    pub async fn shutdown(&self) {
        for tenant in self.opened() {
            tenant.stop_all().await;
        }
    }
}

/// Runs the server until SIGTERM, SIGINT or SIGHUP: restores the tenants'
/// pods, then serves the API (and `/metrics` on its own address if set).
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = config.listen;
    let server = Server::new(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("yoi-host: restoring pods");
    server.restore().await;
    let address = listener.local_addr()?;
    eprintln!("yoi-host: serving on http://{address} ({} pods restored)", server.live_pods());
    let syncing = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                server.sync_with_registry().await;
                server.measure_workspaces().await;
            }
        })
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let stopping = server.stopping.clone();
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        eprintln!("yoi-host: shutting down");
        // Event streams never end by themselves; the server waits for
        // every other request to finish.
        stopping.cancel();
    };
    if let Some(address) = server.config.metrics_listen {
        // `/metrics` alone, without a token, for a scraper on a private address.
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(|axum::extract::State(s): axum::extract::State<Arc<Server>>| async move {
                    api::metrics_text(&s)
                }),
            )
            .with_state(server.clone());
        eprintln!("yoi-host: metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let app = api::router(server.clone());
    axum::serve(listener, app).with_graceful_shutdown(stop).await.context("the server failed")?;
    syncing.abort();
    server.shutdown().await;
    Ok(())
}
