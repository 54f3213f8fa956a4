//! `yoi:plugin/pods`: child pods of the calling pod. The plugin layer only
//! translates; the pod layer does the work behind [`PodControl`], and
//! decides what the caller may reach.

use std::path::PathBuf;

use crate::lifecycle::Lifecycle;
use crate::plugin::bindings::{WitPermission, pods, types::ToolError as WitToolError};
use crate::plugin::call::CallState;
use crate::plugin::pod_context::{PodControl, Refusal, SpawnRequest};
use crate::scope::{Permission, RuleSpec};

fn wit_error(refusal: Refusal) -> WitToolError {
    match refusal {
        Refusal::InvalidInput(m) => WitToolError::InvalidInput(m),
        Refusal::PermissionDenied(m) => WitToolError::PermissionDenied(m),
        Refusal::NotFound(m) => WitToolError::NotFound(m),
        Refusal::Failed(m) => WitToolError::Failed(m),
    }
}

fn wit_state(state: Lifecycle) -> pods::PodState {
    match state {
        Lifecycle::Running => pods::PodState::Running,
        Lifecycle::Idle => pods::PodState::Idle,
        Lifecycle::Paused => pods::PodState::Paused,
        Lifecycle::Stopping | Lifecycle::Stopped => pods::PodState::Stopped,
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
