//! The pod commands: `run` (start a pod and serve it), and the clients
//! `send`, `attach`, `history`, `cancel`, `stop` and `ps`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

use super::PluginDirs;
use super::client::{PodClient, socket_of};
use super::render::{Renderer, exit_code};
use crate::history::Item;
use crate::home::Home;
use crate::identity::Namespace;
use crate::manifest::LoadedManifest;
use crate::pod::runtime_dir::{Status, is_live, runtime_root};
use crate::pod::{Exposure, PodHandle, PodSpec, process_environment, start};
use crate::protocol::{Method, PodEvent, WireEvent};
use crate::provider::{self, Provider, RetryPolicy};
use crate::scope_lock::ScopeLock;
use crate::session::SessionStore;

/// What starts an operator's pod: shared by `run` and `mcp`.
#[derive(Args, Debug)]
pub(crate) struct PodArgs {
    /// The pod manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub plugins: PluginDirs,
    /// Continue a session: its id, or `latest` for this pod's newest.
    #[arg(long, value_name = "ID|latest")]
    pub resume: Option<String>,
}

/// `yoi-host run`
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pod: PodArgs,
    /// Run PROMPT, then shut down and exit with the run's result.
    #[arg(long, requires = "prompt")]
    once: bool,
    /// Print raw JSON events instead of text.
    #[arg(long)]
    json: bool,
    /// A first message to run.
    prompt: Option<String>,
}

fn home_and_runtime() -> anyhow::Result<(Home, PathBuf)> {
    let home = Home::from_env()?;
    let root = runtime_root(&home);
    Ok((home, root))
}

/// Starts an operator's pod from its manifest: its plugins (builtin and
/// `plugins`), its model, its session (continued from `resume`), its scope
/// claim. Shared by `run` and `mcp`. With `needs_model`, a manifest without
/// a `[provider]` is refused before anything starts.
pub(crate) async fn start_pod(
    manifest: &std::path::Path,
    plugins: &PluginDirs,
    resume: Option<&str>,
    exposure: Exposure,
    needs_model: bool,
) -> anyhow::Result<PodHandle> {
    let loaded = LoadedManifest::load(manifest)?;
    if needs_model && loaded.manifest.provider.is_none() {
        bail!("{}: a prompt needs a [provider] section", manifest.display());
    }
    let name = loaded.manifest.pod.name.clone();
    let (home, runtime_root) = home_and_runtime()?;
    let plugins = Arc::new(super::plugin_host(plugins).await?);
    for e in plugins.load_errors() {
        eprintln!("yoi-host: plugin not loaded: {e}");
    }
    let base = loaded.path.parent().map(PathBuf::from).unwrap_or_default();
    let (provider, retry): (Option<Arc<dyn Provider>>, RetryPolicy) = match &loaded.manifest.provider {
        Some(section) => {
            let env = |var: &str| std::env::var(var).ok();
            let p = provider::from_manifest(section, &base, &loaded.working_dir, &name, &env, None)?;
            (Some(Arc::from(p)), provider::retry_policy(section))
        }
        None => (None, RetryPolicy::default()),
    };
    let sessions = SessionStore::new(home.root().join("sessions"));
    let resume = resume.map(|r| sessions.resolve(r, &name)).transpose()?;
    let scope_lock = ScopeLock::new(home.scope_lock());
    start(PodSpec {
        manifest: loaded,
        plugins,
        provider,
        retry,
        sessions,
        runtime_root,
        resume,
        scope_lock,
        data_root: home.root().join("data"),
        namespace: Namespace::operator(),
        exposure,
        env: process_environment(),
        metering: None,
    })
    .await
}

/// Starts the pod, optionally runs a prompt, and serves until shut down.
/// Ctrl-C cancels a running run; a second Ctrl-C (or one while idle) shuts
/// the pod down.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let needs_model = args.prompt.is_some();
    let pod = &args.pod;
    let handle = start_pod(&pod.manifest, &pod.plugins, pod.resume.as_deref(), Exposure::Socket, needs_model).await?;
    let name = handle.name.clone();
    let mut events = handle.subscribe();
    if let Some(socket) = &handle.socket {
        eprintln!("yoi-host: pod {name} listening on {}", socket.display());
    }
    let mut renderer = Renderer::new(args.json);
    let mut code = ExitCode::SUCCESS;
    if let Some(input) = args.prompt
        && !ask(&handle, Method::Run { input }, &mut renderer).await?
        && args.once
    {
        code = ExitCode::from(1);
        ask(&handle, Method::Shutdown { detach_children: false }, &mut renderer).await?;
    }
    // SIGTERM and SIGHUP take the same path as a shutdown request: the run
    // is cancelled, children stop, the session is flushed, the claim and
    // the runtime dir are released.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut running = false;
    let mut interrupts = 0;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let event = event.event;
                    match &event {
                        WireEvent::Pod(PodEvent::RunStart { .. }) => running = true,
                        WireEvent::Pod(PodEvent::Shutdown) => break,
                        _ => {}
                    }
                    if let Some(outcome) = renderer.show(&event)? {
                        running = false;
                        if args.once {
                            code = ExitCode::from(exit_code(outcome));
                            ask(&handle, Method::Shutdown { detach_children: false }, &mut renderer).await?;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if running && interrupts == 1 {
                    eprintln!("\nyoi-host: cancelling the run (Ctrl-C again to shut down)");
                    ask(&handle, Method::Cancel {}, &mut renderer).await?;
                } else if interrupts <= 2 {
                    eprintln!("\nyoi-host: shutting down");
                    ask(&handle, Method::Shutdown { detach_children: false }, &mut renderer).await?;
                } else {
                    return Ok(ExitCode::from(130));
                }
            }
            Some(()) = terminate.recv() => {
                eprintln!("yoi-host: SIGTERM: shutting down");
                ask(&handle, Method::Shutdown { detach_children: false }, &mut renderer).await?;
            }
            Some(()) = hangup.recv() => {
                eprintln!("yoi-host: SIGHUP: shutting down");
                ask(&handle, Method::Shutdown { detach_children: false }, &mut renderer).await?;
            }
            _ = ticker.tick(), if renderer.spinning() => renderer.tick(),
        }
    }
    handle.wait().await;
    // Child pods the operator detached run on until they are stopped.
    handle.wait_family().await;
    Ok(code)
}

/// Sends `method` to the pod and shows a refusal; says whether it was
/// accepted. A pod that has already stopped counts as accepting a shutdown.
async fn ask(handle: &PodHandle, method: Method, renderer: &mut Renderer) -> anyhow::Result<bool> {
    let shutdown = matches!(method, Method::Shutdown { .. });
    match handle.request(method).await {
        Ok(answer) => match answer.into_event(None) {
            Some(event) => {
                renderer.show(&event)?;
                Ok(!matches!(event, WireEvent::Pod(PodEvent::Error { .. })))
            }
            None => Ok(true),
        },
        Err(_) if shutdown => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn connect(pod: &str) -> anyhow::Result<PodClient> {
    let (_, root) = home_and_runtime()?;
    PodClient::connect(&socket_of(&root, pod)?).await
}

/// `send`: runs TEXT in the pod and streams until the run ends.
pub async fn send(pod: &str, text: String, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(pod).await?;
    client.send(&Method::Run { input: text }).await?;
    let mut renderer = Renderer::new(json);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut started = false;
    let mut interrupts = 0;
    loop {
        tokio::select! {
            event = client.next() => {
                let Some(event) = event? else { bail!("the pod closed the connection") };
                match &event {
                    WireEvent::Pod(PodEvent::RunStart { .. }) => started = true,
                    WireEvent::Pod(PodEvent::Error { .. }) if !started => {
                        renderer.show(&event)?;
                        return Ok(ExitCode::from(1));
                    }
                    WireEvent::Pod(PodEvent::Shutdown) => bail!("the pod shut down"),
                    _ => {}
                }
                if let Some(outcome) = renderer.show(&event)? {
                    return Ok(ExitCode::from(exit_code(outcome)));
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts > 1 {
                    return Ok(ExitCode::from(130));
                }
                eprintln!("\nyoi-host: cancelling (Ctrl-C again to leave)");
                client.send(&Method::Cancel {}).await?;
            }
            _ = ticker.tick(), if renderer.spinning() => renderer.tick(),
        }
    }
}

/// Prints the items of a history for people.
fn print_items(items: &[Item]) {
    for item in items {
        match item {
            Item::User { text } => println!("> {text}"),
            Item::Assistant { text } => println!("{text}"),
            Item::System { text } => println!("[system] {text}"),
            Item::ToolCall { name, arguments, .. } => {
                println!("⏺ {name}({})", serde_json::Value::Object(arguments.clone()))
            }
            Item::ToolResult { content, is_error, .. } => {
                let mark = if *is_error { "✗" } else { "⎿" };
                println!("  {mark} {}", content.lines().next().unwrap_or_default());
            }
        }
    }
}

async fn fetch_history(client: &mut PodClient) -> anyhow::Result<WireEvent> {
    client.send(&Method::GetHistory {}).await?;
    loop {
        match client.next().await? {
            Some(event @ WireEvent::Pod(PodEvent::History { .. })) => return Ok(event),
            Some(_) => continue,
            None => bail!("the pod closed the connection"),
        }
    }
}

/// `history`
pub async fn history(pod: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(pod).await?;
    let event = fetch_history(&mut client).await?;
    if json {
        println!("{}", event.to_line());
    } else if let WireEvent::Pod(PodEvent::History { items, greeting }) = event {
        println!(
            "# pod {} ({}), {} {}, session {}",
            greeting.pod, greeting.state, greeting.provider, greeting.model, greeting.session
        );
        print_items(&items);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cancel`
pub async fn cancel(pod: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(pod).await?;
    client.send(&Method::Cancel {}).await?;
    let wait = async {
        while let Some(event) = client.next().await? {
            match event {
                WireEvent::Pod(PodEvent::RunEnd { .. }) => return Ok(ExitCode::SUCCESS),
                WireEvent::Pod(PodEvent::Error { message, .. }) => {
                    eprintln!("yoi-host: {message}");
                    return Ok(ExitCode::from(1));
                }
                _ => {}
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.context("the pod did not confirm the cancel")?
}

/// `stop`
pub async fn stop(pod: &str, detach_children: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(pod).await?;
    client.send(&Method::Shutdown { detach_children }).await?;
    let wait = async {
        while let Some(event) = client.next().await? {
            if matches!(event, WireEvent::Pod(PodEvent::Shutdown)) {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.context("the pod did not shut down in time")??;
    Ok(ExitCode::SUCCESS)
}

/// `ps`: the pods with a runtime directory on this machine.
pub fn ps() -> anyhow::Result<ExitCode> {
    let (_, root) = home_and_runtime()?;
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("status.json")) else { continue };
        let Ok(status) = serde_json::from_str::<Status>(&text) else { continue };
        let state = if is_live(&dir) { status.state.clone() } else { "stale (owner exited)".to_string() };
        rows.push((status, state));
    }
    rows.sort_by(|a, b| a.0.pod.cmp(&b.0.pod));
    println!("{:<20} {:<22} {:<8} {:<40} SOCKET", "POD", "STATE", "PID", "SESSION");
    for (s, state) in rows {
        println!("{:<20} {:<22} {:<8} {:<40} {}", s.pod, state, s.pid, s.session, s.socket.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `attach`: streamed output and a prompt line. Lines are sent as runs;
/// `/cancel`, `/resume`, `/history`, `/notify TEXT` and `/quit` are
/// commands. Ctrl-C cancels a running run, or leaves when idle; Ctrl-D leaves.
pub async fn attach(pod: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(pod).await?;
    if let WireEvent::Pod(PodEvent::History { items, greeting }) = fetch_history(&mut client).await? {
        println!(
            "# attached to {} ({}) in {} — {} {}",
            greeting.pod, greeting.state, greeting.cwd, greeting.provider, greeting.model
        );
        println!("# tools: {}", greeting.tools.join(", "));
        print_items(&items[items.len().saturating_sub(10)..]);
        println!("# type a message; /cancel /resume /history /notify TEXT /quit");
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut renderer = Renderer::new(false);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut running = false;
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Some(line) = line? else { return Ok(ExitCode::SUCCESS) };
                let line = line.trim();
                let method = match line {
                    "" => continue,
                    "/quit" => return Ok(ExitCode::SUCCESS),
                    "/cancel" => Method::Cancel {},
                    "/resume" => Method::Resume {},
                    "/history" => Method::GetHistory {},
                    l if l.starts_with("/notify ") => Method::Notify { message: l["/notify ".len()..].to_string() },
                    l => Method::Run { input: l.to_string() },
                };
                client.send(&method).await?;
            }
            event = client.next() => {
                let Some(event) = event? else {
                    println!("# the pod closed the connection");
                    return Ok(ExitCode::SUCCESS);
                };
                match &event {
                    WireEvent::Pod(PodEvent::RunStart { .. }) => running = true,
                    WireEvent::Pod(PodEvent::History { items, .. }) => print_items(items),
                    WireEvent::Pod(PodEvent::Shutdown) => {
                        println!("# the pod shut down");
                        return Ok(ExitCode::SUCCESS);
                    }
                    _ => {}
                }
                if renderer.show(&event)?.is_some() {
                    running = false;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                if !running {
                    return Ok(ExitCode::SUCCESS);
                }
                client.send(&Method::Cancel {}).await?;
            }
            _ = ticker.tick(), if renderer.spinning() => renderer.tick(),
        }
    }
}
