//! Captures what a plugin writes to stdout and stderr during one call, so it
//! can go to the host's log (and a panic message into the error of a call
//! that trapped). Plugins get no inherited stdio.
//!
//! The capture keeps the first [`CAPTURE_BYTES`] and counts the rest: a
//! chatty plugin loses output, never its call.

use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of each stream kept per call.
pub const CAPTURE_BYTES: usize = 64 * 1024;

/// One captured output stream; clones share the buffer.
#[derive(Clone, Default)]
pub struct Capture {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: usize,
}

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock();
        let room = CAPTURE_BYTES.saturating_sub(c.kept.len());
        let take = room.min(bytes.len());
        c.kept.extend_from_slice(&bytes[..take]);
        c.dropped += bytes.len() - take;
    }

    /// Everything kept, lossily decoded, with a note if output was dropped.
    pub fn text(&self) -> String {
        let c = self.inner.lock();
        let mut text = String::from_utf8_lossy(&c.kept).into_owned();
        if c.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes not kept]", c.dropped));
        }
        text
    }

    /// The last `max` bytes (at a character boundary) of what was kept.
    pub fn tail(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.inner.lock().kept).into_owned();
        let mut start = text.len().saturating_sub(max);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].trim().to_string()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        let c = self.inner.lock();
        c.kept.is_empty() && c.dropped == 0
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
