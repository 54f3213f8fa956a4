//! OpenAI Chat Completions (`POST {base_url}/chat/completions`, streamed),
//! which OpenAI-compatible servers (Ollama, vLLM, llama.cpp server, LM
//! Studio) speak unchanged: point `base_url` at them; the key is optional.
//!
//! Tool calls stream as deltas keyed by index, several per response. Tool
//! results become `tool` messages; the format has no error flag, so failed
//! results are prefixed with `Error: `.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};

use super::http::{Endpoint, Timeouts, header_value};
use super::{CallAssembler, Delta, DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError, StopReason, Usage};
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
        let mut events = self.endpoint.post_sse(NAME, "/chat/completions", headers, &self.body(request)).await?;

        let mut text = String::new();
        let mut calls = CallAssembler::default();
        let mut usage = Usage::default();
        let mut stop = StopReason::Other;
        loop {
            let Some(event) = events.next().await? else {
                return Err(ProviderError::transient(NAME, "the stream ended before [DONE]"));
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data)
                .map_err(|e| ProviderError::fatal(NAME, format!("malformed stream chunk: {e}")))?;
            if let Some(error) = chunk.get("error") {
                let message = error["message"].as_str().unwrap_or("unknown error");
                return Err(ProviderError::fatal(NAME, format!("error mid-stream: {message}")));
            }
            if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
                usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
                usage.cache_read_tokens = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
            }
            let Some(choice) = chunk["choices"].get(0) else { continue };
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                text.push_str(t);
                sink(Delta::Text(t.to_string()));
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap_or(0) as usize;
                if !calls.has(index) {
                    let id = call["id"].as_str().map_or_else(|| format!("call_{index}"), str::to_string);
                    let name = call["function"]["name"].as_str().unwrap_or_default().to_string();
                    calls.start(index, id, name, sink);
                }
                calls.args(index, call["function"]["arguments"].as_str().unwrap_or_default(), sink);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                stop = match reason {
                    "stop" => StopReason::EndTurn,
                    "tool_calls" | "function_call" => StopReason::ToolUse,
                    "length" => StopReason::MaxTokens,
                    _ => StopReason::Other,
                };
            }
        }
        Ok(ModelResponse { text, tool_calls: calls.finish(), stop, usage })
    }
}
