//! The pod protocol: JSON objects, one per line, over the pod's Unix socket.
//! `docs/protocol.md` is the reference; this module owns the wire types.
//!
//! Client → pod: `{"method": "run", "input": "..."}`, `resume`, `cancel`,
//! `notify` (`message`), `get_history`, `shutdown`; any request may carry an
//! `id`, echoed in an error it causes.
//!
//! Pod → clients: objects with a `"type"`: the agent loop's events
//! (`turn_start`, `text_delta`, `tool_result`, ...) and the pod's own
//! (`run_start`, `run_end`, `error`, `history`, `notification`, `shutdown`).
//! A line that is not a valid request gets an `invalid_request` error on that
//! connection, which stays open.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Event, Outcome};
use crate::history::Item;

/// Longest request line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What a client asks of a pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    /// Start a run with a user message (idle pods only).
    Run {
        /// The message.
        input: String,
    },
    /// Continue a paused run.
    Resume {},
    /// Stop the running run.
    Cancel {},
    /// Tell the model something without a user message.
    Notify {
        /// The note.
        message: String,
    },
    /// Ask for the history (answered with a `history` event).
    GetHistory {},
    /// Stop the pod, and its child pods unless `detach_children` (then they
    /// pass to the pod's parent, or run on by themselves).
    Shutdown {
        /// Keep the child pods running.
        #[serde(default)]
        detach_children: bool,
    },
}

/// A parsed request line.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The client's correlation id, if it sent one.
    pub id: Option<Value>,
    /// What it asks.
    pub method: Method,
}

/// Parses one line; the error is the message of an `invalid_request`.
pub fn parse_request(line: &str) -> Result<Request, (Option<Value>, String)> {
    let mut value: Value = serde_json::from_str(line).map_err(|e| (None, format!("not a JSON object: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err((None, "a request must be a JSON object".into()));
    };
    let id = object.remove("id");
    let method = serde_json::from_value::<Method>(value).map_err(|e| (id.clone(), format!("invalid request: {e}")))?;
    Ok(Request { id, method })
}

/// Reads request lines of at most [`MAX_LINE_BYTES`]; a longer line is
/// skipped to its end and reported, and reading goes on. Partial lines are
/// kept in the reader, so `next` may be cancelled (e.g. in `select!`)
/// without losing input.
pub struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    too_long: bool,
}

/// One line from a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (invalid UTF-8 replaced).
    Text(String),
    /// A line longer than the limit, discarded.
    TooLong,
}

impl<R: tokio::io::AsyncBufRead + Unpin> LineReader<R> {
    /// Reads lines from `reader`.
    pub fn new(reader: R) -> LineReader<R> {
        LineReader { reader, line: Vec::new(), too_long: false }
    }

    /// The next line, or `None` at the end of the stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        use tokio::io::AsyncBufReadExt;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(self.take().filter(|l| *l != Line::Text(String::new())));
            }
            let (chunk, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(pos) => (&buf[..pos], Some(pos + 1)),
                None => (buf, None),
            };
            if !self.too_long {
                self.line.extend_from_slice(chunk);
                if self.line.len() > MAX_LINE_BYTES {
                    self.too_long = true;
                    self.line = Vec::new();
                }
            }
            let used = complete.unwrap_or(buf.len());
            self.reader.consume(used);
            if complete.is_some() {
                return Ok(self.take());
            }
        }
    }

    fn take(&mut self) -> Option<Line> {
        let line = if std::mem::take(&mut self.too_long) {
            Line::TooLong
        } else {
            Line::Text(String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned())
        };
        Some(line)
    }
}

/// Error codes of `error` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `run` while a run is going on.
    AlreadyRunning,
    /// `cancel` with no run going on.
    NotRunning,
    /// `resume` with no paused run.
    NotPaused,
    /// A line that is not a valid request.
    InvalidRequest,
    /// The model provider failed.
    ProviderError,
    /// A tool could not be run at all.
    ToolError,
    /// The client read too slowly and is being disconnected.
    SlowClient,
    /// Anything else.
    Internal,
}

/// Who the pod is, sent with `history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Greeting {
    /// The pod's name.
    pub pod: String,
    /// Its working directory.
    pub cwd: String,
    /// Provider kind.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// The scope, one rule per line.
    pub scope: String,
    /// The tools it has.
    pub tools: Vec<String>,
    /// The current session id.
    pub session: String,
    /// idle, running or paused.
    pub state: String,
}

/// Events of the pod itself (the agent's events are [`Event`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PodEvent {
    /// A run started (from `run`, `resume` or a notification).
    RunStart {
        /// What started it: `run`, `resume` or `notify`.
        cause: String,
    },
    /// A run ended.
    RunEnd {
        /// How.
        outcome: Outcome,
    },
    /// Something went wrong.
    Error {
        /// What kind of problem.
        code: ErrorCode,
        /// What happened.
        message: String,
        /// The id of the request that caused it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The history, on request or on connect.
    History {
        /// The items.
        items: Vec<Item>,
        /// Who the pod is.
        greeting: Greeting,
    },
    /// A note for the model was queued (by `notify` or the host).
    Notification {
        /// The note.
        message: String,
    },
    /// The pod is shutting down; the socket closes next.
    Shutdown,
}

/// Anything a pod sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireEvent {
    /// From the agent loop.
    Agent(Event),
    /// From the pod.
    Pod(PodEvent),
}

impl WireEvent {
    /// The event as one line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
}

impl From<PodEvent> for WireEvent {
    fn from(e: PodEvent) -> Self {
        WireEvent::Pod(e)
    }
}

impl From<Event> for WireEvent {
    fn from(e: Event) -> Self {
        WireEvent::Agent(e)
    }
}

/// An `error` event.
pub fn error(code: ErrorCode, message: impl Into<String>, id: Option<Value>) -> WireEvent {
    WireEvent::Pod(PodEvent::Error { code, message: message.into(), id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_ids() {
        let r = parse_request(r#"{"method":"run","input":"hi","id":7}"#).unwrap();
        assert_eq!(r.method, Method::Run { input: "hi".into() });
        assert_eq!(r.id, Some(Value::from(7)));
        assert_eq!(parse_request(r#"{"method":"get_history"}"#).unwrap().method, Method::GetHistory {});
        let (id, msg) = parse_request(r#"{"method":"fly","id":"a"}"#).unwrap_err();
        assert_eq!(id, Some(Value::from("a")));
        assert!(msg.contains("fly"), "{msg}");
        assert!(parse_request("[1]").is_err());
        assert!(parse_request(r#"{"method":"run"}"#).unwrap_err().1.contains("input"));
        assert!(parse_request(r#"{"method":"cancel","extra":1}"#).is_err());
    }

    #[tokio::test]
    async fn long_lines_are_skipped_and_reading_goes_on() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend(b"\nlast");
        let mut reader = LineReader::new(tokio::io::BufReader::with_capacity(4096, &input[..]));
        assert_eq!(reader.next().await.unwrap(), Some(Line::Text("{\"a\":1}".into())));
        assert_eq!(reader.next().await.unwrap(), Some(Line::TooLong));
        assert_eq!(reader.next().await.unwrap(), Some(Line::Text("last".into())));
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[test]
    fn events_round_trip_through_the_untagged_wrapper() {
        for event in [
            WireEvent::Agent(Event::TextDelta { text: "x".into() }),
            WireEvent::Pod(PodEvent::RunEnd { outcome: Outcome::LimitReached }),
            error(ErrorCode::AlreadyRunning, "busy", None),
        ] {
            let line = event.to_line();
            assert_eq!(serde_json::from_str::<WireEvent>(&line).unwrap(), event, "{line}");
        }
        assert_eq!(
            error(ErrorCode::NotPaused, "m", None).to_line(),
            r#"{"type":"error","code":"not_paused","message":"m"}"#
        );
    }
}
