//! Room state: who is in which room, under which name, with which cached media state, behind
//! which password lock, and how many wrong passwords it has seen lately. One interface, [`RoomStore`], over two places it can live: this process ([`memory`]) or Redis,
//! shared by every node of a cluster ([`redis`]). The hub never asks which one it has.

pub mod memory;
pub mod redis;
mod relays;

use std::sync::Arc;

use crate::ids::{NodeId, PeerId};
use crate::limits::GuessLimits;
use crate::protocol::MediaState;
use crate::room_lock::RoomLock;
use crate::session::Session;

pub use memory::MemoryRooms;
pub use redis::{Postbox, RedisRooms};

/// One member of a room as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub name: Arc<str>,
    pub user_id: Arc<str>,
    pub media: Option<MediaState>,
    /// The node whose session serves it (`None`: this node).
    pub node: Option<NodeId>,
}

/// A peer to tell something, and the node whose session serves it (`None`: this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub peer: PeerId,
    pub node: Option<NodeId>,
}

impl Recipient {
    pub fn here(peer: PeerId) -> Recipient {
        Recipient { peer, node: None }
    }
}

impl From<Member> for Recipient {
    fn from(member: Member) -> Recipient {
        Recipient {
            peer: member.peer,
            node: member.node,
        }
    }
}

/// Where a relay goes, found in the same step that checks the peers share a room.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayRoute {
    /// The target shares none of the sender's rooms.
    Unshared,
    /// The target's session is on this node: deliver it here.
    Here,
    /// The target is on another node (as far as this one knows), and the relay is on its way
    /// there.
    Posted,
}

/// A room as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: String,
    pub members: usize,
    /// Whether it has a password.
    pub locked: bool,
    /// When it got its first member, in unix milliseconds (unknown for a room whose first
    /// member joined before the server recorded it).
    pub created_at_ms: Option<u64>,
}

/// What a join found.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Joined; these were the members before the newcomer, in joining order.
    Joined(Vec<Member>),
    /// The socket was already a member; nothing changed.
    AlreadyMember,
    /// The room is at its limit; nothing changed.
    Full,
    /// The room's lock is not the one the joiner expected (another joiner sealed the empty
    /// room first, or the room emptied); nothing changed. Look again and retry.
    LockChanged,
}

/// A room as a joiner finds it, before it decides how to get past the lock.
#[derive(Debug)]
pub struct RoomView {
    pub members: usize,
    pub is_member: bool,
    /// The room's lock; always `None` for an empty room.
    pub lock: Option<RoomLock>,
}

/// The lock a joiner got past, checked again in the same atomic step as the join.
#[derive(Debug)]
pub enum Expect {
    /// The room was empty; the joiner seals it with this lock (or leaves it open).
    Empty { seal: Option<RoomLock> },
    /// The room had members and no password.
    Open,
    /// The room had members and this lock, which the joiner's password opened.
    Locked(RoomLock),
}

impl Expect {
    /// Whether a room with members and `lock` is what the joiner expected.
    fn matches_lock(&self, lock: Option<&RoomLock>) -> bool {
        match (self, lock) {
            (Expect::Open, None) => true,
            (Expect::Locked(expected), Some(lock)) => expected == lock,
            _ => false,
        }
    }
}

/// Where room state lives: in this process, or (cluster mode) shared through Redis.
pub enum RoomStore {
    Memory(MemoryRooms),
    Redis(Box<RedisRooms>),
}

/// Room state could not be read or written (cluster mode only: Redis unreachable).
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RoomStore {
    /// The room as `peer` would find it joining now.
    pub async fn peek(&self, room: &str, peer: &PeerId) -> Result<RoomView, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.peek(room, peer)),
            RoomStore::Redis(rooms) => rooms.peek(room, peer).await,
        }
    }

    /// The members of a room, in no particular order.
    pub async fn members(&self, room: &str) -> Result<Vec<Recipient>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(here(rooms.members(room))),
            RoomStore::Redis(rooms) => rooms.members(room).await,
        }
    }

    /// Snapshots the room and adds `member` in one atomic step, if the room's lock is still
    /// what the joiner `expect`s.
    pub async fn join(
        &self,
        room: &str,
        member: Member,
        max_members: usize,
        expect: &Expect,
    ) -> Result<JoinOutcome, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.join(room, member, max_members, expect)),
            RoomStore::Redis(rooms) => rooms.join(room, member, max_members, expect).await,
        }
    }

    /// Counts `user`'s password attempt against the room before it is checked, so parallel
    /// guessers cannot all slip under the limits; `Some(wait)` (and nothing counted) if
    /// [`GuessLimits::room_wait`] says the user must wait.
    pub async fn take_guess(
        &self,
        room: &str,
        user: &str,
        limits: &GuessLimits,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.take_guess(room, user, limits)),
            RoomStore::Redis(rooms) => rooms.take_guess(room, user, limits).await,
        }
    }

    /// Takes back an attempt counted by [`RoomStore::take_guess`] that was right.
    pub async fn forgive_guess(&self, room: &str, user: &str) -> Result<(), StoreError> {
        match self {
            RoomStore::Memory(rooms) => {
                rooms.forgive_guess(room, user);
                Ok(())
            }
            RoomStore::Redis(rooms) => rooms.forgive_guess(room, user).await,
        }
    }

    pub async fn leave(
        &self,
        room: &str,
        peer: &PeerId,
    ) -> Result<Option<Vec<Recipient>>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.leave(room, peer).map(here)),
            RoomStore::Redis(rooms) => rooms.leave(room, peer).await,
        }
    }

    pub async fn set_media(
        &self,
        room: &str,
        peer: &PeerId,
        state: MediaState,
    ) -> Result<bool, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.set_media(room, peer, state)),
            RoomStore::Redis(rooms) => rooms.set_media(room, peer, state).await,
        }
    }

    /// Whether `target` shares a room with `session`, and if so where its session is; a target
    /// on another node is sent `data` (the relayed event's), which that node checks again.
    /// `data` is only built for that.
    pub async fn route_relay(
        &self,
        session: &Session,
        target: &PeerId,
        data: impl FnOnce() -> Vec<u8>,
    ) -> Result<RelayRoute, StoreError> {
        match self {
            RoomStore::Memory(memory) => Ok(if session.any_room(|r| memory.is_member(r, target)) {
                RelayRoute::Here
            } else {
                RelayRoute::Unshared
            }),
            RoomStore::Redis(redis) => {
                redis
                    .route_relay(session.rooms(), &session.peer, target, data())
                    .await
            }
        }
    }

    /// Every room with members (in cluster mode, on every node).
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.rooms()),
            RoomStore::Redis(rooms) => rooms.rooms().await,
        }
    }

    /// A room's members in joining order, with their media state and node (none: no room).
    pub async fn roster(&self, room: &str) -> Result<Vec<Member>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.roster(room)),
            RoomStore::Redis(rooms) => rooms.roster(room).await,
        }
    }

    /// The cluster's other live nodes (none on a single node).
    pub async fn other_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        match self {
            RoomStore::Memory(_) => Ok(Vec::new()),
            RoomStore::Redis(rooms) => rooms.other_nodes().await,
        }
    }

    /// Whether room state can be reached now (always, in memory).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            RoomStore::Memory(_) => Ok(()),
            RoomStore::Redis(redis) => redis.ping().await,
        }
    }

    /// Rooms held in this process's memory (`None` in cluster mode, where they are in Redis).
    pub fn local_room_count(&self) -> Option<usize> {
        match self {
            RoomStore::Memory(rooms) => Some(rooms.room_count()),
            RoomStore::Redis(_) => None,
        }
    }

    /// This node's id among the cluster's (`None` on a single node).
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            RoomStore::Memory(_) => None,
            RoomStore::Redis(redis) => Some(redis.node()),
        }
    }

    /// How this node posts events to peers on other nodes (cluster mode only).
    pub fn postbox(&self) -> Option<Postbox> {
        match self {
            RoomStore::Memory(_) => None,
            RoomStore::Redis(redis) => Some(redis.postbox()),
        }
    }
}

fn here(peers: Vec<PeerId>) -> Vec<Recipient> {
    peers.into_iter().map(Recipient::here).collect()
}
