//! What the stream parsers' tests share: feeding events to a parser,
//! checking that what it produced stayed within its caps, and proptest
//! strategies for hostile frames.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::sse::{SseDecoder, SseEvent};
use super::{Delta, Flow, Limits, ModelResponse, ProviderError, StreamParser};

/// Caps small enough for random input to reach each of them.
pub const SMALL: Limits = Limits {
    tool_calls: 4,
    call_argument_bytes: 64,
    response_bytes: 256,
    events: 24,
    event_bytes: 2048,
    stream_bytes: 8192,
};

/// Cases per property: enough to reach every cap and error path many times
/// while the whole provider set stays well under ten seconds in a debug
/// build. `PROPTEST_CASES` asks for more, for a longer search.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// An event with a name.
pub fn named(event: &str, data: &Value) -> SseEvent {
    SseEvent { event: event.into(), data: data.to_string() }
}

/// An unnamed event.
pub fn data(data: &Value) -> SseEvent {
    SseEvent { event: String::new(), data: data.to_string() }
}

/// What a parser made of some events.
pub struct Fed {
    /// The response, or the error that ended the stream.
    pub result: Result<ModelResponse, ProviderError>,
    /// The deltas reported on the way.
    pub deltas: Vec<Delta>,
}

impl Fed {
    /// The error, which must be fatal.
    pub fn error(&self) -> &ProviderError {
        let error = self.result.as_ref().expect_err("the stream should have failed");
        assert!(!error.retryable, "{error}");
        error
    }
}

/// Feeds `events` to `parser` (stopping at its first error or when it is
/// done; `events` may be endless) and finishes it.
pub fn feed<P: StreamParser>(parser: P, events: impl IntoIterator<Item = SseEvent>) -> Fed {
    let mut deltas = Vec::new();
    let result = run(parser, events, &mut deltas);
    Fed { result, deltas }
}

fn run<P: StreamParser>(
    mut parser: P,
    events: impl IntoIterator<Item = SseEvent>,
    deltas: &mut Vec<Delta>,
) -> Result<ModelResponse, ProviderError> {
    let mut sink = |d| deltas.push(d);
    for event in events {
        if parser.event(&event, &mut sink)? == Flow::Done {
            break;
        }
    }
    parser.finish()
}

/// The events in `body`, up to the first decoding error.
pub fn decode(body: &[u8], limits: &Limits) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new(limits.event_bytes);
    decoder.push(Bytes::copy_from_slice(body));
    std::iter::from_fn(|| decoder.next().ok().flatten()).collect()
}

/// Asserts that what a parser reported and built, whether it finished or
/// failed, is within `limits`.
pub fn assert_within(fed: &Fed, limits: &Limits, provider: &str) -> Result<(), TestCaseError> {
    let mut bytes = 0;
    let mut arguments: HashMap<usize, usize> = HashMap::new();
    for delta in &fed.deltas {
        match delta {
            Delta::Text(t) => bytes += t.len(),
            Delta::ToolCallStart { index, id, name } => {
                prop_assert!(*index < limits.tool_calls, "{delta:?}");
                bytes += id.len() + name.len();
            }
            Delta::ToolCallArgs { index, fragment } => {
                prop_assert!(*index < limits.tool_calls, "{delta:?}");
                let sum = arguments.entry(*index).or_default();
                *sum += fragment.len();
                prop_assert!(*sum <= limits.call_argument_bytes);
                bytes += fragment.len();
            }
        }
    }
    prop_assert!(bytes <= limits.response_bytes, "{bytes} bytes reported");
    match &fed.result {
        Ok(response) => {
            prop_assert!(response.tool_calls.len() <= limits.tool_calls);
            let mut size = response.text.len();
            for call in &response.tool_calls {
                prop_assert!(call.arguments.len() <= limits.call_argument_bytes);
                size += call.id.len() + call.name.len() + call.arguments.len();
            }
            prop_assert!(size <= limits.response_bytes, "{size} bytes kept");
        }
        Err(e) => prop_assert_eq!(e.provider, provider),
    }
    Ok(())
}

/// Keys the providers read, and a few others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "type", "index", "delta", "text", "id", "name", "arguments", "partial_json", "choices", "content",
            "tool_calls", "function", "parts", "candidates", "functionCall", "args", "error", "usage",
        ])
        .prop_map(String::from),
        1 => "[a-z]{1,6}",
    ]
}

/// Any JSON value, a few levels deep, with numbers that make bad indexes.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        index(),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An index as a server might send one: in range, at the cap, huge,
/// negative, fractional, a string, or anything else.
pub fn index() -> BoxedStrategy<Value> {
    prop_oneof![
        200 => (0u64..4).prop_map(Value::from),
        4 => (4u64..8).prop_map(Value::from),
        1 => (120u64..140).prop_map(Value::from),
        1 => Just(json!(4_000_000_000u64)),
        1 => Just(json!(u64::MAX)),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(json!(1.5)),
        1 => Just(json!("3")),
        1 => Just(Value::Null),
    ]
    .boxed()
}

/// Text of any length up to a little past the small caps.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => ".{0,12}", 1 => "[a-z\"{}]{40,90}"]
}

/// A field that is usually `value`, sometimes missing, sometimes anything.
pub fn field(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![24 => value.prop_map(Some), 3 => Just(None), 1 => any_json().prop_map(Some)]
}

/// An object of the fields that are present.
pub fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = fields.into_iter().filter_map(|(k, v)| Some((k.to_string(), v?))).collect();
    Value::Object(map)
}

/// Frame text that is not a well-formed frame: nesting past serde_json's
/// limit, arbitrary JSON, arbitrary text.
pub fn broken_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        (100usize..200).prop_map(|d| format!(r#"{{"delta":{}1{}}}"#, "[".repeat(d), "]".repeat(d))),
        (100usize..200).prop_map(|d| format!("{}{}", r#"{"a":"#.repeat(d), "}".repeat(d))),
        any_json().prop_map(|v| v.to_string()),
        any::<String>(),
    ]
}

/// A body: provider frames, framing pieces and random bytes, run together.
pub fn body(frame: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => frame.prop_map(|f| format!("data: {f}\n\n").into_bytes()),
        1 => prop::sample::select(vec!["data: ", "event: message_start\n", "\n", "\r\n", ": ping\n", "[DONE]"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}
