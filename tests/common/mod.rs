//! Helpers shared by the end-to-end tests: temporary pods, plugin
//! directories holding chosen test components, and hosts that load them.
#![allow(dead_code)]

pub mod api;
pub mod builds;
pub mod mock_http;
pub mod server_process;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use yoi_host::identity::Namespace;
use yoi_host::manifest::LoadedManifest;
use yoi_host::plugin::{Allocator, CallLimits, HostOptions, PluginSet, PodContext};
use yoi_host::pod::{Exposure, PodHandle, PodSpec, start};
use yoi_host::provider::{Provider, from_manifest, retry_policy};
use yoi_host::scope::{Permission, RuleSpec, Scope};
use yoi_host::scope_lock::ScopeLock;
use yoi_host::session::SessionStore;

/// Where the build put the guest components.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("YOI_GUEST_DIR")).join(format!("{name}.wasm"))
}

/// A compiled-component cache shared by the tests of one build, so each
/// component compiles once.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// A directory holding copies of the named guest components.
pub fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::copy(guest(name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// A host with the builtin plugins and the named test components.
pub async fn host_with(names: &[&str]) -> PluginSet {
    let dir = plugin_dir(names);
    let options =
        HostOptions { cache_dir: shared_cache(), allocator: Allocator::Pooling, ceilings: Default::default() };
    PluginSet::with_plugins(&options, &[dir.path().to_path_buf()]).await.unwrap()
}

/// A temporary directory tree for a pod, in canonical form.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    /// Canonical root of the tree.
    pub root: PathBuf,
}

impl Sandbox {
    /// An empty tree.
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        Sandbox { _tmp: tmp, root }
    }

    /// `root/rel`, with parent directories created.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Writes `root/rel`.
    pub fn file(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Reads `root/rel`, or None if it does not exist.
    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }
}

/// An allow or deny rule spec.
pub fn rule(target: &Path, permission: Permission) -> RuleSpec {
    RuleSpec { target: target.to_path_buf(), permission, recursive: true }
}

/// A pod context with the given rules and limits.
pub fn pod(allow: &[RuleSpec], deny: &[RuleSpec], limits: CallLimits) -> Arc<PodContext> {
    let scope = Scope::resolve(allow, deny, Path::new("/")).unwrap();
    let working_dir = scope.allow.first().map(|r| r.target.clone()).unwrap_or_else(|| "/".into());
    Arc::new(PodContext::new("test", working_dir, scope, limits))
}

/// Starts the pod of `manifest` in this process, with its provider (no API
/// keys), the builtin plugins plus those in `plugin_dirs`, sessions and data
/// under `home`, and runtime dirs and the scope lock in `run/` beside the
/// manifest.
pub async fn start_pod(
    manifest: &Path,
    home: &Path,
    plugin_dirs: &[PathBuf],
    resume: Option<String>,
) -> anyhow::Result<PodHandle> {
    let loaded = LoadedManifest::load(manifest)?;
    let base = manifest.parent().unwrap();
    let section = loaded.manifest.provider.clone().expect("a [provider] section");
    let name = loaded.manifest.pod.name.clone();
    let provider: Arc<dyn Provider> =
        Arc::from(from_manifest(&section, base, &loaded.working_dir, &name, &|_| None, None)?);
    let options =
        HostOptions { cache_dir: shared_cache(), allocator: Allocator::Pooling, ceilings: Default::default() };
    let plugins = Arc::new(PluginSet::with_plugins(&options, plugin_dirs).await?);
    start(PodSpec {
        manifest: loaded,
        plugins,
        provider: Some(provider),
        retry: retry_policy(&section),
        sessions: SessionStore::new(home.join("sessions")),
        runtime_root: base.join("run"),
        resume,
        scope_lock: ScopeLock::new(base.join("run/scope.lock")),
        data_root: home.join("data"),
        namespace: Namespace::operator(),
        exposure: Exposure::Socket,
        env: yoi_host::pod::process_environment(),
        metering: None,
    })
    .await
}
