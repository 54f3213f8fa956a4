//! The conversation loop of a pod: send the history to the model, stream
//! its answer out as events, run the tool calls it asks for through the
//! plugin runtime, append the results, and go again until the model ends
//! its turn, the turn limit is reached, a hook pauses the run, or the run is
//! cancelled.
//!
//! The loop owns the history's consistency: a model response is appended
//! only once complete; arguments that are not a JSON object are stored as
//! `{}` and answered with an error result; every tool call gets exactly one
//! result (a cancelled one gets a `cancelled` error result), so no call is
//! left dangling — except while paused, when the pending calls run first on
//! resume. The pod layer plugs in through [`Hooks`] and the event sink.

use std::collections::HashMap;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::history::{Item, pending_calls};
use crate::plugin::{ToolError, ToolErrorKind, ToolInfo, ToolOutput, truncate};
use crate::provider::{
    Delta, ModelRequest, Provider, ProviderError, RetryPolicy, StopReason, Usage, stream_with_retries,
    system_with_notes,
};

/// What the loop reports while it runs. The pod forwards these to its
/// clients; `item_appended`, `usage` and `turn_end` also go to the session
/// log, and carry the log line's place as their event id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A model request starts (turns count from 1 within a run).
    TurnStart {
        /// The turn.
        turn: u32,
    },
    /// More assistant text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// The assistant text of this turn is complete.
    TextDone {
        /// All of it.
        text: String,
    },
    /// The model started a tool call.
    ToolCallStart {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
    },
    /// More of a tool call's arguments.
    ToolCallArgsDelta {
        /// The call's id.
        id: String,
        /// The argument text fragment.
        delta: String,
    },
    /// A tool call is complete.
    ToolCallDone {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// The parsed arguments (`{}` when they were not a JSON object).
        arguments: Map<String, Value>,
    },
    /// A tool call finished.
    ToolResult {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Whether it failed.
        is_error: bool,
        /// One line about the outcome.
        summary: String,
    },
    /// Token counts of the request that just finished.
    Usage {
        /// The counts.
        #[serde(flatten)]
        usage: Usage,
    },
    /// A model request and its tool calls are done.
    TurnEnd {
        /// The turn.
        turn: u32,
        /// Why the model stopped.
        stop: StopReason,
    },
    /// An item was appended to the history.
    ItemAppended {
        /// The item.
        item: Item,
    },
}

/// How a run ended (the protocol's `run_end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The model ended its turn.
    Finished,
    /// A hook paused before tool calls; resuming runs them.
    Paused,
    /// `max_turns` requests were made.
    LimitReached,
    /// The run was cancelled.
    Cancelled,
    /// The run stopped on an error (reported in an `error` event before).
    Failed,
    /// The host stopped during the run (a crash or `kill -9`); written to
    /// the session log when the pod is brought back.
    Interrupted,
}

/// What a hook decides about one tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolDecision {
    /// Run it.
    Allow,
    /// Answer it with an error result giving this reason.
    Deny(String),
    /// Stop the run before running any of this turn's calls.
    Pause,
}

/// Where the pod layer joins the loop.
#[async_trait::async_trait]
pub trait Hooks: Send {
    /// Before each model request: may rewrite the history (compaction) and
    /// returns notes for this request only (notifications).
    async fn before_request(&mut self, _items: &mut Vec<Item>, _last_usage: Option<Usage>) -> Vec<String> {
        Vec::new()
    }

    /// Before each tool call (`id` is the call's id).
    async fn before_tool_call(&mut self, _id: &str, _name: &str, _arguments: &Map<String, Value>) -> ToolDecision {
        ToolDecision::Allow
    }

    /// After each turn (model response and its tool results).
    async fn after_turn(&mut self, _items: &[Item], _usage: &Usage) {}
}

/// Hooks that do nothing.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Runs tools for the loop.
#[async_trait::async_trait]
pub trait ToolRunner: Send + Sync {
    /// The tools offered to the model.
    fn tools(&self) -> Vec<ToolInfo>;

    /// Runs one call; `input` is a JSON object as text.
    async fn call(&self, name: &str, input: &str) -> Result<ToolOutput, ToolError>;
}

/// The loop's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The system prompt.
    pub system: String,
    /// Cap on each response's tokens.
    pub max_tokens: u32,
    /// Most model requests in one run.
    pub max_turns: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Retries of transient provider failures.
    pub retry: RetryPolicy,
}

/// A provider and the tools, ready to run conversations.
pub struct Agent<'a> {
    /// The model.
    pub provider: &'a dyn Provider,
    /// The tools.
    pub tools: &'a dyn ToolRunner,
    /// Settings.
    pub config: &'a AgentConfig,
}

/// Where events go.
pub type EventSink<'a> = dyn FnMut(Event) + Send + 'a;

impl Agent<'_> {
    /// Runs until the model ends its turn (or the run stops otherwise),
    /// appending to `history`. A provider error ends the run with `Err`,
    /// leaving the history as it was before the failed request.
    pub async fn run(
        &self,
        history: &mut Vec<Item>,
        hooks: &mut dyn Hooks,
        events: &mut EventSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ProviderError> {
        let mut turn = 0;
        let mut last_usage: Option<Usage> = None;
        let mut bad_arguments: HashMap<String, String> = HashMap::new();
        let tools = self.tools.tools();
        loop {
            // Calls left pending by a paused run go first.
            let pending = pending_calls(history);
            if !pending.is_empty()
                && let Some(outcome) = self.run_tools(pending, &bad_arguments, history, hooks, events, cancel).await
            {
                return Ok(outcome);
            }
            if cancel.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            if turn >= self.config.max_turns {
                return Ok(Outcome::LimitReached);
            }
            turn += 1;
            let notes = hooks.before_request(history, last_usage).await;
            let request = ModelRequest {
                system: system_with_notes(&self.config.system, &notes),
                items: history,
                tools: &tools,
                max_tokens: self.config.max_tokens,
                temperature: self.config.temperature,
            };
            events(Event::TurnStart { turn });
            // Call ids by the index the provider gave; a map, so that no
            // index (the providers cap them, but this loop does not rely on
            // it) can make it allocate.
            let mut ids: HashMap<usize, String> = HashMap::new();
            let mut sink = |delta: Delta| match delta {
                Delta::Text(text) => events(Event::TextDelta { text }),
                Delta::ToolCallStart { index, id, name } => {
                    ids.insert(index, id.clone());
                    events(Event::ToolCallStart { id, name });
                }
                Delta::ToolCallArgs { index, fragment } => {
                    let id = ids.get(&index).cloned().unwrap_or_default();
                    events(Event::ToolCallArgsDelta { id, delta: fragment });
                }
            };
            let response = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                r = stream_with_retries(self.provider, &request, &self.config.retry, &mut sink) => r?,
            };
            events(Event::Usage { usage: response.usage });
            last_usage = Some(response.usage);
            if !response.text.is_empty() {
                events(Event::TextDone { text: response.text.clone() });
                append(history, events, Item::Assistant { text: response.text });
            }
            bad_arguments.clear();
            let has_calls = !response.tool_calls.is_empty();
            for call in response.tool_calls {
                let arguments = match parse_arguments(&call.arguments) {
                    Ok(map) => map,
                    Err(problem) => {
                        bad_arguments.insert(call.id.clone(), problem);
                        Map::new()
                    }
                };
                events(Event::ToolCallDone {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: arguments.clone(),
                });
                append(history, events, Item::ToolCall { id: call.id, name: call.name, arguments });
            }
            let stopped = if has_calls {
                let calls = pending_calls(history);
                self.run_tools(calls, &bad_arguments, history, hooks, events, cancel).await
            } else {
                None
            };
            events(Event::TurnEnd { turn, stop: response.stop });
            if let Some(outcome) = stopped {
                return Ok(outcome);
            }
            hooks.after_turn(history, &response.usage).await;
            if !has_calls {
                return Ok(Outcome::Finished);
            }
        }
    }

    /// Runs `calls` concurrently and appends their results in call order.
    /// Returns an outcome when the run must stop here.
    async fn run_tools(
        &self,
        calls: Vec<(String, String, Map<String, Value>)>,
        bad_arguments: &HashMap<String, String>,
        history: &mut Vec<Item>,
        hooks: &mut dyn Hooks,
        events: &mut EventSink<'_>,
        cancel: &CancellationToken,
    ) -> Option<Outcome> {
        let mut results: Vec<Option<Result<ToolOutput, ToolError>>> = vec![None; calls.len()];
        let mut allowed = Vec::new();
        for (i, (id, name, arguments)) in calls.iter().enumerate() {
            if let Some(problem) = bad_arguments.get(id) {
                results[i] = Some(Err(ToolError::new(ToolErrorKind::InvalidInput, problem.clone())));
                continue;
            }
            match hooks.before_tool_call(id, name, arguments).await {
                ToolDecision::Allow => allowed.push(i),
                ToolDecision::Deny(reason) => {
                    results[i] = Some(Err(ToolError::new(ToolErrorKind::PermissionDenied, reason)));
                }
                ToolDecision::Pause => return Some(Outcome::Paused),
            }
        }
        let mut running: FuturesUnordered<_> = allowed
            .into_iter()
            .map(|i| {
                let (_, name, arguments) = &calls[i];
                let input = Value::Object(arguments.clone()).to_string();
                async move { (i, self.tools.call(name, &input).await) }
            })
            .collect();
        let mut cancelled = false;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => { cancelled = true; break; }
                next = running.next() => match next {
                    Some((i, result)) => results[i] = Some(result),
                    None => break,
                },
            }
        }
        drop(running);
        for ((id, name, _), result) in calls.into_iter().zip(results) {
            let result = result.unwrap_or_else(|| {
                Err(ToolError::new(ToolErrorKind::Failed, "cancelled: the run was stopped before this call finished"))
            });
            let (content, is_error, summary) = match result {
                Ok(out) => {
                    let content = match &out.content {
                        Some(c) => format!("{}\n\n{c}", out.summary),
                        None => out.summary.clone(),
                    };
                    (content, false, out.summary)
                }
                Err(e) => (e.to_string(), true, truncate(&e.to_string(), 300)),
            };
            events(Event::ToolResult { id: id.clone(), name: name.clone(), is_error, summary });
            append(history, events, Item::ToolResult { id, name, content, is_error });
        }
        cancelled.then_some(Outcome::Cancelled)
    }
}

/// The plugin runtime as the loop's tool runner, for one pod.
pub struct PluginTools<'a> {
    /// The pod's plugins.
    pub host: &'a crate::plugin::PluginSet,
    /// The calling pod.
    pub pod: std::sync::Arc<crate::plugin::PodContext>,
}

#[async_trait::async_trait]
impl ToolRunner for PluginTools<'_> {
    fn tools(&self) -> Vec<ToolInfo> {
        self.host.tools_for(&self.pod).cloned().collect()
    }

    async fn call(&self, name: &str, input: &str) -> Result<ToolOutput, ToolError> {
        self.host.call(&self.pod, name, input).await
    }
}

fn append(history: &mut Vec<Item>, events: &mut EventSink<'_>, item: Item) {
    events(Event::ItemAppended { item: item.clone() });
    history.push(item);
}

/// The model's argument text as an object, or why it is not one.
fn parse_arguments(raw: &str) -> Result<Map<String, Value>, String> {
    if raw.trim().is_empty() {
        return Err("the arguments are empty: send a JSON object ({} if the tool takes no input)".into());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("the arguments must be a JSON object, not {}", kind_of(&other))),
        Err(e) => Err(format!("the arguments are not valid JSON ({e}): {}", truncate(raw, 200))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{DeltaSink, ModelResponse};

    /// Reports a tool call at the largest index there is, then a response
    /// without calls.
    struct HugeIndexProvider;

    #[async_trait::async_trait]
    impl Provider for HugeIndexProvider {
        fn name(&self) -> &'static str {
            "huge-index"
        }

        fn model(&self) -> &str {
            "test"
        }

        async fn stream(
            &self,
            _request: &ModelRequest<'_>,
            sink: &mut DeltaSink<'_>,
        ) -> Result<ModelResponse, ProviderError> {
            sink(Delta::ToolCallStart { index: usize::MAX, id: "call_x".into(), name: "Read".into() });
            sink(Delta::ToolCallArgs { index: usize::MAX, fragment: "{}".into() });
            let text = "done".to_string();
            Ok(ModelResponse { text, tool_calls: Vec::new(), stop: StopReason::EndTurn, usage: Usage::default() })
        }
    }

    struct NoTools;

    #[async_trait::async_trait]
    impl ToolRunner for NoTools {
        fn tools(&self) -> Vec<ToolInfo> {
            Vec::new()
        }

        async fn call(&self, name: &str, _input: &str) -> Result<ToolOutput, ToolError> {
            panic!("no tool should run, got {name}")
        }
    }

    #[tokio::test]
    async fn a_provider_reporting_a_huge_tool_call_index_does_not_crash_the_agent() {
        let config = AgentConfig {
            system: "test".into(),
            max_tokens: 100,
            max_turns: 1,
            temperature: None,
            retry: RetryPolicy::default(),
        };
        let agent = Agent { provider: &HugeIndexProvider, tools: &NoTools, config: &config };
        let mut history = vec![Item::User { text: "hi".into() }];
        let mut events = Vec::new();
        let outcome = agent.run(&mut history, &mut NoHooks, &mut |e| events.push(e), &CancellationToken::new()).await;
        assert_eq!(outcome.unwrap(), Outcome::Finished);
        let args = Event::ToolCallArgsDelta { id: "call_x".into(), delta: "{}".into() };
        assert!(events.contains(&args), "{events:#?}");
    }

    #[test]
    fn arguments_must_be_a_json_object() {
        assert!(parse_arguments(r#"{"a":1}"#).is_ok());
        assert!(parse_arguments("").unwrap_err().contains("empty"));
        assert!(parse_arguments("null").unwrap_err().contains("null"));
        assert!(parse_arguments("[1]").unwrap_err().contains("array"));
        assert!(parse_arguments("{oops").unwrap_err().contains("not valid JSON"));
    }
}
