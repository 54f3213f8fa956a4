//! A pod: a named, long-running agent with its own controller, session log
//! and (when exposed on a socket) runtime directory.
//!
//! One controller task per pod owns the pod's [`Lifecycle`] and decides
//! every request in one place: `run` while busy is `already_running`,
//! `resume` when not paused is `not_paused`, `cancel` when idle is
//! `not_running`. It publishes the lifecycle on a `watch` channel, which is
//! the one place every view of the pod reads it from, and the one way to
//! learn that a pod stopped ([`PodView::wait`]).
//!
//! A run happens in its own task, which streams the agent loop's events to
//! every client (a broadcast channel), appends to the session log as things
//! happen, and hands the history back when it ends. Data both touch (the
//! history mirror, the session writer, queued notifications) lives in
//! [`Shared`].
//!
//! The controller ends on `shutdown` or when the last [`PodHandle`] is
//! dropped. A panic in the controller or in a run ends only that pod: its
//! clients get an `internal` error, and its runtime directory and scope
//! claim are released as on any other stop.
//!
//! Parts: `server` (socket, connections, slow clients), `runtime_dir`
//! (claim, status files, cleanup), `prompt` (system prompt), `compaction`,
//! `family` (child pods), `output` (text for other pods to read).

mod compaction;
mod events;
pub mod family;
mod output;
pub mod prompt;
pub mod runtime_dir;
mod server;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::agent::{Agent, AgentConfig, Event, Hooks, Outcome, PluginTools, ToolDecision};
use crate::history::{Item, pending_calls};
use crate::identity::{Namespace, PodId};
use crate::lifecycle::Lifecycle;
use crate::manifest::LoadedManifest;
use crate::plugin::{PluginSet, PodContext, PodControl};
use crate::protocol::{ErrorCode, Greeting, Method, PodEvent, Request, WireEvent, error};
use crate::provider::{Provider, RetryPolicy, Usage};
use crate::scope_lock::{ClaimGuard, ScopeLock};
use crate::session::{Entry, SessionStore, SessionWriter};
use family::{Family, FamilyConfig};
pub use output::OutputTail;
use runtime_dir::{RuntimeDir, Status};

use events::EventHub;
pub use events::{CLIENT_BUFFER, EventId, REPLAY_BUFFER, Resumed, Stamped};

/// Notes that may wait for the model at once; more are refused.
const MAX_QUEUED_NOTES: usize = 256;

/// The plugin whose state holds the read tracker (files a pod touched).
const FS_TOOLS: &str = "fs_tools";

/// What an operator's pod needs to start.
pub struct PodSpec {
    /// The manifest, loaded and resolved.
    pub manifest: LoadedManifest,
    /// The pod's plugins (its children use the same); their runtime may be
    /// shared with every other pod of the process.
    pub plugins: Arc<PluginSet>,
    /// The model, if the manifest has a provider.
    pub provider: Option<Arc<dyn Provider>>,
    /// Retry policy of the provider.
    pub retry: RetryPolicy,
    /// Where session logs go (the namespace's own directory: see
    /// [`Namespace::dir`]).
    pub sessions: SessionStore,
    /// Where runtime directories go (the namespace's own).
    pub runtime_root: PathBuf,
    /// A session to continue (already resolved to an id).
    pub resume: Option<String>,
    /// The machine-wide scope lock.
    pub scope_lock: ScopeLock,
    /// Where plugins' private data directories go (the namespace's own).
    pub data_root: PathBuf,
    /// The namespace of the pod's name (its children share it).
    pub namespace: Namespace,
    /// Where `env` grants and provider API keys are read from: the process
    /// environment for the operator's pods, a tenant's secrets on a server.
    pub env: Environment,
    /// How clients reach the pod (its children are reached the same way).
    pub exposure: Exposure,
    /// Who pays for the family's calls and model requests, if anyone.
    pub metering: Option<Metering>,
}

/// A source of named values for `env` grants and provider API keys.
pub type Environment = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment, as an [`Environment`].
pub fn process_environment() -> Environment {
    Arc::new(|var: &str| std::env::var(var).ok())
}

/// Who pays for a family's tool calls and model requests (a server's
/// tenant): every pod's calls are admitted and recorded by `calls`, and
/// every pod's model is wrapped by `models` (given the pod's name).
#[derive(Clone)]
pub struct Metering {
    /// Admits and records tool calls.
    pub calls: Arc<dyn crate::plugin::CallMeter>,
    /// Wraps a pod's model so that its requests are admitted and recorded.
    pub models: WrapModel,
    /// The pods that may live at once, child pods included.
    pub pods: Arc<PodSlots>,
}

/// A count of live pods against a limit that may change (a tenant's
/// `live_pods` quota). Each pod holds a [`PodSlot`] until it stops.
pub struct PodSlots {
    live: std::sync::atomic::AtomicUsize,
    max: Box<dyn Fn() -> usize + Send + Sync>,
}

/// No slot was free.
#[derive(Debug, thiserror::Error)]
#[error("quota `live_pods`: {0} pods (child pods included) are live already")]
pub struct PodSlotsFull(pub usize);

impl PodSlots {
    /// Slots up to `max()` (read at each [`PodSlots::take`]).
    pub fn new(max: impl Fn() -> usize + Send + Sync + 'static) -> Arc<PodSlots> {
        Arc::new(PodSlots { live: Default::default(), max: Box::new(max) })
    }

    /// Pods holding a slot now.
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A slot, or the error naming the quota.
    pub fn take(self: &Arc<Self>) -> Result<PodSlot, PodSlotsFull> {
        let max = (self.max)();
        let taken =
            self.live.fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(PodSlot(self.clone())),
            Err(_) => Err(PodSlotsFull(max)),
        }
    }
}

/// One live pod's slot, given back when dropped.
pub struct PodSlot(Arc<PodSlots>);

impl Drop for PodSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Wraps the model of the pod named by the second argument.
pub type WrapModel = Arc<dyn Fn(Arc<dyn Provider>, &str) -> Arc<dyn Provider> + Send + Sync>;

/// How clients reach a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// A runtime directory with a socket and status files: local clients
    /// (`yoi-host send`, `attach`, `ps`) find it by name. Holds three file
    /// descriptors (the listening socket, the directory's lock, the session
    /// log).
    Socket,
    /// Only through its [`PodHandle`] (a server that fronts many pods):
    /// nothing on disk but the session log, one file descriptor.
    HostOnly,
}

/// What one pod of a family needs to start; the rest is the family's.
pub(crate) struct MemberSpec {
    manifest: LoadedManifest,
    provider: Option<Arc<dyn Provider>>,
    retry: RetryPolicy,
    resume: Option<String>,
}

/// A run of a pod ended: what the pod tells its family, which passes it on
/// to the parent as a note.
pub(crate) struct RunEnded {
    outcome: Outcome,
    /// Why the run failed, when it did.
    error: Option<String>,
}

/// The context a pod's tool calls get: its scope, limits, what each plugin
/// was granted, and (when it runs in a family) the way to its child pods.
/// Every pod, and `yoi-host tool call`, builds its context here.
pub fn pod_context(
    manifest: &LoadedManifest,
    plugins: &PluginSet,
    data_root: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
    control: Option<Arc<dyn PodControl>>,
) -> anyhow::Result<PodContext> {
    let name = &manifest.manifest.pod.name;
    let mut context =
        PodContext::new(name, manifest.working_dir.clone(), manifest.scope.clone(), manifest.call_limits());
    context.grants = plugins.grants_for(&manifest.manifest.plugins.grant, name, data_root, env)?;
    context.control = control;
    Ok(context)
}

/// The runtime directory and scope claim a pod holds until it stops.
struct Held {
    runtime: Option<RuntimeDir>,
    /// None when the pod writes nowhere: there is nothing to keep apart.
    _claim: Option<ClaimGuard>,
    /// Its place among the live pods its metering allows.
    _slot: Option<PodSlot>,
}

/// What the controller and the run task share.
pub struct Shared {
    name: String,
    events: Arc<EventHub>,
    history: Mutex<Vec<Item>>,
    session: Mutex<Journal>,
    notes: Mutex<Vec<String>>,
    /// Usage of the pod's last model request, across runs.
    last_usage: Mutex<Option<Usage>>,
    pod_context: Arc<PodContext>,
    greeting: Greeting,
    /// The pod's lifecycle; the controller (and, once it ended, the pod's
    /// supervising task) is its only writer.
    lifecycle: watch::Sender<Lifecycle>,
    /// Assistant text, for other pods to read.
    output: Arc<OutputTail>,
    /// Ends of runs, for the family.
    run_ends: mpsc::UnboundedSender<RunEnded>,
    /// Released (explicitly, off the async threads) when the pod stops.
    held: Mutex<Option<Held>>,
}

/// The session log a pod writes, and the place of its events in it.
struct Journal {
    writer: SessionWriter,
    session: Arc<str>,
    /// Events sent since the last line.
    seq: u32,
}

impl Journal {
    fn new(writer: SessionWriter) -> Journal {
        Journal { session: Arc::from(writer.id()), writer, seq: 0 }
    }
}

impl Shared {
    /// Sends an event that the session log does not keep.
    fn broadcast(&self, event: impl Into<WireEvent>) {
        let mut journal = self.session.lock();
        journal.seq = journal.seq.saturating_add(1);
        let id = EventId { session: journal.session.clone(), line: journal.writer.lines(), seq: journal.seq };
        // Sent under the journal's lock: ids reach clients in order.
        self.events.send(Stamped { id, event: event.into() });
    }

    /// Appends `entry` to the session log and sends `event`, the entry's
    /// report to clients, stamped with the entry's line.
    fn record(&self, entry: &Entry, event: impl Into<WireEvent>) {
        let mut journal = self.session.lock();
        if let Err(e) = journal.writer.append(entry) {
            drop(journal);
            tracing::error!(pod = %self.name, "session log: {e:#}");
            self.broadcast(error(ErrorCode::Internal, format!("cannot write the session log: {e:#}"), None));
            self.broadcast(event);
            return;
        }
        journal.seq = 0;
        let id = EventId { session: journal.session.clone(), line: journal.writer.lines(), seq: 0 };
        self.events.send(Stamped { id, event: event.into() });
    }

    fn append(&self, item: Item) {
        self.record(&Entry::Item { item: item.clone() }, Event::ItemAppended { item: item.clone() });
        self.history.lock().push(item);
    }

    /// The session the pod writes now.
    fn session_id(&self) -> Arc<str> {
        self.session.lock().session.clone()
    }

    fn greeting(&self) -> Greeting {
        Greeting {
            session: self.session_id().to_string(),
            state: self.lifecycle.borrow().as_str().to_string(),
            ..self.greeting.clone()
        }
    }

    /// Publishes the pod's new state, and writes `status.json` (and, when
    /// no run is going on, `history.json`) if the pod has a runtime dir.
    fn set_state(&self, state: Lifecycle) {
        self.lifecycle.send_replace(state);
        let held = self.held.lock();
        let Some(runtime) = held.as_ref().and_then(|h| h.runtime.as_ref()) else { return };
        let status = Status {
            pod: self.name.clone(),
            pid: std::process::id(),
            state: state.as_str().to_string(),
            session: self.session_id().to_string(),
            socket: runtime.socket(),
            cwd: self.pod_context.working_dir.clone(),
            model: Some(format!("{} {}", self.greeting.provider, self.greeting.model)),
        };
        if let Err(e) = runtime.write_status(&status) {
            tracing::warn!(pod = %self.name, "cannot write status.json: {e:#}");
        }
        if state != Lifecycle::Running {
            let history = serde_json::to_vec(&*self.history.lock()).unwrap_or_default();
            if let Err(e) = runtime.write_atomic("history.json", &history) {
                tracing::warn!(pod = %self.name, "cannot write history.json: {e:#}");
            }
        }
    }

    /// Hands over the runtime directory and the scope claim, once.
    fn release(&self) -> Option<Held> {
        self.held.lock().take()
    }

    /// The files the pod's tools read or wrote.
    fn touched_files(&self) -> Vec<String> {
        self.pod_context
            .state
            .keys(FS_TOOLS, "read:")
            .into_iter()
            .filter_map(|k| k.strip_prefix("read:").map(str::to_string))
            .collect()
    }
}

/// Messages to the controller.
pub(crate) enum Command {
    /// A client's request, answered through `reply`.
    Request {
        /// The request.
        request: Request,
        /// Where the answer goes.
        reply: Reply,
    },
    /// A note from the host (e.g. a child pod finished).
    Notify(String),
}

/// Where the controller's answer to one request goes.
pub(crate) enum Reply {
    /// A socket connection: refusals and history go there as events; an
    /// accepted request needs no answer (its events follow on the stream).
    Connection(mpsc::Sender<WireEvent>),
    /// An in-process caller waiting for the decision.
    Caller(oneshot::Sender<Answer>),
}

impl Reply {
    fn send(self, answer: Answer, id: Option<Value>) {
        match self {
            Reply::Connection(client) => {
                if let Some(event) = answer.into_event(id) {
                    // A client that does not read its answers loses them.
                    let _ = client.try_send(event);
                }
            }
            Reply::Caller(caller) => {
                let _ = caller.send(answer);
            }
        }
    }
}

/// The controller's decision on one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Done or started; what follows comes as events.
    Accepted,
    /// The answer to `get_history`.
    History {
        /// The items.
        items: Vec<Item>,
        /// Who the pod is and its state.
        greeting: Greeting,
    },
    /// Refused, with the protocol's error code.
    Refused {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl Answer {
    /// The event a socket client gets for this answer, if any.
    pub fn into_event(self, id: Option<Value>) -> Option<WireEvent> {
        match self {
            Answer::Accepted => None,
            Answer::History { items, greeting } => Some(PodEvent::History { items, greeting }.into()),
            Answer::Refused { code, message } => Some(error(code, message, id)),
        }
    }

    fn refused(code: ErrorCode, message: &str) -> Answer {
        Answer::Refused { code, message: message.to_string() }
    }
}

/// A request that could not reach a pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The pod's controller has ended.
    #[error("pod {0:?} has stopped")]
    Stopped(String),
}

/// What anyone may read of a pod, without keeping it alive.
pub struct PodView {
    /// The pod's name (unique within its namespace).
    pub name: String,
    /// The pod's unique id.
    pub id: PodId,
    /// The namespace of its name.
    pub namespace: Namespace,
    /// Its socket, when it is exposed on one.
    pub socket: Option<PathBuf>,
    events: Arc<EventHub>,
    lifecycle: watch::Receiver<Lifecycle>,
    /// Its assistant text, for other pods to read.
    pub output: Arc<OutputTail>,
    family: Weak<Family>,
    /// For tool calls and the session log; gone once the pod is dropped.
    shared: Weak<Shared>,
    sessions: SessionStore,
    plugins: Arc<PluginSet>,
    /// Tools the pod's model may call only with approval (`pause_before`).
    pub pause_before: Arc<[String]>,
    /// Whether the pod has a model (runs need one).
    pub has_model: bool,
}

impl std::fmt::Debug for PodView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.namespace.qualify(&self.name))
            .field("id", &self.id)
            .field("lifecycle", &self.lifecycle())
            .finish()
    }
}

impl PodView {
    /// The pod's state now.
    pub fn lifecycle(&self) -> Lifecycle {
        *self.lifecycle.borrow()
    }

    /// A receiver of the pod's state as it changes.
    pub fn watch_lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Whether the pod no longer takes requests (stopping or stopped).
    pub fn is_stopped(&self) -> bool {
        !self.lifecycle().is_live()
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.events.subscribe()
    }

    /// Every event after `last`, as far as the pod's replay buffer reaches
    /// (see [`Resumed`]).
    pub fn resume_events(&self, last: &EventId) -> Resumed {
        self.events.resume(last)
    }

    /// The durable events (items, usage, turn and run ends) of the pod's
    /// current session log after `last`: all of them when `last` is of
    /// another session (before a compaction, or unknown). Reads the log:
    /// call it off the async threads.
    pub fn events_in_log_after(&self, last: Option<&EventId>) -> anyhow::Result<Vec<Stamped>> {
        let shared = self.shared.upgrade().ok_or_else(|| self.gone())?;
        let session = shared.session_id();
        let skip = last.filter(|l| l.session == session).map_or(0, |l| l.line);
        let entries = self.sessions.entries_after(&session, skip)?;
        Ok(entries
            .into_iter()
            .filter_map(|(line, entry)| {
                let event: WireEvent = match entry {
                    Entry::Meta { .. } => return None,
                    Entry::Item { item } => Event::ItemAppended { item }.into(),
                    Entry::Usage { usage } => Event::Usage { usage }.into(),
                    Entry::TurnEnd { turn, stop } => {
                        Event::TurnEnd { turn, stop: stop.unwrap_or(crate::provider::StopReason::Other) }.into()
                    }
                    Entry::RunEnd { outcome } => PodEvent::RunEnd { outcome }.into(),
                };
                Some(Stamped { id: EventId { session: session.clone(), line, seq: 0 }, event })
            })
            .collect())
    }

    /// Runs one tool call in this pod's scope, with its grants and limits,
    /// as `yoi-host tool call` does: the caller is the pod's operator, not
    /// its model, so `pause_before` does not apply.
    pub async fn call_tool(
        &self,
        tool: &str,
        input: &str,
    ) -> Result<crate::plugin::ToolOutput, crate::plugin::ToolError> {
        let Some(shared) = self.shared.upgrade() else {
            let message = format!("pod {:?} has stopped", self.namespace.qualify(&self.name));
            return Err(crate::plugin::ToolError::new(crate::plugin::ToolErrorKind::Failed, message));
        };
        self.plugins.call(&shared.pod_context, tool, input).await
    }

    /// The pod's plugins.
    pub fn plugins(&self) -> &Arc<PluginSet> {
        &self.plugins
    }

    /// The context the pod's tool calls get (scope, limits, grants), while
    /// the pod lives.
    pub fn tool_context(&self) -> Option<Arc<PodContext>> {
        self.shared.upgrade().map(|shared| shared.pod_context.clone())
    }

    /// Waits until the pod has stopped and cleaned up (its children
    /// included, unless detached).
    pub async fn wait(&self) {
        let mut lifecycle = self.lifecycle.clone();
        // A closed channel means the pod's task is gone: stopped too.
        let _ = lifecycle.wait_for(|s| *s == Lifecycle::Stopped).await;
    }

    /// Waits until this pod and every pod it detached have shut down.
    pub async fn wait_family(&self) {
        self.wait().await;
        if let Some(family) = self.family.upgrade() {
            family.wait_all().await;
        }
    }

    fn gone(&self) -> PodError {
        PodError::Stopped(self.namespace.qualify(&self.name))
    }
}

/// A running pod. The pod serves while any handle to it lives (or, for a
/// child pod, while its family holds it); dropping the last one shuts it
/// down.
#[derive(Clone, Debug)]
pub struct PodHandle {
    commands: mpsc::Sender<Command>,
    view: Arc<PodView>,
}

impl std::ops::Deref for PodHandle {
    type Target = PodView;

    fn deref(&self) -> &PodView {
        &self.view
    }
}

impl PodHandle {
    /// Sends a request as an in-process client and waits for the
    /// controller's decision. A pod that has stopped is an error naming it.
    pub async fn request(&self, method: Method) -> Result<Answer, PodError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Request { request: Request { id: None, method }, reply: Reply::Caller(reply) };
        self.commands.send(command).await.map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    /// Queues a note for the model, as the host (not a client).
    pub async fn notify(&self, message: String) -> Result<(), PodError> {
        self.commands.send(Command::Notify(message)).await.map_err(|_| self.gone())
    }

    /// A reference that does not keep the pod alive.
    pub fn downgrade(&self) -> WeakPod {
        WeakPod { commands: self.commands.downgrade(), view: self.view.clone() }
    }
}

/// A pod, without keeping it alive.
#[derive(Clone, Debug)]
pub struct WeakPod {
    commands: mpsc::WeakSender<Command>,
    view: Arc<PodView>,
}

impl std::ops::Deref for WeakPod {
    type Target = PodView;

    fn deref(&self) -> &PodView {
        &self.view
    }
}

impl WeakPod {
    /// A handle, if the pod still serves.
    pub fn upgrade(&self) -> Result<PodHandle, PodError> {
        match self.commands.upgrade() {
            Some(commands) if !self.view.is_stopped() => Ok(PodHandle { commands, view: self.view.clone() }),
            _ => Err(self.view.gone()),
        }
    }
}

/// Starts an operator's pod, the root of a new family: claims its runtime
/// directory (if exposed on a socket), opens (or continues) its session,
/// binds its socket and spawns its controller.
pub async fn start(spec: PodSpec) -> anyhow::Result<PodHandle> {
    let family = Family::new(FamilyConfig {
        plugins: spec.plugins,
        sessions: spec.sessions,
        runtime_root: spec.runtime_root,
        scope_lock: spec.scope_lock,
        data_root: spec.data_root,
        namespace: spec.namespace,
        exposure: spec.exposure,
        env: spec.env,
        metering: spec.metering,
    });
    let member =
        MemberSpec { manifest: spec.manifest, provider: spec.provider, retry: spec.retry, resume: spec.resume };
    family.start(member).await
}

/// What a pod opens before it can serve: its history and session, its
/// runtime dir and its scope claim. All of it is file work, done on a
/// blocking thread.
struct Opened {
    history: Vec<Item>,
    session: SessionWriter,
    last_usage: Option<Usage>,
    held: Held,
}

fn open_pod(spec: &MemberSpec, config: &FamilyConfig, id: &PodId, parent: Option<&PodId>) -> anyhow::Result<Opened> {
    let manifest = &spec.manifest;
    let name = &manifest.manifest.pod.name;
    let slot = config.metering.as_ref().map(|m| m.pods.take()).transpose()?;
    let runtime = match config.exposure {
        Exposure::Socket => Some(RuntimeDir::claim(&config.runtime_root, name)?),
        Exposure::HostOnly => None,
    };
    let write = family::write_targets(&manifest.scope);
    let claim = if write.is_empty() {
        None
    } else {
        Some(config.scope_lock.claim(
            id.as_str(),
            &config.namespace.qualify(name),
            parent.map(PodId::as_str),
            &write,
        )?)
    };
    let mut last_usage = None;
    let (history, session) = match &spec.resume {
        Some(id) => {
            let loaded = config.sessions.load(id)?;
            if &loaded.pod != name {
                anyhow::bail!("session {id} belongs to pod {:?}, not {name:?}", loaded.pod);
            }
            let mut items = loaded.items;
            last_usage = loaded.last_usage;
            let mut writer = config.sessions.reopen(id)?;
            // A crash mid-tool-call leaves calls without results: answer them.
            let pending = pending_calls(&items);
            let run_open = loaded.run_open || !pending.is_empty();
            for (id, name, _) in pending {
                let item = Item::ToolResult {
                    id,
                    name,
                    content: "interrupted: the host stopped before this call finished".into(),
                    is_error: true,
                };
                writer.append(&Entry::Item { item: item.clone() })?;
                items.push(item);
            }
            // A run the host stopped in the middle of (or paused) is marked
            // as ended by the stop: the pod comes back idle.
            if run_open {
                writer.append(&Entry::RunEnd { outcome: Outcome::Interrupted })?;
            }
            (items, writer)
        }
        None => (Vec::new(), config.sessions.create(name, None)?),
    };
    if let Some(runtime) = &runtime {
        runtime.write_atomic("manifest.toml", toml::to_string(&manifest.manifest)?.as_bytes())?;
    }
    Ok(Opened { history, session, last_usage, held: Held { runtime, _claim: claim, _slot: slot } })
}

/// Starts one pod of `family`, a child of `parent` (its name and id) if given.
async fn start_pod(
    spec: MemberSpec,
    family: &Arc<Family>,
    id: PodId,
    pod_context: Arc<PodContext>,
    parent: Option<PodId>,
    run_ends: mpsc::UnboundedSender<RunEnded>,
) -> anyhow::Result<PodHandle> {
    let config = family.config().clone();
    let (spec, opened) = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let opened = open_pod(&spec, &config, &id, parent.as_ref());
            (spec, opened)
        })
        .await?
    };
    let opened = opened?;
    let config = family.config();
    let manifest = &spec.manifest;
    let name = manifest.manifest.pod.name.clone();
    let system = prompt::system_prompt(manifest)?;
    let (provider_kind, model) = match &manifest.manifest.provider {
        Some(p) => (format!("{:?}", p.kind).to_lowercase(), p.model.clone()),
        None => ("none".to_string(), String::new()),
    };
    let greeting = Greeting {
        pod: name.clone(),
        cwd: manifest.working_dir.display().to_string(),
        provider: provider_kind,
        model,
        scope: manifest.scope.summary(),
        tools: config.plugins.tools_for(&pod_context).map(|t| t.name.clone()).collect(),
        session: String::new(),
        state: String::new(),
    };
    let events = Arc::new(EventHub::default());
    let (lifecycle, watching) = watch::channel(Lifecycle::Idle);
    let socket = opened.held.runtime.as_ref().map(RuntimeDir::socket);
    let listener = socket.as_deref().map(server::bind).transpose()?;
    let shared = Arc::new(Shared {
        name: name.clone(),
        events: events.clone(),
        history: Mutex::new(opened.history),
        session: Mutex::new(Journal::new(opened.session)),
        notes: Mutex::new(Vec::new()),
        last_usage: Mutex::new(opened.last_usage),
        pod_context,
        greeting,
        lifecycle,
        output: Arc::new(OutputTail::default()),
        run_ends,
        held: Mutex::new(Some(opened.held)),
    });
    shared.set_state(Lifecycle::Idle);

    let (commands, rx) = mpsc::channel(256);
    let view = PodView {
        name,
        id,
        namespace: config.namespace.clone(),
        socket,
        events,
        lifecycle: watching,
        output: shared.output.clone(),
        family: Arc::downgrade(family),
        shared: Arc::downgrade(&shared),
        sessions: config.sessions.clone(),
        plugins: config.plugins.clone(),
        pause_before: manifest.manifest.agent.pause_before.clone().into(),
        has_model: spec.provider.is_some(),
    };
    let handle = PodHandle { commands: commands.clone(), view: Arc::new(view) };
    // The socket server does not keep the pod alive: it holds a weak sender.
    let server = listener.map(|l| tokio::spawn(server::serve(l, commands.downgrade(), shared.clone())));
    drop(commands);
    let controller = Controller {
        shared: shared.clone(),
        plugins: config.plugins.clone(),
        provider: spec.provider,
        config: AgentConfig {
            system,
            max_tokens: manifest.manifest.agent.max_tokens,
            max_turns: manifest.manifest.agent.max_turns,
            temperature: manifest.manifest.agent.temperature,
            retry: spec.retry,
        },
        compaction: manifest.manifest.compaction.clone(),
        pause_before: manifest.manifest.agent.pause_before.clone(),
        sessions: config.sessions.clone(),
        cancel: None,
        run: None,
    };
    // Everything the pod does is traced under its namespace (a tenant) and name.
    let span = tracing::info_span!("pod", namespace = %config.namespace, pod = %handle.name);
    tokio::spawn(tracing::Instrument::instrument(supervise(controller, rx, server, family.clone()), span));
    Ok(handle)
}

/// Runs a pod's controller to its end, whether it shut down or failed, and
/// then stops the pod's children, releases what it holds and publishes
/// `stopped`.
async fn supervise(
    controller: Controller,
    commands: mpsc::Receiver<Command>,
    server: Option<tokio::task::JoinHandle<()>>,
    family: Arc<Family>,
) {
    let shared = controller.shared.clone();
    let detach = match tokio::spawn(controller.run(commands)).await {
        Ok(detach) => detach,
        Err(fault) => {
            let message = format!("pod {:?} stopped after a fault in the host: {}", shared.name, fault_text(fault));
            tracing::error!(pod = %shared.name, "{message}");
            shared.broadcast(error(ErrorCode::Internal, message, None));
            shared.broadcast(PodEvent::Shutdown);
            false
        }
    };
    shared.lifecycle.send_replace(Lifecycle::Stopping);
    family.stop_children(&shared.name, detach).await;
    if let Some(server) = server {
        server.abort();
        let _ = server.await;
    }
    // Removing the runtime dir and releasing the claim (flock) block.
    let held = shared.release();
    let _ = tokio::task::spawn_blocking(move || drop(held)).await;
    family.stopped(&shared.name).await;
    shared.lifecycle.send_replace(Lifecycle::Stopped);
    tracing::debug!(pod = %shared.name, "stopped");
}

/// What a task's failure says.
fn fault_text(fault: JoinError) -> String {
    if !fault.is_panic() {
        return "its task was cancelled".to_string();
    }
    let payload = fault.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("panic: {text}")
}

/// What a run task hands back.
struct RunDone {
    history: Vec<Item>,
    result: Result<Outcome, String>,
}

/// The controller: the one place that decides what a request does.
struct Controller {
    shared: Arc<Shared>,
    plugins: Arc<PluginSet>,
    provider: Option<Arc<dyn Provider>>,
    config: AgentConfig,
    compaction: crate::manifest::CompactionSection,
    pause_before: Vec<String>,
    sessions: SessionStore,
    cancel: Option<CancellationToken>,
    /// The run in progress; dropping the controller aborts it.
    run: Option<AbortOnDropHandle<RunDone>>,
}

/// What woke the controller.
enum Next {
    Command(Option<Command>),
    RunDone(Result<RunDone, JoinError>),
}

async fn run_done(run: &mut Option<AbortOnDropHandle<RunDone>>) -> Result<RunDone, JoinError> {
    match run {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

impl Controller {
    /// Serves requests until shutdown or until every handle is gone; says
    /// whether the pod's children are to be detached rather than stopped.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> bool {
        // Some(detach) once the pod is to stop.
        let mut stopping: Option<bool> = None;
        let mut open = true;
        loop {
            let next = tokio::select! {
                command = commands.recv(), if open => Next::Command(command),
                done = run_done(&mut self.run) => Next::RunDone(done),
            };
            match next {
                Next::Command(None) => {
                    // Every handle is gone: nobody can reach the pod any more.
                    open = false;
                    stopping.get_or_insert(false);
                    match &self.cancel {
                        Some(cancel) => cancel.cancel(),
                        None => break,
                    }
                }
                Next::Command(Some(Command::Request { request, reply })) => {
                    let answer = self.decide(request.method, &mut stopping);
                    reply.send(answer, request.id);
                    if stopping.is_some() && self.run.is_none() {
                        break;
                    }
                }
                Next::Command(Some(Command::Notify(message))) => self.notify(message),
                Next::RunDone(Ok(done)) => {
                    self.run = None;
                    *self.shared.history.lock() = done.history;
                    self.cancel = None;
                    self.finish_run(done.result);
                    if stopping.is_some() {
                        break;
                    }
                    if self.state() == Lifecycle::Idle && !self.shared.notes.lock().is_empty() {
                        self.start_run("notify", false);
                    }
                }
                Next::RunDone(Err(fault)) => {
                    // The run task panicked: what it appended is in the
                    // session log; the pod stops rather than carry on in a
                    // state nobody can vouch for.
                    self.run = None;
                    self.cancel = None;
                    let message =
                        format!("pod {:?} stopped after a fault in the host: {}", self.shared.name, fault_text(fault));
                    tracing::error!(pod = %self.shared.name, "{message}");
                    self.shared.broadcast(error(ErrorCode::Internal, message.clone(), None));
                    let _ = self.shared.run_ends.send(RunEnded { outcome: Outcome::Failed, error: Some(message) });
                    let outcome = Outcome::Failed;
                    self.shared.record(&Entry::RunEnd { outcome }, PodEvent::RunEnd { outcome });
                    stopping.get_or_insert(false);
                    break;
                }
            }
        }
        self.shared.broadcast(PodEvent::Shutdown);
        tracing::debug!(pod = %self.shared.name, "controller ended");
        stopping.unwrap_or(false)
    }

    /// The pod's state: the one the controller publishes (idle, running
    /// or paused while the controller runs).
    fn state(&self) -> Lifecycle {
        *self.shared.lifecycle.borrow()
    }

    /// Decides one request.
    fn decide(&mut self, method: Method, stopping: &mut Option<bool>) -> Answer {
        if stopping.is_some() && !matches!(method, Method::GetHistory {} | Method::Shutdown { .. }) {
            return Answer::refused(ErrorCode::NotRunning, "the pod is shutting down");
        }
        match method {
            Method::Run { input } => match self.state() {
                Lifecycle::Running => {
                    Answer::refused(ErrorCode::AlreadyRunning, "a run is going on; cancel it or wait")
                }
                Lifecycle::Paused => Answer::refused(ErrorCode::AlreadyRunning, "a run is paused; resume or cancel it"),
                _ if self.provider.is_none() => {
                    Answer::refused(ErrorCode::ProviderError, "this pod has no [provider]; it serves tool calls only")
                }
                _ => {
                    self.shared.append(Item::User { text: input });
                    self.start_run("run", false);
                    Answer::Accepted
                }
            },
            Method::Resume {} => match self.state() {
                Lifecycle::Paused => {
                    self.start_run("resume", true);
                    Answer::Accepted
                }
                _ => Answer::refused(ErrorCode::NotPaused, "no run is paused"),
            },
            Method::Cancel {} => match self.state() {
                Lifecycle::Running => {
                    if let Some(c) = &self.cancel {
                        c.cancel();
                    }
                    Answer::Accepted
                }
                Lifecycle::Paused => {
                    let pending = pending_calls(&self.shared.history.lock());
                    for (id, name, _) in pending {
                        let content = "cancelled: the paused run was cancelled".to_string();
                        self.shared.append(Item::ToolResult { id, name, content, is_error: true });
                    }
                    self.finish_run(Ok(Outcome::Cancelled));
                    Answer::Accepted
                }
                _ => Answer::refused(ErrorCode::NotRunning, "no run is going on"),
            },
            Method::Notify { message } => {
                if self.shared.notes.lock().len() >= MAX_QUEUED_NOTES {
                    let why = format!("{MAX_QUEUED_NOTES} notes are waiting for the model already");
                    return Answer::Refused { code: ErrorCode::InvalidRequest, message: why };
                }
                self.notify(message);
                Answer::Accepted
            }
            Method::GetHistory {} => {
                let items = self.shared.history.lock().clone();
                Answer::History { items, greeting: self.shared.greeting() }
            }
            Method::Shutdown { detach_children } => {
                *stopping = Some(detach_children);
                if let Some(c) = &self.cancel {
                    c.cancel();
                }
                Answer::Accepted
            }
        }
    }

    fn notify(&mut self, message: String) {
        self.shared.broadcast(PodEvent::Notification { message: message.clone() });
        // A pod without a model has no one to tell.
        if self.provider.is_none() {
            return;
        }
        self.shared.notes.lock().push(message);
        if self.state() == Lifecycle::Idle {
            self.start_run("notify", false);
        }
    }

    fn finish_run(&mut self, result: Result<Outcome, String>) {
        let (outcome, failure) = match result {
            Ok(outcome) => (outcome, None),
            Err(message) => {
                self.shared.broadcast(error(ErrorCode::ProviderError, message.clone(), None));
                (Outcome::Failed, Some(message))
            }
        };
        let _ = self.shared.run_ends.send(RunEnded { outcome, error: failure });
        self.shared.set_state(if outcome == Outcome::Paused { Lifecycle::Paused } else { Lifecycle::Idle });
        self.shared.record(&Entry::RunEnd { outcome }, PodEvent::RunEnd { outcome });
    }

    fn start_run(&mut self, cause: &str, resuming: bool) {
        // Resuming approves exactly the calls that paused the run.
        let approved: HashSet<String> = if resuming {
            pending_calls(&self.shared.history.lock()).into_iter().map(|(id, _, _)| id).collect()
        } else {
            HashSet::new()
        };
        let Some(provider) = self.provider.clone() else { return };
        let cancel = CancellationToken::new();
        self.cancel = Some(cancel.clone());
        self.shared.set_state(Lifecycle::Running);
        self.shared.broadcast(PodEvent::RunStart { cause: cause.to_string() });
        let shared = self.shared.clone();
        let plugins = self.plugins.clone();
        let config = self.config.clone();
        let mut hooks = PodHooks {
            shared: shared.clone(),
            provider: provider.clone(),
            retry: config.retry,
            sessions: self.sessions.clone(),
            compaction: self.compaction.clone(),
            pause_before: self.pause_before.clone(),
            approved,
            compacted_this_run: false,
        };
        let span = tracing::info_span!("run", cause);
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut history = shared.history.lock().clone();
                let tools = PluginTools { host: &plugins, pod: shared.pod_context.clone() };
                let agent = Agent { provider: provider.as_ref(), tools: &tools, config: &config };
                let sink_shared = shared.clone();
                let mut sink = move |event: Event| match event {
                    Event::ItemAppended { item } => sink_shared.append(item),
                    Event::Usage { usage } => {
                        *sink_shared.last_usage.lock() = Some(usage);
                        sink_shared.record(&Entry::Usage { usage }, Event::Usage { usage });
                    }
                    Event::TurnEnd { turn, stop } => {
                        sink_shared.record(&Entry::TurnEnd { turn, stop: Some(stop) }, Event::TurnEnd { turn, stop })
                    }
                    other => {
                        match &other {
                            Event::TextDelta { text } => sink_shared.output.push_text(text),
                            Event::TextDone { .. } => sink_shared.output.end_message(),
                            _ => {}
                        }
                        sink_shared.broadcast(other);
                    }
                };
                let result = agent.run(&mut history, &mut hooks, &mut sink, &cancel).await.map_err(|e| e.to_string());
                RunDone { history, result }
            },
            span,
        ));
        self.run = Some(AbortOnDropHandle::new(task));
    }
}

/// The pod's side of the agent loop: queued notifications go into the next
/// request, compaction runs before a request that would be too big, and
/// `pause_before` tools wait for `resume`.
struct PodHooks {
    shared: Arc<Shared>,
    provider: Arc<dyn Provider>,
    retry: RetryPolicy,
    sessions: SessionStore,
    compaction: crate::manifest::CompactionSection,
    pause_before: Vec<String>,
    /// Set by `resume`: the ids of the calls that paused the run, which may go.
    approved: HashSet<String>,
    compacted_this_run: bool,
}

impl PodHooks {
    async fn maybe_compact(&mut self, items: &mut Vec<Item>) {
        let last_usage = *self.shared.last_usage.lock();
        let over = last_usage.is_some_and(|u| u.input_tokens > self.compaction.threshold_tokens);
        if !over || self.compacted_this_run {
            return;
        }
        self.compacted_this_run = true;
        let Some(split) = compaction::split_point(items, self.compaction.keep_turns) else { return };
        let touched = self.shared.touched_files();
        let compacted = match compaction::compact(self.provider.as_ref(), &self.retry, items, split, &touched).await {
            Ok(c) => c,
            Err(e) => {
                let message = format!("compaction failed, continuing with the full history: {e}");
                self.shared.broadcast(PodEvent::Notification { message });
                return;
            }
        };
        let old_id = self.shared.session_id().to_string();
        let mut writer = match self.sessions.create(&self.shared.name, Some(&old_id)) {
            Ok(w) => w,
            Err(e) => {
                let message = format!("compaction failed: cannot start a new session: {e:#}");
                self.shared.broadcast(PodEvent::Notification { message });
                return;
            }
        };
        for item in &compacted {
            if let Err(e) = writer.append(&Entry::Item { item: item.clone() }) {
                let message = format!("compaction failed: cannot write the new session: {e:#}");
                self.shared.broadcast(PodEvent::Notification { message });
                return;
            }
        }
        let new_id = writer.id().to_string();
        let dropped = items.len() + 1 - compacted.len();
        *self.shared.session.lock() = Journal::new(writer);
        *self.shared.history.lock() = compacted.clone();
        // The old count described the old context; the next request measures anew.
        *self.shared.last_usage.lock() = None;
        *items = compacted;
        let message = format!("compacted {dropped} older items into a summary; session {old_id} continues as {new_id}");
        self.shared.broadcast(PodEvent::Notification { message });
    }
}

#[async_trait::async_trait]
impl Hooks for PodHooks {
    async fn before_request(&mut self, items: &mut Vec<Item>, _last_usage: Option<Usage>) -> Vec<String> {
        self.maybe_compact(items).await;
        std::mem::take(&mut *self.shared.notes.lock())
    }

    async fn before_tool_call(&mut self, id: &str, name: &str, _arguments: &Map<String, Value>) -> ToolDecision {
        if self.pause_before.iter().any(|t| t == name) && !self.approved.contains(id) {
            return ToolDecision::Pause;
        }
        ToolDecision::Allow
    }
}
