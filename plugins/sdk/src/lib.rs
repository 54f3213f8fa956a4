//! Rust bindings for the `yoi:plugin` world, generated from `wit/`, plus the few
//! helpers every builtin plugin needs: parsing the model's JSON input and
//! turning errors into `tool-error` values.
//!
//! A plugin implements [`exports::yoi::plugin::tool::Guest`] and registers it
//! with [`export_plugin!`]:
//!
//! ```ignore
//! struct MyTools;
//! impl yoi_plugin_sdk::Guest for MyTools { /* describe, call */ }
//! yoi_plugin_sdk::export_plugin!(MyTools);
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "yoi:plugin/orchestrator",
    pub_export_macro: true,
    export_macro_name: "export_plugin",
    default_bindings_module: "yoi_plugin_sdk",
});

pub use exports::yoi::plugin::tool::Guest;
pub use yoi::plugin::types::{ToolError, ToolInfo, ToolOutput};
pub use yoi::plugin::{context, log, pods, state};

/// Parses the model's JSON arguments into `T`, or explains what is wrong.
pub fn parse_input<T: serde::de::DeserializeOwned>(input: &str) -> Result<T, ToolError> {
    serde_json::from_str(input).map_err(|e| ToolError::InvalidInput(format!("bad arguments: {e}")))
}

/// A [`ToolInfo`] from a name, a description and a JSON schema value.
pub fn tool_info(name: &str, description: &str, schema: serde_json::Value) -> ToolInfo {
    ToolInfo { name: name.to_string(), description: description.to_string(), input_schema: schema.to_string() }
}

/// Output with only a summary.
pub fn summary(text: impl Into<String>) -> ToolOutput {
    ToolOutput { summary: text.into(), content: None }
}
