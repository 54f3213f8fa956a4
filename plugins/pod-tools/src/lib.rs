//! The builtin pod tools, SpawnPod, SendToPod, ReadPodOutput, StopPod and
//! ListPods, as one component. They parse the model's arguments and word
//! the answers; the host does the work through `yoi:plugin/pods` and
//! decides what the calling pod may reach (its own descendants, within its
//! own scope).

use serde::Deserialize;
use serde_json::json;
use yoi_plugin_sdk::context::{Permission, ScopeRule};
use yoi_plugin_sdk::pods::{self, PodState, SpawnRequest};
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, parse_input, summary, tool_info};

struct PodTools;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleInput {
    target: String,
    permission: PermissionInput,
    #[serde(default = "yes")]
    recursive: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PermissionInput {
    Read,
    Write,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnInput {
    name: String,
    task: String,
    scope: Vec<RuleInput>,
    instruction: Option<String>,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendInput {
    name: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameInput {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoInput {}

fn state_word(state: PodState) -> &'static str {
    match state {
        PodState::Running => "running",
        PodState::Idle => "idle",
        PodState::Paused => "paused",
        PodState::Stopped => "stopped",
    }
}

fn rule_words(rule: &ScopeRule) -> String {
    let perm = match rule.permission {
        Permission::Read => "read",
        Permission::Write => "write",
    };
    let depth = if rule.recursive { "" } else { " (non-recursive)" };
    format!("{perm} {}{depth}", rule.target)
}

fn name_schema(what: &str) -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string", "description": what}},
        "required": ["name"],
        "additionalProperties": false
    })
}

fn spawn(input: &str) -> Result<ToolOutput, ToolError> {
    let input: SpawnInput = parse_input(input)?;
    let scope = input
        .scope
        .into_iter()
        .map(|r| ScopeRule {
            target: r.target,
            permission: match r.permission {
                PermissionInput::Read => Permission::Read,
                PermissionInput::Write => Permission::Write,
            },
            recursive: r.recursive,
        })
        .collect();
    let request =
        SpawnRequest { name: input.name, task: input.task, scope, instruction: input.instruction, model: input.model };
    pods::spawn(&request).map(summary)
}

fn read_output(input: &str) -> Result<ToolOutput, ToolError> {
    let input: NameInput = parse_input(input)?;
    let output = pods::read_output(&input.name)?;
    let state = state_word(output.state);
    let lost = if output.dropped > 0 {
        format!(" ({} earlier bytes were no longer kept)", output.dropped)
    } else {
        String::new()
    };
    if output.text.is_empty() {
        return Ok(summary(format!("No new output from {:?}; it is {state}{lost}", input.name)));
    }
    Ok(ToolOutput {
        summary: format!("{} bytes of new output from {:?}; it is {state}{lost}", output.text.len(), input.name),
        content: Some(output.text),
    })
}

fn list(input: &str) -> Result<ToolOutput, ToolError> {
    let _: NoInput = parse_input(input)?;
    let pods = pods::descendants();
    if pods.is_empty() {
        return Ok(summary("You have no child pods"));
    }
    let mut text = String::new();
    for pod in &pods {
        let scope = pod.scope.iter().map(rule_words).collect::<Vec<_>>().join(", ");
        text.push_str(&format!("{} [{}] {scope}\n", pod.name, state_word(pod.state)));
    }
    let live = pods.iter().filter(|p| p.state != PodState::Stopped).count();
    Ok(ToolOutput { summary: format!("{} pods, {live} alive", pods.len()), content: Some(text.trim_end().to_string()) })
}

impl Guest for PodTools {
    fn describe() -> Vec<ToolInfo> {
        let rule = json!({
            "type": "object",
            "properties": {
                "target": {"type": "string", "description": "Directory (absolute, or relative to your working directory)"},
                "permission": {"type": "string", "enum": ["read", "write"]},
                "recursive": {"type": "boolean", "description": "The whole tree below target (default true)"}
            },
            "required": ["target", "permission"],
            "additionalProperties": false
        });
        vec![
            tool_info(
                "SpawnPod",
                "Starts a child pod: another agent that works on `task` by itself, within the scope you give it. \
                 Each rule must lie within your own scope. A write rule is lent: until the child stops, that tree \
                 is read-only for you, and no other pod may write there. You get a note when the child ends a \
                 run; read what it wrote with ReadPodOutput.",
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Child name: 1-32 of A-Z a-z 0-9 _ -"},
                        "task": {"type": "string", "description": "What the child should do; its first message"},
                        "scope": {"type": "array", "items": rule, "minItems": 1},
                        "instruction": {"type": "string", "description": "Extra system-prompt text for the child"},
                        "model": {"type": "string", "description": "Another model of your provider (default: yours)"}
                    },
                    "required": ["name", "task", "scope"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "SendToPod",
                "Gives one of your child pods (or their children, as `child.grandchild`) a new message to work \
                 on. Fails if that pod is busy; wait for its note and try again.",
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "The pod, relative to you"},
                        "message": {"type": "string", "description": "The message"}
                    },
                    "required": ["name", "message"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "ReadPodOutput",
                "Returns what a descendant pod wrote since your last read (also text of a run still going on), \
                 and whether it is running, idle or stopped.",
                name_schema("The pod, relative to you"),
            ),
            tool_info(
                "StopPod",
                "Stops a descendant pod and all of its own children, and gives their write scope back.",
                name_schema("The pod, relative to you"),
            ),
            tool_info(
                "ListPods",
                "Lists your descendant pods with their state (running, idle, paused, stopped) and scope.",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
        ]
    }

    fn call(tool: String, input: String) -> Result<ToolOutput, ToolError> {
        match tool.as_str() {
            "SpawnPod" => spawn(&input),
            "SendToPod" => {
                let input: SendInput = parse_input(&input)?;
                pods::send(&input.name, &input.message).map(summary)
            }
            "ReadPodOutput" => read_output(&input),
            "StopPod" => {
                let input: NameInput = parse_input(&input)?;
                pods::stop(&input.name).map(summary)
            }
            "ListPods" => list(&input),
            other => Err(ToolError::InvalidInput(format!("pod-tools has no tool named {other}"))),
        }
    }
}

yoi_plugin_sdk::export_plugin!(PodTools);
