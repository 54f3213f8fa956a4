//! The calling pod, as the plugin layer sees it: its name, scope, limits,
//! plugin store and grants ([`PodContext`]), and the pod layer's side of
//! `yoi:plugin/pods` ([`PodControl`]). The plugin layer knows pods only
//! through this module; the pod layer implements it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::capabilities::Grants;
use crate::lifecycle::Lifecycle;
use crate::plugin_store::PluginStore;
use crate::scope::{Rule, RuleSpec, Scope};

/// Limits of one call, from the pod's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock deadline.
    pub timeout: Duration,
    /// Linear memory cap, in bytes.
    pub memory_bytes: u64,
    /// Cap on the content handed back to the model, in bytes.
    pub output_max_bytes: usize,
    /// Calls of the pod that run at once; more wait their turn.
    pub concurrent_calls: usize,
}

impl CallLimits {
    /// The limits of a manifest that sets none; the manifest's defaults
    /// are these.
    pub const DEFAULT: CallLimits = CallLimits {
        timeout: Duration::from_secs(30),
        memory_bytes: 256 << 20,
        output_max_bytes: 16 * 1024,
        concurrent_calls: 8,
    };

    /// These limits, capped by a host's ceilings.
    pub fn capped(self, ceilings: &Ceilings) -> CallLimits {
        CallLimits {
            timeout: self.timeout.min(ceilings.timeout),
            memory_bytes: self.memory_bytes.min(ceilings.memory_bytes),
            ..self
        }
    }
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits::DEFAULT
    }
}

/// What an operator allows any call on the host, whatever a manifest asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// Longest deadline of a call.
    pub timeout: Duration,
    /// Largest linear memory of a call, in bytes.
    pub memory_bytes: u64,
}

impl Default for Ceilings {
    /// As much as the engine allows: an hour, and the pool's memory slot.
    fn default() -> Self {
        Ceilings { timeout: Duration::from_secs(3600), memory_bytes: super::engine::MAX_MEMORY_BYTES as u64 }
    }
}

/// The calling pod, as a plugin call needs it.
pub struct PodContext {
    /// The pod's name.
    pub name: String,
    /// The pod's working directory (absolute).
    pub working_dir: PathBuf,
    /// The pod's current effective scope; it changes while the pod lends part
    /// of it to child pods, and each call takes the scope of its start.
    scope: RwLock<Arc<Scope>>,
    /// Limits for each call.
    pub limits: CallLimits,
    /// The pod's plugin store (what plugins keep between calls).
    pub state: PluginStore,
    /// Child pods, when the pod is served by a host that runs them.
    pub control: Option<Arc<dyn PodControl>>,
    /// What each plugin may use beyond the scope, by plugin name.
    pub grants: Grants,
    /// Who admits and pays for the pod's calls (a tenant's quotas), if anyone.
    pub meter: Option<Arc<dyn super::CallMeter>>,
    /// Admits `limits.concurrent_calls` calls at once, in arrival order.
    pub(super) calls: tokio::sync::Semaphore,
    /// The scope's directories as the pod's calls preopen them.
    pub(super) preopens: super::preopens::Preopens,
}

impl std::fmt::Debug for PodContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodContext").field("name", &self.name).field("scope", &self.scope()).finish_non_exhaustive()
    }
}

impl PodContext {
    /// A context for the pod `name` with `scope`; no child pods.
    pub fn new(name: &str, working_dir: PathBuf, scope: Scope, limits: CallLimits) -> PodContext {
        PodContext {
            name: name.to_string(),
            working_dir,
            scope: RwLock::new(Arc::new(scope)),
            limits,
            state: PluginStore::new(),
            control: None,
            grants: Grants::new(),
            meter: None,
            calls: tokio::sync::Semaphore::new(limits.concurrent_calls.max(1)),
            preopens: Default::default(),
        }
    }

    /// A context with no scope at all, used to ask plugins to describe
    /// themselves.
    pub fn detached() -> PodContext {
        let limits = CallLimits { timeout: Duration::from_secs(10), ..CallLimits::default() };
        PodContext::new("", PathBuf::from("/"), Scope::default(), limits)
    }

    /// The effective scope now.
    pub fn scope(&self) -> Arc<Scope> {
        self.scope.read().clone()
    }

    /// Replaces the effective scope; calls that start later see it.
    pub fn set_scope(&self, scope: Scope) {
        *self.scope.write() = Arc::new(scope);
        self.preopens.clear();
    }
}

/// What the model asked `spawn` for.
#[derive(Clone, Debug)]
pub struct SpawnRequest {
    /// The child's name, relative to the caller.
    pub name: String,
    /// The child's first run.
    pub task: String,
    /// The child's allow rules (targets may be relative to the caller's
    /// working directory).
    pub scope: Vec<RuleSpec>,
    /// Extra system-prompt text.
    pub instruction: Option<String>,
    /// Another model of the caller's provider.
    pub model: Option<String>,
}

/// New output of a child since the caller's last read.
#[derive(Clone, Debug)]
pub struct ChildOutput {
    /// The text.
    pub text: String,
    /// Bytes produced but no longer kept.
    pub dropped: u64,
    /// The child's state now.
    pub state: Lifecycle,
}

/// One descendant, as its ancestor sees it.
#[derive(Clone, Debug)]
pub struct ChildSummary {
    /// Name relative to the caller.
    pub name: String,
    /// State.
    pub state: Lifecycle,
    /// Allow rules.
    pub scope: Vec<Rule>,
}

/// Why an orchestration request was refused; the message is for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request makes no sense.
    InvalidInput(String),
    /// The request asks for more than the caller has.
    PermissionDenied(String),
    /// No such pod (among the caller's descendants).
    NotFound(String),
    /// Anything else (the pod is busy, the host failed).
    Failed(String),
}

/// The pod layer's side of `yoi:plugin/pods`, acting for the pod named
/// `caller`.
#[async_trait::async_trait]
pub trait PodControl: Send + Sync {
    /// Starts a child of `caller`.
    async fn spawn(&self, caller: &str, request: SpawnRequest) -> Result<String, Refusal>;
    /// Starts a run of a descendant.
    async fn send(&self, caller: &str, name: &str, message: String) -> Result<String, Refusal>;
    /// A descendant's new output.
    async fn read_output(&self, caller: &str, name: &str) -> Result<ChildOutput, Refusal>;
    /// Stops a descendant and its own descendants.
    async fn stop(&self, caller: &str, name: &str) -> Result<String, Refusal>;
    /// The caller's descendants.
    async fn list(&self, caller: &str) -> Vec<ChildSummary>;
}
