//! The rooms' behaviour: one flow per file, one method per row of the contract's tables.
//! [`Hub`] holds what every flow shares; `transport` feeds it one socket's events in order.
//!
//! - `join`: `join-room` and `check-room`, getting past a room's password lock.
//! - `leave`: `leave-room`, disconnects, and announcing departures.
//! - `echo`: `media-state`, `stopScreenShare` and `chat-message`, echoed to the sender's room.
//! - `relay`: `#rtcio:message`, to one peer.

mod echo;
mod join;
mod leave;
mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use crate::auth::Verifier;
use crate::delivery::Delivery;
use crate::limits::GuessLimits;
use crate::store::{RoomStore, StoreError};
use crate::turns::RoomTurns;

/// Limits that shape what clients may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_peers_per_room: usize,
    pub guesses: GuessLimits,
}

/// Everything the flows share.
pub struct Hub<A: Adapter> {
    pub(crate) rooms: RoomStore,
    pub(crate) turns: RoomTurns,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) limits: Limits,
    pub(crate) delivery: Delivery<A>,
    /// Live sessions; each `Session` counts itself in and out.
    pub(crate) connected: Arc<AtomicUsize>,
}

impl<A: Adapter> Hub<A> {
    pub fn new(
        io: SocketIo<A>,
        rooms: RoomStore,
        verifier: Arc<Verifier>,
        limits: Limits,
    ) -> Arc<Self> {
        let delivery = Delivery::new(io, rooms.is_shared());
        Arc::new(Hub {
            rooms,
            turns: RoomTurns::default(),
            verifier,
            limits,
            delivery,
            connected: Arc::default(),
        })
    }

    pub fn connections(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn local_rooms(&self) -> usize {
        self.rooms.local_room_count()
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
            let sid = departure.sid.to_string();
            self.announce_departure(&sid, &departure.remaining).await;
        }
        Ok(())
    }

    pub async fn deregister_node(&self) -> Result<(), StoreError> {
        match &self.rooms {
            RoomStore::Redis(redis) => redis.deregister().await,
            RoomStore::Memory(_) => Ok(()),
        }
    }

    /// Waits until every session has ended (their leaves are recorded), up to `within`.
    pub async fn drained(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}
