//! A pod: a named, long-running agent with its own controller, socket,
//! runtime directory and session log.
//!
//! One controller task per pod owns the pod's state (idle, running, paused)
//! and decides every request in one place: `run` while busy is
//! `already_running`, `resume` when not paused is `not_paused`, `cancel` when
//! idle is `not_running`. A run happens in its own task, which streams the
//! agent loop's events to every client (a broadcast channel), appends to the
//! session log as things happen, and reports back when it ends. Data both
//! touch (the history mirror, the session writer, queued notifications)
//! lives in [`Shared`].
//!
//! Parts: `server` (socket, connections, slow clients), `runtime_dir`
//! (claim, status files, cleanup), `prompt` (system prompt), `compaction`,
//! `family` (child pods), `progress` (state and output for other pods).

mod compaction;
pub mod family;
mod progress;
pub mod prompt;
pub mod runtime_dir;
mod server;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig, Event, Hooks, Outcome, PluginTools, ToolDecision};
use crate::history::{Item, pending_calls};
use crate::manifest::LoadedManifest;
use crate::plugin::{PluginHost, PodContext};
use crate::protocol::{ErrorCode, Greeting, Method, PodEvent, Request, WireEvent, error};
use crate::provider::{Provider, RetryPolicy, Usage};
use crate::scope_lock::{ClaimGuard, ScopeLock};
use crate::session::{Entry, SessionStore, SessionWriter};
use family::{Family, FamilyConfig};
pub use progress::Progress;
use runtime_dir::{RuntimeDir, Status};

/// Events buffered per client before a slow client is dropped.
pub const CLIENT_BUFFER: usize = 1024;

/// The plugin whose state holds the read tracker (files a pod touched).
const FS_TOOLS: &str = "fs_tools";

/// What an operator's pod needs to start.
pub struct PodSpec {
    /// The manifest, loaded and resolved.
    pub manifest: LoadedManifest,
    /// The plugin runtime (shared by all pods of a host).
    pub plugins: Arc<PluginHost>,
    /// The model, if the manifest has a provider.
    pub provider: Option<Arc<dyn Provider>>,
    /// Retry policy of the provider.
    pub retry: RetryPolicy,
    /// Where session logs go.
    pub sessions: SessionStore,
    /// Where runtime directories go.
    pub runtime_root: PathBuf,
    /// A session to continue (already resolved to an id).
    pub resume: Option<String>,
    /// The machine-wide scope lock.
    pub scope_lock: ScopeLock,
    /// Where plugins' private data directories go (`$YOI_HOME/data`).
    pub data_root: PathBuf,
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

/// The pod's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for a request.
    Idle,
    /// A run is going on.
    Running,
    /// A run stopped before tool calls, waiting for `resume`.
    Paused,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running => "running",
            State::Paused => "paused",
        }
    }
}

/// What the controller and the run task share.
pub struct Shared {
    name: String,
    events: broadcast::Sender<WireEvent>,
    history: Mutex<Vec<Item>>,
    session: Mutex<SessionWriter>,
    notes: Mutex<Vec<String>>,
    /// Usage of the pod's last model request, across runs.
    last_usage: Mutex<Option<Usage>>,
    pod_context: Arc<PodContext>,
    greeting: Greeting,
    runtime: RuntimeDir,
    /// State and output, for other pods.
    progress: Arc<Progress>,
    /// Ends of runs, for the family.
    run_ends: mpsc::UnboundedSender<RunEnded>,
    /// The pod's write scope, held in the machine-wide lock until the pod ends.
    _scope: ClaimGuard,
}

impl Shared {
    fn broadcast(&self, event: impl Into<WireEvent>) {
        // No subscribers is fine.
        let _ = self.events.send(event.into());
    }

    fn log(&self, entry: &Entry) {
        if let Err(e) = self.session.lock().unwrap().append(entry) {
            tracing::error!(pod = %self.name, "session log: {e:#}");
            self.broadcast(error(ErrorCode::Internal, format!("cannot write the session log: {e:#}"), None));
        }
    }

    fn append(&self, item: Item) {
        self.log(&Entry::Item { item: item.clone() });
        self.history.lock().unwrap().push(item);
    }

    fn greeting(&self) -> Greeting {
        Greeting {
            session: self.session.lock().unwrap().id().to_string(),
            state: self.progress.state().map_or("stopped", State::as_str).to_string(),
            ..self.greeting.clone()
        }
    }

    fn set_state(&self, state: State) {
        self.progress.set_state(Some(state));
        let status = Status {
            pod: self.name.clone(),
            pid: std::process::id(),
            state: state.as_str().to_string(),
            session: self.session.lock().unwrap().id().to_string(),
            socket: self.runtime.socket(),
            cwd: self.pod_context.working_dir.clone(),
            model: Some(format!("{} {}", self.greeting.provider, self.greeting.model)),
        };
        if let Err(e) = self.runtime.write_status(&status) {
            tracing::warn!(pod = %self.name, "cannot write status.json: {e:#}");
        }
        if state != State::Running {
            let history = serde_json::to_vec(&*self.history.lock().unwrap()).unwrap_or_default();
            if let Err(e) = self.runtime.write_atomic("history.json", &history) {
                tracing::warn!(pod = %self.name, "cannot write history.json: {e:#}");
            }
        }
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
pub enum Command {
    /// A client's request; `reply` reaches only that client (and is dropped
    /// once the request is decided).
    Request {
        /// The request.
        request: Request,
        /// The client's private channel.
        reply: mpsc::Sender<WireEvent>,
    },
    /// A note from the host (e.g. a child pod finished).
    Notify(String),
    /// The run task is done.
    RunDone {
        /// The history after the run.
        history: Vec<Item>,
        /// How it ended.
        result: Result<Outcome, String>,
    },
}

/// A running pod.
#[derive(Clone)]
pub struct PodHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<WireEvent>,
    /// The pod's socket.
    pub socket: PathBuf,
    /// The pod's name.
    pub name: String,
    done: Arc<tokio::sync::Notify>,
    finished: Arc<Mutex<bool>>,
    /// State and output, readable without asking the controller.
    pub progress: Arc<Progress>,
    family: Weak<Family>,
}

impl PodHandle {
    /// Sends a request as an in-process client; answers for this client
    /// only (errors, history) arrive on the returned channel.
    pub async fn request(&self, method: Method) -> mpsc::Receiver<WireEvent> {
        let (reply, rx) = mpsc::channel(16);
        let _ = self.commands.send(Command::Request { request: Request { id: None, method }, reply }).await;
        rx
    }

    /// Sends a request whose private answers go to `reply`.
    pub async fn request_with(&self, method: Method, reply: mpsc::Sender<WireEvent>) {
        let _ = self.commands.send(Command::Request { request: Request { id: None, method }, reply }).await;
    }

    /// Queues a note for the model, as the host (not a client).
    pub async fn notify(&self, message: String) {
        let _ = self.commands.send(Command::Notify(message)).await;
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WireEvent> {
        self.events.subscribe()
    }

    /// Whether the pod has stopped (its controller ended).
    pub fn is_stopped(&self) -> bool {
        self.progress.state().is_none()
    }

    /// Waits until this pod and every pod it detached have shut down.
    pub async fn wait_family(&self) {
        self.wait().await;
        if let Some(family) = self.family.upgrade() {
            family.wait_all().await;
        }
    }

    /// Waits until the pod has shut down and cleaned up (its children
    /// included, unless detached).
    pub async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if *self.finished.lock().unwrap() {
                return;
            }
            notified.await;
        }
    }
}

/// Starts an operator's pod, the root of a new family: claims its runtime
/// directory, opens (or continues) its session, binds its socket and spawns
/// its controller.
pub async fn start(spec: PodSpec) -> anyhow::Result<PodHandle> {
    let family = Family::new(FamilyConfig {
        plugins: spec.plugins,
        sessions: spec.sessions,
        runtime_root: spec.runtime_root,
        scope_lock: spec.scope_lock,
        data_root: spec.data_root,
    });
    let member =
        MemberSpec { manifest: spec.manifest, provider: spec.provider, retry: spec.retry, resume: spec.resume };
    family.start(member).await
}

/// Starts one pod of `family`, a child of `parent` if given.
async fn start_pod(
    spec: MemberSpec,
    family: &Arc<Family>,
    config: &FamilyConfig,
    pod_context: Arc<PodContext>,
    parent: Option<&str>,
    run_ends: mpsc::UnboundedSender<RunEnded>,
) -> anyhow::Result<PodHandle> {
    let manifest = &spec.manifest;
    let name = manifest.manifest.pod.name.clone();
    let runtime = RuntimeDir::claim(&config.runtime_root, &name)?;
    let scope_claim = config.scope_lock.claim(&name, parent, &family::write_targets(&manifest.scope))?;
    let mut last_usage = None;
    let (history, session) = match &spec.resume {
        Some(id) => {
            let loaded = config.sessions.load(id)?;
            if loaded.pod != name {
                anyhow::bail!("session {id} belongs to pod {:?}, not {name:?}", loaded.pod);
            }
            let mut items = loaded.items;
            last_usage = loaded.last_usage;
            let mut writer = config.sessions.reopen(id)?;
            // A crash mid-tool-call leaves calls without results: answer them.
            for (id, name, _) in pending_calls(&items) {
                let item = Item::ToolResult {
                    id,
                    name,
                    content: "interrupted: the host stopped before this call finished".into(),
                    is_error: true,
                };
                writer.append(&Entry::Item { item: item.clone() })?;
                items.push(item);
            }
            (items, writer)
        }
        None => (Vec::new(), config.sessions.create(&name, None)?),
    };
    runtime.write_atomic("manifest.toml", toml::to_string(&manifest.manifest)?.as_bytes())?;
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
        tools: config.plugins.tools().map(|t| t.name.clone()).collect(),
        session: String::new(),
        state: String::new(),
    };
    let (events, _) = broadcast::channel(CLIENT_BUFFER);
    let shared = Arc::new(Shared {
        name: name.clone(),
        events: events.clone(),
        history: Mutex::new(history),
        session: Mutex::new(session),
        notes: Mutex::new(Vec::new()),
        last_usage: Mutex::new(last_usage),
        pod_context,
        greeting,
        runtime,
        progress: Arc::new(Progress::default()),
        run_ends,
        _scope: scope_claim,
    });
    let socket = shared.runtime.socket();
    let listener = server::bind(&socket)?;
    shared.set_state(State::Idle);

    let (commands, rx) = mpsc::channel(256);
    let handle = PodHandle {
        commands: commands.clone(),
        events,
        socket,
        name,
        done: Arc::new(tokio::sync::Notify::new()),
        finished: Arc::new(Mutex::new(false)),
        progress: shared.progress.clone(),
        family: Arc::downgrade(family),
    };
    let server = tokio::spawn(server::serve(listener, commands.clone(), shared.clone()));
    let controller = Controller {
        shared,
        commands,
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
        state: State::Idle,
        cancel: None,
    };
    let done = handle.done.clone();
    let finished = handle.finished.clone();
    let progress = handle.progress.clone();
    let family = family.clone();
    let name = handle.name.clone();
    tokio::spawn(async move {
        let detach = controller.run(rx).await;
        progress.set_state(None);
        family.stop_children(&name, detach).await;
        server.abort();
        // Once the server task is gone, nothing else holds the pod's runtime
        // dir or scope claim: both are released here.
        let _ = server.await;
        family.stopped(&name).await;
        *finished.lock().unwrap() = true;
        done.notify_waiters();
    });
    Ok(handle)
}

/// The controller: the one place that decides what a request does.
struct Controller {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    plugins: Arc<PluginHost>,
    provider: Option<Arc<dyn Provider>>,
    config: AgentConfig,
    compaction: crate::manifest::CompactionSection,
    pause_before: Vec<String>,
    sessions: SessionStore,
    state: State,
    cancel: Option<CancellationToken>,
}

impl Controller {
    /// Serves requests until shutdown; says whether the pod's children are
    /// to be detached rather than stopped.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) -> bool {
        let mut shutting_down = false;
        let mut detach = false;
        while let Some(command) = rx.recv().await {
            match command {
                Command::Request { request, reply } => {
                    let id = request.id.clone();
                    let refuse = |code, message: &str| {
                        let _ = reply.try_send(error(code, message, id.clone()));
                    };
                    match request.method {
                        Method::Run { input } => match self.state {
                            State::Idle => {
                                if self.provider.is_none() {
                                    refuse(
                                        ErrorCode::ProviderError,
                                        "this pod has no [provider]; it serves tool calls only",
                                    );
                                    continue;
                                }
                                self.shared.append(Item::User { text: input });
                                self.start_run("run", false);
                            }
                            State::Running => refuse(ErrorCode::AlreadyRunning, "a run is going on; cancel it or wait"),
                            State::Paused => refuse(ErrorCode::AlreadyRunning, "a run is paused; resume or cancel it"),
                        },
                        Method::Resume {} => match self.state {
                            State::Paused => self.start_run("resume", true),
                            _ => refuse(ErrorCode::NotPaused, "no run is paused"),
                        },
                        Method::Cancel {} => match self.state {
                            State::Running => {
                                if let Some(c) = &self.cancel {
                                    c.cancel();
                                }
                            }
                            State::Paused => {
                                let pending = pending_calls(&self.shared.history.lock().unwrap());
                                for (id, name, _) in pending {
                                    let content = "cancelled: the paused run was cancelled".to_string();
                                    self.shared.append(Item::ToolResult { id, name, content, is_error: true });
                                }
                                self.finish_run(Ok(Outcome::Cancelled));
                            }
                            State::Idle => refuse(ErrorCode::NotRunning, "no run is going on"),
                        },
                        Method::Notify { message } => self.notify(message),
                        Method::GetHistory {} => {
                            let items = self.shared.history.lock().unwrap().clone();
                            let history = PodEvent::History { items, greeting: self.shared.greeting() };
                            let _ = reply.send(history.into()).await;
                        }
                        Method::Shutdown { detach_children } => {
                            shutting_down = true;
                            detach = detach_children;
                            match (&self.cancel, self.state) {
                                (Some(c), State::Running) => c.cancel(),
                                _ => break,
                            }
                        }
                    }
                }
                Command::Notify(message) => self.notify(message),
                Command::RunDone { history, result } => {
                    *self.shared.history.lock().unwrap() = history;
                    self.cancel = None;
                    self.finish_run(result);
                    if shutting_down {
                        break;
                    }
                    if self.state == State::Idle && !self.shared.notes.lock().unwrap().is_empty() {
                        self.start_run("notify", false);
                    }
                }
            }
        }
        self.shared.broadcast(PodEvent::Shutdown);
        tracing::debug!(pod = %self.shared.name, "shut down");
        detach
    }

    fn notify(&mut self, message: String) {
        self.shared.broadcast(PodEvent::Notification { message: message.clone() });
        // A pod without a model has no one to tell.
        if self.provider.is_none() {
            return;
        }
        self.shared.notes.lock().unwrap().push(message);
        if self.state == State::Idle {
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
        self.shared.log(&Entry::RunEnd { outcome });
        self.state = if outcome == Outcome::Paused { State::Paused } else { State::Idle };
        self.shared.set_state(self.state);
        self.shared.broadcast(PodEvent::RunEnd { outcome });
    }

    fn start_run(&mut self, cause: &str, resuming: bool) {
        // Resuming approves exactly the calls that paused the run.
        let approved: HashSet<String> = if resuming {
            pending_calls(&self.shared.history.lock().unwrap()).into_iter().map(|(id, _, _)| id).collect()
        } else {
            HashSet::new()
        };
        let Some(provider) = self.provider.clone() else { return };
        let cancel = CancellationToken::new();
        self.cancel = Some(cancel.clone());
        self.state = State::Running;
        self.shared.set_state(State::Running);
        self.shared.broadcast(PodEvent::RunStart { cause: cause.to_string() });
        let shared = self.shared.clone();
        let plugins = self.plugins.clone();
        let config = self.config.clone();
        let commands = self.commands.clone();
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
        tokio::spawn(async move {
            let mut history = shared.history.lock().unwrap().clone();
            let tools = PluginTools { host: &plugins, pod: shared.pod_context.clone() };
            let agent = Agent { provider: provider.as_ref(), tools: &tools, config: &config };
            let sink_shared = shared.clone();
            let mut sink = move |event: Event| match event {
                Event::ItemAppended { item } => sink_shared.append(item),
                other => {
                    match &other {
                        Event::TextDelta { text } => sink_shared.progress.push_text(text),
                        Event::TextDone { .. } => sink_shared.progress.end_message(),
                        Event::Usage { usage } => {
                            *sink_shared.last_usage.lock().unwrap() = Some(*usage);
                            sink_shared.log(&Entry::Usage { usage: *usage });
                        }
                        Event::TurnEnd { turn, .. } => sink_shared.log(&Entry::TurnEnd { turn: *turn }),
                        _ => {}
                    }
                    sink_shared.broadcast(other);
                }
            };
            let result = agent.run(&mut history, &mut hooks, &mut sink, &cancel).await.map_err(|e| e.to_string());
            let _ = commands.send(Command::RunDone { history, result }).await;
        });
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
        let last_usage = *self.shared.last_usage.lock().unwrap();
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
        let old_id = self.shared.session.lock().unwrap().id().to_string();
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
        *self.shared.session.lock().unwrap() = writer;
        *self.shared.history.lock().unwrap() = compacted.clone();
        // The old count described the old context; the next request measures anew.
        *self.shared.last_usage.lock().unwrap() = None;
        *items = compacted;
        let message = format!("compacted {dropped} older items into a summary; session {old_id} continues as {new_id}");
        self.shared.broadcast(PodEvent::Notification { message });
    }
}

#[async_trait::async_trait]
impl Hooks for PodHooks {
    async fn before_request(&mut self, items: &mut Vec<Item>, _last_usage: Option<Usage>) -> Vec<String> {
        self.maybe_compact(items).await;
        std::mem::take(&mut *self.shared.notes.lock().unwrap())
    }

    async fn before_tool_call(&mut self, id: &str, name: &str, _arguments: &Map<String, Value>) -> ToolDecision {
        if self.pause_before.iter().any(|t| t == name) && !self.approved.contains(id) {
            return ToolDecision::Pause;
        }
        ToolDecision::Allow
    }
}
