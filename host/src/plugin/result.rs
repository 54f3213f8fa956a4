//! What a tool call gives back to the host: [`ToolOutput`] or [`ToolError`].
//!
//! Three tiers of failure meet here: the `tool-error` a plugin returns (its
//! own words for the model), faults of the plugin seen by the host (trap,
//! deadline, memory cap, malformed output; the message names the plugin), and
//! calls that never reached a plugin (unknown tool).

use serde::{Deserialize, Serialize};

use super::bindings::{WitToolError, WitToolOutput};

/// Longest summary kept, in bytes; a summary is one line for people.
pub const MAX_SUMMARY_BYTES: usize = 1024;

/// A successful tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// One line: what the tool did.
    pub summary: String,
    /// The longer result for the model, cut to the pod's output cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// What kind of failure a [`ToolError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The plugin rejected its input.
    InvalidInput,
    /// The plugin refused a path or resource outside the pod's reach.
    PermissionDenied,
    /// The plugin found no such file or thing.
    NotFound,
    /// The plugin reported another failure.
    Failed,
    /// No loaded plugin offers a tool of that name.
    UnknownTool,
    /// The call ran past its wall-clock deadline.
    Timeout,
    /// The call hit its linear memory cap.
    OutOfMemory,
    /// The plugin trapped (a panic, an `unreachable`, a stack overflow...).
    Trap,
    /// The plugin's result broke the contract (bad UTF-8, empty summary...).
    MalformedOutput,
    /// The host could not run the call (e.g. all instance slots busy).
    HostError,
    /// A quota of the pod's tenant refused the call.
    QuotaExceeded,
}

impl ToolErrorKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorKind::InvalidInput => "invalid_input",
            ToolErrorKind::PermissionDenied => "permission_denied",
            ToolErrorKind::NotFound => "not_found",
            ToolErrorKind::Failed => "failed",
            ToolErrorKind::UnknownTool => "unknown_tool",
            ToolErrorKind::Timeout => "timeout",
            ToolErrorKind::OutOfMemory => "out_of_memory",
            ToolErrorKind::Trap => "trap",
            ToolErrorKind::MalformedOutput => "malformed_output",
            ToolErrorKind::HostError => "host_error",
            ToolErrorKind::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// A failed tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ToolError {
    /// What kind of failure.
    pub kind: ToolErrorKind,
    /// What happened, for the model and the log.
    pub message: String,
    /// When trying again may succeed, in ms (a quota that refills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ToolError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> ToolError {
        ToolError { kind, message: message.into(), retry_after_ms: None }
    }

    /// A call refused by quota `quota`, worth trying again after `retry_after`.
    pub fn quota(quota: &str, message: impl std::fmt::Display, retry_after: Option<std::time::Duration>) -> ToolError {
        ToolError {
            kind: ToolErrorKind::QuotaExceeded,
            message: format!("quota `{quota}`: {message}"),
            retry_after_ms: retry_after.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }
}

impl From<WitToolError> for ToolError {
    fn from(e: WitToolError) -> ToolError {
        let (kind, message) = match e {
            WitToolError::InvalidInput(m) => (ToolErrorKind::InvalidInput, m),
            WitToolError::PermissionDenied(m) => (ToolErrorKind::PermissionDenied, m),
            WitToolError::NotFound(m) => (ToolErrorKind::NotFound, m),
            WitToolError::Failed(m) => (ToolErrorKind::Failed, m),
        };
        ToolError::new(kind, truncate(&message, MAX_SUMMARY_BYTES * 4))
    }
}

/// Checks a plugin's output and cuts it to size: the summary must not be
/// empty and is cut to [`MAX_SUMMARY_BYTES`]; the content to `max_content`.
pub fn normalize_output(plugin: &str, out: WitToolOutput, max_content: usize) -> Result<ToolOutput, ToolError> {
    if out.summary.trim().is_empty() {
        return Err(ToolError::new(
            ToolErrorKind::MalformedOutput,
            format!("plugin `{plugin}` returned an empty summary"),
        ));
    }
    Ok(ToolOutput {
        summary: truncate(&out.summary, MAX_SUMMARY_BYTES),
        content: out.content.map(|c| truncate(&c, max_content)),
    })
}

/// `text` cut to at most `max` bytes at a UTF-8 boundary, followed by a
/// marker saying how many bytes were dropped (the marker may pass `max`).
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    format!("{}\n[... {dropped} more bytes cut: output exceeds the {max}-byte cap]", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_char_boundary_and_says_how_much() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééé", 3); // 6 bytes; byte 3 is inside the second é
        assert!(cut.starts_with("é\n[... 4 more bytes cut"), "{cut}");
    }

    #[test]
    fn empty_summary_is_malformed() {
        let out = WitToolOutput { summary: " ".into(), content: None };
        let err = normalize_output("p", out, 100).unwrap_err();
        assert_eq!(err.kind, ToolErrorKind::MalformedOutput);
        assert!(err.message.contains("`p`"));
    }
}
