//! A peer's session: who it is (peer id, verified identity), the rooms it has joined, its
//! count of wrong room passwords, the socket serving it now, the events it was sent (for
//! replay after a drop), and the queue that runs its events one after another.
//!
//! A session outlives its sockets: when a connection drops it stays, away, for the recovery
//! window, and a reconnecting client with its credential takes it up again.
//!
//! Lock story: `rooms`, `wrong_passwords`, `rates` and `link` are separate short-lived locks,
//! never held across an await. Only `rooms` is ever taken while `link` is held (a relay from
//! another node is checked against the rooms under the lock that delivers it), never the
//! other way round. `link` is held while an event is numbered and written to the socket, so
//! numbering and writing happen in the same order.

pub mod outbox;
mod serial;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use crate::auth::Identity;
use crate::ids::{CredentialDigest, NodeId, PeerId};
use crate::limits::{
    EventClass, EventRates, FixedWindow, SocketRates, TokenBucket, Verdict, WindowLimit,
};
use outbox::Outbox;
use serial::Serial;

pub use serial::MAX_QUEUED_EVENTS;

pub struct Session {
    pub peer: PeerId,
    pub identity: Identity,
    rooms: Mutex<Vec<Arc<str>>>,
    wrong_passwords: Mutex<FixedWindow>,
    /// How fast its client has been sending each class of event.
    rates: Mutex<SocketRates>,
    link: Mutex<Link>,
    serial: Arc<Serial>,
    live: Arc<AtomicUsize>,
}

/// The session's connection, and what it was sent.
pub struct Link {
    /// The socket serving the session now; `None` while it is away.
    pub socket: Option<Sid>,
    /// Proves a reconnecting client owns the session; replaced at every (re)connect.
    pub credential: CredentialDigest,
    pub outbox: Outbox,
    /// Bumped whenever the session loses its socket or is taken up again, so a pending
    /// give-up from an earlier drop can tell it is stale.
    pub generation: u64,
    /// While away: the number of the last event sent before the drop. Only losing an event
    /// sent after it makes the session unrecoverable.
    pub away_from: Option<u64>,
    /// The session was found unrecoverable, or its socket cut off, and its end is queued:
    /// what its client still sends is dropped.
    pub given_up: bool,
    /// The session is over (left, given up, or moved); it can no longer be taken up again.
    pub ended: bool,
    /// The session is being moved to another node (cluster mode): nothing may move it again.
    pub moving: bool,
    /// The node the session moved to, if it ended by moving (cluster mode).
    pub moved_to: Option<NodeId>,
    /// Events for the socket that found its outgoing queue full, in order, waiting for room
    /// (see `delivery`).
    pub backlog: VecDeque<(&'static str, Arc<RawValue>)>,
    /// Bytes of relays and echoes the socket may still be given now (see `delivery`).
    pub room_to_queue: TokenBucket,
    /// While a join's Redis step is under way: what reaches the session meanwhile, in
    /// order, held until its roster is sent (see `Delivery::hold_events`).
    pub held_events: Option<Held>,
}

/// Events held for a session, and whether they are being delivered now.
#[derive(Default)]
pub struct Held {
    pub events: Vec<HeldEvent>,
    /// Someone is delivering them: it ends the hold once none is left.
    pub releasing: bool,
}

pub struct HeldEvent {
    pub event: &'static str,
    pub data: Arc<RawValue>,
    /// A relay from another node: delivered only if the session is then in one of these rooms
    /// (its sender's when it was sent).
    pub only_in: Option<Vec<String>>,
}

impl HeldEvent {
    /// Whether the event is still for `session`: a relay from another node only while the
    /// session is in one of the rooms it was sent in.
    pub fn still_for(&self, session: &Session) -> bool {
        self.only_in
            .as_ref()
            .is_none_or(|rooms| session.any_room(|room| rooms.iter().any(|r| r == room)))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    /// `live` counts sessions in existence: one more until this one is dropped.
    pub fn new(
        peer: PeerId,
        identity: Identity,
        credential: CredentialDigest,
        live: Arc<AtomicUsize>,
    ) -> Session {
        live.fetch_add(1, Ordering::Relaxed);
        Session {
            live,
            peer,
            identity,
            rooms: Mutex::new(Vec::new()),
            wrong_passwords: Mutex::default(),
            rates: Mutex::default(),
            link: Mutex::new(Link {
                socket: None,
                credential,
                outbox: Outbox::default(),
                generation: 0,
                away_from: None,
                given_up: false,
                ended: false,
                moving: false,
                moved_to: None,
                backlog: VecDeque::new(),
                room_to_queue: TokenBucket::default(),
                held_events: None,
            }),
            serial: Arc::new(Serial::default()),
        }
    }

    pub fn link(&self) -> MutexGuard<'_, Link> {
        lock(&self.link)
    }

    /// Rooms this session has joined, in joining order.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        lock(&self.rooms).clone()
    }

    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.any_room(|r| r == room)
    }

    /// Whether any joined room satisfies `test` (without copying the list).
    pub fn any_room(&self, mut test: impl FnMut(&str) -> bool) -> bool {
        lock(&self.rooms).iter().any(|r| test(r))
    }

    pub fn add_room(&self, room: &str) {
        let mut rooms = lock(&self.rooms);
        if !rooms.iter().any(|r| &**r == room) {
            rooms.push(room.into());
        }
    }

    pub fn remove_room(&self, room: &str) {
        lock(&self.rooms).retain(|r| &**r != room);
    }

    /// How long until this session may try a password again, if it has had too many wrong.
    pub fn guesses_blocked_for(&self, limit: WindowLimit) -> Option<std::time::Duration> {
        lock(&self.wrong_passwords).blocked_for(std::time::Instant::now(), limit)
    }

    /// Counts one event of `class`, with a payload of `size` bytes, against its rates.
    pub fn check_rate(&self, class: EventClass, size: usize, rates: &EventRates) -> Verdict {
        lock(&self.rates).check(class, size, std::time::Instant::now(), rates)
    }

    pub fn record_wrong_guess(&self, limit: WindowLimit) {
        lock(&self.wrong_passwords).record(std::time::Instant::now(), limit);
    }

    /// Queues `job` behind this session's earlier events; false if the queue is full.
    pub fn run_in_order(&self, job: impl Future<Output = ()> + Send + 'static) -> bool {
        self.serial.run(job)
    }

    /// Queues the server's own `job` behind this session's earlier events, even past the bound.
    pub fn run_always(&self, job: impl Future<Output = ()> + Send + 'static) {
        self.serial.run_always(job);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data that is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
