//! LLM providers: one [`Provider`] trait, one module per wire format, and the
//! retry policy they all share.
//!
//! A provider turns a [`ModelRequest`] (system text, history, tools) into one
//! streamed model response: it reports [`Delta`]s to a sink as they arrive
//! and returns the whole [`ModelResponse`] at the end. It never touches the
//! history; the agent loop appends the response only once it is complete, so
//! a failed or cancelled stream leaves nothing half-written.
//!
//! Modules: [`anthropic`] (Messages API), [`openai`] (Chat Completions, also
//! Ollama, vLLM, llama.cpp, LM Studio), [`gemini`] (streamGenerateContent),
//! [`scripted`] (offline playback for the demo and tests); `http` holds what
//! the HTTP ones share (client, status handling, the event stream with its
//! timeouts), `sse` turns body bytes into server-sent events, and `frame`
//! reads the JSON inside an event.
//!
//! # Provider input is untrusted
//!
//! A provider is a network peer: a hosted API, or whatever OpenAI-compatible
//! server the operator points `base_url` at. Nothing it sends may crash the
//! host or make it allocate without bound, so each HTTP provider reads its
//! stream through a small state machine (a `StreamParser`) that builds the
//! response in a `ResponseAssembler`, and every cap below is enforced in
//! exactly one place: tool calls, argument and response bytes and the event
//! count in the assembler, event and body size in `sse` and `http`, the form
//! and range of an index on the wire in `frame`. Breaking a cap is a fatal
//! [`ProviderError`] that says which one; it is never retried, since the
//! same server would likely send the same thing again.

pub mod anthropic;
mod frame;
pub mod gemini;
mod http;
pub use http::Timeouts;
pub mod openai;
pub mod scripted;
mod sse;
#[cfg(test)]
mod testing;

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::history::Item;
use crate::manifest::{ProviderKind, ProviderSection};
use crate::plugin::ToolInfo;

/// Builds the provider a manifest asks for. API keys come from `env`
/// (the process environment in production); a missing key is an error that
/// names the variable. `base` resolves a relative script path; `cwd` is the
/// pod's working directory (for the scripted provider's `${cwd}`), `pod`
/// the pod's name (a script may hold turns for several pods).
pub fn from_manifest(
    section: &ProviderSection,
    base: &Path,
    cwd: &Path,
    pod: &str,
    env: &dyn Fn(&str) -> Option<String>,
    root: Option<&Path>,
) -> anyhow::Result<Box<dyn Provider>> {
    let timeouts = http::Timeouts {
        connect: Duration::from_millis(section.connect_timeout_ms),
        first_event: Duration::from_millis(section.first_event_timeout_ms),
        idle: Duration::from_millis(section.idle_timeout_ms),
    };
    let base_url = section.base_url.as_deref();
    let key = |default_var: &str, required: bool| -> anyhow::Result<Option<String>> {
        let var = section.api_key_env.as_deref().unwrap_or(default_var);
        match env(var).filter(|k| !k.is_empty()) {
            Some(k) => Ok(Some(k)),
            None if required || section.api_key_env.is_some() => {
                bail!("the {:?} provider needs an API key: set the environment variable {var}", section.kind)
            }
            None => Ok(None),
        }
    };
    Ok(match section.kind {
        ProviderKind::Anthropic => {
            let key = key("ANTHROPIC_API_KEY", true)?.unwrap_or_default();
            Box::new(anthropic::Anthropic::new(&section.model, base_url, key, timeouts))
        }
        ProviderKind::Openai => {
            // A local OpenAI-compatible server usually needs no key.
            let key = key("OPENAI_API_KEY", base_url.is_none())?;
            Box::new(openai::OpenAi::new(&section.model, base_url, key, timeouts))
        }
        ProviderKind::Gemini => {
            let key = key("GEMINI_API_KEY", true)?.unwrap_or_default();
            Box::new(gemini::Gemini::new(&section.model, base_url, key, timeouts))
        }
        ProviderKind::Scripted => {
            let Some(script) = &section.script else { bail!("key `provider.script`: missing") };
            Box::new(scripted::Scripted::load(&section.model, &base.join(script), cwd, pod, root)?)
        }
    })
}

/// The retry policy a manifest asks for.
pub fn retry_policy(section: &ProviderSection) -> RetryPolicy {
    RetryPolicy {
        max_retries: section.max_retries,
        base_delay: Duration::from_millis(section.retry_base_ms),
        ..RetryPolicy::default()
    }
}

/// Everything one model request needs; it borrows the history and the
/// tools rather than copying them for every request.
#[derive(Clone, Debug)]
pub struct ModelRequest<'a> {
    /// System prompt, with this request's transient notes appended.
    pub system: String,
    /// The conversation so far.
    pub items: &'a [Item],
    /// Tools the model may call.
    pub tools: &'a [ToolInfo],
    /// Cap on the response's tokens.
    pub max_tokens: u32,
    /// Sampling temperature, if set.
    pub temperature: Option<f32>,
}

/// A piece of a response, reported while it streams.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// More assistant text.
    Text(String),
    /// A tool call begins (its index in this response, id, name).
    ToolCallStart {
        /// Position among this response's tool calls.
        index: usize,
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// More of a tool call's argument JSON.
    ToolCallArgs {
        /// Position among this response's tool calls.
        index: usize,
        /// The fragment.
        fragment: String,
    },
}

/// A tool call as the model produced it; `arguments` is raw JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawToolCall {
    /// The call's id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The argument JSON exactly as streamed (possibly empty or invalid).
    pub arguments: String,
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its turn.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit `max_tokens`.
    MaxTokens,
    /// Anything else the provider reported.
    Other,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens (including cached ones).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_tokens: u64,
}

/// A whole model response.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelResponse {
    /// All assistant text, in order.
    pub text: String,
    /// The tool calls, in order.
    pub tool_calls: Vec<RawToolCall>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Token counts.
    pub usage: Usage,
}

/// A provider failure, with what the retry policy needs to know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// Which provider (`anthropic`, `openai`, ...).
    pub provider: &'static str,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// The provider's own message, or what went wrong on the way.
    pub message: String,
    /// Whether trying again may help (429, 5xx, overloaded, connection
    /// reset) — honoured only while nothing has streamed yet.
    pub retryable: bool,
    /// The server's `retry-after`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure that retrying will not fix.
    pub fn fatal(provider: &'static str, message: impl Into<String>) -> ProviderError {
        ProviderError { provider, status: None, message: message.into(), retryable: false, retry_after: None }
    }

    /// A failure that may pass.
    pub fn transient(provider: &'static str, message: impl Into<String>) -> ProviderError {
        ProviderError { retryable: true, ..ProviderError::fatal(provider, message) }
    }
}

/// Where deltas go while a response streams.
pub type DeltaSink<'a> = dyn FnMut(Delta) + Send + 'a;

/// A model behind some wire format.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name, for messages.
    fn name(&self) -> &'static str;

    /// The model's name.
    fn model(&self) -> &str;

    /// One attempt at one response, reporting deltas to `sink` as they
    /// arrive. Retrying is [`stream_with_retries`]'s job.
    async fn stream(
        &self,
        request: &ModelRequest<'_>,
        sink: &mut DeltaSink<'_>,
    ) -> Result<ModelResponse, ProviderError>;
}

/// How often and how patiently a transient failure is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry; doubled each time, with ±25 % jitter.
    pub base_delay: Duration,
    /// Longest delay between attempts (also caps `retry-after`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 4, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_delay);
        }
        let exp = self.base_delay.saturating_mul(2u32.saturating_pow(attempt)).min(self.max_delay);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        exp.mul_f64(jitter).min(self.max_delay)
    }
}

/// Streams one response, retrying transient failures that happen before
/// anything has streamed (a failure after the first delta is final: the
/// client has already seen part of the answer).
pub async fn stream_with_retries(
    provider: &dyn Provider,
    request: &ModelRequest<'_>,
    policy: &RetryPolicy,
    sink: &mut DeltaSink<'_>,
) -> Result<ModelResponse, ProviderError> {
    let mut attempt = 0;
    loop {
        let mut streamed = false;
        let result = {
            let mut tracking = |d: Delta| {
                streamed = true;
                sink(d)
            };
            provider.stream(request, &mut tracking).await
        };
        match result {
            Err(e) if e.retryable && !streamed && attempt < policy.max_retries => {
                let wait = policy.delay(attempt, e.retry_after);
                tracing::warn!(provider = provider.name(), attempt, ?wait, "retrying after: {}", e.message);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Tool calls in one response. An index on the wire (OpenAI's tool-call
/// index) must be below it; so must the count of calls a response starts.
pub const MAX_TOOL_CALLS: usize = 128;

/// Bytes of one tool call's argument text.
pub const MAX_CALL_ARGUMENT_BYTES: usize = 4 << 20;

/// Bytes of one response's content: its text plus every tool call's id, name
/// and arguments.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Server-sent events in one response, empty ones and pings included. A real
/// response sends about one event per output token, so a 128k-token answer
/// uses an eighth of this; it stops a server that streams nothing useful
/// forever (the idle timeout only catches one that falls silent).
pub const MAX_EVENTS: usize = 1 << 20;

/// Bytes of one server-sent event: of any one line, and of the data lines of
/// one event together. Gemini sends a tool call whole, so one event must
/// hold a call's full arguments and the JSON around them.
pub const MAX_EVENT_BYTES: usize = 2 * MAX_CALL_ARGUMENT_BYTES;

/// Bytes of one response body as it comes off the wire. The framing (SSE
/// fields, JSON envelopes, escapes) usually outweighs the content it
/// carries, since most events hold a token or two, hence the factor.
pub const MAX_STREAM_BYTES: usize = 4 * MAX_RESPONSE_BYTES;

/// Content blocks in one Anthropic response (text, thinking and tool-use
/// blocks are numbered together); a block index must be below it.
pub const MAX_CONTENT_BLOCKS: usize = 8 * MAX_TOOL_CALLS;

/// The caps one streamed response is held to. Production always uses
/// [`Limits::DEFAULT`]; tests shrink them to reach each cap quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// See [`MAX_TOOL_CALLS`].
    pub tool_calls: usize,
    /// See [`MAX_CALL_ARGUMENT_BYTES`].
    pub call_argument_bytes: usize,
    /// See [`MAX_RESPONSE_BYTES`].
    pub response_bytes: usize,
    /// See [`MAX_EVENTS`].
    pub events: usize,
    /// See [`MAX_EVENT_BYTES`].
    pub event_bytes: usize,
    /// See [`MAX_STREAM_BYTES`].
    pub stream_bytes: usize,
}

impl Limits {
    /// The caps every provider uses.
    pub const DEFAULT: Limits = Limits {
        tool_calls: MAX_TOOL_CALLS,
        call_argument_bytes: MAX_CALL_ARGUMENT_BYTES,
        response_bytes: MAX_RESPONSE_BYTES,
        events: MAX_EVENTS,
        event_bytes: MAX_EVENT_BYTES,
        stream_bytes: MAX_STREAM_BYTES,
    };
}

/// A byte count for messages: whole MiB when it is one, else bytes.
pub(crate) fn bytes_text(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) { format!("{} MiB", n >> 20) } else { format!("{n} bytes") }
}

/// What a [`StreamParser`] wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    More,
    /// The response is complete; stop reading.
    Done,
}

/// One wire format's reading of a response stream, as a state machine: the
/// HTTP code feeds it events one by one and asks for the response once the
/// stream ends or the parser says [`Flow::Done`]. It does no I/O, so tests
/// drive it with events directly.
pub(crate) trait StreamParser {
    /// Takes one event, reporting whatever it adds to the response to `sink`.
    fn event(&mut self, event: &sse::SseEvent, sink: &mut DeltaSink<'_>) -> Result<Flow, ProviderError>;

    /// The whole response, or why the stream did not make one.
    fn finish(self) -> Result<ModelResponse, ProviderError>;
}

/// The `error` object a server sent inside a stream, as a final error
/// (its message cut to 500 bytes).
pub(crate) fn mid_stream_error(provider: &'static str, error: frame::Json<'_>) -> ProviderError {
    let message = error.get("message").str().unwrap_or("unknown error".into());
    ProviderError::fatal(provider, format!("error mid-stream: {}", crate::plugin::truncate(&message, 500)))
}

/// Builds one streamed response from its pieces (text, tool calls started
/// by index, argument fragments), reports each piece to the sink, and holds
/// the whole to its [`Limits`]: the count of events, the count of tool
/// calls, the bytes of each call's arguments and of the response. Every
/// provider's parser builds its response in one, so the caps are checked
/// here and nowhere else. A piece that would break a cap is refused before
/// it is stored or reported.
pub(crate) struct ResponseAssembler {
    provider: &'static str,
    limits: Limits,
    text: String,
    /// By index; a slot whose call never got a name is dropped at the end.
    calls: Vec<RawToolCall>,
    /// Content bytes so far (text, ids, names, arguments).
    bytes: usize,
    events: usize,
}

impl ResponseAssembler {
    /// An empty response from `provider`, held to `limits`.
    pub fn new(provider: &'static str, limits: Limits) -> ResponseAssembler {
        ResponseAssembler { provider, limits, text: String::new(), calls: Vec::new(), bytes: 0, events: 0 }
    }

    /// The caps this response is held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts one event of the stream.
    pub fn event(&mut self) -> Result<(), ProviderError> {
        self.events += 1;
        if self.events > self.limits.events {
            return Err(self.error(format!("the response ran past {} events", self.limits.events)));
        }
        Ok(())
    }

    /// More assistant text.
    pub fn text(&mut self, text: &str, sink: &mut DeltaSink<'_>) -> Result<(), ProviderError> {
        self.spend(text.len())?;
        self.text.push_str(text);
        sink(Delta::Text(text.to_string()));
        Ok(())
    }

    /// A tool call starts at `index` (or starts again: the id and name are
    /// replaced).
    pub fn start_call(
        &mut self,
        index: usize,
        id: String,
        name: String,
        sink: &mut DeltaSink<'_>,
    ) -> Result<(), ProviderError> {
        if index >= self.limits.tool_calls {
            return Err(self.error(format!("more than {} tool calls in one response", self.limits.tool_calls)));
        }
        self.spend(id.len() + name.len())?;
        if self.calls.len() <= index {
            self.calls.resize_with(index + 1, || RawToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        sink(Delta::ToolCallStart { index, id: id.clone(), name: name.clone() });
        self.calls[index].id = id;
        self.calls[index].name = name;
        Ok(())
    }

    /// More argument text for the call at `index`; dropped when no call
    /// started there.
    pub fn call_args(&mut self, index: usize, fragment: &str, sink: &mut DeltaSink<'_>) -> Result<(), ProviderError> {
        let cap = self.limits.call_argument_bytes;
        let Some(call) = self.calls.get(index) else { return Ok(()) };
        if fragment.is_empty() {
            return Ok(());
        }
        if call.arguments.len() + fragment.len() > cap {
            return Err(self.error(format!("the arguments of tool call {index} exceed {}", bytes_text(cap))));
        }
        self.spend(fragment.len())?;
        self.calls[index].arguments.push_str(fragment);
        sink(Delta::ToolCallArgs { index, fragment: fragment.to_string() });
        Ok(())
    }

    /// Whether a call at `index` has started (with a name).
    pub fn has_call(&self, index: usize) -> bool {
        self.calls.get(index).is_some_and(|c| !c.name.is_empty())
    }

    /// The finished response.
    pub fn finish(self, stop: StopReason, usage: Usage) -> ModelResponse {
        let tool_calls = self.calls.into_iter().filter(|c| !c.name.is_empty()).collect();
        ModelResponse { text: self.text, tool_calls, stop, usage }
    }

    fn spend(&mut self, bytes: usize) -> Result<(), ProviderError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.response_bytes {
            let cap = bytes_text(self.limits.response_bytes);
            return Err(self.error(format!("the response exceeds {cap} of text and tool calls")));
        }
        Ok(())
    }

    fn error(&self, message: String) -> ProviderError {
        ProviderError::fatal(self.provider, message)
    }
}

/// The system text of a request: the pod's prompt plus transient notes.
pub fn system_with_notes(system: &str, notes: &[String]) -> String {
    let mut text = system.to_string();
    for note in notes {
        text.push_str("\n\n");
        text.push_str(&system_note(note));
    }
    text
}

/// A host note as the model sees it, in the prompt or in the conversation.
pub(crate) fn system_note(text: &str) -> String {
    format!("<system-note>\n{text}\n</system-note>")
}

/// Parts with their roles, merged into one turn per run of the same role,
/// for the formats that want roles to alternate: `{"role": r, key: [parts]}`.
pub(crate) fn turns_by_role(
    parts: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
    key: &str,
) -> Vec<serde_json::Value> {
    let mut turns: Vec<(&str, Vec<serde_json::Value>)> = Vec::new();
    for (role, part) in parts {
        match turns.last_mut() {
            Some((r, same)) if *r == role => same.push(part),
            _ => turns.push((role, vec![part])),
        }
    }
    turns
        .into_iter()
        .map(|(role, parts)| {
            let mut turn = serde_json::Map::new();
            turn.insert("role".into(), role.into());
            turn.insert(key.into(), parts.into());
            serde_json::Value::Object(turn)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_respect_retry_after_and_the_cap() {
        let p =
            RetryPolicy { max_retries: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        let d0 = p.delay(0, None);
        assert!(d0 >= Duration::from_millis(75) && d0 <= Duration::from_millis(125), "{d0:?}");
        let d2 = p.delay(2, None);
        assert!(d2 >= Duration::from_millis(300) && d2 <= Duration::from_millis(500), "{d2:?}");
        assert!(p.delay(10, None) <= Duration::from_secs(1));
        assert_eq!(p.delay(0, Some(Duration::from_secs(3))), Duration::from_secs(1));
        assert_eq!(p.delay(0, Some(Duration::from_millis(200))), Duration::from_millis(200));
    }

    /// Fails with a transient error asking for `retry_after` until its
    /// `failures` run out, then answers.
    struct Flaky {
        failures: parking_lot::Mutex<u32>,
        retry_after: Option<Duration>,
    }

    #[async_trait::async_trait]
    impl Provider for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn model(&self) -> &str {
            "flaky"
        }

        async fn stream(&self, _: &ModelRequest<'_>, _: &mut DeltaSink<'_>) -> Result<ModelResponse, ProviderError> {
            let mut left = self.failures.lock();
            if *left == 0 {
                return Ok(ModelResponse {
                    text: "ok".into(),
                    tool_calls: Vec::new(),
                    stop: StopReason::EndTurn,
                    usage: Usage::default(),
                });
            }
            *left -= 1;
            Err(ProviderError { retry_after: self.retry_after, ..ProviderError::transient("flaky", "busy") })
        }
    }

    fn request() -> ModelRequest<'static> {
        ModelRequest { system: String::new(), items: &[], tools: &[], max_tokens: 1, temperature: None }
    }

    /// Retries wait what the server asked (capped by the policy), in the
    /// runtime's own clock: paused here, so the test takes no real time.
    #[tokio::test(start_paused = true)]
    async fn retries_wait_as_asked_and_give_up_after_the_budget() {
        let policy =
            RetryPolicy { max_retries: 3, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(20) };
        let flaky = Flaky { failures: parking_lot::Mutex::new(2), retry_after: Some(Duration::from_secs(7)) };
        let started = tokio::time::Instant::now();
        let response = stream_with_retries(&flaky, &request(), &policy, &mut |_| {}).await.unwrap();
        assert_eq!(response.text, "ok");
        assert_eq!(started.elapsed(), Duration::from_secs(14), "two waits of the 7 s the server asked for");

        // A longer wait than the policy allows is capped; the budget ends it.
        let stubborn = Flaky { failures: parking_lot::Mutex::new(10), retry_after: Some(Duration::from_secs(600)) };
        let started = tokio::time::Instant::now();
        let error = stream_with_retries(&stubborn, &request(), &policy, &mut |_| {}).await.unwrap_err();
        assert_eq!(error.message, "busy");
        assert_eq!(started.elapsed(), Duration::from_secs(60), "three waits capped at 20 s");
        assert_eq!(*stubborn.failures.lock(), 6, "first attempt plus three retries");
    }
}
