//! Google Gemini (`POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`).
//!
//! Function calls arrive whole (not in argument pieces) and without ids, so
//! ids are made up per response (`call_0`, ...); the arguments are kept as
//! the JSON text the server sent. Tool results become `functionResponse`
//! parts; the input schemas lose the keys Gemini's schema dialect rejects
//! (`additionalProperties`, `$schema`).

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::frame;
use super::http::{Endpoint, Timeouts, header_value};
use super::sse::SseEvent;
use super::{
    DeltaSink, Flow, Limits, ModelRequest, ModelResponse, Provider, ProviderError, ResponseAssembler, StopReason,
    StreamParser, Usage, mid_stream_error, system_note, turns_by_role,
};
use crate::history::Item;

const NAME: &str = "gemini";

/// A client for one Gemini model.
pub struct Gemini {
    endpoint: Endpoint,
    api_key: String,
}

impl Gemini {
    /// A client for `model` at `base_url` (default
    /// `https://generativelanguage.googleapis.com`).
    pub fn new(model: &str, base_url: Option<&str>, api_key: String, timeouts: Timeouts) -> Gemini {
        let endpoint = Endpoint::new(model, base_url, "https://generativelanguage.googleapis.com", timeouts);
        Gemini { endpoint, api_key }
    }

    fn body(&self, request: &ModelRequest<'_>) -> Value {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(
                |t| json!({"name": t.name, "description": t.description, "parameters": gemini_schema(&t.input_schema)}),
            )
            .collect();
        let mut generation = json!({"maxOutputTokens": request.max_tokens});
        if let Some(t) = request.temperature {
            generation["temperature"] = json!(t);
        }
        let mut body = json!({
            "contents": contents(request.items),
            "systemInstruction": {"parts": [{"text": request.system}]},
            "generationConfig": generation,
        });
        if !declarations.is_empty() {
            body["tools"] = json!([{"functionDeclarations": declarations}]);
        }
        body
    }
}

/// A JSON schema without the keys Gemini refuses.
fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "additionalProperties" && *k != "$schema")
                .map(|(k, v)| (k.clone(), gemini_schema(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

/// The history as Gemini contents (roles `user` and `model`).
fn contents(items: &[Item]) -> Vec<Value> {
    let parts = items.iter().map(|item| match item {
        Item::User { text } => ("user", json!({"text": text})),
        Item::System { text } => ("user", json!({"text": system_note(text)})),
        Item::Assistant { text } => ("model", json!({"text": text})),
        Item::ToolCall { name, arguments, .. } => ("model", json!({"functionCall": {"name": name, "args": arguments}})),
        Item::ToolResult { name, content, is_error, .. } => {
            let response = if *is_error { json!({"error": content}) } else { json!({"content": content}) };
            ("user", json!({"functionResponse": {"name": name, "response": response}}))
        }
    });
    turns_by_role(parts, "parts")
}

#[async_trait::async_trait]
impl Provider for Gemini {
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
        headers.insert("x-goog-api-key", header_value(NAME, &self.api_key)?);
        let path = format!("/v1beta/models/{}:streamGenerateContent?alt=sse", self.endpoint.model);
        let events = self.endpoint.post_sse(NAME, &path, headers, &self.body(request)).await?;
        events.parse(Parser::new(Limits::DEFAULT), sink).await
    }
}

/// Reads a streamGenerateContent event stream into a response. The stream
/// has no end marker: the response is complete when the body ends after a
/// `finishReason`.
pub(crate) struct Parser {
    out: ResponseAssembler,
    /// Function calls so far, which number the next one.
    calls: usize,
    usage: Usage,
    stop: Option<StopReason>,
}

impl Parser {
    /// A parser for one response, held to `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser { out: ResponseAssembler::new(NAME, limits), calls: 0, usage: Usage::default(), stop: None }
    }
}

impl StreamParser for Parser {
    fn event(&mut self, event: &SseEvent, sink: &mut DeltaSink<'_>) -> Result<Flow, ProviderError> {
        self.out.event()?;
        if event.data.trim().is_empty() {
            return Ok(Flow::More);
        }
        let chunk = frame::parse(&event.data)
            .map_err(|e| ProviderError::fatal(NAME, format!("malformed stream chunk: {e}")))?;
        let error = chunk.get("error");
        if error.is_some() {
            let code = error.get("code").u64().unwrap_or(0);
            let e = mid_stream_error(NAME, error);
            return Err(ProviderError { retryable: code == 429 || code == 503 || code == 500, ..e });
        }
        let u = chunk.get("usageMetadata");
        if u.is_some() {
            let usage = &mut self.usage;
            usage.input_tokens = u.get("promptTokenCount").u64().unwrap_or(usage.input_tokens);
            usage.output_tokens = u.get("candidatesTokenCount").u64().unwrap_or(usage.output_tokens);
            usage.cache_read_tokens = u.get("cachedContentTokenCount").u64().unwrap_or(usage.cache_read_tokens);
        }
        let candidate = chunk.get("candidates").at(0);
        if candidate.is_none() {
            return Ok(Flow::More);
        }
        let (out, calls) = (&mut self.out, &mut self.calls);
        candidate.get("content").get("parts").each(|part| {
            if let Some(t) = part.get("text").str().filter(|t| !t.is_empty()) {
                if part.get("thought").bool() == Some(true) {
                    return Ok(());
                }
                out.text(&t, sink)?;
            }
            let call = part.get("functionCall");
            if call.is_some() {
                let id = call.get("id").str().map_or_else(|| format!("call_{calls}"), |id| id.into_owned());
                let name = call.get("name").str().unwrap_or_default().into_owned();
                out.start_call(*calls, id, name, sink)?;
                // The arguments arrive whole, as a JSON value; its text is kept as sent.
                out.call_args(*calls, call.get("args").raw().unwrap_or("{}"), sink)?;
                *calls += 1;
            }
            Ok(())
        })?;
        if let Some(reason) = candidate.get("finishReason").str() {
            self.stop = Some(match &*reason {
                "STOP" if self.calls > 0 => StopReason::ToolUse,
                "STOP" => StopReason::EndTurn,
                "MAX_TOKENS" => StopReason::MaxTokens,
                _ => StopReason::Other,
            });
        }
        Ok(Flow::More)
    }

    fn finish(self) -> Result<ModelResponse, ProviderError> {
        let Some(stop) = self.stop else {
            return Err(ProviderError::transient(NAME, "the stream ended before a finishReason"));
        };
        Ok(self.out.finish(stop, self.usage))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::provider::testing::{self, SMALL, data, feed, field, object};
    use crate::provider::{MAX_CALL_ARGUMENT_BYTES, MAX_TOOL_CALLS};

    fn chunk(parts: Value, finish: Option<&str>) -> SseEvent {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        data(&json!({"candidates": [candidate]}))
    }

    fn call(args: Value) -> Value {
        json!({"functionCall": {"name": "Read", "args": args}})
    }

    fn parser() -> Parser {
        Parser::new(Limits::DEFAULT)
    }

    #[test]
    fn gemini_parser_keeps_arguments_as_sent_and_numbers_the_calls() {
        let events = [
            chunk(json!([{"text": "Hi"}, {"text": "hidden", "thought": true}]), None),
            SseEvent {
                event: String::new(),
                data: r#"{"candidates":[{"content":{"parts":[
                {"functionCall":{"name":"Read","args":{"b": 1, "a": "\u00e9"}}}]}}]}"#
                    .into(),
            },
            chunk(json!([call(json!({}))]), Some("STOP")),
        ];
        let response = feed(parser(), events).result.unwrap();
        assert_eq!(response.text, "Hi");
        assert_eq!(response.stop, StopReason::ToolUse);
        assert_eq!(response.tool_calls[0].arguments, r#"{"b": 1, "a": "\u00e9"}"#);
        assert_eq!(response.tool_calls[1].id, "call_1");
    }

    #[test]
    fn gemini_stream_without_a_finish_reason_is_a_transient_error() {
        assert!(feed(parser(), [chunk(json!([{"text": "Hi"}]), None)]).result.unwrap_err().retryable);
    }

    #[test]
    fn gemini_function_calls_past_the_cap_are_a_provider_error() {
        let calls = |n: usize| Value::from((0..n).map(|_| call(json!({}))).collect::<Vec<_>>());
        let response = feed(parser(), [chunk(calls(MAX_TOOL_CALLS), Some("STOP"))]).result.unwrap();
        assert_eq!(response.tool_calls.len(), MAX_TOOL_CALLS);
        let fed = feed(parser(), [chunk(calls(MAX_TOOL_CALLS), None), chunk(calls(1), Some("STOP"))]);
        assert_eq!(fed.error().to_string(), "gemini: more than 128 tool calls in one response");
    }

    #[test]
    fn gemini_arguments_over_the_per_call_cap_are_a_provider_error() {
        let big = json!({"content": "a".repeat(MAX_CALL_ARGUMENT_BYTES)});
        let fed = feed(parser(), [chunk(json!([call(big)]), Some("STOP"))]);
        assert_eq!(fed.error().to_string(), "gemini: the arguments of tool call 0 exceed 4 MiB");
    }

    #[test]
    fn gemini_text_and_arguments_over_the_response_cap_are_a_provider_error() {
        let three_mib = "a".repeat(3 << 20);
        let calls = (0..4).map(|_| chunk(json!([call(json!({"content": three_mib}))]), None));
        let texts = (0..4).map(|_| chunk(json!([{"text": three_mib}]), None));
        let fed = feed(parser(), calls.chain(texts).chain([chunk(json!([]), Some("STOP"))]));
        assert_eq!(fed.error().to_string(), "gemini: the response exceeds 16 MiB of text and tool calls");
    }

    #[test]
    fn gemini_endless_stream_hits_the_event_cap() {
        let fed = feed(Parser::new(SMALL), std::iter::repeat(chunk(json!([]), None)));
        assert_eq!(fed.error().to_string(), "gemini: the response ran past 24 events");
    }

    #[test]
    fn gemini_endless_text_hits_the_response_byte_cap() {
        let piece = chunk(json!([{"text": "a".repeat(64 << 10)}]), None);
        let fed = feed(parser(), std::iter::repeat(piece));
        assert!(fed.error().message.contains("exceeds 16 MiB"), "{}", fed.error());
    }

    #[test]
    fn gemini_deeply_nested_chunk_is_a_provider_error() {
        let args = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = format!(r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{{"args":{args}}}}}]}}}}]}}"#);
        let fed = feed(parser(), [SseEvent { event: String::new(), data: deep }]);
        let message = fed.error().to_string();
        assert!(message.starts_with("gemini: malformed stream chunk: recursion limit exceeded"), "{message}");
    }

    fn string() -> impl Strategy<Value = Value> {
        testing::text().prop_map(Value::from)
    }

    /// Chunks shaped like streamGenerateContent's, with any field missing
    /// or replaced, and now and then something else entirely.
    fn frame() -> impl Strategy<Value = String> {
        let function = (field(string()), field(string()), field(testing::any_json()))
            .prop_map(|(id, name, args)| object(vec![("id", id), ("name", name), ("args", args)]));
        let part = (field(string()), prop::option::of(any::<bool>()), prop::option::of(function)).prop_map(
            |(text, thought, call)| {
                object(vec![("text", text), ("thought", thought.map(Value::from)), ("functionCall", call)])
            },
        );
        let parts = prop::collection::vec(part, 0..4).prop_map(Value::from);
        let reason = prop::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY"]).prop_map(Value::from);
        let candidate = (field(parts), field(reason)).prop_map(|(parts, reason)| {
            object(vec![("content", Some(object(vec![("parts", parts)]))), ("finishReason", reason)])
        });
        let candidates = prop::collection::vec(candidate, 0..2).prop_map(Value::from);
        let error = prop_oneof![100 => Just(None), 1 => testing::any_json().prop_map(Some)];
        let chunk = (field(candidates), error)
            .prop_map(|(candidates, error)| object(vec![("candidates", candidates), ("error", error)]).to_string());
        prop_oneof![40 => chunk, 1 => testing::broken_frame()]
    }

    proptest! {
        #![proptest_config(testing::config())]

        #[test]
        fn gemini_parser_stays_within_its_caps_on_provider_shaped_events(
            frames in prop::collection::vec(frame(), 0..48),
        ) {
            let events = frames.into_iter().map(|data| SseEvent { event: String::new(), data });
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }

        #[test]
        fn gemini_parser_stays_within_its_caps_on_random_bytes(body in testing::body(frame())) {
            let events = testing::decode(&body, &SMALL);
            testing::assert_within(&feed(Parser::new(SMALL), events), &SMALL, NAME)?;
        }
    }
}
