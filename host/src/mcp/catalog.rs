//! The tool list a pod offers over MCP: every tool its model may call, in
//! name order with its input schema, plus `ask_pod` when the pod has a
//! model. Annotations are hints a client may act on, so each is set only
//! where the pod's scope and grants make it true: a tool is read-only when
//! its plugin can change nothing (no writable preopen, no data directory, no
//! child pods, no network), and closed-world when it reaches no network.

use std::sync::Arc;

use rmcp::model::{Tool, ToolAnnotations};
use serde_json::json;

use crate::plugin::PodContext;
use crate::pod::PodView;

/// The tool that hands a task to the pod's own agent.
pub const ASK_POD: &str = "ask_pod";

/// The tools of `pod`, `ask_pod` first (when the pod has a model), then its
/// plugins' tools by name. A plugin tool named like `ask_pod` is left out.
pub fn tools(pod: &PodView) -> Vec<Tool> {
    let mut tools = Vec::new();
    if pod.has_model {
        tools.push(ask_pod_tool(&pod.name));
    }
    let Some(context) = pod.tool_context() else {
        return tools;
    };
    let plugins = pod.plugins();
    let mut offered: Vec<_> = plugins.tools_for(&context).filter(|t| t.name != ASK_POD).collect();
    offered.sort_by(|a, b| a.name.cmp(&b.name));
    for info in offered {
        let schema = match &info.input_schema {
            serde_json::Value::Object(map) => Arc::new(map.clone()),
            _ => continue, // checked at load: never happens
        };
        let mut tool = Tool::new(info.name.clone(), info.description.clone(), schema);
        if let Some(plugin) = plugins.plugin_for(&info.name) {
            tool = tool.with_annotations(annotations(&context, plugin.name()));
        }
        tools.push(tool);
    }
    tools
}

/// What the capability lets a call of `plugin` do in this pod.
fn annotations(context: &PodContext, plugin: &str) -> ToolAnnotations {
    let granted = context.grants.get(plugin);
    let network = granted.is_some_and(|g| !g.http.is_none() || !g.sockets.is_none());
    let writes = context.scope().preopens().iter().any(|p| p.writable)
        || granted.is_some_and(|g| g.data_dir.is_some() || g.pods);
    let annotations = ToolAnnotations::new().read_only(!writes && !network).open_world(network);
    if writes || network { annotations } else { annotations.destructive(false).idempotent(true) }
}

fn ask_pod_tool(pod: &str) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "prompt": {
                "type": "string",
                "description": "The task or question, as a message to the pod's agent."
            }
        },
        "required": ["prompt"],
        "additionalProperties": false
    });
    let serde_json::Value::Object(schema) = schema else { unreachable!("an object literal") };
    Tool::new(
        ASK_POD,
        format!(
            "Hands a task to the agent of pod `{pod}`, which works on it with its own model and tools inside its \
             own scope, and returns the agent's final answer. The pod keeps its conversation between calls. \
             Progress (text and tool activity) is reported when the client asks for it."
        ),
        Arc::new(schema),
    )
    .with_annotations(ToolAnnotations::new().read_only(false).open_world(true))
}
