//! Anthropic's Messages API (`POST /v1/messages`, streamed).
//!
//! History maps to alternating user/assistant messages: assistant text and
//! tool calls become one assistant message of `text` and `tool_use` blocks;
//! tool results become `tool_result` blocks (with `is_error`) in the next
//! user message; system items become user text wrapped in `<system-note>`.

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::http::{Endpoint, Timeouts, header_value};
use super::{
    CallAssembler, DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError, StopReason, Usage, system_note,
    turns_by_role,
};
use crate::history::Item;

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
        let mut events = self.endpoint.post_sse(NAME, "/v1/messages", headers, &self.body(request)).await?;

        let mut text = String::new();
        let mut calls = CallAssembler::default();
        // Content block index -> tool call index.
        let mut block_calls: Vec<Option<usize>> = Vec::new();
        let mut usage = Usage::default();
        let mut stop = StopReason::Other;
        loop {
            let Some(event) = events.next().await? else {
                return Err(ProviderError::transient(NAME, "the stream ended before message_stop"));
            };
            if event.data.is_empty() {
                continue;
            }
            let data: Value = serde_json::from_str(&event.data)
                .map_err(|e| ProviderError::fatal(NAME, format!("malformed `{}` event: {e}", event.event)))?;
            match data["type"].as_str().unwrap_or(&event.event) {
                "message_start" => {
                    let u = &data["message"]["usage"];
                    usage.cache_read_tokens = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
                    usage.cache_creation_tokens = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                    usage.input_tokens =
                        u["input_tokens"].as_u64().unwrap_or(0) + usage.cache_read_tokens + usage.cache_creation_tokens;
                    usage.output_tokens = u["output_tokens"].as_u64().unwrap_or(0);
                }
                "content_block_start" => {
                    let index = data["index"].as_u64().unwrap_or(0) as usize;
                    let block = &data["content_block"];
                    if block_calls.len() <= index {
                        block_calls.resize(index + 1, None);
                    }
                    match block["type"].as_str() {
                        Some("tool_use") => {
                            let call_index = block_calls.iter().flatten().count();
                            block_calls[index] = Some(call_index);
                            let id = block["id"].as_str().unwrap_or_default().to_string();
                            let name = block["name"].as_str().unwrap_or_default().to_string();
                            calls.start(call_index, id, name, sink);
                        }
                        Some("text") => {
                            let t = block["text"].as_str().unwrap_or_default();
                            if !t.is_empty() {
                                text.push_str(t);
                                sink(super::Delta::Text(t.to_string()));
                            }
                        }
                        _ => {}
                    }
                }
                "content_block_delta" => {
                    let index = data["index"].as_u64().unwrap_or(0) as usize;
                    let delta = &data["delta"];
                    match delta["type"].as_str() {
                        Some("text_delta") => {
                            let t = delta["text"].as_str().unwrap_or_default();
                            text.push_str(t);
                            sink(super::Delta::Text(t.to_string()));
                        }
                        Some("input_json_delta") => {
                            if let Some(Some(call)) = block_calls.get(index) {
                                calls.args(*call, delta["partial_json"].as_str().unwrap_or_default(), sink);
                            }
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(out) = data["usage"]["output_tokens"].as_u64() {
                        usage.output_tokens = out;
                    }
                    stop = match data["delta"]["stop_reason"].as_str() {
                        Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
                        Some("tool_use") => StopReason::ToolUse,
                        Some("max_tokens") => StopReason::MaxTokens,
                        _ => stop,
                    };
                }
                "message_stop" => break,
                "error" => {
                    let kind = data["error"]["type"].as_str().unwrap_or("error");
                    let message = data["error"]["message"].as_str().unwrap_or("unknown error");
                    let error = ProviderError::fatal(NAME, format!("{kind}: {message}"));
                    return Err(ProviderError {
                        retryable: kind == "overloaded_error" || kind == "api_error",
                        ..error
                    });
                }
                _ => {} // ping, content_block_stop, and event types added later
            }
        }
        Ok(ModelResponse { text, tool_calls: calls.finish(), stop, usage })
    }
}
