//! `yoi:plugin/pods`: child pods of the calling pod. The plugin layer only
//! translates; the pod layer does the work behind [`PodControl`], and
//! decides what the caller may reach.

use std::path::PathBuf;

use crate::plugin::bindings::{WitPermission, pods, types::ToolError as WitToolError};
use crate::plugin::call::CallState;
use crate::scope::{Permission, Rule, RuleSpec};

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

/// Where a pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// A run is going on.
    Running,
    /// Waiting for a message.
    Idle,
    /// Waiting for an approval.
    Paused,
    /// Shut down.
    Stopped,
}

/// New output of a child since the caller's last read.
#[derive(Clone, Debug)]
pub struct ChildOutput {
    /// The text.
    pub text: String,
    /// Bytes produced but no longer kept.
    pub dropped: u64,
    /// The child's state now.
    pub state: ChildState,
}

/// One descendant, as its ancestor sees it.
#[derive(Clone, Debug)]
pub struct ChildSummary {
    /// Name relative to the caller.
    pub name: String,
    /// State.
    pub state: ChildState,
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

fn wit_error(refusal: Refusal) -> WitToolError {
    match refusal {
        Refusal::InvalidInput(m) => WitToolError::InvalidInput(m),
        Refusal::PermissionDenied(m) => WitToolError::PermissionDenied(m),
        Refusal::NotFound(m) => WitToolError::NotFound(m),
        Refusal::Failed(m) => WitToolError::Failed(m),
    }
}

fn wit_state(state: ChildState) -> pods::PodState {
    match state {
        ChildState::Running => pods::PodState::Running,
        ChildState::Idle => pods::PodState::Idle,
        ChildState::Paused => pods::PodState::Paused,
        ChildState::Stopped => pods::PodState::Stopped,
    }
}

impl CallState {
    fn control(&self) -> Result<&dyn PodControl, WitToolError> {
        if !self.pod.grants.get(&*self.plugin).is_some_and(|g| g.pods) {
            return Err(WitToolError::PermissionDenied(format!(
                "plugin `{}` was not granted child pods in this pod's manifest ([[plugins.grant]] pods = true)",
                self.plugin
            )));
        }
        self.pod.control.as_deref().ok_or_else(|| {
            WitToolError::Failed("this pod cannot run child pods here (only a served pod can)".to_string())
        })
    }
}

impl pods::Host for CallState {
    async fn spawn(&mut self, request: pods::SpawnRequest) -> Result<String, WitToolError> {
        let scope = request
            .scope
            .into_iter()
            .map(|r| RuleSpec {
                target: PathBuf::from(r.target),
                permission: match r.permission {
                    WitPermission::Read => Permission::Read,
                    WitPermission::Write => Permission::Write,
                },
                recursive: r.recursive,
            })
            .collect();
        let request = SpawnRequest {
            name: request.name,
            task: request.task,
            scope,
            instruction: request.instruction,
            model: request.model,
        };
        self.control()?.spawn(&self.pod.name, request).await.map_err(wit_error)
    }

    async fn send(&mut self, name: String, message: String) -> Result<String, WitToolError> {
        self.control()?.send(&self.pod.name, &name, message).await.map_err(wit_error)
    }

    async fn read_output(&mut self, name: String) -> Result<pods::PodOutput, WitToolError> {
        let output = self.control()?.read_output(&self.pod.name, &name).await.map_err(wit_error)?;
        Ok(pods::PodOutput { text: output.text, dropped: output.dropped, state: wit_state(output.state) })
    }

    async fn stop(&mut self, name: String) -> Result<String, WitToolError> {
        self.control()?.stop(&self.pod.name, &name).await.map_err(wit_error)
    }

    async fn descendants(&mut self) -> Vec<pods::PodSummary> {
        let Ok(control) = self.control() else { return Vec::new() };
        control
            .list(&self.pod.name)
            .await
            .into_iter()
            .map(|c| pods::PodSummary {
                name: c.name,
                state: wit_state(c.state),
                scope: c.scope.iter().map(super::context::wit_rule).collect(),
            })
            .collect()
    }
}
