//! Compaction: when the conversation grows past the pod's token threshold,
//! the older turns are summarised by the model into one system item and the
//! last `keep_turns` user turns stay verbatim. The summary request names the
//! files the pod touched, so the summary can keep them in view.
//!
//! A turn starts at a user item. When there is nothing older than the kept
//! turns (or only an earlier summary), there is nothing to compact, which is
//! what keeps compaction from looping.

use crate::history::Item;
use crate::provider::{ModelRequest, Provider, ProviderError, RetryPolicy, stream_with_retries};

/// Tokens the summary may use.
const SUMMARY_MAX_TOKENS: u32 = 4096;

const SUMMARY_SYSTEM: &str = "You summarise a coding agent's conversation so that it can continue without the \
     full transcript. Keep: the user's goals and instructions, decisions made, what was changed in which files, \
     open problems and next steps. Be concise and concrete; use paths and names exactly.";

/// Where the kept turns start, if anything older could be compacted.
pub fn split_point(items: &[Item], keep_turns: usize) -> Option<usize> {
    let starts: Vec<usize> =
        items.iter().enumerate().filter(|(_, i)| matches!(i, Item::User { .. })).map(|(n, _)| n).collect();
    if keep_turns == 0 || starts.len() <= keep_turns {
        return None;
    }
    let split = starts[starts.len() - keep_turns];
    let older = &items[..split];
    let only_a_summary = older.iter().all(|i| matches!(i, Item::System { .. }));
    (!older.is_empty() && !only_a_summary).then_some(split)
}

/// The compacted history: a summary of `items[..split]` as one system item,
/// then `items[split..]`.
pub async fn compact(
    provider: &dyn Provider,
    retry: &RetryPolicy,
    items: &[Item],
    split: usize,
    touched_files: &[String],
) -> Result<Vec<Item>, ProviderError> {
    let mut transcript = String::new();
    for item in &items[..split] {
        let line = match item {
            Item::User { text } => format!("USER: {text}"),
            Item::Assistant { text } => format!("ASSISTANT: {text}"),
            Item::System { text } => format!("NOTE: {text}"),
            Item::ToolCall { name, arguments, .. } => {
                format!("TOOL CALL {name} {}", serde_json::Value::Object(arguments.clone()))
            }
            Item::ToolResult { name, content, is_error, .. } => {
                let status = if *is_error { "failed" } else { "ok" };
                format!("TOOL RESULT {name} ({status}): {}", crate::plugin::truncate(content, 2000))
            }
        };
        transcript.push_str(&line);
        transcript.push('\n');
    }
    let files = if touched_files.is_empty() {
        "none".to_string()
    } else {
        touched_files.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n")
    };
    let ask = [Item::User {
        text: format!(
            "Summarise this conversation.\n\nFiles the agent read or wrote:\n{files}\n\nTranscript:\n{transcript}"
        ),
    }];
    let request = ModelRequest {
        system: SUMMARY_SYSTEM.to_string(),
        items: &ask,
        tools: &[],
        max_tokens: SUMMARY_MAX_TOKENS,
        temperature: None,
    };
    let response = stream_with_retries(provider, &request, retry, &mut |_| {}).await?;
    if response.text.trim().is_empty() {
        return Err(ProviderError::fatal(provider.name(), "the model returned an empty summary"));
    }
    let mut compacted = vec![Item::System {
        text: format!("Summary of the earlier conversation (compacted):\n{}", response.text.trim()),
    }];
    compacted.extend_from_slice(&items[split..]);
    Ok(compacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(t: &str) -> Item {
        Item::User { text: t.into() }
    }

    fn said(t: &str) -> Item {
        Item::Assistant { text: t.into() }
    }

    #[test]
    fn the_last_turns_are_kept_and_a_lone_summary_is_not_compacted_again() {
        let items = vec![user("a"), said("1"), user("b"), said("2"), user("c"), said("3")];
        assert_eq!(split_point(&items, 2), Some(2));
        assert_eq!(split_point(&items, 3), None);
        let after = vec![Item::System { text: "summary".into() }, user("b"), said("2"), user("c"), said("3")];
        assert_eq!(split_point(&after, 2), None, "only the summary is older");
    }
}
