//! OpenAI Chat Completions (`POST {base_url}/chat/completions`, streamed),
//! which OpenAI-compatible servers (Ollama, vLLM, llama.cpp server, LM
//! Studio) speak unchanged: point `base_url` at them; the key is optional.
//!
//! Tool calls stream as deltas keyed by index, several per response; an
//! index must be a whole number below [`MAX_TOOL_CALLS`](super::MAX_TOOL_CALLS)
//! (any other is an error, since local servers vary in quality). Tool
//! results become `tool` messages; the format has no error flag, so failed
//! results are prefixed with `Error: `.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};

use super::frame::{self, wire_index};
use super::http::{Endpoint, Timeouts, header_value};
use super::sse::SseEvent;
use super::{
    DeltaSink, Flow, Limits, ModelRequest, ModelResponse, Provider, ProviderError, ResponseAssembler, StopReason,
    StreamParser, Usage, mid_stream_error,
};
use crate::history::Item;

const NAME: &str = "openai";

/// A client for one chat-completions model.
pub struct OpenAi {
    endpoint: Endpoint,
    api_key: Option<String>,
}

impl OpenAi {
    /// A client for `model` at `base_url` (default `https://api.openai.com/v1`).
    pub fn new(model: &str, base_url: Option<&str>, api_key: Option<String>, timeouts: Timeouts) -> OpenAi {
        OpenAi { endpoint: Endpoint::new(model, base_url, "https://api.openai.com/v1", timeouts), api_key }
    }

    fn body(&self, request: &ModelRequest<'_>) -> Value {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.input_schema
                }})
            })
            .collect();
        let mut body = json!({
            "model": self.endpoint.model,
            "messages": messages(&request.system, request.items),
            "max_tokens": request.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
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

/// The history as chat messages.
fn messages(system: &str, items: &[Item]) -> Vec<Value> {
    let mut out = vec![json!({"role": "system", "content": system})];
    for item in items {
        match item {
            Item::User { text } => out.push(json!({"role": "user", "content": text})),
            Item::System { text } => out.push(json!({"role": "system", "content": text})),
            Item::Assistant { text } => out.push(json!({"role": "assistant", "content": text})),
            Item::ToolCall { id, name, arguments } => {
                let call = json!({"id": id, "type": "function", "function": {
                    "name": name, "arguments": Value::Object(arguments.clone()).to_string()
                }});
                // Calls join the assistant message just before them.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        if !last["tool_calls"].is_array() {
                            last["tool_calls"] = json!([]);
                        }
                        last["tool_calls"].as_array_mut().unwrap().push(call);
                    }
                    _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Item::ToolResult { id, content, is_error, .. } => {
                let content = if *is_error { format!("Error: {content}") } else { content.clone() };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl Provider for OpenAi {
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
        if let Some(key) = &self.api_key {
            headers.insert(AUTHORIZATION, header_value(NAME, &format!("Bearer {key}"))?);
        }
        let events = self.endpoint.post_sse(NAME, "/chat/completions", headers, &self.body(request)).await?;
        events.parse(Parser::new(Limits::DEFAULT), sink).await
    }
}

/// Reads a chat-completions event stream into a response.
pub(crate) struct Parser {
    out: ResponseAssembler,
    usage: Usage,
    stop: StopReason,
    done: bool,
}

impl Parser {
    /// A parser for one response, held to `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            out: ResponseAssembler::new(NAME, limits),
            usage: Usage::default(),
            stop: StopReason::Other,
            done: false,
        }
    }
}

impl StreamParser for Parser {
    fn event(&mut self, event: &SseEvent, sink: &mut DeltaSink<'_>) -> Result<Flow, ProviderError> {
        self.out.event()?;
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(Flow::More);
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(Flow::Done);
        }
        let chunk =
            frame::parse(data).map_err(|e| ProviderError::fatal(NAME, format!("malformed stream chunk: {e}")))?;
        let error = chunk.get("error");
        if error.is_some() {
            return Err(mid_stream_error(NAME, error));
        }
        let u = chunk.get("usage");
        if u.is_object() {
            self.usage.input_tokens = u.get("prompt_tokens").u64().unwrap_or(0);
            self.usage.output_tokens = u.get("completion_tokens").u64().unwrap_or(0);
            self.usage.cache_read_tokens = u.get("prompt_tokens_details").get("cached_tokens").u64().unwrap_or(0);
        }
        let choice = chunk.get("choices").at(0);
        if choice.is_none() {
            return Ok(Flow::More);
        }
        let delta = choice.get("delta");
        if let Some(t) = delta.get("content").str().filter(|t| !t.is_empty()) {
            self.out.text(&t, sink)?;
        }
        let out = &mut self.out;
        delta.get("tool_calls").each(|call| {
            let index = wire_index(NAME, "tool call index", call.get("index"), out.limits().tool_calls)?;
            let function = call.get("function");
            if !out.has_call(index) {
                let id = call.get("id").str().map_or_else(|| format!("call_{index}"), |id| id.into_owned());
                let name = function.get("name").str().unwrap_or_default().into_owned();
                out.start_call(index, id, name, sink)?;
            }
            out.call_args(index, &function.get("arguments").str().unwrap_or_default(), sink)
        })?;
        if let Some(reason) = choice.get("finish_reason").str() {
            self.stop = match &*reason {
                "stop" => StopReason::EndTurn,
                "tool_calls" | "function_call" => StopReason::ToolUse,
                "length" => StopReason::MaxTokens,
                _ => StopReason::Other,
            };
        }
        Ok(Flow::More)
    }

    fn finish(self) -> Result<ModelResponse, ProviderError> {
        if !self.done {
            return Err(ProviderError::transient(NAME, "the stream ended before [DONE]"));
        }
        Ok(self.out.finish(self.stop, self.usage))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::provider::testing::{self, SMALL, data, feed, field, object};
    use crate::provider::{Delta, MAX_CALL_ARGUMENT_BYTES, MAX_TOOL_CALLS};

    fn chunk(delta: Value) -> SseEvent {
        data(&json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]}))
    }

    fn call(index: Value, arguments: &str) -> SseEvent {
        chunk(
            json!({"tool_calls": [{"index": index, "id": "call_a", "function": {"name": "Read", "arguments": arguments}}]}),
        )
    }

    fn done() -> SseEvent {
        SseEvent { event: String::new(), data: "[DONE]".into() }
    }

    fn parser() -> Parser {
        Parser::new(Limits::DEFAULT)
    }

    /// The message of the error a call at `index` gives.
    fn index_error(index: Value) -> String {
        feed(parser(), [call(index, "{}"), done()]).error().to_string()
    }

    #[test]
    fn openai_parser_assembles_text_and_calls() {
        let events = [
            chunk(json!({"role": "assistant", "content": "Hi"})),
            call(json!(1), "{\"a\""),
            chunk(json!({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]})),
            call(json!(0), ""),
            data(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})),
            data(&json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})),
            done(),
            chunk(json!({"content": "after the end"})),
        ];
        let fed = feed(parser(), events);
        let response = fed.result.unwrap();
        assert_eq!(response.text, "Hi");
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(response.usage.input_tokens, 7);
        assert_eq!(response.tool_calls.len(), 2);
        assert_eq!(response.tool_calls[1].arguments, "{\"a\": 1}");
        assert_eq!(fed.deltas[0], Delta::Text("Hi".into()));
    }

    #[test]
    fn openai_stream_without_done_is_a_transient_error() {
        let fed = feed(parser(), [chunk(json!({"content": "Hi"}))]);
        assert!(fed.result.unwrap_err().retryable);
    }

    #[test]
    fn openai_tool_call_index_below_the_cap_is_accepted() {
        let last = json!(MAX_TOOL_CALLS - 1);
        let response = feed(parser(), [call(last, "{}"), done()]).result.unwrap();
        assert_eq!(response.tool_calls.len(), 1);
    }

    #[test]
    fn openai_tool_call_index_at_the_cap_is_a_provider_error() {
        assert_eq!(
            index_error(json!(MAX_TOOL_CALLS)),
            "openai: tool call index 128 is out of range (must be below 128)"
        );
    }

    #[test]
    fn openai_tool_call_index_of_four_billion_is_a_provider_error() {
        let message = index_error(json!(4_000_000_000u64));
        assert_eq!(message, "openai: tool call index 4000000000 is out of range (must be below 128)");
    }

    #[test]
    fn openai_tool_call_index_of_u64_max_is_a_provider_error() {
        assert!(index_error(json!(u64::MAX)).contains("index 18446744073709551615 is out of range"));
    }

    #[test]
    fn openai_negative_tool_call_index_is_a_provider_error() {
        assert_eq!(index_error(json!(-1)), "openai: tool call index -1 is not a non-negative integer");
    }

    #[test]
    fn openai_fractional_tool_call_index_is_a_provider_error() {
        assert_eq!(index_error(json!(1.5)), "openai: tool call index 1.5 is not a non-negative integer");
    }

    #[test]
    fn openai_string_tool_call_index_is_a_provider_error() {
        assert_eq!(index_error(json!("3")), "openai: tool call index \"3\" is not a non-negative integer");
    }

    #[test]
    fn openai_arguments_over_the_per_call_cap_are_a_provider_error() {
        let half = "a".repeat(MAX_CALL_ARGUMENT_BYTES / 2 + 1);
        let fed = feed(parser(), [call(json!(0), &half), call(json!(0), &half), done()]);
        assert_eq!(fed.error().to_string(), "openai: the arguments of tool call 0 exceed 4 MiB");
        let reported: usize = fed
            .deltas
            .iter()
            .map(|d| if let Delta::ToolCallArgs { fragment, .. } = d { fragment.len() } else { 0 })
            .sum();
        assert_eq!(reported, half.len(), "the fragment past the cap was not reported");
    }

    #[test]
    fn openai_text_and_arguments_over_the_response_cap_are_a_provider_error() {
        let three_mib = "a".repeat(3 << 20);
        let calls = (0..4).map(|i| call(json!(i), &three_mib));
        let text = (0..4).map(|_| chunk(json!({"content": three_mib})));
        let fed = feed(parser(), calls.chain(text).chain([done()]));
        assert_eq!(fed.error().to_string(), "openai: the response exceeds 16 MiB of text and tool calls");
    }

    #[test]
    fn openai_endless_stream_of_empty_chunks_hits_the_event_cap() {
        let fed = feed(Parser::new(SMALL), std::iter::repeat(chunk(json!({}))));
        assert_eq!(fed.error().to_string(), "openai: the response ran past 24 events");
    }

    #[test]
    fn openai_endless_text_hits_the_response_byte_cap() {
        let piece = chunk(json!({"content": "a".repeat(64 << 10)}));
        let fed = feed(parser(), std::iter::repeat(piece));
        assert!(fed.error().message.contains("exceeds 16 MiB"), "{}", fed.error());
    }

    #[test]
    fn openai_deeply_nested_chunk_is_a_provider_error() {
        let deep = format!(r#"{{"choices":[{{"delta":{}1{}}}]}}"#, "[".repeat(100_000), "]".repeat(100_000));
        let fed = feed(parser(), [SseEvent { event: String::new(), data: deep }]);
        let message = fed.error().to_string();
        assert!(message.starts_with("openai: malformed stream chunk: recursion limit exceeded"), "{message}");
    }

    fn string() -> impl Strategy<Value = Value> {
        testing::text().prop_map(Value::from)
    }

    /// Chunks shaped like chat-completion chunks, with any field missing or
    /// replaced, and now and then something else entirely.
    fn frame() -> impl Strategy<Value = String> {
        let name = prop_oneof![Just(json!("Read")), Just(json!("")), string()];
        let function = (field(name), field(string())).prop_map(|(n, a)| object(vec![("name", n), ("arguments", a)]));
        let call = (field(testing::index()), field(string()), field(function))
            .prop_map(|(i, id, f)| object(vec![("index", i), ("id", id), ("function", f)]));
        let calls = prop::collection::vec(call, 0..3).prop_map(Value::from);
        let delta = (field(string()), field(calls)).prop_map(|(c, t)| object(vec![("content", c), ("tool_calls", t)]));
        let reason = prop::sample::select(vec!["stop", "tool_calls", "length", "other"]).prop_map(Value::from);
        let choice = (field(delta), field(reason)).prop_map(|(d, r)| object(vec![("delta", d), ("finish_reason", r)]));
        let choices = prop::collection::vec(choice, 0..2).prop_map(Value::from);
        let usage = any::<u32>().prop_map(|n| json!({"prompt_tokens": n, "completion_tokens": n}));
        let error = prop_oneof![100 => Just(None), 1 => testing::any_json().prop_map(Some)];
        let chunk = (field(choices), field(usage), error)
            .prop_map(|(c, u, e)| object(vec![("choices", c), ("usage", u), ("error", e)]).to_string());
        prop_oneof![40 => chunk, 1 => Just("[DONE]".to_string()), 1 => testing::broken_frame()]
    }

    proptest! {
        #![proptest_config(testing::config())]

        #[test]
        fn openai_parser_stays_within_its_caps_on_provider_shaped_events(
            frames in prop::collection::vec(frame(), 0..48),
        ) {
            let events = frames.into_iter().map(|data| SseEvent { event: String::new(), data });
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }

        #[test]
        fn openai_parser_stays_within_its_caps_on_random_bytes(body in testing::body(frame())) {
            let events = testing::decode(&body, &SMALL);
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }
    }
}
