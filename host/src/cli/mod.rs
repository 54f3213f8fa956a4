//! The `yoi-host` command line.
//!
//! Exit codes: 0 success; 1 the tool call or the run failed; 2 setup error
//! (bad arguments, bad manifest, missing directory, pod not running),
//! printed as `yoi-host: ...` on stderr; 3 a run hit `max_turns`; 4 a run
//! paused; 130 a run was cancelled. A closed stdout (broken pipe) counts as
//! success.

mod client;
mod mcp;
mod pods;
mod render;
mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::home::Home;
use crate::manifest::LoadedManifest;
use crate::plugin::{Allocator, Ceilings, HostOptions, PluginSet, ToolError, ToolErrorKind};

/// Hosts LLM agent pods whose tools run as WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "yoi-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the tool plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Run tools directly, without a model.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Start a pod from its manifest and serve its socket.
    Run(pods::RunArgs),
    /// Run a message in a running pod and stream the answer.
    Send {
        /// The pod's name.
        pod: String,
        /// The message.
        text: String,
        /// Print raw JSON events.
        #[arg(long)]
        json: bool,
    },
    /// Talk to a running pod interactively.
    Attach {
        /// The pod's name.
        pod: String,
    },
    /// Print a running pod's history.
    History {
        /// The pod's name.
        pod: String,
        /// Print the raw `history` event.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pod's current run.
    Cancel {
        /// The pod's name.
        pod: String,
    },
    /// Shut a pod down, and its child pods unless --detach-children.
    Stop {
        /// The pod's name.
        pod: String,
        /// Leave its child pods running (they keep their scope).
        #[arg(long)]
        detach_children: bool,
    },
    /// List the pods on this machine.
    Ps,
    /// Serve a pod's tools, and the pod itself (`ask_pod`), to an MCP
    /// client on stdin and stdout (see docs/mcp.md).
    Mcp(mcp::McpArgs),
    /// Host many tenants' pods behind an HTTP API (see docs/serve.md).
    Serve(serve::ConfigArg),
    /// Administer the tenants of a server.
    #[command(subcommand)]
    Tenant(serve::TenantCommand),
}

#[derive(Subcommand, Debug)]
enum PluginsCommand {
    /// List the plugins with their tools and input schemas.
    List {
        #[command(flatten)]
        plugins: PluginDirs,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a starter plugin (one tool, its schema, a build script and a
    /// README) that builds with its language's toolchain and loads unchanged.
    New {
        /// The starter's language.
        #[arg(long, value_enum)]
        lang: crate::starter::Language,
        /// The plugin's name, such as `word-count` (its tool is `WordCount`).
        name: String,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ToolCommand {
    /// Run exactly one tool call within a manifest's scope and print the
    /// result as one JSON line.
    Call {
        #[command(flatten)]
        plugins: PluginDirs,
        /// The pod manifest whose scope and limits apply.
        #[arg(long)]
        manifest: PathBuf,
        /// The tool's name.
        tool: String,
        /// The tool's input, a JSON object.
        input: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct PluginDirs {
    /// A directory of third-party plugins (`*.wasm`), in addition to the
    /// builtin ones. May be given more than once.
    #[arg(long = "plugins", value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

fn plugins_new(lang: crate::starter::Language, name: &str, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = crate::starter::create(lang, name, &dir)?;
    let mut out = std::io::stdout().lock();
    for file in &files {
        writeln!(out, "wrote {}", file.display())?;
    }
    writeln!(out, "next: cd {} && ./build.sh, then see README.md", dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line, runs it and returns the exit code.
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if let Err(e) = crate::os::raise_open_file_limit() {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }
    // An MCP server on stdio answers one client: one thread spares each
    // message a hop between worker threads (tool calls run on their own
    // threads either way).
    let mut builder = match cli.command {
        Command::Mcp(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return setup_error(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => setup_error(&e),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("YOI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn setup_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("yoi-host: {e:#}");
    ExitCode::from(2)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins(PluginsCommand::List { plugins, json }) => plugins_list(&plugins, json).await,
        Command::Plugins(PluginsCommand::New { lang, name, dir }) => plugins_new(lang, &name, dir),
        Command::Tool(ToolCommand::Call { plugins, manifest, tool, input }) => {
            tool_call(&plugins, &manifest, &tool, &input).await
        }
        Command::Run(args) => pods::run(args).await,
        Command::Send { pod, text, json } => pods::send(&pod, text, json).await,
        Command::Attach { pod } => pods::attach(&pod).await,
        Command::History { pod, json } => pods::history(&pod, json).await,
        Command::Cancel { pod } => pods::cancel(&pod).await,
        Command::Stop { pod, detach_children } => pods::stop(&pod, detach_children).await,
        Command::Ps => pods::ps(),
        Command::Mcp(args) => mcp::mcp(args).await,
        Command::Serve(config) => serve::serve(&config).await,
        Command::Tenant(command) => serve::tenant(command),
    }
}

pub(crate) async fn plugin_host(dirs: &PluginDirs) -> anyhow::Result<PluginSet> {
    for dir in &dirs.dirs {
        if !dir.is_dir() {
            anyhow::bail!("--plugins {}: not a directory", dir.display());
        }
    }
    let home = Home::from_env()?;
    let ceilings = ceilings_from_env(&|var| std::env::var(var).ok())?;
    let options = HostOptions { cache_dir: home.cache_dir(), allocator: Allocator::Pooling, ceilings };
    PluginSet::with_plugins(&options, &dirs.dirs).await
}

/// The operator's ceilings on every call, whatever a manifest asks:
/// `YOI_MAX_TOOL_TIMEOUT_MS` and `YOI_MAX_TOOL_MEMORY_MB` (unset: the
/// engine's own bounds).
fn ceilings_from_env(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Ceilings> {
    let mut ceilings = Ceilings::default();
    let read = |var: &str| -> anyhow::Result<Option<u64>> {
        match env(var).filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => anyhow::bail!("{var}={v:?}: must be a whole number above 0"),
            },
        }
    };
    if let Some(ms) = read("YOI_MAX_TOOL_TIMEOUT_MS")? {
        ceilings.timeout = ceilings.timeout.min(std::time::Duration::from_millis(ms));
    }
    if let Some(mb) = read("YOI_MAX_TOOL_MEMORY_MB")? {
        ceilings.memory_bytes = ceilings.memory_bytes.min(mb.saturating_mul(1 << 20));
    }
    Ok(ceilings)
}

async fn plugins_list(dirs: &PluginDirs, json: bool) -> anyhow::Result<ExitCode> {
    let host = plugin_host(dirs).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let plugins: Vec<_> = host
            .plugins()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name(), "origin": p.origin(), "sha256": p.digest(), "tools": p.tools(),
                })
            })
            .collect();
        let doc = serde_json::json!({"plugins": plugins, "errors": host.load_errors()});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for p in host.plugins() {
            writeln!(out, "{} ({}, sha256 {})", p.name(), p.origin(), &p.digest()[..16])?;
            for tool in p.tools() {
                writeln!(out, "  {}: {}", tool.name, tool.description)?;
                writeln!(out, "    input: {}", tool.input_schema)?;
            }
        }
        if host.plugins().is_empty() {
            writeln!(out, "no plugins loaded")?;
        }
        for e in host.load_errors() {
            eprintln!("yoi-host: plugin not loaded: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tool_call(dirs: &PluginDirs, manifest: &std::path::Path, tool: &str, input: &str) -> anyhow::Result<ExitCode> {
    let loaded = LoadedManifest::load(manifest)?;
    let host = plugin_host(dirs).await?;
    for e in host.load_errors() {
        eprintln!("yoi-host: plugin not loaded: {e}");
    }
    let data_root = crate::home::Home::from_env()?.root().join("data");
    let env = |var: &str| std::env::var(var).ok();
    let pod = Arc::new(crate::pod::pod_context(&loaded, &host, &data_root, &env, None)?);
    let result = match serde_json::from_str::<serde_json::Value>(input) {
        Ok(value) if value.is_object() => host.call(&pod, tool, input).await,
        Ok(_) => Err(ToolError::new(ToolErrorKind::InvalidInput, "the input must be a JSON object")),
        Err(e) => Err(ToolError::new(ToolErrorKind::InvalidInput, format!("the input is not valid JSON: {e}"))),
    };
    let (line, code) = match result {
        Ok(output) => (serde_json::json!({"ok": output}), ExitCode::SUCCESS),
        Err(error) => (serde_json::json!({"error": error}), ExitCode::from(1)),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write the result")?;
    Ok(code)
}
