//! Test plugin: the fixture tools that the MCP conformance suite
//! (`@modelcontextprotocol/conformance`) calls by name, for `tests/mcp.rs`.
//! A yoi-host tool answers with text, so only the text fixtures are here;
//! tests/mcp/expected-failures.*.yml says why each other one is missing.

use serde_json::json;
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, summary, tool_info};

struct Conformance;

fn no_arguments() -> serde_json::Value {
    json!({"type": "object", "properties": {}})
}

/// The JSON Schema 2020-12 document the suite expects to see unchanged in
/// `tools/list`.
fn schema_2020_12() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}}
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"}
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": false
    })
}

impl Guest for Conformance {
    fn describe() -> Vec<ToolInfo> {
        vec![
            tool_info("test_simple_text", "Answers with a fixed text.", no_arguments()),
            tool_info("test_error_handling", "Always fails, with a message.", no_arguments()),
            tool_info("json_schema_2020_12_tool", "Takes input described in JSON Schema 2020-12.", schema_2020_12()),
            tool_info("test_logging_tool", "Answers with text and sends no log messages.", no_arguments()),
            tool_info("test_streaming_elicitation", "Answers with text and asks the client nothing.", no_arguments()),
            tool_info("test_missing_capability", "Answers with text.", no_arguments()),
        ]
    }

    fn call(tool: String, _input: String) -> Result<ToolOutput, ToolError> {
        match tool.as_str() {
            "test_simple_text" => Ok(summary("This is a simple text response for testing.")),
            "test_error_handling" => {
                Err(ToolError::Failed("This tool intentionally returns an error for testing".into()))
            }
            "json_schema_2020_12_tool" => Ok(summary("ok")),
            "test_logging_tool" | "test_streaming_elicitation" | "test_missing_capability" => Ok(summary("done")),
            other => Err(ToolError::InvalidInput(format!("unknown tool {other}"))),
        }
    }
}

yoi_plugin_sdk::export_plugin!(Conformance);
