//! The pod's Unix socket: accepts any number of clients, reads their
//! request lines, and writes them every event plus the answers meant for
//! them alone.
//!
//! A malformed line gets an `invalid_request` error on that connection,
//! which stays open. A client that reads too slowly cannot stall the pod:
//! events reach it through a bounded buffer; when the buffer overflows, or a
//! write does not complete within [`WRITE_TIMEOUT`], the client gets a
//! `slow_client` error (if it can still take it) and is disconnected.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};

use super::{Command, Reply, Shared};
use crate::protocol::{ErrorCode, Line, LineReader, MAX_LINE_BYTES, WireEvent, error, parse_request};

/// Longest a single write to a client may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the socket with mode 0600 (inside the 0700 runtime directory).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until the task is aborted. The server holds only a weak
/// sender: a socket does not keep its pod alive.
pub(super) async fn serve(listener: UnixListener, commands: mpsc::WeakSender<Command>, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let events = shared.events.subscribe();
                tokio::spawn(connection(stream, commands.clone(), events));
            }
            Err(e) => {
                tracing::warn!(pod = %shared.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write(stream: &mut tokio::net::unix::OwnedWriteHalf, event: &WireEvent) -> Result<(), ()> {
    let mut line = event.to_line();
    line.push('\n');
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Serves one client until it leaves, the pod shuts down, or it is too slow.
async fn connection(
    stream: UnixStream,
    commands: mpsc::WeakSender<Command>,
    mut events: broadcast::Receiver<super::Stamped>,
) {
    let (read, mut writer) = stream.into_split();
    let mut lines = LineReader::new(BufReader::new(read));
    let (reply, mut replies) = mpsc::channel::<WireEvent>(64);
    loop {
        tokio::select! {
            line = lines.next() => match line {
                Ok(None) | Err(_) => return,
                Ok(Some(Line::TooLong)) => {
                    let e = error(ErrorCode::InvalidRequest, format!("request line longer than {MAX_LINE_BYTES} bytes"), None);
                    if write(&mut writer, &e).await.is_err() { return; }
                }
                Ok(Some(Line::Text(line))) if line.trim().is_empty() => {}
                Ok(Some(Line::Text(line))) => match parse_request(&line) {
                    Ok(request) => {
                        let id = request.id.clone();
                        let command = Command::Request { request, reply: Reply::Connection(reply.clone()) };
                        let sent = match commands.upgrade() {
                            Some(commands) => commands.send(command).await.is_ok(),
                            None => false,
                        };
                        if !sent {
                            let e = error(ErrorCode::NotRunning, "the pod has stopped", id);
                            let _ = write(&mut writer, &e).await;
                            return;
                        }
                    }
                    Err((id, message)) => {
                        if write(&mut writer, &error(ErrorCode::InvalidRequest, message, id)).await.is_err() { return; }
                    }
                },
            },
            Some(answer) = replies.recv() => {
                if write(&mut writer, &answer).await.is_err() { return; }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    let last = matches!(event.event, WireEvent::Pod(crate::protocol::PodEvent::Shutdown));
                    if write(&mut writer, &event).await.is_err() {
                        return;
                    }
                    if last {
                        let _ = writer.shutdown().await;
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let notice = error(
                        ErrorCode::SlowClient,
                        format!("disconnected: this client fell {missed} events behind"),
                        None,
                    );
                    let _ = tokio::time::timeout(Duration::from_millis(200), write(&mut writer, &notice)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
