//! Host bindings generated from `wit/` (the `yoi:plugin/plugin` world). The
//! generated code stays in this module; the rest of the crate uses the
//! re-exports below.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "yoi:plugin/plugin",
    exports: { default: async },
});

pub use exports::yoi::plugin::tool::{ToolError as WitToolError, ToolInfo as WitToolInfo, ToolOutput as WitToolOutput};
pub use yoi::plugin::context::{Permission as WitPermission, PodInfo as WitPodInfo, ScopeRule as WitScopeRule};
pub use yoi::plugin::log::Level as WitLevel;
pub use yoi::plugin::{context, log, state, types};
