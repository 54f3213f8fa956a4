//! The provider clients against a local mock server that speaks each real
//! wire format (Anthropic Messages, OpenAI Chat Completions, Gemini), built
//! from recorded-shape events: streaming text, tool calls (several, and with
//! arguments split into many pieces), errors mid-stream and in the status,
//! retries, dropped connections, silence and cancellation, and a hostile
//! server whose input must end in an error rather than a crash.

mod common;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::mock_http::{MockServer, Reply};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use yoi_host::agent::{Agent, AgentConfig, NoHooks, Outcome, ToolRunner};
use yoi_host::history::Item;
use yoi_host::manifest::{ProviderKind, ProviderSection};
use yoi_host::plugin::{ToolError, ToolInfo, ToolOutput};
use yoi_host::provider::{
    Delta, MAX_EVENT_BYTES, ModelRequest, ModelResponse, Provider, ProviderError, RetryPolicy, StopReason,
    from_manifest, retry_policy, stream_with_retries,
};

/// One wire format: how to build its client and its recorded-shape events.
trait Wire: Sync {
    fn kind(&self) -> ProviderKind;
    /// A complete response streaming `parts` as text.
    fn text(&self, parts: &[&str]) -> Vec<String>;
    /// "Checking." then the calls (id, name, argument fragments).
    fn tool_calls(&self, calls: &[(&str, &str, Vec<&str>)]) -> Vec<String>;
    /// Some text, then the provider's error event.
    fn error_mid_stream(&self) -> Vec<String>;
    /// A 4xx error body, and the message in it.
    fn error_body(&self) -> (&'static str, &'static str);
}

fn sse(event: Option<&str>, data: Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

struct AnthropicWire;
impl AnthropicWire {
    fn start() -> Vec<String> {
        vec![sse(
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": "claude-test", "stop_reason": null,
                "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
        )]
    }
    fn end(stop: &str) -> Vec<String> {
        vec![
            sse(
                Some("message_delta"),
                json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 12}}),
            ),
            sse(Some("message_stop"), json!({"type": "message_stop"})),
        ]
    }
    fn text_block(index: usize, parts: &[&str]) -> Vec<String> {
        let mut out = vec![sse(
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        )];
        out.push(sse(Some("ping"), json!({"type": "ping"})));
        for p in parts {
            out.push(sse(
                Some("content_block_delta"),
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}),
            ));
        }
        out.push(sse(Some("content_block_stop"), json!({"type": "content_block_stop", "index": index})));
        out
    }
}
impl Wire for AnthropicWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }
    fn text(&self, parts: &[&str]) -> Vec<String> {
        [Self::start(), Self::text_block(0, parts), Self::end("end_turn")].concat()
    }
    fn tool_calls(&self, calls: &[(&str, &str, Vec<&str>)]) -> Vec<String> {
        let mut out = [Self::start(), Self::text_block(0, &["Checking."])].concat();
        for (i, (id, name, fragments)) in calls.iter().enumerate() {
            let index = i + 1;
            out.push(sse(
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for f in fragments {
                out.push(sse(
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": f}}),
                ));
            }
            out.push(sse(Some("content_block_stop"), json!({"type": "content_block_stop", "index": index})));
        }
        [out, Self::end("tool_use")].concat()
    }
    fn error_mid_stream(&self) -> Vec<String> {
        let mut out = Self::start();
        out.extend(Self::text_block(0, &["Partial "]).into_iter().take(3));
        out.push(sse(
            Some("error"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        out
    }
    fn error_body(&self) -> (&'static str, &'static str) {
        (
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 999999 > 8192"}}"#,
            "max_tokens: 999999 > 8192",
        )
    }
}

struct OpenAiWire;
impl OpenAiWire {
    fn chunk(delta: Value, finish: Option<&str>) -> String {
        sse(
            None,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-test",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    }
    fn end(finish: &str) -> Vec<String> {
        vec![
            Self::chunk(json!({}), Some(finish)),
            sse(
                None,
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 25, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 5}}}),
            ),
            "data: [DONE]\n\n".to_string(),
        ]
    }
}
impl Wire for OpenAiWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }
    fn text(&self, parts: &[&str]) -> Vec<String> {
        let mut out = vec![Self::chunk(json!({"role": "assistant", "content": ""}), None)];
        out.extend(parts.iter().map(|p| Self::chunk(json!({"content": p}), None)));
        [out, Self::end("stop")].concat()
    }
    fn tool_calls(&self, calls: &[(&str, &str, Vec<&str>)]) -> Vec<String> {
        let mut out = vec![Self::chunk(json!({"role": "assistant", "content": "Checking."}), None)];
        for (i, (id, name, fragments)) in calls.iter().enumerate() {
            out.push(Self::chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            for f in fragments {
                out.push(Self::chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": f}}]}), None));
            }
        }
        [out, Self::end("tool_calls")].concat()
    }
    fn error_mid_stream(&self) -> Vec<String> {
        vec![
            Self::chunk(json!({"role": "assistant", "content": "Partial "}), None),
            sse(
                None,
                json!({"error": {"message": "The server had an error while processing", "type": "server_error"}}),
            ),
        ]
    }
    fn error_body(&self) -> (&'static str, &'static str) {
        (
            r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error"}}"#,
            "The model `nope` does not exist",
        )
    }
}

struct GeminiWire;
impl GeminiWire {
    fn chunk(parts: Value, finish: Option<&str>) -> String {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut body = json!({"modelVersion": "gemini-test"});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
            body["usageMetadata"] =
                json!({"promptTokenCount": 25, "candidatesTokenCount": 12, "cachedContentTokenCount": 5});
        }
        body["candidates"] = json!([candidate]);
        sse(None, body)
    }
}
impl Wire for GeminiWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }
    fn text(&self, parts: &[&str]) -> Vec<String> {
        let n = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| Self::chunk(json!([{"text": p}]), (i + 1 == n).then_some("STOP")))
            .collect()
    }
    fn tool_calls(&self, calls: &[(&str, &str, Vec<&str>)]) -> Vec<String> {
        // Gemini sends each call whole, without an id.
        let mut out = vec![Self::chunk(json!([{"text": "Checking."}]), None)];
        let n = calls.len();
        for (i, (_, name, fragments)) in calls.iter().enumerate() {
            let args: Value = serde_json::from_str(&fragments.concat()).unwrap();
            out.push(Self::chunk(
                json!([{"functionCall": {"name": name, "args": args}}]),
                (i + 1 == n).then_some("STOP"),
            ));
        }
        out
    }
    fn error_mid_stream(&self) -> Vec<String> {
        vec![
            Self::chunk(json!([{"text": "Partial "}]), None),
            sse(
                None,
                json!({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}),
            ),
        ]
    }
    fn error_body(&self) -> (&'static str, &'static str) {
        (
            r#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}]"#,
            "API key not valid",
        )
    }
}

const WIRES: [&dyn Wire; 3] = [&AnthropicWire, &OpenAiWire, &GeminiWire];

fn section(wire: &dyn Wire, url: &str, max_retries: u32) -> ProviderSection {
    ProviderSection {
        kind: wire.kind(),
        model: "test-model".into(),
        base_url: Some(url.into()),
        api_key_env: None,
        script: None,
        connect_timeout_ms: 2000,
        first_event_timeout_ms: 2000,
        idle_timeout_ms: 2000,
        max_retries,
        retry_base_ms: 10,
    }
}

fn provider(wire: &dyn Wire, url: &str) -> Box<dyn Provider> {
    let env = |var: &str| Some(format!("key-for-{var}"));
    from_manifest(&section(wire, url, 2), std::path::Path::new("/"), std::path::Path::new("/"), "p", &env, None)
        .unwrap()
}

static HI: LazyLock<Vec<Item>> = LazyLock::new(|| vec![Item::User { text: "hi".into() }]);
static TOOLS: LazyLock<Vec<ToolInfo>> = LazyLock::new(|| {
    vec![ToolInfo {
        name: "Read".into(),
        description: "Reads".into(),
        input_schema: json!({"type": "object", "properties": {"file_path": {"type": "string"}}, "additionalProperties": false}),
    }]
});

fn request() -> ModelRequest<'static> {
    ModelRequest {
        system: "You are a test.".into(),
        items: &HI,
        tools: &TOOLS,
        max_tokens: 100,
        temperature: Some(0.5),
    }
}

/// Streams one response with the retry policy, collecting the deltas.
async fn stream(wire: &dyn Wire, server: &MockServer) -> (Result<ModelResponse, ProviderError>, Vec<Delta>) {
    let p = provider(wire, &server.url);
    let policy = retry_policy(&section(wire, &server.url, 2));
    let mut deltas = Vec::new();
    let result = stream_with_retries(p.as_ref(), &request(), &policy, &mut |d| deltas.push(d)).await;
    (result, deltas)
}

#[tokio::test]
async fn text_streams_in_deltas_with_usage() {
    for wire in WIRES {
        let server = MockServer::start(vec![Reply::events(wire.text(&["Hello", ", ", "world!"]))]).await;
        let (result, deltas) = stream(wire, &server).await;
        let response = result.unwrap_or_else(|e| panic!("{:?}: {e}", wire.kind()));
        assert_eq!(response.text, "Hello, world!", "{:?}", wire.kind());
        assert_eq!(response.stop, StopReason::EndTurn);
        assert_eq!(deltas.iter().filter(|d| matches!(d, Delta::Text(_))).count(), 3);
        assert_eq!(response.usage.output_tokens, 12, "{:?}", wire.kind());
        assert_eq!(response.usage.cache_read_tokens, 5, "{:?}", wire.kind());
        assert!(response.usage.input_tokens >= 25, "{:?}", wire.kind());
    }
}

#[tokio::test]
async fn one_tool_call() {
    for wire in WIRES {
        let calls = [("toolu_1", "Read", vec![r#"{"file_path": "/p/a.txt"}"#])];
        let server = MockServer::start(vec![Reply::events(wire.tool_calls(&calls))]).await;
        let response = stream(wire, &server).await.0.unwrap();
        assert_eq!(response.stop, StopReason::ToolUse, "{:?}", wire.kind());
        assert_eq!(response.text, "Checking.");
        assert_eq!(response.tool_calls.len(), 1);
        let call = &response.tool_calls[0];
        assert_eq!(call.name, "Read");
        assert!(!call.id.is_empty());
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args, json!({"file_path": "/p/a.txt"}));
    }
}

#[tokio::test]
async fn several_parallel_tool_calls_and_split_arguments() {
    for wire in WIRES {
        let pieces = vec!["{\"pat", "tern\"", ": \"fo", "o\", \"pa", "th\": ", "\"/p\"", ", \"-i\"", ": tr", "ue", "}"];
        let calls = [("call_a", "Grep", pieces.clone()), ("call_b", "Read", vec![r#"{"file_path": "/p/b.txt"}"#])];
        let server = MockServer::start(vec![Reply::events(wire.tool_calls(&calls))]).await;
        let (result, deltas) = stream(wire, &server).await;
        let response = result.unwrap();
        assert_eq!(response.tool_calls.len(), 2, "{:?}", wire.kind());
        assert_eq!(response.tool_calls[0].name, "Grep");
        assert_eq!(response.tool_calls[1].name, "Read");
        let grep: Value = serde_json::from_str(&response.tool_calls[0].arguments).unwrap();
        assert_eq!(grep, json!({"pattern": "foo", "path": "/p", "-i": true}), "{:?}", wire.kind());
        if wire.kind() != ProviderKind::Gemini {
            let arg_deltas = deltas.iter().filter(|d| matches!(d, Delta::ToolCallArgs { index: 0, .. })).count();
            assert_eq!(arg_deltas, pieces.len(), "{:?}", wire.kind());
        }
        assert_ne!(response.tool_calls[0].id, response.tool_calls[1].id);
    }
}

#[tokio::test]
async fn error_event_mid_stream_is_a_clear_error_and_not_retried() {
    for wire in WIRES {
        let server =
            MockServer::start(vec![Reply::events(wire.error_mid_stream()), Reply::events(wire.text(&["no"]))]).await;
        let (result, deltas) = stream(wire, &server).await;
        let error = result.unwrap_err();
        assert_eq!(error.provider, format!("{:?}", wire.kind()).to_lowercase());
        assert!(!deltas.is_empty(), "the partial text streamed first");
        assert_eq!(server.requests().len(), 1, "{:?}: output had streamed, so no retry", wire.kind());
        let expected = ["Overloaded", "server had an error", "invalid argument"];
        assert!(expected.iter().any(|m| error.message.contains(m)), "{:?}: {error}", wire.kind());
    }
}

#[tokio::test]
async fn rate_limit_then_success_is_retried_honouring_retry_after() {
    for wire in WIRES {
        let limited = Reply::Status {
            status: 429,
            body: r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#.into(),
            headers: vec![("retry-after".into(), "0.05".into())],
        };
        let server = MockServer::start(vec![limited, Reply::events(wire.text(&["ok"]))]).await;
        let started = Instant::now();
        let response = stream(wire, &server).await.0.unwrap();
        assert_eq!(response.text, "ok");
        assert_eq!(server.requests().len(), 2);
        assert!(started.elapsed() >= Duration::from_millis(50), "retry-after was honoured");
    }
}

#[tokio::test]
async fn server_errors_give_up_after_the_retry_budget() {
    for wire in WIRES {
        let server = MockServer::start(vec![Reply::status(500, r#"{"error":{"message":"internal"}}"#)]).await;
        let error = stream(wire, &server).await.0.unwrap_err();
        assert_eq!(server.requests().len(), 3, "first attempt plus two retries");
        assert_eq!(error.status, Some(500));
        assert!(error.message.contains("HTTP 500") && error.message.contains("internal"), "{error}");
    }
}

#[tokio::test]
async fn client_errors_carry_the_providers_message_and_are_not_retried() {
    for wire in WIRES {
        let (body, message) = wire.error_body();
        let server = MockServer::start(vec![Reply::status(400, body)]).await;
        let error = stream(wire, &server).await.0.unwrap_err();
        assert_eq!(server.requests().len(), 1);
        assert!(error.to_string().contains("HTTP 400") && error.message.contains(message), "{error}");
    }
}

#[tokio::test]
async fn connection_dropped_mid_stream_is_an_error() {
    for wire in WIRES {
        let events = wire.text(&["Hello", " there", " and more"]);
        let cut: Vec<_> = events[..events.len() - 1].iter().map(|e| (Duration::ZERO, e.clone())).collect();
        let server = MockServer::start(vec![Reply::Events { events: cut, drop_before_end: true }]).await;
        let error = stream(wire, &server).await.0.unwrap_err();
        assert!(
            error.message.contains("connection lost") || error.message.contains("ended before"),
            "{:?}: {error}",
            wire.kind()
        );
        assert_eq!(server.requests().len(), 1, "text had streamed: no retry");
    }
}

/// A server that never answers: cancelling returns at once with nothing in
/// the history.
#[tokio::test]
async fn slow_first_byte_then_cancel() {
    for wire in WIRES {
        let server = MockServer::start(vec![Reply::Silence(Duration::from_secs(30))]).await;
        let p = provider(wire, &server.url);
        let config = config(10);
        let agent = Agent { provider: p.as_ref(), tools: &NoTools, config: &config };
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let signalled = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
            Instant::now()
        });
        let mut history = vec![Item::User { text: "hi".into() }];
        let outcome = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &cancel).await.unwrap();
        let returned = Instant::now();
        assert_eq!(outcome, Outcome::Cancelled);
        let lag = returned - signalled.await.unwrap();
        assert!(lag < Duration::from_millis(100), "{lag:?}");
        assert_eq!(history.len(), 1, "nothing half-written");
    }
}

/// A buggy or hostile OpenAI-compatible server numbers a tool call four
/// billion. Used as a length, that index would make the host try a huge
/// allocation and abort; instead the run ends in a fatal error naming the
/// provider, and the process (this test) goes on to a normal response.
#[tokio::test]
async fn openai_tool_call_index_of_four_billion_ends_the_run_with_a_provider_error() {
    let call = json!({"tool_calls": [{"index": 4_000_000_000u64, "id": "call_x", "type": "function",
        "function": {"name": "Read", "arguments": "{}"}}]});
    let mut hostile = vec![OpenAiWire::chunk(json!({"role": "assistant", "content": "Checking."}), None)];
    hostile.push(OpenAiWire::chunk(call, None));
    hostile.extend(OpenAiWire::end("tool_calls"));
    let server = MockServer::start(vec![Reply::events(hostile), Reply::events(OpenAiWire.text(&["still here"]))]).await;
    let p = provider(&OpenAiWire, &server.url);
    let mut config = config(10);
    config.retry.max_retries = 2;
    let agent = Agent { provider: p.as_ref(), tools: &NoTools, config: &config };
    let mut history = vec![Item::User { text: "hi".into() }];
    let error = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(error.to_string(), "openai: tool call index 4000000000 is out of range (must be below 128)");
    assert!(!error.retryable);
    assert_eq!(server.requests().len(), 1, "a fatal error is not retried");
    assert_eq!(history.len(), 1, "nothing half-written");

    let response = stream(&OpenAiWire, &server).await.0.unwrap();
    assert_eq!(response.text, "still here");
}

/// A server that sends one line without end is cut off once the line
/// passes the event cap, not buffered whole.
#[tokio::test]
async fn a_line_without_end_is_cut_off_at_the_event_cap() {
    let endless = format!("data: {}", "a".repeat(MAX_EVENT_BYTES + (1 << 20)));
    let server = MockServer::start(vec![Reply::events(vec![endless])]).await;
    let error = stream(&OpenAiWire, &server).await.0.unwrap_err();
    assert_eq!(error.to_string(), "openai: malformed event stream: an event is longer than 8 MiB");
    assert_eq!(server.requests().len(), 1);
}

/// What each wire format receives: headers, endpoint, and the history
/// mapped with tool calls and error results.
#[tokio::test]
async fn requests_have_each_wire_formats_shape() {
    let mut args = Map::new();
    args.insert("file_path".into(), json!("/p/x"));
    let items = vec![
        Item::User { text: "read it".into() },
        Item::Assistant { text: "Reading.".into() },
        Item::ToolCall { id: "call_1".into(), name: "Read".into(), arguments: args },
        Item::ToolResult { id: "call_1".into(), name: "Read".into(), content: "no such file".into(), is_error: true },
    ];
    for wire in WIRES {
        let server = MockServer::start(vec![Reply::events(wire.text(&["ok"]))]).await;
        let p = provider(wire, &server.url);
        let mut req = request();
        req.items = &items;
        p.stream(&req, &mut |_| {}).await.unwrap();
        let got = &server.requests()[0];
        let body = &got.body;
        match wire.kind() {
            ProviderKind::Anthropic => {
                assert_eq!(got.target, "/v1/messages");
                assert_eq!(got.header("x-api-key"), Some("key-for-ANTHROPIC_API_KEY"));
                assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(body["stream"], true);
                assert_eq!(body["system"], "You are a test.");
                let assistant = &body["messages"][1];
                assert_eq!(assistant["content"][1]["type"], "tool_use");
                assert_eq!(assistant["content"][1]["input"]["file_path"], "/p/x");
                let result = &body["messages"][2]["content"][0];
                assert_eq!(result["type"], "tool_result");
                assert_eq!(result["is_error"], true);
                assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
            }
            ProviderKind::Openai => {
                assert_eq!(got.target, "/chat/completions");
                assert_eq!(got.header("authorization"), Some("Bearer key-for-OPENAI_API_KEY"));
                assert_eq!(body["stream_options"]["include_usage"], true);
                assert_eq!(body["messages"][0]["role"], "system");
                let call = &body["messages"][2]["tool_calls"][0];
                assert_eq!(call["function"]["name"], "Read");
                let parsed: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(parsed["file_path"], "/p/x");
                assert_eq!(body["messages"][3]["role"], "tool");
                assert_eq!(body["messages"][3]["content"], "Error: no such file");
            }
            ProviderKind::Gemini => {
                assert_eq!(got.target, "/v1beta/models/test-model:streamGenerateContent?alt=sse");
                assert_eq!(got.header("x-goog-api-key"), Some("key-for-GEMINI_API_KEY"));
                assert_eq!(body["systemInstruction"]["parts"][0]["text"], "You are a test.");
                assert_eq!(body["contents"][1]["parts"][1]["functionCall"]["name"], "Read");
                assert_eq!(body["contents"][2]["parts"][0]["functionResponse"]["response"]["error"], "no such file");
                let params = &body["tools"][0]["functionDeclarations"][0]["parameters"];
                assert!(params.get("additionalProperties").is_none(), "{params}");
            }
            ProviderKind::Scripted => unreachable!(),
        }
    }
}

/// An OpenAI-compatible local server needs no key; the hosted services do,
/// and a missing one names the variable.
#[test]
fn api_keys_come_from_the_environment() {
    let none = |_: &str| None;
    let mut s = section(&OpenAiWire, "http://127.0.0.1:11434/v1", 0);
    assert!(from_manifest(&s, "/".as_ref(), "/".as_ref(), "p", &none, None).is_ok());
    s.base_url = None;
    let err = from_manifest(&s, "/".as_ref(), "/".as_ref(), "p", &none, None).err().unwrap();
    assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
    let mut a = section(&AnthropicWire, "http://x", 0);
    a.api_key_env = Some("MY_CLAUDE_KEY".into());
    let err = from_manifest(&a, "/".as_ref(), "/".as_ref(), "p", &none, None).err().unwrap();
    assert!(err.to_string().contains("MY_CLAUDE_KEY"), "{err}");
    let err = from_manifest(&section(&GeminiWire, "http://x", 0), "/".as_ref(), "/".as_ref(), "p", &none, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("GEMINI_API_KEY"), "{err}");
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

fn config(max_turns: u32) -> AgentConfig {
    AgentConfig {
        system: "test".into(),
        max_tokens: 100,
        max_turns,
        temperature: None,
        retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
    }
}

/// An error status whose body never ends, or stops coming, is read only in
/// part (64 KiB, within the idle timeout): the host neither hangs nor holds
/// what a hostile server keeps sending, and still reports the status.
#[tokio::test]
async fn an_error_body_that_never_ends_is_read_only_in_part() {
    for endless in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 65536];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            let head = "HTTP/1.1 500 Error\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes()).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, br#"{"error":{"message":"boom"#).await;
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                if endless {
                    if tokio::io::AsyncWriteExt::write_all(&mut socket, &chunk).await.is_err() {
                        return;
                    }
                } else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
            }
        });
        let p = provider(&OpenAiWire, &url);
        let answer = tokio::time::timeout(Duration::from_secs(20), p.stream(&request(), &mut |_| {})).await;
        let error = answer.expect("the host gave up on the body").unwrap_err();
        assert_eq!(error.status, Some(500), "{error}");
        assert!(error.message.starts_with("HTTP 500: {\"error\":{\"message\":\"boom"), "{error}");
        assert!(error.message.len() < 1024, "the message is cut");
    }
}
