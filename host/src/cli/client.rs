//! A client of a pod's socket, for the `send`, `attach`, `history`,
//! `cancel` and `stop` commands.

use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::protocol::{Method, WireEvent};

/// A connection to a pod.
pub struct PodClient {
    lines: FramedRead<tokio::net::unix::OwnedReadHalf, LinesCodec>,
    writer: OwnedWriteHalf,
}

/// The socket of pod `name` under `runtime_root`.
pub fn socket_of(runtime_root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    crate::manifest::validate_pod_name(name)?;
    Ok(runtime_root.join(name).join("sock"))
}

impl PodClient {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> anyhow::Result<PodClient> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("cannot connect to {} (is the pod running? see `yoi-host ps`)", path.display()))?;
        let (read, writer) = stream.into_split();
        Ok(PodClient { lines: FramedRead::new(read, LinesCodec::new()), writer })
    }

    /// Sends one request.
    pub async fn send(&mut self, method: &Method) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(method)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.context("the pod closed the connection")?;
        Ok(())
    }

    /// The next event, or `None` when the pod closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<WireEvent>> {
        match self.lines.next().await {
            None => Ok(None),
            Some(line) => {
                let line = line.context("cannot read from the pod")?;
                Ok(Some(serde_json::from_str(&line).with_context(|| format!("unexpected line from the pod: {line}"))?))
            }
        }
    }
}
