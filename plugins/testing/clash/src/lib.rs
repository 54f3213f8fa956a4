//! Test plugin whose only tool, `Noop`, clashes with the probe plugin's.
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, summary, tool_info};

struct Clash;

impl Guest for Clash {
    fn describe() -> Vec<ToolInfo> {
        vec![tool_info("Noop", "Does nothing, again.", serde_json::json!({"type": "object"}))]
    }

    fn call(_tool: String, _input: String) -> Result<ToolOutput, ToolError> {
        Ok(summary("clash"))
    }
}

yoi_plugin_sdk::export_plugin!(Clash);
