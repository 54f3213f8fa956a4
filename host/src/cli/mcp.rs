//! `yoi-host mcp`: one pod's tools, and the pod itself, for an MCP client
//! that starts this command and speaks to it on stdin and stdout. The pod
//! runs as `run` would start it (its claim on the scope lock included) but
//! without a socket; it shuts down when the client closes stdin or on
//! SIGTERM, SIGHUP or Ctrl-C. Nothing but MCP messages goes to stdout.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rmcp::ServiceExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::mcp::PodServer;
use crate::pod::Exposure;
use crate::protocol::Method;

/// `yoi-host mcp`
#[derive(Args, Debug)]
pub struct McpArgs {
    #[command(flatten)]
    pod: super::pods::PodArgs,
}

/// Serves the pod on stdio until the client goes away or a signal comes.
pub async fn mcp(args: McpArgs) -> anyhow::Result<ExitCode> {
    let args = &args.pod;
    let resume = args.resume.as_deref();
    let pod = super::pods::start_pod(&args.manifest, &args.plugins, resume, Exposure::HostOnly, false).await?;
    let service = PodServer::new(pod.downgrade())
        .serve(rmcp::transport::stdio_pipes())
        .await
        .context("the MCP client did not start a session on stdio")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let cancel = service.cancellation_token();
    tokio::select! {
        _ = service.waiting() => {}
        _ = terminate.recv() => cancel.cancel(),
        _ = hangup.recv() => cancel.cancel(),
        _ = tokio::signal::ctrl_c() => cancel.cancel(),
    }
    // The session is over: the run (if any) is cancelled and logged, the
    // claim released.
    let _ = pod.request(Method::Shutdown { detach_children: false }).await;
    pod.wait_family().await;
    Ok(ExitCode::SUCCESS)
}
