//! Google Gemini (`POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`).
//!
//! Function calls arrive whole (not in argument pieces) and without ids, so
//! ids are made up per response (`call_0`, ...). Tool results become
//! `functionResponse` parts; the input schemas lose the keys Gemini's schema
//! dialect rejects (`additionalProperties`, `$schema`).

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::http::{Endpoint, Timeouts, header_value};
use super::{
    CallAssembler, Delta, DeltaSink, ModelRequest, ModelResponse, Provider, ProviderError, StopReason, Usage,
    system_note, turns_by_role,
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
        let mut events = self.endpoint.post_sse(NAME, &path, headers, &self.body(request)).await?;

        let mut text = String::new();
        let mut calls = CallAssembler::default();
        let mut n_calls = 0;
        let mut usage = Usage::default();
        let mut stop = None;
        while let Some(event) = events.next().await? {
            if event.data.trim().is_empty() {
                continue;
            }
            let chunk: Value = serde_json::from_str(&event.data)
                .map_err(|e| ProviderError::fatal(NAME, format!("malformed stream chunk: {e}")))?;
            if let Some(error) = chunk.get("error") {
                let message = error["message"].as_str().unwrap_or("unknown error");
                let code = error["code"].as_u64().unwrap_or(0);
                let e = ProviderError::fatal(NAME, format!("error mid-stream: {message}"));
                return Err(ProviderError { retryable: code == 429 || code == 503 || code == 500, ..e });
            }
            if let Some(u) = chunk.get("usageMetadata") {
                usage.input_tokens = u["promptTokenCount"].as_u64().unwrap_or(usage.input_tokens);
                usage.output_tokens = u["candidatesTokenCount"].as_u64().unwrap_or(usage.output_tokens);
                usage.cache_read_tokens = u["cachedContentTokenCount"].as_u64().unwrap_or(usage.cache_read_tokens);
            }
            let Some(candidate) = chunk["candidates"].get(0) else { continue };
            for part in candidate["content"]["parts"].as_array().into_iter().flatten() {
                if let Some(t) = part["text"].as_str().filter(|t| !t.is_empty()) {
                    if part["thought"].as_bool() == Some(true) {
                        continue;
                    }
                    text.push_str(t);
                    sink(Delta::Text(t.to_string()));
                }
                if let Some(call) = part.get("functionCall") {
                    let id = call["id"].as_str().map_or_else(|| format!("call_{n_calls}"), str::to_string);
                    let name = call["name"].as_str().unwrap_or_default().to_string();
                    calls.start(n_calls, id, name, sink);
                    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
                    calls.args(n_calls, &args.to_string(), sink);
                    n_calls += 1;
                }
            }
            if let Some(reason) = candidate["finishReason"].as_str() {
                stop = Some(match reason {
                    "STOP" if n_calls > 0 => StopReason::ToolUse,
                    "STOP" => StopReason::EndTurn,
                    "MAX_TOKENS" => StopReason::MaxTokens,
                    _ => StopReason::Other,
                });
            }
        }
        let Some(stop) = stop else {
            return Err(ProviderError::transient(NAME, "the stream ended before a finishReason"));
        };
        Ok(ModelResponse { text, tool_calls: calls.finish(), stop, usage })
    }
}
