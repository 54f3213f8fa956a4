//! A pod's event stream to its clients: a broadcast channel (bounded per
//! client) and a short replay buffer of the latest events, both created
//! when the first client subscribes, so an idle pod that nobody watches
//! holds no buffer. Events sent while nobody listens are dropped.
//!
//! Every event carries an [`EventId`] that places it in the pod's session
//! log: a client that lost its connection names the last id it saw and
//! gets what followed, from the replay buffer when the gap is short, or
//! from the session log (the durable events: items, usage, turn and run
//! ends) when it is not ([`EventHub::resume`]).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::protocol::WireEvent;

/// Events buffered per client before a slow client is dropped.
pub const CLIENT_BUFFER: usize = 1024;

/// The latest events kept for clients that reconnect.
pub const REPLAY_BUFFER: usize = 512;

/// Where an event stands in its pod's session log: `line` lines of session
/// `session` had been written when it was sent, and it is the `seq`-th
/// event since then. The event that reports line `line` itself (an item,
/// usage, a turn or run end) has `seq` 0. Written as `SESSION:LINE.SEQ`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    /// The session log.
    pub session: Arc<str>,
    /// Lines written before (or, with `seq` 0, up to) the event.
    pub line: u64,
    /// Events since that line.
    pub seq: u32,
}

impl EventId {
    /// Whether this event comes after `(line, seq)` of the same session.
    pub fn after(&self, line: u64, seq: u32) -> bool {
        (self.line, self.seq) > (line, seq)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}.{}", self.session, self.line, self.seq)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(text: &str) -> Result<EventId, String> {
        let bad = || format!("{text:?} is not an event id (SESSION:LINE.SEQ)");
        let (session, place) = text.rsplit_once(':').ok_or_else(bad)?;
        let (line, seq) = place.split_once('.').ok_or_else(bad)?;
        if session.is_empty() || session.len() > 200 {
            return Err(bad());
        }
        Ok(EventId {
            session: Arc::from(session),
            line: line.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// An event with its place.
#[derive(Clone, Debug)]
pub struct Stamped {
    /// Where it stands.
    pub id: EventId,
    /// The event.
    pub event: WireEvent,
}

impl std::ops::Deref for Stamped {
    type Target = WireEvent;

    fn deref(&self) -> &WireEvent {
        &self.event
    }
}

impl Serialize for Stamped {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.event.serialize(serializer)
    }
}

/// What a reconnecting client gets: the events it missed that the replay
/// buffer still holds, then every event from now on. `complete` says the
/// buffer reached back to the client's last event; when it is false the
/// caller fills the gap from the session log.
pub struct Resumed {
    /// Missed events still buffered, oldest first.
    pub missed: Vec<Stamped>,
    /// Whether `missed` is all that was missed.
    pub complete: bool,
    /// Every event after `missed`.
    pub live: broadcast::Receiver<Stamped>,
}

#[derive(Default)]
struct Hub {
    sender: Option<broadcast::Sender<Stamped>>,
    recent: VecDeque<Stamped>,
}

/// The event stream of one pod.
#[derive(Default)]
pub struct EventHub {
    hub: Mutex<Hub>,
}

impl fmt::Debug for EventHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

impl EventHub {
    /// Sends `event` to every subscriber, if there is one, and keeps it
    /// for clients that reconnect.
    pub fn send(&self, event: Stamped) {
        let mut hub = self.hub.lock();
        let Some(sender) = &hub.sender else { return };
        let _ = sender.send(event.clone());
        if hub.recent.len() == REPLAY_BUFFER {
            hub.recent.pop_front();
        }
        hub.recent.push_back(event);
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        let mut hub = self.hub.lock();
        hub.sender.get_or_insert_with(|| broadcast::channel(CLIENT_BUFFER).0).subscribe()
    }

    /// Every event after `last`, as far as the replay buffer reaches.
    pub fn resume(&self, last: &EventId) -> Resumed {
        let mut hub = self.hub.lock();
        let live = hub.sender.get_or_insert_with(|| broadcast::channel(CLIENT_BUFFER).0).subscribe();
        let same_session = |e: &Stamped| e.id.session == last.session;
        // The buffer covers the gap if it holds `last` itself or an event
        // of the same session at or before it.
        let reaches =
            hub.recent.front().is_some_and(|first| same_session(first) && !first.id.after(last.line, last.seq));
        let missed: Vec<Stamped> = if reaches {
            hub.recent.iter().skip_while(|e| same_session(e) && !e.id.after(last.line, last.seq)).cloned().collect()
        } else {
            Vec::new()
        };
        Resumed { missed, complete: reaches, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PodEvent;

    fn stamped(line: u64, seq: u32) -> Stamped {
        Stamped {
            id: EventId { session: Arc::from("s-1"), line, seq },
            event: PodEvent::Notification { message: format!("{line}.{seq}") }.into(),
        }
    }

    #[test]
    fn ids_round_trip_and_bad_ones_are_refused() {
        let id: EventId = "coder-17-ab:12.3".parse().unwrap();
        assert_eq!((id.line, id.seq, &*id.session), (12, 3, "coder-17-ab"));
        assert_eq!(id.to_string(), "coder-17-ab:12.3");
        for bad in ["", "x", ":1.2", "s:1", "s:a.b", "s:1.-1"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_short_gap_is_replayed_from_the_buffer_and_a_long_one_is_not() {
        let hub = EventHub::default();
        let _watcher = hub.subscribe();
        for seq in 1..=3 {
            hub.send(stamped(5, seq));
        }
        let resumed = hub.resume(&stamped(5, 1).id);
        assert!(resumed.complete);
        assert_eq!(resumed.missed.iter().map(|e| e.id.seq).collect::<Vec<_>>(), [2, 3]);

        for n in 0..REPLAY_BUFFER as u32 {
            hub.send(stamped(6, n + 1));
        }
        let resumed = hub.resume(&stamped(5, 1).id);
        assert!(!resumed.complete && resumed.missed.is_empty());
        let other = EventId { session: Arc::from("s-0"), line: 9, seq: 0 };
        assert!(!hub.resume(&other).complete);
    }
}
