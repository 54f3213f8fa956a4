//! Host bindings generated from `wit/`. The host links the `orchestrator`
//! world, a superset of `plugin`, so a component targeting either world
//! instantiates against the same linker. The generated code stays in this
//! module; the rest of the crate uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "yoi:plugin/orchestrator",
    imports: { "yoi:plugin/pods": async },
    exports: { default: async },
});

pub use Orchestrator as Plugin;
pub use OrchestratorPre as PluginPre;
pub use exports::yoi::plugin::tool::{ToolError as WitToolError, ToolInfo as WitToolInfo, ToolOutput as WitToolOutput};
pub use yoi::plugin::context::{Permission as WitPermission, PodInfo as WitPodInfo, ScopeRule as WitScopeRule};
pub use yoi::plugin::log::Level as WitLevel;
pub use yoi::plugin::{context, log, pods, state, types};
