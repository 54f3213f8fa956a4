//! `ask_pod`: a prompt run through the pod's own agent loop, as a `run`
//! from a socket client would be, answered with the run's final text.
//! While it runs, the client gets progress notifications (text as it
//! streams, each tool call and its outcome) when it sent a progress token;
//! a cancel from the client cancels the run. When the run pauses before a
//! `pause_before` tool, the client's user is asked (see `approval`), and the
//! run resumes or is cancelled by the answer.

use rmcp::model::{CallToolRequestParams, CallToolResponse, ProgressNotificationParam, ProgressToken};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer};
use serde_json::Value;
use tokio::sync::broadcast;

use super::approval::{self, Approval, Question};
use super::{error_result, tool_result_text};
use crate::agent::{Event, Outcome};
use crate::history::pending_calls;
use crate::pod::{Answer, PodHandle, Stamped};
use crate::protocol::{ErrorCode, Method, PodEvent, WireEvent};

/// Text is sent as progress in pieces of about this many bytes.
const TEXT_PIECE: usize = 200;

/// Runs `params`' prompt in `pod` and answers with the final text.
pub async fn ask_pod(
    pod: &PodHandle,
    params: CallToolRequestParams,
    context: RequestContext<RoleServer>,
) -> Result<CallToolResponse, ErrorData> {
    let mut events = pod.subscribe();
    if params.request_state.is_some() {
        // A stateless client answering the question about a paused run.
        if let Some(done) = decide_pause(pod, &params, &context).await? {
            return Ok(done);
        }
    } else {
        let Some(prompt) = params.arguments.as_ref().and_then(|a| a.get("prompt")).and_then(Value::as_str) else {
            return Ok(error_result("invalid_input: `prompt` (a string) is required".into()).into());
        };
        if let Some(refused) = request(pod, Method::Run { input: prompt.to_string() }).await {
            return Ok(refused.into());
        }
    }
    let mut progress = Progress::new(&context);
    let mut answer = String::new();
    let mut failure = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = context.ct.cancelled() => {
                let _ = pod.request(Method::Cancel {}).await;
                return Err(ErrorData::internal_error("the run was cancelled by the client", None));
            }
        };
        let event = match event {
            Ok(Stamped { event, .. }) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                return Ok(error_result("failed: the pod stopped during the run".into()).into());
            }
        };
        match event {
            WireEvent::Agent(Event::TextDelta { text }) => progress.text(&text).await,
            WireEvent::Agent(Event::TextDone { text }) => {
                progress.flush().await;
                answer = text;
            }
            WireEvent::Agent(Event::ToolCallDone { name, arguments, .. }) => {
                let arguments = approval::shorten(&Value::Object(arguments).to_string());
                progress.say(format!("calling {name} {arguments}")).await;
            }
            WireEvent::Agent(Event::ToolResult { name, is_error, summary, .. }) => {
                let how = if is_error { "failed" } else { "done" };
                progress.say(format!("{name} {how}: {summary}")).await;
            }
            WireEvent::Pod(PodEvent::Error { message, .. }) => failure = Some(message),
            WireEvent::Pod(PodEvent::Shutdown) => {
                return Ok(error_result("failed: the pod shut down during the run".into()).into());
            }
            WireEvent::Pod(PodEvent::RunEnd { outcome }) => {
                progress.flush().await;
                return match outcome {
                    Outcome::Finished => Ok(tool_result_text(answer).into()),
                    Outcome::Paused => match ask_about_pause(pod, &params, &context).await? {
                        Some(done) => Ok(done),
                        None => continue,
                    },
                    Outcome::LimitReached => Ok(error_result(format!(
                        "limit_reached: the run made its max_turns model requests without finishing; its last \
                         text: {answer}"
                    ))
                    .into()),
                    Outcome::Cancelled => Ok(error_result("cancelled: the run was cancelled".into()).into()),
                    Outcome::Failed | Outcome::Interrupted => {
                        let why = failure.take().unwrap_or_else(|| "the run failed".into());
                        Ok(error_result(format!("failed: {why}")).into())
                    }
                };
            }
            _ => {}
        }
    }
}

/// Sends `method`; a refusal is the result to answer with.
async fn request(pod: &PodHandle, method: Method) -> Option<rmcp::model::CallToolResult> {
    match pod.request(method).await {
        Ok(Answer::Refused { code, message }) => Some(error_result(format!("{}: {message}", code_name(code)))),
        Ok(_) => None,
        Err(e) => Some(error_result(format!("failed: {e}"))),
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The question about the paused run of `pod`: the calls it waits on.
async fn pause_question(pod: &PodHandle) -> Result<Question, ErrorData> {
    let items = match pod.request(Method::GetHistory {}).await {
        Ok(Answer::History { items, .. }) => items,
        _ => return Err(ErrorData::internal_error("the pod's history is not available", None)),
    };
    let pending = pending_calls(&items);
    let calls: Vec<String> =
        pending.iter().map(|(_, name, args)| format!("{name} {}", Value::Object(args.clone()))).collect();
    let ids: Vec<&str> = pending.iter().map(|(id, _, _)| id.as_str()).collect();
    Ok(Question {
        message: format!("Pod `{}` asks for your approval to run: {}", pod.name, approval::shorten(&calls.join("; "))),
        state: format!("resume:{}", approval::digest(&ids)),
    })
}

/// The run paused: asks the user, then resumes or cancels it. `None` when
/// the run goes on.
async fn ask_about_pause(
    pod: &PodHandle,
    params: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Result<Option<CallToolResponse>, ErrorData> {
    let question = pause_question(pod).await?;
    // A first ask carries no answer: `params` are of the original call.
    let mut fresh = params.clone();
    fresh.request_state = None;
    fresh.input_responses = None;
    let approval = approval::ask(context, &fresh, &question).await;
    settle(pod, approval).await
}

/// A stateless client's retry with the user's answer about a paused run.
async fn decide_pause(
    pod: &PodHandle,
    params: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Result<Option<CallToolResponse>, ErrorData> {
    let question = pause_question(pod).await?;
    if params.request_state.as_deref() != Some(question.state.as_str()) {
        return Ok(Some(error_result("failed: that run is no longer waiting for approval".into()).into()));
    }
    let approval = approval::ask(context, params, &question).await;
    settle(pod, approval).await
}

async fn settle(pod: &PodHandle, approval: Approval) -> Result<Option<CallToolResponse>, ErrorData> {
    match approval {
        Approval::Granted => Ok(request(pod, Method::Resume {}).await.map(Into::into)),
        Approval::Ask(input_required) => Ok(Some(input_required.into())),
        Approval::Refused(reason) => {
            let _ = pod.request(Method::Cancel {}).await;
            Ok(Some(error_result(format!("cancelled: the run paused for approval and was cancelled: {reason}")).into()))
        }
    }
}

/// Progress notifications of one call, when the client asked for them.
struct Progress {
    target: Option<(ProgressToken, Peer<RoleServer>)>,
    count: u32,
    text: String,
}

impl Progress {
    fn new(context: &RequestContext<RoleServer>) -> Progress {
        let target = context.meta.get_progress_token().map(|token| (token, context.peer.clone()));
        Progress { target, count: 0, text: String::new() }
    }

    async fn say(&mut self, message: String) {
        let Some((token, peer)) = &self.target else { return };
        self.count += 1;
        let note = ProgressNotificationParam::new(token.clone(), f64::from(self.count)).with_message(message);
        // A client that went away misses its progress; the run goes on.
        let _ = peer.notify_progress(note).await;
    }

    async fn text(&mut self, delta: &str) {
        if self.target.is_none() {
            return;
        }
        self.text.push_str(delta);
        if self.text.len() >= TEXT_PIECE || delta.contains('\n') {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            self.say(text).await;
        }
    }
}
