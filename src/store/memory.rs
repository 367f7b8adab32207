//! Room membership kept in this process (single-node mode).
//!
//! The member lists live in a `DashMap` whose shard locks are held only inside one
//! synchronous method call. A room whose last member leaves is removed: an empty room leaves
//! nothing behind.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use socketioxide::socket::Sid;

use super::{JoinOutcome, Member};
use crate::protocol::MediaState;

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
}
