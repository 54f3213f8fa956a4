//! A deterministic offline provider that plays back a script of model turns,
//! for the demo and the tests. It streams like a real provider (text in
//! word-sized deltas, tool-call arguments in pieces) and goes through the
//! same agent loop and retry policy.
//!
//! Script format (JSON):
//!
//! ```json
//! {"turns": [
//!   {"text": "Let me look.", "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/a.txt"}}]},
//!   {"error": {"message": "overloaded", "retryable": true, "status": 529}},
//!   {"delay_ms": 100, "text": "Done."}
//! ]}
//! ```
//!
//! Each request consumes the next turn; an `error` turn fails that request.
//! A script for a family of pods gives each child its own turns under
//! `"pods": {"lead.worker": [...]}` (by full pod name); `turns` are for
//! every other pod.
//! `${cwd}` in text and arguments becomes the pod's working directory.
//! `arguments_raw` gives argument text verbatim (to play a model that sends
//! broken JSON). `delay_ms` waits before the first delta; `chunk_delay_ms`
//! between deltas.

use parking_lot::Mutex;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{Delta, DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError, RawToolCall, StopReason, Usage};

const NAME: &str = "scripted";

/// A script file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The turns, in order.
    pub turns: Vec<Turn>,
    /// Turns of particular pods, by pod name.
    #[serde(default)]
    pub pods: std::collections::BTreeMap<String, Vec<Turn>>,
}

/// One scripted model response (or failure).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Assistant text.
    #[serde(default)]
    pub text: String,
    /// Tool calls.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
    /// Fail this request instead.
    pub error: Option<ScriptedError>,
    /// Wait before the first delta, in ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// Wait between deltas, in ms.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

/// One scripted tool call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// Tool name.
    pub name: String,
    /// Arguments as JSON.
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Arguments as raw text (wins over `arguments`).
    pub arguments_raw: Option<String>,
}

/// A scripted failure.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedError {
    /// The message.
    pub message: String,
    /// Whether the retry policy may retry it.
    #[serde(default)]
    pub retryable: bool,
    /// An HTTP status to report.
    pub status: Option<u16>,
}

/// Plays back a [`Script`].
pub struct Scripted {
    model: String,
    turns: Vec<Turn>,
    next: Mutex<usize>,
    cwd: String,
}

impl Scripted {
    /// A provider playing `script`, with `${cwd}` standing for `cwd`.
    pub fn new(model: &str, script: Script, cwd: &Path) -> Scripted {
        Scripted { model: model.to_string(), turns: script.turns, next: Mutex::new(0), cwd: cwd.display().to_string() }
    }

    /// Reads a script file, taking the turns of `pod`.
    /// With `root`, the file must lie inside it (see [`crate::os::read_file`]).
    pub fn load(model: &str, path: &Path, cwd: &Path, pod: &str, root: Option<&Path>) -> anyhow::Result<Scripted> {
        let bytes = crate::os::read_file(path, root, 64 << 20)
            .map_err(|e| anyhow::anyhow!("cannot read the script {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut script: Script =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("invalid script {}: {e}", path.display()))?;
        if let Some(turns) = script.pods.remove(pod) {
            script.turns = turns;
        }
        Ok(Scripted::new(model, script, cwd))
    }

    /// How many turns have been played.
    pub fn played(&self) -> usize {
        *self.next.lock()
    }

    fn expand(&self, text: &str) -> String {
        text.replace("${cwd}", &self.cwd)
    }
}

/// A rough token count (4 bytes a token), so usage and compaction work offline.
fn estimate_tokens(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn stream(
        &self,
        request: &ModelRequest<'_>,
        sink: &mut DeltaSink<'_>,
    ) -> Result<ModelResponse, ProviderError> {
        let turn = {
            let mut next = self.next.lock();
            let turn = self.turns.get(*next).cloned();
            *next += 1;
            turn
        };
        let Some(turn) = turn else {
            return Err(ProviderError::fatal(NAME, format!("the script has no turn {}", self.played())));
        };
        pause(turn.delay_ms).await;
        if let Some(e) = turn.error {
            return Err(ProviderError {
                provider: NAME,
                status: e.status,
                message: e.message,
                retryable: e.retryable,
                retry_after: None,
            });
        }
        let text = self.expand(&turn.text);
        for (i, word) in text.split_inclusive(' ').enumerate() {
            if i > 0 {
                pause(turn.chunk_delay_ms).await;
            }
            sink(Delta::Text(word.to_string()));
        }
        let mut calls = Vec::new();
        for (index, call) in turn.tool_calls.iter().enumerate() {
            let id = format!("call_{}_{index}", self.played());
            sink(Delta::ToolCallStart { index, id: id.clone(), name: call.name.clone() });
            let arguments = match (&call.arguments_raw, &call.arguments) {
                (Some(raw), _) => self.expand(raw),
                (None, Some(v)) => self.expand(&v.to_string()),
                (None, None) => "{}".to_string(),
            };
            let mid = arguments.char_indices().nth(arguments.chars().count() / 2).map_or(0, |(i, _)| i);
            for fragment in [&arguments[..mid], &arguments[mid..]] {
                if !fragment.is_empty() {
                    pause(turn.chunk_delay_ms).await;
                    sink(Delta::ToolCallArgs { index, fragment: fragment.to_string() });
                }
            }
            calls.push(RawToolCall { id, name: call.name.clone(), arguments });
        }
        let input_bytes = request.system.len()
            + request.items.iter().map(|i| serde_json::to_string(i).map_or(0, |s| s.len())).sum::<usize>();
        let output_bytes = text.len() + calls.iter().map(|c| c.arguments.len()).sum::<usize>();
        let stop = if calls.is_empty() { StopReason::EndTurn } else { StopReason::ToolUse };
        let usage = Usage {
            input_tokens: estimate_tokens(input_bytes),
            output_tokens: estimate_tokens(output_bytes),
            ..Usage::default()
        };
        Ok(ModelResponse { text, tool_calls: calls, stop, usage })
    }
}
