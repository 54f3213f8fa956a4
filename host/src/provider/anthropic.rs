//! Anthropic's Messages API (`POST /v1/messages`, streamed).
//!
//! History maps to alternating user/assistant messages: assistant text and
//! tool calls become one assistant message of `text` and `tool_use` blocks;
//! tool results become `tool_result` blocks (with `is_error`) in the next
//! user message; system items become user text wrapped in `<system-note>`.
//!
//! The stream numbers content blocks (text, thinking, tool use) by an index,
//! which must be below [`MAX_CONTENT_BLOCKS`]; the parser maps the tool-use
//! blocks to tool calls in order.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::frame::{self, wire_index};
use super::http::{Endpoint, Timeouts, header_value};
use super::sse::SseEvent;
use super::{
    DeltaSink, Flow, Limits, MAX_CONTENT_BLOCKS, ModelRequest, ModelResponse, Provider, ProviderError,
    ResponseAssembler, StopReason, StreamParser, Usage, system_note, turns_by_role,
};
use crate::history::Item;
use crate::plugin::truncate;

const NAME: &str = "anthropic";
/// The API version this module speaks.
const API_VERSION: &str = "2023-06-01";

/// A client for one Anthropic model.
pub struct Anthropic {
    endpoint: Endpoint,
    api_key: String,
}

impl Anthropic {
    /// A client for `model` at `base_url` (default `https://api.anthropic.com`).
    pub fn new(model: &str, base_url: Option<&str>, api_key: String, timeouts: Timeouts) -> Anthropic {
        Anthropic { endpoint: Endpoint::new(model, base_url, "https://api.anthropic.com", timeouts), api_key }
    }

    fn body(&self, request: &ModelRequest<'_>) -> Value {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
        let mut body = json!({
            "model": self.endpoint.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": messages(request.items),
            "stream": true,
        });
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        body
    }
}

/// The history as Messages API messages.
fn messages(items: &[Item]) -> Vec<Value> {
    let blocks = items.iter().map(|item| match item {
        Item::User { text } => ("user", json!({"type": "text", "text": text})),
        Item::System { text } => ("user", json!({"type": "text", "text": system_note(text)})),
        Item::Assistant { text } => ("assistant", json!({"type": "text", "text": text})),
        Item::ToolCall { id, name, arguments } => {
            ("assistant", json!({"type": "tool_use", "id": id, "name": name, "input": arguments}))
        }
        Item::ToolResult { id, content, is_error, .. } => {
            ("user", json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error}))
        }
    });
    turns_by_role(blocks, "content")
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.endpoint.model
    }

    async fn stream(
        &self,
        request: &ModelRequest<'_>,
        sink: &mut DeltaSink<'_>,
    ) -> Result<ModelResponse, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", header_value(NAME, &self.api_key)?);
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        let events = self.endpoint.post_sse(NAME, "/v1/messages", headers, &self.body(request)).await?;
        events.parse(Parser::new(Limits::DEFAULT), sink).await
    }
}

/// Reads a Messages API event stream into a response.
pub(crate) struct Parser {
    out: ResponseAssembler,
    /// Content block index -> tool call index, for tool-use blocks.
    blocks: HashMap<usize, usize>,
    usage: Usage,
    stop: StopReason,
    done: bool,
}

impl Parser {
    /// A parser for one response, held to `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            out: ResponseAssembler::new(NAME, limits),
            blocks: HashMap::new(),
            usage: Usage::default(),
            stop: StopReason::Other,
            done: false,
        }
    }
}

impl StreamParser for Parser {
    fn event(&mut self, event: &SseEvent, sink: &mut DeltaSink<'_>) -> Result<Flow, ProviderError> {
        self.out.event()?;
        if event.data.is_empty() {
            return Ok(Flow::More);
        }
        let data = frame::parse(&event.data).map_err(|e| {
            // An event with no `event:` line is a `message`, as SSE names it.
            let name = if event.event.is_empty() { "message" } else { &event.event };
            ProviderError::fatal(NAME, format!("malformed `{name}` event: {e}"))
        })?;
        let kind = data.get("type").str();
        let block_index = || wire_index(NAME, "content block index", data.get("index"), MAX_CONTENT_BLOCKS);
        match kind.as_deref().unwrap_or(&event.event) {
            "message_start" => {
                let u = data.get("message").get("usage");
                let usage = &mut self.usage;
                usage.cache_read_tokens = u.get("cache_read_input_tokens").u64().unwrap_or(0);
                usage.cache_creation_tokens = u.get("cache_creation_input_tokens").u64().unwrap_or(0);
                // Counts from the wire: added without overflowing.
                usage.input_tokens = u
                    .get("input_tokens")
                    .u64()
                    .unwrap_or(0)
                    .saturating_add(usage.cache_read_tokens)
                    .saturating_add(usage.cache_creation_tokens);
                usage.output_tokens = u.get("output_tokens").u64().unwrap_or(0);
            }
            "content_block_start" => {
                let index = block_index()?;
                let block = data.get("content_block");
                match block.get("type").str().as_deref() {
                    Some("tool_use") => {
                        let call = self.blocks.get(&index).copied().unwrap_or(self.blocks.len());
                        let id = block.get("id").str().unwrap_or_default().into_owned();
                        let name = block.get("name").str().unwrap_or_default().into_owned();
                        self.out.start_call(call, id, name, sink)?;
                        self.blocks.insert(index, call);
                    }
                    Some("text") => {
                        let t = block.get("text").str().unwrap_or_default();
                        if !t.is_empty() {
                            self.out.text(&t, sink)?;
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = block_index()?;
                let delta = data.get("delta");
                match delta.get("type").str().as_deref() {
                    Some("text_delta") => self.out.text(&delta.get("text").str().unwrap_or_default(), sink)?,
                    Some("input_json_delta") => {
                        if let Some(call) = self.blocks.get(&index) {
                            let fragment = delta.get("partial_json").str().unwrap_or_default();
                            self.out.call_args(*call, &fragment, sink)?;
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(out) = data.get("usage").get("output_tokens").u64() {
                    self.usage.output_tokens = out;
                }
                self.stop = match data.get("delta").get("stop_reason").str().as_deref() {
                    Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
                    Some("tool_use") => StopReason::ToolUse,
                    Some("max_tokens") => StopReason::MaxTokens,
                    _ => self.stop,
                };
            }
            "message_stop" => {
                self.done = true;
                return Ok(Flow::Done);
            }
            "error" => {
                let error = data.get("error");
                let kind = error.get("type").str().unwrap_or("error".into());
                let message = truncate(&error.get("message").str().unwrap_or("unknown error".into()), 500);
                let retryable = kind == "overloaded_error" || kind == "api_error";
                return Err(ProviderError { retryable, ..ProviderError::fatal(NAME, format!("{kind}: {message}")) });
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(Flow::More)
    }

    fn finish(self) -> Result<ModelResponse, ProviderError> {
        if !self.done {
            return Err(ProviderError::transient(NAME, "the stream ended before message_stop"));
        }
        Ok(self.out.finish(self.stop, self.usage))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::provider::testing::{self, SMALL, feed, field, named, object};
    use crate::provider::{Delta, MAX_CALL_ARGUMENT_BYTES, MAX_TOOL_CALLS};

    fn start() -> SseEvent {
        named("message_start", &json!({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}))
    }

    fn tool_use(index: Value, id: &str) -> SseEvent {
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": id, "name": "Read", "input": {}}}),
        )
    }

    fn args(index: Value, partial: &str) -> SseEvent {
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": partial}}),
        )
    }

    fn text(index: usize, text: &str) -> SseEvent {
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn stop() -> SseEvent {
        named("message_stop", &json!({"type": "message_stop"}))
    }

    fn parser() -> Parser {
        Parser::new(Limits::DEFAULT)
    }

    /// The message of the error a tool-use block at `index` gives.
    fn index_error(index: Value) -> String {
        feed(parser(), [start(), tool_use(index, "toolu_1"), stop()]).error().to_string()
    }

    #[test]
    fn anthropic_parser_assembles_text_and_calls() {
        let events = [
            start(),
            text(0, "Hi"),
            tool_use(json!(1), "toolu_1"),
            args(json!(1), "{\"a\""),
            tool_use(json!(2), "toolu_2"),
            args(json!(1), ": 1}"),
            named("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}})),
            stop(),
        ];
        let fed = feed(parser(), events);
        let response = fed.result.unwrap();
        assert_eq!(response.text, "Hi");
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(response.usage.input_tokens, 5);
        assert_eq!(response.tool_calls[0].arguments, "{\"a\": 1}");
        assert_eq!(response.tool_calls[1].id, "toolu_2");
        assert!(fed.deltas.contains(&Delta::ToolCallStart { index: 1, id: "toolu_2".into(), name: "Read".into() }));
    }

    #[test]
    fn anthropic_stream_without_message_stop_is_a_transient_error() {
        assert!(feed(parser(), [start(), text(0, "Hi")]).result.unwrap_err().retryable);
    }

    #[test]
    fn anthropic_content_block_index_at_the_cap_is_a_provider_error() {
        let message = index_error(json!(MAX_CONTENT_BLOCKS));
        assert_eq!(message, "anthropic: content block index 1024 is out of range (must be below 1024)");
    }

    #[test]
    fn anthropic_content_block_index_of_four_billion_is_a_provider_error() {
        let message = index_error(json!(4_000_000_000u64));
        assert_eq!(message, "anthropic: content block index 4000000000 is out of range (must be below 1024)");
        let on_a_delta = feed(parser(), [start(), args(json!(4_000_000_000u64), "{}"), stop()]);
        assert!(on_a_delta.error().message.contains("4000000000 is out of range"));
    }

    /// Token counts come from the wire: their sum saturates rather than
    /// overflowing (a panic in a debug build).
    #[test]
    fn anthropic_token_counts_at_u64_max_do_not_overflow() {
        let usage = json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 7});
        let huge = named("message_start", &json!({"type": "message_start", "message": {"usage": usage}}));
        let response = feed(parser(), [huge, stop()]).result.unwrap();
        assert_eq!(response.usage.input_tokens, u64::MAX);
        assert_eq!(response.usage.cache_read_tokens, 5);
    }

    #[test]
    fn anthropic_content_block_index_of_u64_max_is_a_provider_error() {
        assert!(index_error(json!(u64::MAX)).contains("index 18446744073709551615 is out of range"));
    }

    #[test]
    fn anthropic_negative_content_block_index_is_a_provider_error() {
        assert_eq!(index_error(json!(-1)), "anthropic: content block index -1 is not a non-negative integer");
    }

    #[test]
    fn anthropic_fractional_content_block_index_is_a_provider_error() {
        assert_eq!(index_error(json!(1.5)), "anthropic: content block index 1.5 is not a non-negative integer");
    }

    #[test]
    fn anthropic_string_content_block_index_is_a_provider_error() {
        assert_eq!(index_error(json!("3")), "anthropic: content block index \"3\" is not a non-negative integer");
    }

    #[test]
    fn anthropic_tool_calls_past_the_cap_are_a_provider_error() {
        let blocks = |n: usize| (0..n).map(|i| tool_use(json!(i), &format!("toolu_{i}")));
        let response = feed(parser(), [start()].into_iter().chain(blocks(MAX_TOOL_CALLS)).chain([stop()]));
        assert_eq!(response.result.unwrap().tool_calls.len(), MAX_TOOL_CALLS);
        let fed = feed(parser(), [start()].into_iter().chain(blocks(MAX_TOOL_CALLS + 1)).chain([stop()]));
        assert_eq!(fed.error().to_string(), "anthropic: more than 128 tool calls in one response");
    }

    #[test]
    fn anthropic_arguments_over_the_per_call_cap_are_a_provider_error() {
        let half = "a".repeat(MAX_CALL_ARGUMENT_BYTES / 2 + 1);
        let events = [start(), tool_use(json!(0), "toolu_1"), args(json!(0), &half), args(json!(0), &half), stop()];
        assert_eq!(feed(parser(), events).error().to_string(), "anthropic: the arguments of tool call 0 exceed 4 MiB");
    }

    #[test]
    fn anthropic_text_and_arguments_over_the_response_cap_are_a_provider_error() {
        let three_mib = "a".repeat(3 << 20);
        let calls = (1..5).flat_map(|i| [tool_use(json!(i), "t"), args(json!(i), &three_mib)]);
        let texts = (0..4).map(|_| text(0, &three_mib));
        let fed = feed(parser(), [start()].into_iter().chain(calls).chain(texts).chain([stop()]));
        assert_eq!(fed.error().to_string(), "anthropic: the response exceeds 16 MiB of text and tool calls");
    }

    #[test]
    fn anthropic_endless_pings_hit_the_event_cap() {
        let ping = named("ping", &json!({"type": "ping"}));
        let fed = feed(Parser::new(SMALL), [start()].into_iter().chain(std::iter::repeat(ping)));
        assert_eq!(fed.error().to_string(), "anthropic: the response ran past 24 events");
    }

    #[test]
    fn anthropic_endless_text_hits_the_response_byte_cap() {
        let piece = text(0, &"a".repeat(64 << 10));
        let fed = feed(parser(), [start()].into_iter().chain(std::iter::repeat(piece)));
        assert!(fed.error().message.contains("exceeds 16 MiB"), "{}", fed.error());
    }

    #[test]
    fn anthropic_deeply_nested_event_is_a_provider_error() {
        let deep = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let fed = feed(parser(), [start(), SseEvent { event: "content_block_delta".into(), data: deep }]);
        let message = fed.error().to_string();
        assert!(message.starts_with("anthropic: malformed `content_block_delta` event: recursion limit"), "{message}");
    }

    fn string() -> impl Strategy<Value = Value> {
        testing::text().prop_map(Value::from)
    }

    /// Events shaped like the Messages API's, with any field missing or
    /// replaced, and now and then something else entirely.
    fn frame() -> impl Strategy<Value = (String, String)> {
        let kind = prop_oneof![
            8 => Just("content_block_start"),
            16 => Just("content_block_delta"),
            2 => Just("message_start"),
            2 => Just("message_delta"),
            2 => Just("ping"),
            2 => Just("content_block_stop"),
            1 => Just("message_stop"),
            1 => Just("other"),
        ];
        let kind = prop_oneof![100 => kind, 1 => Just("error")];
        let block_type = prop::sample::select(vec!["tool_use", "text", "thinking"]).prop_map(Value::from);
        let block = (field(block_type), field(string()), field(string()), field(string()))
            .prop_map(|(t, id, name, text)| object(vec![("type", t), ("id", id), ("name", name), ("text", text)]));
        let delta_type = prop::sample::select(vec!["text_delta", "input_json_delta", "other"]).prop_map(Value::from);
        let stop_reason = prop::sample::select(vec!["end_turn", "tool_use", "max_tokens"]).prop_map(Value::from);
        let delta = (field(delta_type), field(string()), field(string()), field(stop_reason))
            .prop_map(|(t, x, p, s)| object(vec![("type", t), ("text", x), ("partial_json", p), ("stop_reason", s)]));
        let usage = any::<u32>().prop_map(|n| json!({"input_tokens": n, "output_tokens": n}));
        let event = (kind, field(testing::index()), field(block), field(delta), field(usage)).prop_map(
            |(kind, index, block, delta, usage)| {
                let value = object(vec![
                    ("type", Some(Value::from(kind))),
                    ("index", index),
                    ("content_block", block),
                    ("delta", delta),
                    ("usage", usage),
                ]);
                (kind.to_string(), value.to_string())
            },
        );
        prop_oneof![40 => event, 1 => testing::broken_frame().prop_map(|data| ("content_block_delta".into(), data))]
    }

    proptest! {
        #![proptest_config(testing::config())]

        #[test]
        fn anthropic_parser_stays_within_its_caps_on_provider_shaped_events(
            frames in prop::collection::vec(frame(), 0..48),
        ) {
            let events = frames.into_iter().map(|(event, data)| SseEvent { event, data });
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }

        #[test]
        fn anthropic_parser_stays_within_its_caps_on_random_bytes(
            body in testing::body(frame().prop_map(|(_, data)| data)),
        ) {
            let events = testing::decode(&body, &SMALL);
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }
    }
}
