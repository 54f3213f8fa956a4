//! Approval of `pause_before` tools: the manifest says a person must agree
//! before such a tool runs, so an MCP call of one asks the client's user by
//! elicitation. In the 2025-11-25 era that is a request to the client in
//! the middle of the call; in the stateless 2026-07-28 era the call answers
//! `input_required` and the client calls again with the user's answer and
//! the echoed `requestState`: a random name of the question the server
//! keeps ([`Asked`]), good once, for a while, and only for the call it was
//! asked about (the tool and its exact arguments). A client that cannot
//! elicit gets a refusal naming the reason. The answer decides this one
//! call; it grants nothing beyond it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, InputRequest,
    InputRequests, InputRequiredResult,
};
use rmcp::service::{ElicitationMode, RequestContext};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The key of the one input request an approval makes.
const KEY: &str = "approve";

/// What the user said, or what to ask them.
pub enum Approval {
    /// Run the call.
    Granted,
    /// Do not run it, for this reason.
    Refused(String),
    /// Answer `input_required` (stateless era): the client asks and calls
    /// again.
    Ask(InputRequiredResult),
}

/// Whether the request is of the stateless era (no `initialize`, no
/// server-to-client requests).
pub fn stateless(context: &RequestContext<RoleServer>) -> bool {
    context.protocol_version().is_some_and(|v| !v.has_initialize())
}

/// Questions asked of stateless clients and not answered yet, by the
/// `requestState` they were sent with.
#[derive(Default)]
pub struct Asked {
    open: Mutex<HashMap<String, (String, Instant)>>,
}

/// How long an answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(15 * 60);

/// Questions open at once; past this the oldest is forgotten.
const MAX_OPEN: usize = 256;

impl Asked {
    /// Opens a question about `subject`; returns its name.
    fn open(&self, subject: &str) -> String {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).expect("the system's random source works");
        let name = hex::encode(name);
        let mut open = self.open.lock();
        open.retain(|_, (_, asked)| asked.elapsed() < ANSWER_WITHIN);
        if open.len() >= MAX_OPEN
            && let Some(oldest) = open.iter().min_by_key(|(_, (_, asked))| *asked).map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(name.clone(), (subject.to_string(), Instant::now()));
        name
    }

    /// Closes question `name`: whether it was open, about `subject`, and
    /// asked recently enough.
    fn close(&self, name: &str, subject: &str) -> bool {
        self.open
            .lock()
            .remove(name)
            .is_some_and(|(asked_about, asked)| asked_about == subject && asked.elapsed() < ANSWER_WITHIN)
    }
}

/// What the user is asked, and what the answer is about.
pub struct Question {
    /// The question, for a person.
    pub message: String,
    /// What exactly is approved (a digest of the tool and its arguments, or
    /// of the calls a paused run waits on).
    pub subject: String,
}

impl Question {
    /// Whether `tool` may run with `input`.
    pub fn tool_call(tool: &str, input: &Value) -> Question {
        Question {
            message: format!(
                "The pod's manifest asks for your approval before `{tool}` runs. Arguments: {}",
                shorten(&input.to_string())
            ),
            subject: digest(&[tool, &input.to_string()]),
        }
    }

    fn form(&self) -> ElicitRequestParams {
        // An empty form: accepting it is the approval.
        let schema = serde_json::from_value(json!({"type": "object", "properties": {}})).expect("a valid empty form");
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: self.message.clone(),
            requested_schema: schema,
        }
    }
}

/// `text`, cut to 2000 bytes for a question.
pub fn shorten(text: &str) -> String {
    if text.len() <= 2000 {
        return text.to_string();
    }
    let mut end = 2000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &text[..end])
}

/// A hex SHA-256 of `parts`, each ended by a zero byte.
pub fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

fn decided(result: &ElicitResult) -> Approval {
    match result.action {
        ElicitationAction::Accept => Approval::Granted,
        ElicitationAction::Decline => Approval::Refused("the user declined".into()),
        _ => Approval::Refused("the user dismissed the question".into()),
    }
}

const CANNOT_ASK: &str = "the pod's manifest requires a person's approval (pause_before), and this client \
                          does not support elicitation to ask for it";

/// Asks the client's user `question`. In the stateless era, a retry that
/// echoes the name of an open question about the same subject carries the
/// answer; any other retry is asked again.
pub async fn ask(
    context: &RequestContext<RoleServer>,
    params: &CallToolRequestParams,
    question: &Question,
    asked: &Asked,
) -> Approval {
    if stateless(context) {
        if let Some(name) = params.request_state.as_deref()
            && let Some(answer) = params.input_responses.as_ref().and_then(|r| r.get(KEY))
            && asked.close(name, &question.subject)
        {
            return match serde_json::from_value::<ElicitResult>(answer.clone()) {
                Ok(result) => decided(&result),
                Err(e) => Approval::Refused(format!("the approval answer is malformed: {e}")),
            };
        }
        let form =
            |c: rmcp::model::ClientCapabilities| c.elicitation.is_some_and(|e| e.form.is_some() || e.url.is_none());
        if !context.client_capabilities().is_some_and(form) {
            return Approval::Refused(CANNOT_ASK.into());
        }
        let mut requests = InputRequests::new();
        requests.insert(KEY.into(), InputRequest::Elicitation(ElicitRequest::new(question.form())));
        return Approval::Ask(InputRequiredResult::new(Some(requests), Some(asked.open(&question.subject))));
    }
    if !context.peer.supported_elicitation_modes().contains(&ElicitationMode::Form) {
        return Approval::Refused(CANNOT_ASK.into());
    }
    let asked = context.peer.create_elicitation(question.form());
    tokio::select! {
        answer = asked => match answer {
            Ok(result) => decided(&result),
            Err(e) => Approval::Refused(format!("the question to the user failed: {e}")),
        },
        _ = context.ct.cancelled() => Approval::Refused("the call was cancelled".into()),
    }
}
