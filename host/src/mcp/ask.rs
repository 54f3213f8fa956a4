//! `ask_pod`: a prompt run through the pod's own agent loop, as a `run`
//! from a socket client would be, answered with the run's final text.
//! While it runs, the client gets progress notifications (text as it
//! streams, each tool call and its outcome) when it sent a progress token;
//! a cancel from the client cancels the run. When the run pauses before a
//! `pause_before` tool, the client's user is asked (see `approval`), and the
//! run resumes or is cancelled by the answer. A pod left paused (a
//! stateless client that never answered) is asked about again by the next
//! `ask_pod`.
//!
//! A run is followed from its own `run_start` on: the controller announces
//! it before it accepts the request, so what came before in the stream
//! (another client's run ending) is skipped. If the stream ever runs ahead
//! of this reader, the outcome and answer are read from the session log.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::approval::{self, Approval, Asked, Question};
use super::{error_result, tool_result_text};
use crate::agent::{Event, Outcome};
use crate::history::{Item, pending_calls};
use crate::lifecycle::Lifecycle;
use crate::pod::{Answer, PodHandle, Stamped};
use crate::protocol::{ErrorCode, Method, PodEvent, WireEvent};

/// Text is sent as progress in pieces of about this many bytes.
const TEXT_PIECE: usize = 200;

/// Progress notes that may wait for a slow client; more are dropped.
const PROGRESS_BACKLOG: usize = 64;

/// How long a run this server cancelled may take to wind down before the
/// next `ask_pod` is refused as `already_running`.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// What the `ask_pod` calls of one server share.
#[derive(Default)]
pub struct Asks {
    /// Approvals asked of stateless clients, not answered yet.
    pub asked: Asked,
    /// When this server last cancelled a run for its client.
    cancelled: Mutex<Option<Instant>>,
}

/// Runs `params`' prompt in `pod` and answers with the final text.
pub async fn ask_pod(
    pod: &PodHandle,
    params: CallToolRequestParams,
    context: RequestContext<RoleServer>,
    asks: &Asks,
) -> Result<CallToolResponse, ErrorData> {
    let asked = &asks.asked;
    let run = if pod.lifecycle() == Lifecycle::Paused {
        // A run waits for approval (this client's earlier question, or one
        // nobody answered): that question comes first.
        match decide_pause(pod, &params, &context, asked).await {
            Ok(run) => run,
            Err(done) => return Ok(done),
        }
    } else if params.request_state.is_some() {
        // An answer about a pause that is over (resumed or cancelled by
        // someone else): the prompt is not run again.
        return Ok(error_result("failed: that run is no longer waiting for approval".into()).into());
    } else {
        let Some(prompt) = params.arguments.as_ref().and_then(|a| a.get("prompt")).and_then(Value::as_str) else {
            return Ok(error_result("invalid_input: `prompt` (a string) is required".into()).into());
        };
        // A client that cancelled a run and asks again at once finds it
        // still winding down: it gets a moment to end.
        let cancelled = asks.cancelled.lock().is_some_and(|at| at.elapsed() < WIND_DOWN);
        if cancelled && pod.lifecycle() == Lifecycle::Running {
            let mut lifecycle = pod.watch_lifecycle();
            let _ = tokio::time::timeout(WIND_DOWN, lifecycle.wait_for(|s| *s != Lifecycle::Running)).await;
        }
        match Run::start(pod, Method::Run { input: prompt.to_string() }).await {
            Ok(run) => run,
            Err(refused) => return Ok(refused.into()),
        }
    };
    let mut progress = Progress::new(&context);
    let response = follow_to_the_end(pod, run, &params, &context, asks, &mut progress).await;
    // Progress goes before the answer: a client drops notes of a call it
    // has the answer to.
    progress.finish().await;
    response
}

/// Follows `run`, through approvals of its pauses, to the answer.
async fn follow_to_the_end(
    pod: &PodHandle,
    mut run: Run,
    params: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    asks: &Asks,
    progress: &mut Progress,
) -> Result<CallToolResponse, ErrorData> {
    loop {
        let ended = tokio::select! {
            ended = run.follow(pod, progress) => ended,
            _ = context.ct.cancelled() => {
                *asks.cancelled.lock() = Some(Instant::now());
                let _ = pod.request(Method::Cancel {}).await;
                return Err(ErrorData::internal_error("the run was cancelled by the client", None));
            }
        };
        let (outcome, answer, failure) = match ended {
            Ok(ended) => ended,
            Err(why) => return Ok(error_result(format!("failed: {why}")).into()),
        };
        return Ok(match outcome {
            Outcome::Finished => tool_result_text(answer).into(),
            Outcome::Paused => match decide_pause(pod, params, context, &asks.asked).await {
                Ok(resumed) => {
                    run = resumed;
                    continue;
                }
                Err(done) => done,
            },
            Outcome::LimitReached => error_result(format!(
                "limit_reached: the run made its max_turns model requests without finishing; its last text: {answer}"
            ))
            .into(),
            Outcome::Cancelled => error_result("cancelled: the run was cancelled".into()).into(),
            Outcome::Failed | Outcome::Interrupted => {
                error_result(format!("failed: {}", failure.unwrap_or_else(|| "the run failed".into()))).into()
            }
        });
    }
}

/// One run of the pod, followed from its start.
struct Run {
    events: broadcast::Receiver<Stamped>,
    /// Events of this run already taken off the stream.
    backlog: VecDeque<WireEvent>,
}

/// How a run ended: its outcome, its last text, and its error if it failed.
type Ended = (Outcome, String, Option<String>);

impl Run {
    /// Sends `method` (a run or a resume); on acceptance, the run it
    /// started. A refusal is the result to answer with.
    async fn start(pod: &PodHandle, method: Method) -> Result<Run, CallToolResult> {
        let mut events = pod.subscribe();
        match pod.request(method).await {
            Ok(Answer::Refused { code, message }) => return Err(refusal(code, &message)),
            Ok(_) => {}
            Err(e) => return Err(error_result(format!("failed: {e}"))),
        }
        // The run's start was announced before the request was accepted:
        // it is the last `run_start` waiting here, and the pod starts no
        // other run until this one ends.
        let mut backlog = VecDeque::new();
        loop {
            match events.try_recv() {
                Ok(Stamped { event: WireEvent::Pod(PodEvent::RunStart { .. }), .. }) => backlog.clear(),
                Ok(Stamped { event, .. }) => backlog.push_back(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => backlog.clear(),
                Err(_) => break,
            }
        }
        Ok(Run { events, backlog })
    }

    /// Follows the run to its end, sending progress on the way.
    async fn follow(&mut self, pod: &PodHandle, progress: &mut Progress) -> Result<Ended, String> {
        let mut answer = String::new();
        let mut failure = None;
        loop {
            let event = match self.backlog.pop_front() {
                Some(event) => event,
                None => match self.events.recv().await {
                    Ok(Stamped { event, .. }) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => return from_log(pod).await,
                    Err(broadcast::error::RecvError::Closed) => return Err("the pod stopped during the run".into()),
                },
            };
            match event {
                WireEvent::Agent(Event::TextDelta { text }) => progress.text(&text),
                WireEvent::Agent(Event::TextDone { text }) => {
                    progress.flush();
                    answer = text;
                }
                WireEvent::Agent(Event::ToolCallDone { name, arguments, .. }) => {
                    let arguments = approval::shorten(&Value::Object(arguments).to_string());
                    progress.say(format!("calling {name} {arguments}"));
                }
                WireEvent::Agent(Event::ToolResult { name, is_error, summary, .. }) => {
                    let how = if is_error { "failed" } else { "done" };
                    progress.say(format!("{name} {how}: {summary}"));
                }
                WireEvent::Pod(PodEvent::Error { message, .. }) => failure = Some(message),
                WireEvent::Pod(PodEvent::Shutdown) => return Err("the pod shut down during the run".into()),
                WireEvent::Pod(PodEvent::RunEnd { outcome }) => {
                    progress.flush();
                    return Ok((outcome, answer, failure));
                }
                _ => {}
            }
        }
    }
}

/// The run's end as the session log has it, once the run is over: for a
/// reader the stream ran ahead of.
async fn from_log(pod: &PodHandle) -> Result<Ended, String> {
    let mut lifecycle = pod.watch_lifecycle();
    let _ = lifecycle.wait_for(|state| *state != Lifecycle::Running).await;
    let view = pod.clone();
    let events = tokio::task::spawn_blocking(move || view.events_in_log_after(None))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the run's events were missed and its log cannot be read: {e}"))?;
    let mut outcome = None;
    let mut answer = None;
    for stamped in events.into_iter().rev() {
        match stamped.event {
            WireEvent::Pod(PodEvent::RunEnd { outcome: o }) if outcome.is_none() => outcome = Some(o),
            WireEvent::Agent(Event::ItemAppended { item: Item::Assistant { text, .. } }) if answer.is_none() => {
                answer = Some(text)
            }
            _ => {}
        }
        if outcome.is_some() && answer.is_some() {
            break;
        }
    }
    let outcome = outcome.ok_or("the run's events were missed and its end is not in the session log")?;
    Ok((outcome, answer.unwrap_or_default(), None))
}

fn refusal(code: ErrorCode, message: &str) -> CallToolResult {
    let code = serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    error_result(format!("{code}: {message}"))
}

/// The question about the paused run of `pod`: the calls it waits on.
async fn pause_question(pod: &PodHandle) -> Result<Question, CallToolResult> {
    let items = match pod.request(Method::GetHistory {}).await {
        Ok(Answer::History { items, .. }) => items,
        _ => return Err(error_result("failed: the pod's history is not available".into())),
    };
    let pending = pending_calls(&items);
    let calls: Vec<String> =
        pending.iter().map(|(_, name, args)| format!("{name} {}", Value::Object(args.clone()))).collect();
    let ids: Vec<&str> = pending.iter().map(|(id, _, _)| id.as_str()).collect();
    Ok(Question {
        message: format!("Pod `{}` asks for your approval to run: {}", pod.name, approval::shorten(&calls.join("; "))),
        subject: approval::digest(&ids),
    })
}

/// The pod's run is paused before `pause_before` calls: asks the user
/// (or, in the stateless era, reads the answer a retry carries), then
/// resumes the run (returned to follow) or cancels it. `Err` is the result
/// to answer with.
async fn decide_pause(
    pod: &PodHandle,
    params: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    asked: &Asked,
) -> Result<Run, CallToolResponse> {
    let question = pause_question(pod).await.map_err(CallToolResponse::from)?;
    match approval::ask(context, params, &question, asked).await {
        Approval::Ask(input_required) => Err(input_required.into()),
        Approval::Granted => {
            // Resume approves what waits then: only if that is what the
            // user saw.
            let now = pause_question(pod).await.map_err(CallToolResponse::from)?;
            if pod.lifecycle() != Lifecycle::Paused || now.subject != question.subject {
                return Err(error_result("failed: the paused run changed while the user was asked".into()).into());
            }
            Run::start(pod, Method::Resume {}).await.map_err(Into::into)
        }
        Approval::Refused(reason) => {
            let _ = pod.request(Method::Cancel {}).await;
            Err(error_result(format!("cancelled: the run paused for approval and was cancelled: {reason}")).into())
        }
    }
}

/// Progress notifications of one call, when the client asked for them.
/// They are handed to a task of their own, so that a slow client loses
/// progress notes, never the run's events.
struct Progress {
    notes: Option<mpsc::Sender<String>>,
    sender: Option<tokio::task::JoinHandle<()>>,
    text: String,
}

impl Progress {
    fn new(context: &RequestContext<RoleServer>) -> Progress {
        let Some(token) = context.meta.get_progress_token() else {
            return Progress { notes: None, sender: None, text: String::new() };
        };
        let (notes, mut pending) = mpsc::channel::<String>(PROGRESS_BACKLOG);
        let peer = context.peer.clone();
        let sender = tokio::spawn(async move {
            let mut count = 0u32;
            while let Some(message) = pending.recv().await {
                count += 1;
                let note = ProgressNotificationParam::new(token.clone(), f64::from(count)).with_message(message);
                if peer.notify_progress(note).await.is_err() {
                    break; // the client went away
                }
            }
        });
        Progress { notes: Some(notes), sender: Some(sender), text: String::new() }
    }

    /// Sends what is still queued.
    async fn finish(mut self) {
        self.flush();
        drop(self.notes.take());
        if let Some(sender) = self.sender.take() {
            let _ = sender.await;
        }
    }

    fn say(&mut self, message: String) {
        if let Some(notes) = &self.notes {
            let _ = notes.try_send(message);
        }
    }

    fn text(&mut self, delta: &str) {
        if self.notes.is_none() {
            return;
        }
        self.text.push_str(delta);
        if self.text.len() >= TEXT_PIECE || delta.contains('\n') {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            self.say(text);
        }
    }
}
