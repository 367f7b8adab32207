//! The rooms' behaviour: one flow per file, one method per row of the contract's tables.
//! [`Hub`] holds what every flow shares; `transport` feeds it one socket's events in order.
//!
//! - `join`: `join-room` and `check-room`, getting past a room's password lock.
//! - `leave`: `leave-room`, disconnects, and announcing departures.
//! - `echo`: `media-state`, `stopScreenShare` and `chat-message`, echoed to the sender's room.
//! - `relay`: `#rtcio:message`, to one peer.
//! - `ice`: `ask-ice`, the client's ICE servers (with a TURN credential) in an acknowledgement.
//! - `lifecycle`: a session opened or taken up again, greeted, kept away after a drop, ended.
//! - `handover`: (cluster mode) a session taken up on another node than the one holding it.
//! - `admin`: an operator's kicks and room closings.

mod admin;
mod echo;
mod handover;
mod ice;
mod join;
mod leave;
mod lifecycle;
mod relay;

pub use lifecycle::Resume;

#[cfg(test)]
pub(crate) use handover::parse_note;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;

use crate::auth::Verifier;
use crate::delivery::{Delivery, GivenUp};
use crate::ids::{NodeId, PeerId};
use crate::limits::{ConnectionCaps, EventRates, GuessLimits, Rate};
use crate::session::outbox::KeepLimits;
use crate::store::{RoomStore, StoreError};
use crate::turn::IceServers;
use crate::turns::RoomTurns;

/// Limits that shape what clients may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_peers_per_room: usize,
    /// Rooms one session may be in at once, so one client cannot grow the server's state
    /// (and every room's fan-out) without bound.
    pub max_rooms_per_session: usize,
    pub guesses: GuessLimits,
    /// How long a dropped session stays recoverable; `None` turns recovery off.
    pub recovery_window: Option<Duration>,
    /// What a session keeps for replay.
    pub keep: KeepLimits,
    /// Bytes of relays and echoes one socket may be given (`MAX_QUEUED_BYTES`).
    pub queue_budget: Rate,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// How fast one socket may send each class of event.
    pub rates: EventRates,
}

/// Everything the flows share.
pub struct Hub {
    /// This process: in cluster mode its name among the nodes; credentials name it.
    pub(crate) node: NodeId,
    pub(crate) rooms: RoomStore,
    pub(crate) turns: RoomTurns,
    pub(crate) verifier: Arc<Verifier>,
    /// What `ask-ice` answers with.
    pub(crate) ice: Arc<IceServers>,
    pub(crate) limits: Limits,
    /// Connections held, in all and per client address.
    pub(crate) caps: Arc<ConnectionCaps>,
    pub(crate) delivery: Delivery,
    /// Leaves the store could not record when they happened (Redis unreachable), retried by
    /// the cluster heartbeat.
    missed_leaves: std::sync::Mutex<Vec<(String, PeerId)>>,
    /// Sockets admitted and not yet greeted.
    pending: DashMap<Sid, lifecycle::Pending>,
    /// Sessions asked of other nodes, by ticket, waiting for their answer.
    awaiting: DashMap<u64, tokio::sync::oneshot::Sender<Option<handover::Handed>>>,
    tickets: AtomicU64,
    /// Kicks asked of other nodes, by ticket, waiting for the node that held the peer.
    kicks: DashMap<u64, tokio::sync::oneshot::Sender<()>>,
    /// Live sessions, connected or away; each `Session` counts itself in and out.
    pub(crate) connected: Arc<AtomicUsize>,
    /// Set once shutdown begins: the node no longer wants new clients (`/readyz`).
    stopping: AtomicBool,
    /// Sessions ending now whose leaves are not all recorded yet (they are no longer among
    /// the delivery's sessions).
    ending: Arc<AtomicUsize>,
}

/// How long `/readyz` waits for Redis to answer before calling the node unready.
const READY_PING_WITHIN: Duration = Duration::from_secs(1);

/// How often connected sessions forget the events their clients can no longer need.
const FORGET_EVERY: Duration = Duration::from_secs(5);

/// How long a node forwards what still reaches a session that moved away: far longer than a
/// letter routed before the move can take to arrive.
const FORWARD_FOR: Duration = Duration::from_secs(30);

impl Hub {
    pub fn new(
        io: SocketIo,
        rooms: RoomStore,
        verifier: Arc<Verifier>,
        ice: Arc<IceServers>,
        limits: Limits,
    ) -> Arc<Self> {
        let (given_up_tx, given_up_rx) = mpsc::unbounded_channel();
        let recoverable = limits.recovery_window.is_some();
        let delivery = Delivery::new(
            io,
            rooms.postbox(),
            limits.keep,
            limits.queue_budget,
            recoverable,
            given_up_tx,
        );
        let node = rooms.node().cloned().unwrap_or_else(NodeId::random);
        let hub = Arc::new(Hub {
            node,
            rooms,
            turns: RoomTurns::default(),
            verifier,
            ice,
            limits,
            caps: ConnectionCaps::new(limits.max_connections, limits.max_connections_per_address),
            delivery,
            pending: DashMap::new(),
            missed_leaves: Default::default(),
            awaiting: DashMap::new(),
            // 0 is no ticket: a pushed session's notes carry it.
            tickets: AtomicU64::new(1),
            kicks: DashMap::new(),
            connected: Arc::default(),
            stopping: AtomicBool::new(false),
            ending: Arc::default(),
        });
        tokio::spawn(end_given_up(Arc::downgrade(&hub), given_up_rx));
        tokio::spawn(forget_old_events(Arc::downgrade(&hub)));
        hub
    }

    pub fn connections(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sessions whose connection dropped and that are waiting, recoverable, to be taken up.
    pub fn away(&self) -> usize {
        self.delivery
            .sessions()
            .iter()
            .filter(|s| {
                let link = s.link();
                link.socket.is_none() && !link.ended
            })
            .count()
    }

    /// Rooms with members on this node: all of them on a single node (counted in the store,
    /// so a room left behind would show), in cluster mode those of this node's sessions.
    pub fn local_rooms(&self) -> usize {
        self.rooms.local_room_count().unwrap_or_else(|| {
            let mut rooms = std::collections::HashSet::new();
            for session in self.delivery.sessions() {
                rooms.extend(session.rooms());
            }
            rooms.len()
        })
    }

    /// Room memberships of this node's sessions.
    pub fn local_members(&self) -> usize {
        self.delivery
            .sessions()
            .iter()
            .map(|s| s.room_count())
            .sum()
    }

    /// Shutdown has begun: load balancers should send new clients elsewhere.
    pub fn stop_wanting_clients(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Why the node should get no new clients now, if it should not.
    pub async fn unready(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            return Some("draining");
        }
        match tokio::time::timeout(READY_PING_WITHIN, self.rooms.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) | Err(_) => Some("room state unreachable"),
        }
    }

    /// The metrics' current state.
    pub fn current(&self) -> crate::metrics::Current {
        crate::metrics::Current {
            connections: self.connections(),
            sessions_away: self.away(),
            rooms: self.local_rooms(),
            members: self.local_members(),
        }
    }

    // ---- cluster upkeep ----

    /// Refreshes this node's heartbeat; false if it had lapsed (see `store::redis`).
    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        match &self.rooms {
            RoomStore::Redis(redis) => redis.heartbeat().await,
            RoomStore::Memory(_) => Ok(true),
        }
    }

    /// Removes the members of nodes that died and tells whoever is left in their rooms.
    pub async fn reap_dead_nodes(&self) -> Result<(), StoreError> {
        let RoomStore::Redis(redis) = &self.rooms else {
            return Ok(());
        };
        for departure in redis.reap_dead_nodes().await? {
            let _turn = self.turns.take(&departure.room).await;
            self.announce_departure(&departure.room, &departure.peer, &departure.remaining)
                .await;
        }
        Ok(())
    }

    pub async fn deregister_node(&self) -> Result<(), StoreError> {
        match &self.rooms {
            RoomStore::Redis(redis) => redis.deregister().await,
            RoomStore::Memory(_) => Ok(()),
        }
    }

    /// Waits until every session of this node has ended and its leaves are recorded, up to
    /// `within`; whether they all were. (An ended session may still be referenced, by a
    /// recovery window's timer, so live sessions are not what is counted.)
    async fn drained(&self, within: std::time::Duration) -> bool {
        until(within, || {
            self.delivery.is_empty() && self.ending.load(Ordering::SeqCst) == 0
        })
        .await
    }
}

/// Polls `done` until it holds, up to `within`; whether it did.
async fn until(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Ends the sessions given up (see [`GivenUp`]).
async fn end_given_up(hub: Weak<Hub>, mut given_up: mpsc::UnboundedReceiver<GivenUp>) {
    while let Some((session, generation)) = given_up.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        tracing::info!(peer = %session.peer, "session given up; ending it");
        hub.end(&session, Some(generation));
    }
}

/// Lets connected sessions drop events older than a client needs, so an idle session keeps
/// nothing.
async fn forget_old_events(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(FORGET_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let (now, keep) = (Instant::now(), hub.limits.keep);
        hub.delivery.forget_moves(FORWARD_FOR);
        for session in hub.delivery.sessions() {
            let mut link = session.link();
            if link.socket.is_some() {
                link.outbox.forget_older_than(now, keep);
            }
        }
    }
}
