//! The {{tool}} tool: counts the lines, words and characters of a text.

wit_bindgen::generate!({
    path: "wit",
    world: "yoi:plugin/plugin",
});

use exports::yoi::plugin::tool::Guest;
use yoi::plugin::types::{ToolError, ToolInfo, ToolOutput};

struct Plugin;

impl Guest for Plugin {
    fn describe() -> Vec<ToolInfo> {
        vec![ToolInfo {
            name: "{{tool}}".to_string(),
            description: "Counts the lines, words and characters of a text.".to_string(),
            input_schema: serde_json::json!({
                "type": "object",
                "properties": {"text": {"type": "string", "description": "The text to count"}},
                "required": ["text"],
                "additionalProperties": false
            })
            .to_string(),
        }]
    }

    fn call(tool: String, input: String) -> Result<ToolOutput, ToolError> {
        if tool != "{{tool}}" {
            return Err(ToolError::InvalidInput(format!("this plugin has no tool `{tool}`")));
        }
        let input: serde_json::Value =
            serde_json::from_str(&input).map_err(|e| ToolError::InvalidInput(format!("bad arguments: {e}")))?;
        let Some(text) = input.get("text").and_then(|t| t.as_str()) else {
            return Err(ToolError::InvalidInput("give {\"text\": \"...\"}".to_string()));
        };
        let (lines, words, chars) = (text.lines().count(), text.split_whitespace().count(), text.chars().count());
        Ok(ToolOutput { summary: format!("{lines} lines, {words} words, {chars} characters"), content: None })
    }
}

export!(Plugin);
