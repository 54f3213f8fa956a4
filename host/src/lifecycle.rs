//! Where a pod is in its life. The pod's controller owns the one copy of
//! this state and publishes it on a `watch` channel; every view of a pod
//! (its handle, `status.json`, the greeting, ListPods, ReadPodOutput, the
//! WIT `pod-state`) reads it from there.

use serde::{Deserialize, Serialize};

/// A pod's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Waiting for a request.
    Idle,
    /// A run is going on.
    Running,
    /// A run stopped before tool calls, waiting for `resume`.
    Paused,
    /// The controller has ended; the pod is stopping its children and
    /// releasing what it holds. It takes no more requests.
    Stopping,
    /// Stopped and cleaned up: its runtime directory and scope claim are
    /// released and its children are stopped (or detached).
    Stopped,
}

impl Lifecycle {
    /// The state's name, as `status.json` and the greeting spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Idle => "idle",
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::Stopping => "stopping",
            Lifecycle::Stopped => "stopped",
        }
    }

    /// Whether the pod still takes requests.
    pub fn is_live(self) -> bool {
        matches!(self, Lifecycle::Idle | Lifecycle::Running | Lifecycle::Paused)
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
