//! A pod's event stream to its clients: a broadcast channel (bounded per
//! client), created when the first client subscribes, so an idle pod that
//! nobody watches holds no buffer. Events sent while nobody listens are
//! dropped, as a broadcast without receivers drops them.

use std::sync::OnceLock;

use tokio::sync::broadcast;

use crate::protocol::WireEvent;

/// Events buffered per client before a slow client is dropped.
pub const CLIENT_BUFFER: usize = 1024;

/// The event stream of one pod.
#[derive(Debug, Default)]
pub struct EventHub {
    sender: OnceLock<broadcast::Sender<WireEvent>>,
}

impl EventHub {
    /// Sends `event` to every subscriber, if there is one.
    pub fn send(&self, event: WireEvent) {
        if let Some(sender) = self.sender.get() {
            let _ = sender.send(event);
        }
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WireEvent> {
        self.sender.get_or_init(|| broadcast::channel(CLIENT_BUFFER).0).subscribe()
    }
}
