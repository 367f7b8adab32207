//! `join-room` and `check-room`: the join of the contract, step by step, atomic per room, and
//! the question "would a join be let in?" answered the same way without joining.
//!
//! Getting past a room's password is a look followed by an atomic join that checks the look
//! still holds ([`Expect`]): the slow password hash runs between the two, outside any lock and
//! off the async workers. In one process the room's turn makes the check a formality; across a
//! cluster it is what makes two first joiners with different passwords agree on one winner.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Hub;
use crate::limits::retry_after_ms;
use crate::metrics::{self, Timer};
use crate::protocol::inbound::{RoomRefusal, RoomRequest};
use crate::protocol::{self as p, JoinRequest, Password, Refusal, RoomCheck, outbound as out};
use crate::room_lock::RoomLock;
use crate::session::Session;
use crate::store::{Expect, JoinOutcome, Member, Recipient, RoomView};

/// Looks a join may take when other nodes keep changing the room's lock under it.
const LOCK_ATTEMPTS: usize = 3;

/// Whether a look at an empty room seals it with the password (a join) or not (a check,
/// which changes nothing and must not pay for a hash it would throw away).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sealing {
    Seal,
    Skip,
}

/// How a join or a check went before the join proper.
enum Found {
    /// The socket is already a member: nothing to do.
    Member,
    /// The joiner may go in, if the room is still as [`Expect`]ed.
    MayJoin(Expect),
}

impl Hub {
    pub(crate) async fn join_room(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let _timer = Timer::start(&metrics::get().join_seconds);
        let Some(request) = self.allowed(session, JoinRequest::parse(payload)) else {
            return;
        };
        let room = request.room_id.as_str();
        if !session.in_room(room) && session.room_count() >= self.limits.max_rooms_per_session {
            return self
                .delivery
                .refuse_join(session, Some(room), Refusal::TooManyRooms);
        }
        let name: Arc<str> = match &session.identity.name {
            Some(name) => Arc::clone(name),
            None => request.name.into(),
        };
        let newcomer = Member {
            peer: session.peer.clone(),
            name: Arc::clone(&name),
            user_id: Arc::clone(&session.identity.user_id),
            media: None,
            node: None,
        };

        let _turn = self.turns.take(room).await;
        let mut held = None;
        let mut attempts = 0;
        let existing = loop {
            attempts += 1;
            let password = request.password.as_ref();
            let expect = match self.look(session, room, password, Sealing::Seal).await {
                Ok(Found::MayJoin(expect)) => expect,
                Ok(Found::Member) => return self.rejoined(session, room),
                Err(refusal) => return self.delivery.refuse_join(session, Some(room), refusal),
            };
            let max = self.limits.max_peers_per_room;
            held.get_or_insert_with(|| self.delivery.hold_events(session));
            match self.rooms.join(room, newcomer.clone(), max, &expect).await {
                Ok(JoinOutcome::Joined(existing)) => break existing,
                Ok(JoinOutcome::AlreadyMember) => return self.rejoined(session, room),
                Ok(JoinOutcome::Full) => {
                    return self
                        .delivery
                        .refuse_join(session, Some(room), Refusal::RoomFull);
                }
                Ok(JoinOutcome::LockChanged) if attempts < LOCK_ATTEMPTS => {}
                Ok(JoinOutcome::LockChanged) => {
                    tracing::warn!(room, "join gave up: the room's lock kept changing");
                    return self
                        .delivery
                        .refuse_join(session, Some(room), Refusal::Unavailable);
                }
                Err(e) => {
                    tracing::error!(room, cause = %e, "join failed: room state unavailable");
                    return self
                        .delivery
                        .refuse_join(session, Some(room), Refusal::Unavailable);
                }
            }
        };
        session.add_room(room);
        tracing::debug!(peer = %session.peer, room, peers = existing.len(), "joined");

        for member in &existing {
            let id = &member.peer;
            self.delivery.send(
                session,
                p::USER_CONNECTED,
                &out::UserConnected {
                    id,
                    name: &member.name,
                    user_id: &member.user_id,
                },
            );
            if let Some(state) = member.media {
                self.delivery.send(
                    session,
                    p::MEDIA_STATE,
                    &out::MediaStateBackfill {
                        id,
                        room_id: room,
                        mic: state.mic,
                        cam: state.cam,
                    },
                );
            }
        }
        self.delivery
            .send(session, p::JOIN_OK, &out::JoinOk { room_id: room });
        drop(held);

        let others: Vec<Recipient> = existing.into_iter().map(Recipient::from).collect();
        let me = &*session.peer;
        let announcement = out::UserConnected {
            id: me,
            name: &name,
            user_id: &session.identity.user_id,
        };
        self.delivery
            .send_to(room, &others, p::USER_CONNECTED, &announcement)
            .await;
        self.delivery
            .send_to(room, &others, p::INIT_OFFER, &out::InitOffer { source: me })
            .await;
    }

    /// The request, if its room is valid and the session's token may join it; otherwise the
    /// `join-error` is sent.
    fn allowed<R: RoomRequest>(
        &self,
        session: &Arc<Session>,
        parsed: Result<R, RoomRefusal>,
    ) -> Option<R> {
        let (room, refusal) = match parsed {
            Ok(request) if session.identity.may_join(request.room_id()) => return Some(request),
            Ok(request) => (Some(request.room_id().to_string()), Refusal::Forbidden),
            Err(refused) => refused,
        };
        self.delivery.refuse_join(session, room.as_deref(), refusal);
        None
    }

    /// A join of a room the session is already in changes nothing, but heals a session that
    /// had lost track of it (a leave that Redis could not record yet).
    fn rejoined(&self, session: &Arc<Session>, room: &str) {
        session.add_room(room);
        self.delivery
            .send(session, p::JOIN_OK, &out::JoinOk { room_id: room });
    }

    pub(crate) async fn check_room(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let Some(request) = self.allowed(session, RoomCheck::parse(payload)) else {
            return;
        };
        let room = request.room_id.as_str();
        let password = request.password.as_ref();
        let password_required = match self.look(session, room, password, Sealing::Skip).await {
            // A member's own room: whether it is locked is all there is to say.
            Ok(Found::Member) => self.is_locked(room, session).await,
            Ok(Found::MayJoin(expect)) => Ok(matches!(expect, Expect::Locked(_))),
            Err(refusal) => Err(refusal),
        };
        match password_required {
            Ok(password_required) => self.delivery.send(
                session,
                p::ROOM_CHECK_OK,
                &out::RoomCheckOk {
                    room_id: room,
                    password_required,
                },
            ),
            Err(refusal) => self.delivery.refuse_join(session, Some(room), refusal),
        }
    }

    async fn is_locked(&self, room: &str, session: &Session) -> Result<bool, Refusal> {
        let view = self.peek(room, session).await?;
        Ok(view.lock.is_some())
    }

    async fn peek(&self, room: &str, session: &Session) -> Result<RoomView, Refusal> {
        self.rooms.peek(room, &session.peer).await.map_err(|e| {
            tracing::error!(room, cause = %e, "room state unavailable");
            Refusal::Unavailable
        })
    }

    /// Looks at the room and decides whether `session` may join it with `password`: the
    /// room's limits, its lock, and the wrong-password limits. A wrong password is counted
    /// against the socket, the room, and its user on the room. Changes nothing else.
    async fn look(
        &self,
        session: &Session,
        room: &str,
        password: Option<&Password>,
        sealing: Sealing,
    ) -> Result<Found, Refusal> {
        let view = self.peek(room, session).await?;
        if view.is_member {
            return Ok(Found::Member);
        }
        if view.members >= self.limits.max_peers_per_room {
            return Err(Refusal::RoomFull);
        }
        if view.members == 0 {
            let seal = match password.filter(|_| sealing == Sealing::Seal) {
                Some(password) => Some(RoomLock::seal(password).await.map_err(|e| {
                    tracing::error!(room, cause = %e, "could not hash a room password");
                    Refusal::Unavailable
                })?),
                None => None,
            };
            return Ok(Found::MayJoin(Expect::Empty { seal }));
        }
        let Some(lock) = view.lock else {
            return Ok(Found::MayJoin(Expect::Open));
        };
        let Some(password) = password else {
            return Err(Refusal::PasswordRequired);
        };
        let limits = self.limits.guesses;
        // The session's own attempts run one at a time (its queue), so a check suffices; the
        // room's and the user's (any of its sockets, on any node) come from everywhere at
        // once, so each is counted before it is checked.
        let socket_wait = session.guesses_blocked_for(limits.per_socket);
        let user = &*session.identity.user_id;
        let room_wait = match socket_wait {
            Some(_) => None,
            None => self
                .rooms
                .take_guess(room, user, &limits)
                .await
                .map_err(|e| {
                    tracing::error!(room, cause = %e, "room state unavailable");
                    Refusal::Unavailable
                })?,
        };
        if let Some(wait) = socket_wait.or(room_wait) {
            return Err(Refusal::RateLimited {
                retry_after_ms: retry_after_ms(wait),
            });
        }
        if lock.opens(password).await {
            if let Err(e) = self.rooms.forgive_guess(room, user).await {
                tracing::warn!(room, cause = %e, "a right password stays counted against the room and its user");
            }
            return Ok(Found::MayJoin(Expect::Locked(lock)));
        }
        session.record_wrong_guess(limits.per_socket);
        tracing::info!(peer = %session.peer, user = %session.identity.user_id, room, "wrong room password");
        Err(Refusal::WrongPassword)
    }
}
