//! What the HTTP providers share: the client and its timeouts, turning a
//! non-success status into a [`ProviderError`] that carries the provider's
//! own message, and a server-sent-events stream that times out when the
//! server falls silent and counts the bytes it reads against
//! [`MAX_STREAM_BYTES`](super::MAX_STREAM_BYTES).

use std::pin::Pin;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;

use super::sse::{SseDecoder, SseEvent};
use super::{DeltaSink, Flow, Limits, ModelResponse, ProviderError, StreamParser, bytes_text};

/// Timeouts of one provider.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// From sending the request to the first event (the model may think).
    pub first_event: Duration,
    /// Longest silence between two events once streaming.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_event: Duration::from_secs(120),
            idle: Duration::from_secs(60),
        }
    }
}

/// An HTTP client with the provider timeouts.
pub fn client(timeouts: &Timeouts) -> reqwest::Client {
    static TLS: Once = Once::new();
    TLS.call_once(|| {
        // Another part of the process may have installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .build()
        .expect("the HTTP client configuration is valid")
}

/// What every HTTP provider holds: a client, where to send, which model.
pub struct Endpoint {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// The base URL, without a trailing slash.
    pub base_url: String,
    /// The model's name.
    pub model: String,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl Endpoint {
    /// An endpoint for `model` at `base_url`, or `default_base` when unset.
    pub fn new(model: &str, base_url: Option<&str>, default_base: &str, timeouts: Timeouts) -> Endpoint {
        Endpoint {
            client: client(&timeouts),
            base_url: base_url.unwrap_or(default_base).trim_end_matches('/').to_string(),
            model: model.to_string(),
            timeouts,
        }
    }

    /// POSTs `body` to `base_url + path` and returns the event stream.
    pub async fn post_sse(
        &self,
        provider: &'static str,
        path: &str,
        headers: HeaderMap,
        body: &serde_json::Value,
    ) -> Result<SseStream, ProviderError> {
        let url = format!("{}{path}", self.base_url);
        post_sse(provider, &self.client, &url, headers, body, &self.timeouts).await
    }
}

/// `value` as a header value (an API key), or an error saying it cannot be one.
pub fn header_value(provider: &'static str, value: &str) -> Result<reqwest::header::HeaderValue, ProviderError> {
    reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| ProviderError::fatal(provider, "the API key contains characters not allowed in a header"))
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Events of one streaming response.
pub struct SseStream {
    provider: &'static str,
    body: Body,
    decoder: SseDecoder,
    /// Body bytes read so far.
    received: usize,
    max_bytes: usize,
    timeouts: Timeouts,
    first: bool,
}

impl SseStream {
    /// The events of `body`, held to the event and body caps of `limits`.
    pub fn new(provider: &'static str, body: Body, timeouts: Timeouts, limits: &Limits) -> SseStream {
        SseStream {
            provider,
            body,
            decoder: SseDecoder::new(limits.event_bytes),
            received: 0,
            max_bytes: limits.stream_bytes,
            timeouts,
            first: true,
        }
    }

    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ProviderError> {
        let limit = if self.first { self.timeouts.first_event } else { self.timeouts.idle };
        let next = tokio::time::timeout(limit, self.read_event()).await.map_err(|_| {
            ProviderError::transient(self.provider, format!("no data from the server for {} s", limit.as_secs()))
        })?;
        self.first = false;
        next
    }

    /// Feeds every event to `parser` until it is done or the stream ends,
    /// then asks it for the response.
    pub async fn parse<P: StreamParser>(
        mut self,
        mut parser: P,
        sink: &mut DeltaSink<'_>,
    ) -> Result<ModelResponse, ProviderError> {
        while let Some(event) = self.next().await? {
            if parser.event(&event, sink)? == Flow::Done {
                break;
            }
        }
        parser.finish()
    }

    async fn read_event(&mut self) -> Result<Option<SseEvent>, ProviderError> {
        loop {
            let event = self
                .decoder
                .next()
                .map_err(|e| ProviderError::fatal(self.provider, format!("malformed event stream: {e}")))?;
            if event.is_some() {
                return Ok(event);
            }
            let chunk = match self.body.next().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    let cause = error_chain(&e);
                    return Err(ProviderError::transient(
                        self.provider,
                        format!("connection lost mid-response: {cause}"),
                    ));
                }
                Some(Ok(chunk)) => chunk,
            };
            self.received = self.received.saturating_add(chunk.len());
            if self.received > self.max_bytes {
                let cap = bytes_text(self.max_bytes);
                return Err(ProviderError::fatal(self.provider, format!("the response body exceeds {cap}")));
            }
            self.decoder.push(chunk);
        }
    }
}

/// POSTs `body` as JSON and returns the event stream of a successful
/// response, or an error carrying the status and the provider's message.
pub async fn post_sse(
    provider: &'static str,
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    body: &serde_json::Value,
    timeouts: &Timeouts,
) -> Result<SseStream, ProviderError> {
    let send = client.post(url).headers(headers).json(body).send();
    let response = match tokio::time::timeout(timeouts.first_event, send).await {
        Err(_) => {
            return Err(ProviderError::transient(
                provider,
                format!("no response from {url} within {} s", timeouts.first_event.as_secs()),
            ));
        }
        Ok(Err(e)) if e.is_connect() || e.is_timeout() || e.is_request() => {
            return Err(ProviderError::transient(provider, format!("cannot reach {url}: {}", error_chain(&e))));
        }
        Ok(Err(e)) => {
            return Err(ProviderError::fatal(provider, format!("request to {url} failed: {}", error_chain(&e))));
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = error_body(response, timeouts.idle).await;
        let code = status.as_u16();
        return Err(ProviderError {
            provider,
            status: Some(code),
            message: format!("HTTP {code}: {}", error_message(&text)),
            retryable: code == 429 || code == 529 || status.is_server_error(),
            retry_after,
        });
    }
    Ok(SseStream::new(provider, Box::pin(response.bytes_stream()), *timeouts, &Limits::DEFAULT))
}

/// The message inside an error body, in the shapes the providers use
/// (`{"error":{"message":..}}`, `[{"error":..}]`, `{"message":..}`), or the
/// body itself, shortened.
pub fn error_message(body: &str) -> String {
    let value: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return crate::plugin::truncate(body.trim(), 500),
    };
    let value = value.as_array().and_then(|a| a.first()).unwrap_or(&value);
    let error = value.get("error").unwrap_or(value);
    let message = error.get("message").and_then(|m| m.as_str());
    let kind = error.get("type").or_else(|| error.get("status")).and_then(|t| t.as_str());
    match (kind, message) {
        (Some(k), Some(m)) => format!("{k}: {m}"),
        (None, Some(m)) => m.to_string(),
        _ => crate::plugin::truncate(body.trim(), 500),
    }
}

/// The most of an error body that is read: enough for any provider's
/// message, and a bound on what a hostile server can make the host hold.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The start of an error response's body (at most
/// [`MAX_ERROR_BODY_BYTES`], read within `patience`), as text.
async fn error_body(response: reqwest::Response, patience: Duration) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = chunks.next().await {
            let room = MAX_ERROR_BODY_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    // A body that never ends or never comes leaves what was read so far.
    let _ = tokio::time::timeout(patience, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;
    use crate::provider::testing::SMALL;
    use crate::provider::{MAX_EVENT_BYTES, anthropic, gemini, openai};

    /// A stream over `body`, read with the default caps unless told.
    fn events(body: impl Stream<Item = Bytes> + Send + 'static, limits: &Limits) -> SseStream {
        SseStream::new("test", Box::pin(body.map(Ok::<Bytes, reqwest::Error>)), Timeouts::default(), limits)
    }

    async fn parse_with(parser: impl StreamParser, body: &'static [u8]) -> Result<ModelResponse, ProviderError> {
        let body = stream::iter([Bytes::from_static(body)]);
        events(body, &Limits::DEFAULT).parse(parser, &mut |_| {}).await
    }

    #[tokio::test]
    async fn invalid_utf8_in_a_frame_is_a_fatal_provider_error_for_every_provider() {
        let body = b"data: {\"type\": \"ping\"}\n\ndata: {\"text\": \"\xff\xfe\"}\n\n";
        let results = [
            parse_with(anthropic::Parser::new(Limits::DEFAULT), body).await,
            parse_with(openai::Parser::new(Limits::DEFAULT), body).await,
            parse_with(gemini::Parser::new(Limits::DEFAULT), body).await,
        ];
        for result in results {
            let error = result.unwrap_err();
            assert!(!error.retryable);
            assert_eq!(error.to_string(), "test: malformed event stream: a line is not valid UTF-8");
        }
    }

    #[tokio::test]
    async fn a_100_mib_line_without_a_newline_stops_at_the_event_cap() {
        let chunk = Bytes::from(vec![b'a'; 1 << 20]);
        let body = stream::iter([Bytes::from_static(b"data: ")]).chain(stream::iter(std::iter::repeat_n(chunk, 100)));
        let mut events = events(body, &Limits::DEFAULT);
        let error = events.next().await.unwrap_err();
        assert_eq!(error.to_string(), "test: malformed event stream: an event is longer than 8 MiB");
        assert!(!error.retryable);
        assert!(events.received <= MAX_EVENT_BYTES + (1 << 20), "read {} bytes", events.received);
    }

    #[tokio::test]
    async fn a_body_past_the_stream_cap_is_a_provider_error() {
        // Comments only: no event ever completes, so only the body cap ends it.
        let body = stream::iter(std::iter::repeat(Bytes::from_static(b": keep-alive\n")));
        let error = events(body, &SMALL).next().await.unwrap_err();
        assert_eq!(error.to_string(), "test: the response body exceeds 8192 bytes");
        assert!(!error.retryable);
    }

    #[test]
    fn error_messages_are_found_in_each_shape() {
        assert_eq!(
            error_message(r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#),
            "invalid_request_error: bad"
        );
        assert_eq!(
            error_message(r#"[{"error":{"code":400,"message":"nope","status":"INVALID_ARGUMENT"}}]"#),
            "INVALID_ARGUMENT: nope"
        );
        assert_eq!(error_message(r#"{"error":{"message":"m"}}"#), "m");
        assert_eq!(error_message("plain text\n"), "plain text");
    }

    /// The first event may take `first_event`, each later one `idle`; a
    /// server silent for longer is a transient error. The clock is paused, so
    /// the waits take no real time.
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out_first_and_between_events() {
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            first_event: Duration::from_secs(90),
            idle: Duration::from_secs(20),
        };
        let silent = || Box::pin(stream::pending::<Result<Bytes, reqwest::Error>>());
        let mut never = SseStream::new("test", silent(), timeouts, &Limits::DEFAULT);
        let started = tokio::time::Instant::now();
        let error = never.next().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(90));
        assert!(error.retryable && error.message.contains("no data from the server for 90 s"), "{error}");

        let one_then_silence = stream::iter([Ok(Bytes::from_static(b"data: hi\n\n"))]).chain(stream::pending());
        let mut stalls = SseStream::new("test", Box::pin(one_then_silence), timeouts, &Limits::DEFAULT);
        assert_eq!(stalls.next().await.unwrap().unwrap().data, "hi");
        let started = tokio::time::Instant::now();
        let error = stalls.next().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert!(error.message.contains("for 20 s"), "{error}");
    }
}
