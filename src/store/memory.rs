//! Room state kept in this process (single-node mode).
//!
//! The rooms live in a `DashMap` whose shard locks are held only inside one synchronous method
//! call. A room whose last member leaves is removed, and its lock with it: an empty room leaves
//! nothing behind. Wrong-password counters, per room and per user on a room, live in
//! [`WindowMap`]s of their own, which forget closed windows, so a flood of guesses cannot grow
//! them without bound. A guess locks the room's counter and then the user's, always in that
//! order.
//!
//! With webhooks on, each join and leave records its events while it holds the room's entry,
//! so the queue has them in the order of the changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{Expect, JoinOutcome, Member, RoomSummary, RoomView};
use crate::ids::PeerId;
use crate::limits::{GuessLimits, WindowMap};
use crate::protocol::MediaState;
use crate::room_lock::RoomLock;
use crate::webhooks::{Batch, Kind, LocalQueue};

struct Room {
    /// In joining order.
    members: Vec<Member>,
    lock: Option<RoomLock>,
    /// When it got its first member, in unix milliseconds.
    created_at_ms: u64,
}

/// Room state kept in this process.
#[derive(Default)]
pub struct MemoryRooms {
    rooms: DashMap<String, Room>,
    guesses: WindowMap<String>,
    /// Per room, then user id.
    guessers: WindowMap<(String, Arc<str>)>,
    /// Where webhook events go, when they are on.
    webhooks: Option<Arc<LocalQueue>>,
}

impl MemoryRooms {
    /// Rooms whose joins and leaves are recorded as webhook events on `queue`.
    pub fn with_webhooks(queue: Arc<LocalQueue>) -> MemoryRooms {
        MemoryRooms {
            webhooks: Some(queue),
            ..MemoryRooms::default()
        }
    }

    /// Records the events of one change of `room`, in this order.
    fn record(&self, room: &str, events: &[(Kind, Option<&Member>)]) {
        if let Some(queue) = &self.webhooks {
            let mut batch = Batch::new();
            for (kind, participant) in events {
                queue.push(batch.event(*kind, room, *participant));
            }
        }
    }

    pub fn peek(&self, room: &str, peer: &PeerId) -> RoomView {
        match self.rooms.get(room) {
            Some(found) => RoomView {
                members: found.members.len(),
                is_member: found.members.iter().any(|m| m.peer == *peer),
                lock: found.lock.clone(),
            },
            None => RoomView {
                members: 0,
                is_member: false,
                lock: None,
            },
        }
    }

    /// Snapshots the room and adds `member` in one step, if its lock is as expected.
    pub fn join(
        &self,
        room: &str,
        member: Member,
        max_members: usize,
        expect: &Expect,
    ) -> JoinOutcome {
        match self.rooms.entry(room.to_string()) {
            Entry::Occupied(mut entry) => {
                let found = entry.get_mut();
                if found.members.iter().any(|m| m.peer == member.peer) {
                    JoinOutcome::AlreadyMember
                } else if found.members.len() >= max_members {
                    JoinOutcome::Full
                } else if !expect.matches_lock(found.lock.as_ref()) {
                    JoinOutcome::LockChanged
                } else {
                    self.record(room, &[(Kind::ParticipantJoined, Some(&member))]);
                    let before = found.members.clone();
                    found.members.push(member);
                    JoinOutcome::Joined(before)
                }
            }
            Entry::Vacant(entry) => {
                if max_members == 0 {
                    return JoinOutcome::Full;
                }
                let Expect::Empty { seal } = expect else {
                    return JoinOutcome::LockChanged;
                };
                self.record(
                    room,
                    &[
                        (Kind::RoomStarted, None),
                        (Kind::ParticipantJoined, Some(&member)),
                    ],
                );
                entry.insert(Room {
                    members: vec![member],
                    lock: seal.clone(),
                    created_at_ms: unix_ms(),
                });
                JoinOutcome::Joined(Vec::new())
            }
        }
    }

    pub fn take_guess(&self, room: &str, user: &str, limits: &GuessLimits) -> Option<Duration> {
        let now = Instant::now();
        let mut counted = self.guesses.window(room.to_string(), now, limits.per_room);
        let mut by_user =
            self.guessers
                .window((room.to_string(), Arc::from(user)), now, limits.per_user);
        let wait = limits.room_wait(now, &counted, &by_user);
        if wait.is_none() {
            counted.record(now, limits.per_room);
            by_user.record(now, limits.per_user);
        }
        wait
    }

    pub fn forgive_guess(&self, room: &str, user: &str) {
        self.guesses.forgive(&room.to_string());
        self.guessers.forgive(&(room.to_string(), Arc::from(user)));
    }

    /// Removes `sid` from the room; returns the members who remain, or `None` if it was not
    /// a member. Drops the room, and its lock, when it empties.
    pub fn members(&self, room: &str) -> Vec<PeerId> {
        self.rooms.get(room).map_or_else(Vec::new, |found| {
            found.members.iter().map(|m| m.peer.clone()).collect()
        })
    }

    pub fn leave(&self, room: &str, peer: &PeerId) -> Option<Vec<PeerId>> {
        let Entry::Occupied(mut entry) = self.rooms.entry(room.to_string()) else {
            return None;
        };
        let members = &mut entry.get_mut().members;
        let position = members.iter().position(|m| m.peer == *peer)?;
        let gone = members.remove(position);
        let remaining: Vec<PeerId> = members.iter().map(|m| m.peer.clone()).collect();
        let left = (Kind::ParticipantLeft, Some(&gone));
        if remaining.is_empty() {
            self.record(room, &[left, (Kind::RoomFinished, None)]);
            entry.remove();
        } else {
            self.record(room, &[left]);
        }
        Some(remaining)
    }

    /// Caches a member's media state; false if `sid` is not in the room.
    pub fn set_media(&self, room: &str, peer: &PeerId, state: MediaState) -> bool {
        let Some(mut found) = self.rooms.get_mut(room) else {
            return false;
        };
        match found.members.iter_mut().find(|m| m.peer == *peer) {
            Some(member) => {
                member.media = Some(state);
                true
            }
            None => false,
        }
    }

    pub fn is_member(&self, room: &str, peer: &PeerId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|found| found.members.iter().any(|m| m.peer == *peer))
    }

    /// Rooms currently held in memory.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.rooms
            .iter()
            .map(|entry| RoomSummary {
                room: entry.key().clone(),
                members: entry.members.len(),
                locked: entry.lock.is_some(),
                created_at_ms: Some(entry.created_at_ms),
            })
            .collect()
    }

    /// A room's members in joining order (none: no such room).
    pub fn roster(&self, room: &str) -> Vec<Member> {
        self.rooms
            .get(room)
            .map_or_else(Vec::new, |found| found.members.clone())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> Member {
        Member {
            peer: PeerId::parse(&format!("p{n}")).expect("valid"),
            name: format!("m{n}").into(),
            user_id: format!("u{n}").into(),
            media: None,
            node: None,
        }
    }

    #[test]
    fn join_snapshots_before_adding_and_leave_cleans_up() {
        let rooms = MemoryRooms::default();
        let (a, b) = (member(1), member(2));
        let first = Expect::Empty { seal: None };
        assert!(
            matches!(rooms.join("r", a.clone(), 10, &first), JoinOutcome::Joined(v) if v.is_empty())
        );
        match rooms.join("r", b.clone(), 10, &Expect::Open) {
            JoinOutcome::Joined(v) => assert_eq!(v, vec![a.clone()]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            rooms.join("r", a.clone(), 10, &first),
            JoinOutcome::AlreadyMember
        ));
        assert!(matches!(
            rooms.join("r", member(3), 2, &Expect::Open),
            JoinOutcome::Full
        ));
        assert_eq!(rooms.leave("r", &a.peer), Some(vec![b.peer.clone()]));
        assert_eq!(rooms.leave("r", &a.peer), None);
        assert_eq!(rooms.leave("r", &b.peer), Some(vec![]));
        assert_eq!(rooms.room_count(), 0);
    }

    #[tokio::test]
    async fn a_lock_is_checked_in_the_join_and_gone_with_the_room() {
        let rooms = MemoryRooms::default();
        let view = |peer: &PeerId| rooms.peek("r", peer);
        let seal = Expect::Empty {
            seal: Some(lock("pw-1").await),
        };
        let (a, b, c) = (member(1), member(2), member(3));
        joined(&rooms, "r", a.clone(), &seal);
        let lock_a = view(&b.peer).lock.expect("sealed");
        // A second "first joiner" lost the race; so did one that expected an open room.
        assert!(matches!(
            rooms.join("r", b.clone(), 10, &seal),
            JoinOutcome::LockChanged
        ));
        assert!(matches!(
            rooms.join("r", b.clone(), 10, &Expect::Open),
            JoinOutcome::LockChanged
        ));
        let other = Expect::Locked(lock("pw-1").await);
        assert!(matches!(
            rooms.join("r", b.clone(), 10, &other),
            JoinOutcome::LockChanged
        ));
        let right = Expect::Locked(lock_a.clone());
        joined(&rooms, "r", b.clone(), &right);
        rooms.leave("r", &a.peer);
        rooms.leave("r", &b.peer);
        assert!(
            view(&c.peer).lock.is_none(),
            "the lock went with the last member"
        );
        assert!(matches!(
            rooms.join("r", c, 10, &right),
            JoinOutcome::LockChanged
        ));
    }

    async fn lock(text: &str) -> RoomLock {
        let raw = serde_json::value::RawValue::from_string(format!(
            r#"{{"roomId":"r","password":"{text}"}}"#
        ))
        .expect("json");
        let check = crate::protocol::RoomCheck::parse(Some(&raw)).expect("valid");
        RoomLock::seal(&check.password.expect("given"))
            .await
            .expect("sealed")
    }

    fn guess_limits(per_user: u32, per_room: u32, window: Duration) -> GuessLimits {
        let limit = |limit| crate::limits::WindowLimit { limit, window };
        GuessLimits {
            per_socket: limit(u32::MAX),
            per_user: limit(per_user),
            per_room: limit(per_room),
        }
    }

    #[test]
    fn guesses_are_counted_per_user_and_room_before_they_are_checked() {
        let rooms = MemoryRooms::default();
        let limits = guess_limits(2, 3, Duration::from_secs(60));
        assert_eq!(rooms.take_guess("r", "eve", &limits), None);
        assert_eq!(rooms.take_guess("r", "eve", &limits), None);
        assert!(
            rooms.take_guess("r", "eve", &limits).is_some(),
            "eve's third waits"
        );
        rooms.forgive_guess("r", "eve");
        assert_eq!(
            rooms.take_guess("r", "eve", &limits),
            None,
            "a right one is given back"
        );
        assert_eq!(rooms.take_guess("other", "eve", &limits), None, "per room");
        // The room's third attempt; then it has had its fill.
        assert_eq!(rooms.take_guess("r", "mallory", &limits), None);
        let wait = rooms.take_guess("r", "mallory", &limits);
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(60)),
            "one who guessed here waits: {wait:?}"
        );
        assert_eq!(
            rooms.take_guess("r", "ann", &limits),
            None,
            "one who has not guessed here may still try"
        );
        assert!(rooms.take_guess("r", "ann", &limits).is_some(), "once");
        rooms.forgive_guess("r", "ann");
        assert_eq!(
            rooms.take_guess("r", "ann", &limits),
            None,
            "a right password given back leaves ann as one who has not guessed"
        );
    }

    /// Joins `member` to `room` (of at most 10), which must let it in.
    fn joined(rooms: &MemoryRooms, room: &str, member: Member, expect: &Expect) {
        assert!(matches!(
            rooms.join(room, member, 10, expect),
            JoinOutcome::Joined(_)
        ));
    }

    #[test]
    fn the_views_of_a_room_show_its_members_in_joining_order() {
        let rooms = MemoryRooms::default();
        let (a, b, c) = (member(1), member(2), member(3));
        let first = Expect::Empty { seal: None };
        joined(&rooms, "r", a.clone(), &first);
        joined(&rooms, "r", b.clone(), &Expect::Open);
        joined(&rooms, "s", c.clone(), &first);

        let seen = rooms.peek("r", &a.peer);
        assert_eq!((seen.members, seen.is_member), (2, true));
        let seen = rooms.peek("r", &c.peer);
        assert_eq!((seen.members, seen.is_member), (2, false));
        assert!(rooms.is_member("r", &b.peer));
        assert!(!rooms.is_member("r", &c.peer));
        assert!(!rooms.is_member("none", &a.peer));
        assert_eq!(rooms.members("r"), vec![a.peer.clone(), b.peer.clone()]);
        assert_eq!(rooms.members("none"), Vec::<PeerId>::new());
        assert_eq!(rooms.roster("r"), vec![a.clone(), b.clone()]);
        assert_eq!(rooms.roster("none"), Vec::<Member>::new());
        assert_eq!(rooms.room_count(), 2);

        let mut summaries = rooms.rooms();
        summaries.sort_by(|x, y| x.room.cmp(&y.room));
        let shape: Vec<(&str, usize, bool)> = summaries
            .iter()
            .map(|s| (s.room.as_str(), s.members, s.locked))
            .collect();
        assert_eq!(shape, vec![("r", 2, false), ("s", 1, false)]);
        // 2020-01-01 in unix milliseconds: the creation time is a real clock reading.
        assert!(
            summaries
                .iter()
                .all(|s| s.created_at_ms > Some(1_577_836_800_000))
        );
    }

    #[test]
    fn media_state_is_cached_only_for_a_member() {
        let rooms = MemoryRooms::default();
        let (a, b) = (member(1), member(2));
        let first = Expect::Empty { seal: None };
        joined(&rooms, "r", a.clone(), &first);
        joined(&rooms, "r", b.clone(), &Expect::Open);
        let state = MediaState {
            mic: true,
            cam: false,
        };
        assert!(rooms.set_media("r", &b.peer, state));
        assert!(!rooms.set_media("r", &member(3).peer, state));
        assert!(!rooms.set_media("none", &a.peer, state));
        let media: Vec<Option<MediaState>> = rooms.roster("r").iter().map(|m| m.media).collect();
        assert_eq!(media, vec![None, Some(state)]);
    }

    #[test]
    fn expired_guess_counters_are_swept_once_they_reach_the_bound_and_not_before() {
        let rooms = MemoryRooms::default();
        let closed = guess_limits(1, 1, Duration::ZERO);
        let floor = WindowMap::<String>::SWEEP_FLOOR;
        for n in 0..floor {
            assert_eq!(rooms.take_guess(&format!("r{n}"), "eve", &closed), None);
        }
        assert_eq!(rooms.guesses.len(), floor, "kept until the bound");
        assert_eq!(rooms.guessers.len(), floor, "kept until the bound");
        assert_eq!(rooms.take_guess("next", "eve", &closed), None);
        assert_eq!(rooms.guesses.len(), 1, "only the new counter is left");
        assert_eq!(rooms.guessers.len(), 1, "only the new counter is left");
    }
}
