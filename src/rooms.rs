//! Room state: who is in which room, under which name, with which cached media state.
//!
//! Lock story. Two locks, each held briefly and never one inside the other's critical
//! section in the opposite order:
//! - [`RoomTurns`] hands out one async turn per room. A join or leave holds its room's turn
//!   from the snapshot until its last emit, so the events of two membership changes in the
//!   same room reach every client in the order the changes happened (a newcomer never hears
//!   `user-disconnected` for a peer before `user-connected` for it). Relays and echoes don't
//!   take turns.
//! - The member lists live in [`MemoryRooms`], a `DashMap` whose shard locks are held only
//!   inside one synchronous method call. A room whose last member leaves is removed, and so
//!   is its turn once nobody waits for it: an empty room leaves nothing behind.

use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use socketioxide::socket::Sid;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::protocol::MediaState;
use crate::session::Session;

/// One member of a room as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub sid: Sid,
    pub name: Arc<str>,
    pub user_id: Arc<str>,
    pub media: Option<MediaState>,
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
}

/// Room membership kept in this process.
#[derive(Default)]
pub struct MemoryRooms {
    rooms: DashMap<String, Vec<Member>>,
}

impl MemoryRooms {
    /// Snapshots the room and adds `member` in one step.
    pub fn join(&self, room: &str, member: Member, max_members: usize) -> JoinOutcome {
        match self.rooms.entry(room.to_string()) {
            Entry::Occupied(mut entry) => {
                let members = entry.get_mut();
                if members.iter().any(|m| m.sid == member.sid) {
                    JoinOutcome::AlreadyMember
                } else if members.len() >= max_members {
                    JoinOutcome::Full
                } else {
                    let before = members.clone();
                    members.push(member);
                    JoinOutcome::Joined(before)
                }
            }
            Entry::Vacant(entry) => {
                if max_members == 0 {
                    return JoinOutcome::Full;
                }
                entry.insert(vec![member]);
                JoinOutcome::Joined(Vec::new())
            }
        }
    }

    /// Removes `sid` from the room; returns the members who remain, or `None` if it was not
    /// a member. Drops the room when it empties.
    pub fn leave(&self, room: &str, sid: Sid) -> Option<Vec<Sid>> {
        let Entry::Occupied(mut entry) = self.rooms.entry(room.to_string()) else {
            return None;
        };
        let members = entry.get_mut();
        let position = members.iter().position(|m| m.sid == sid)?;
        members.remove(position);
        let remaining: Vec<Sid> = members.iter().map(|m| m.sid).collect();
        if remaining.is_empty() {
            entry.remove();
        }
        Some(remaining)
    }

    /// Caches a member's media state; false if `sid` is not in the room.
    pub fn set_media(&self, room: &str, sid: Sid, state: MediaState) -> bool {
        let Some(mut members) = self.rooms.get_mut(room) else {
            return false;
        };
        match members.iter_mut().find(|m| m.sid == sid) {
            Some(member) => {
                member.media = Some(state);
                true
            }
            None => false,
        }
    }

    pub fn is_member(&self, room: &str, sid: Sid) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|members| members.iter().any(|m| m.sid == sid))
    }

    /// Rooms currently held in memory.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// Where room state lives: in this process, or (cluster mode) shared through Redis.
pub enum RoomStore {
    Memory(MemoryRooms),
    Redis(Box<crate::cluster::RedisRooms>),
}

/// Room state could not be read or written (cluster mode only: Redis unreachable).
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RoomStore {
    pub async fn join(
        &self,
        room: &str,
        member: Member,
        max_members: usize,
    ) -> Result<JoinOutcome, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.join(room, member, max_members)),
            RoomStore::Redis(rooms) => rooms.join(room, member, max_members).await,
        }
    }

    pub async fn leave(&self, room: &str, sid: Sid) -> Result<Option<Vec<Sid>>, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.leave(room, sid)),
            RoomStore::Redis(rooms) => rooms.leave(room, sid).await,
        }
    }

    pub async fn set_media(
        &self,
        room: &str,
        sid: Sid,
        state: MediaState,
    ) -> Result<bool, StoreError> {
        match self {
            RoomStore::Memory(rooms) => Ok(rooms.set_media(room, sid, state)),
            RoomStore::Redis(rooms) => rooms.set_media(room, sid, state).await,
        }
    }

    /// Whether `target` is a member of any room `session` has joined.
    pub async fn shares_room(&self, session: &Session, target: Sid) -> Result<bool, StoreError> {
        match self {
            RoomStore::Memory(memory) => Ok(session.any_room(|r| memory.is_member(r, target))),
            RoomStore::Redis(redis) => redis.shares_room(&session.rooms(), target).await,
        }
    }

    /// Rooms held in this process's memory (none in cluster mode).
    pub fn local_room_count(&self) -> usize {
        match self {
            RoomStore::Memory(rooms) => rooms.room_count(),
            RoomStore::Redis(_) => 0,
        }
    }

    /// Whether other processes share this state (and may hold the sockets we address).
    pub fn is_shared(&self) -> bool {
        matches!(self, RoomStore::Redis(_))
    }
}

/// Per-room turns: see the module comment.
#[derive(Default)]
pub struct RoomTurns {
    turns: DashMap<String, Arc<Mutex<()>>>,
}

/// Holding this means it is your turn in the room.
pub struct Turn<'a> {
    turns: &'a RoomTurns,
    room: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RoomTurns {
    pub async fn take(&self, room: &str) -> Turn<'_> {
        let lock = self.turns.entry(room.to_string()).or_default().clone();
        Turn {
            turns: self,
            room: room.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Turns currently held or awaited.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns.len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // The map and this guard hold the only references when nobody else is waiting; new
        // waiters must clone from the map under the same shard lock, so this cannot race.
        self.turns
            .turns
            .remove_if(&self.room, |_, lock| Arc::strong_count(lock) == 2);
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> Member {
        Member {
            sid: Sid::new(),
            name: format!("m{n}").into(),
            user_id: format!("u{n}").into(),
            media: None,
        }
    }

    #[test]
    fn join_snapshots_before_adding_and_leave_cleans_up() {
        let rooms = MemoryRooms::default();
        let (a, b) = (member(1), member(2));
        assert!(matches!(rooms.join("r", a.clone(), 10), JoinOutcome::Joined(v) if v.is_empty()));
        match rooms.join("r", b.clone(), 10) {
            JoinOutcome::Joined(v) => assert_eq!(v, vec![a.clone()]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            rooms.join("r", a.clone(), 10),
            JoinOutcome::AlreadyMember
        ));
        assert!(matches!(rooms.join("r", member(3), 2), JoinOutcome::Full));
        assert_eq!(rooms.leave("r", a.sid), Some(vec![b.sid]));
        assert_eq!(rooms.leave("r", a.sid), None);
        assert_eq!(rooms.leave("r", b.sid), Some(vec![]));
        assert_eq!(rooms.room_count(), 0);
    }

    #[tokio::test]
    async fn turns_vanish_when_released() {
        let turns = RoomTurns::default();
        {
            let _t = turns.take("r").await;
            assert_eq!(turns.len(), 1);
        }
        assert_eq!(turns.len(), 0);
    }
}
