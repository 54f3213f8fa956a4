//! The conversation as the host keeps it: one provider-neutral list of
//! items. The same JSON shape is used in the session log, in the protocol's
//! `history` event and by every provider module, which maps it to its own
//! wire format.
//!
//! Invariants the agent loop keeps: a tool call's `arguments` is always a
//! JSON object (never `null`), and every tool call is followed, before the
//! next user or assistant item, by exactly one result with the same id —
//! except while a run is paused before running them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One entry of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// What the user said.
    User {
        /// The message.
        text: String,
    },
    /// Text the model wrote.
    Assistant {
        /// The text.
        text: String,
    },
    /// A tool the model asked to run.
    ToolCall {
        /// The provider's id for the call (or one the host made up).
        id: String,
        /// The tool's name, as the model sent it.
        name: String,
        /// The arguments: always an object. Arguments that were not a valid
        /// JSON object are stored as `{}` and answered with an error result.
        arguments: Map<String, Value>,
    },
    /// What a tool call returned.
    ToolResult {
        /// The id of the call this answers.
        id: String,
        /// The tool's name.
        name: String,
        /// What the model is shown.
        content: String,
        /// Whether the call failed.
        is_error: bool,
    },
    /// A note from the host that stays in the conversation (for example the
    /// summary that replaces compacted turns).
    System {
        /// The note.
        text: String,
    },
}

impl Item {
    /// The id of a tool call or result.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Item::ToolCall { id, .. } | Item::ToolResult { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// The tool calls at the end of `items` that have no result yet, in order.
pub fn pending_calls(items: &[Item]) -> Vec<(String, String, Map<String, Value>)> {
    let start = items.iter().rposition(|i| !matches!(i, Item::ToolCall { .. } | Item::ToolResult { .. }));
    let tail = &items[start.map_or(0, |s| s + 1)..];
    tail.iter()
        .filter_map(|i| match i {
            Item::ToolCall { id, name, arguments } => {
                let answered = tail.iter().any(|r| matches!(r, Item::ToolResult { id: rid, .. } if rid == id));
                (!answered).then(|| (id.clone(), name.clone(), arguments.clone()))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_serialize_with_a_type_tag() {
        let item = Item::ToolResult { id: "c1".into(), name: "Read".into(), content: "x".into(), is_error: true };
        let json = serde_json::to_value(&item).unwrap();
        assert_eq!(json["type"], "tool_result");
        assert_eq!(json["is_error"], true);
        assert_eq!(serde_json::from_value::<Item>(json).unwrap(), item);
    }

    #[test]
    fn pending_calls_are_those_without_results() {
        let call = |id: &str| Item::ToolCall { id: id.into(), name: "T".into(), arguments: Map::new() };
        let result =
            |id: &str| Item::ToolResult { id: id.into(), name: "T".into(), content: String::new(), is_error: false };
        let items = vec![
            Item::User { text: "hi".into() },
            Item::Assistant { text: "ok".into() },
            call("a"),
            call("b"),
            result("a"),
        ];
        let pending: Vec<String> = pending_calls(&items).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(pending, vec!["b"]);
        assert!(pending_calls(&[Item::User { text: "x".into() }]).is_empty());
    }
}
