//! Cluster mode: a session taken up on another node than the one holding it. The credential
//! names the holding node; the new node asks it for the session over their inboxes:
//!
//! 1. `ask` (new → old): a client here presented this credential.
//! 2. The old node checks it as a local take-up would, closes the old connection if any,
//!    and in one Redis step makes the peer's room entries the new node's and publishes
//!    `moved` to its own inbox. From then on letters for the peer go to the new node, which
//!    holds them until the session arrives.
//! 3. `moved` (old → old): read in inbox order, so every letter routed to the old node before
//!    the move is in the session by now. The session ends there without a departure and the
//!    old node forwards whatever still reaches it.
//! 4. `hand` (old → new): rooms, the last event number and the events the client has not
//!    received. The new node registers the session ahead of what it held, and greets the
//!    client with `recovered: true`. Or `refuse`: a fresh session.
//!
//! A new node that gave up waiting and then gets a `hand` ends that session properly, so no
//! peer is left in a room with nobody serving it.
//!
//! A node shutting down (a rolling deploy) pushes every session the same way to a live heir:
//! `expect` first, so the heir holds what arrives before each `hand`, then steps 2 to 4 for
//! each session, the `hand` carrying the credential's digest and the identity. The heir keeps
//! them away for the recovery window; the clients, cut off when this process exits, reconnect
//! to any node (the node leaves a forwarding address in Redis). What a client still sends
//! here after its session left is passed on as `act` and handled by the heir.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::Hub;
use super::lifecycle::Resume;
use crate::auth::Identity;
use crate::cluster::inbox;
use crate::ids::{Credential, CredentialDigest, NodeId, PeerId};
use crate::protocol as p;
use crate::session::Session;
use crate::session::outbox::Outbox;
use crate::store::RoomStore;

/// How long a new node waits for the old one to hand a session over.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(3);

/// A note as another node wrote it.
pub(crate) fn parse_note(json: &str) -> Result<Note, serde_json::Error> {
    serde_json::from_str(json)
}

/// A note between two nodes about one session.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Note {
    Ask {
        ticket: u64,
        peer: String,
        from: String,
        user: String,
        digest: String,
        received: u64,
    },
    Moved {
        ticket: u64,
        peer: String,
        to: String,
        received: u64,
        pushed: bool,
    },
    Hand {
        ticket: u64,
        peer: String,
        rooms: Vec<String>,
        last: u64,
        received: u64,
        events: Vec<HandedEvent>,
        /// Set when the session was pushed to this node, nobody having asked.
        pushed: Option<Owner>,
    },
    Refuse {
        ticket: u64,
    },
    /// Hold what reaches these peers: their sessions are being pushed here.
    Expect {
        peers: Vec<String>,
    },
    /// An event the peer's client sent to the node its session has left.
    Act {
        peer: String,
        frame: String,
    },
    /// An operator removes this peer (admin API); answer `kicked` if its session is here.
    /// Ticket 0 wants no answer.
    Kick {
        ticket: u64,
        peer: String,
        reason: String,
        from: String,
    },
    Kicked {
        ticket: u64,
    },
}

/// Who owns a pushed session, so its client can take it up at the heir.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Owner {
    digest: String,
    user: String,
    name: Option<String>,
    allowed: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandedEvent {
    seq: u64,
    event: String,
    data: Box<RawValue>,
}

/// A session handed over.
pub(crate) struct Handed {
    pushed: Option<Owner>,
    rooms: Vec<String>,
    last: u64,
    received: u64,
    events: Vec<(u64, &'static str, Arc<RawValue>)>,
}

impl Hub {
    /// The session `resume` names, asked of the node holding it; `None` if it is not
    /// recoverable (or not held by another live node).
    pub(crate) async fn take_over(
        self: &Arc<Self>,
        sid: Sid,
        identity: &Identity,
        resume: &Resume,
    ) -> Option<Arc<Session>> {
        let RoomStore::Redis(redis) = &self.rooms else {
            return None;
        };
        let window = self.limits.recovery_window?;
        let peer = &resume.presented.peer;
        if self.delivery.is_arriving(peer) {
            // Pushed here by a node shutting down, and not quite here yet.
            let deadline = tokio::time::Instant::now() + HANDOVER_DEADLINE;
            self.delivery.until_arrived(peer, deadline).await;
            return self.take_up(sid, identity, resume);
        }
        // The node that issued the credential, or the heir it left its sessions to.
        let holder = match redis.holder(&resume.presented.node).await {
            Ok(Some(holder)) if holder != self.node => holder,
            // Issued here, and pushed on since (this node is shutting down).
            Ok(Some(_)) => self.delivery.forwarded_to(peer)?,
            _ => return None,
        };
        let holder = &holder;
        if !self.delivery.expect_arrival(peer) {
            return None; // another connection is already taking it over
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer) = tokio::sync::oneshot::channel();
        self.awaiting.insert(ticket, answer_tx);
        let ask = Note::Ask {
            ticket,
            peer: peer.to_string(),
            from: self.node.to_string(),
            user: identity.user_id.to_string(),
            digest: resume.presented.digest.to_hex(),
            received: resume.received,
        };
        self.post_note(holder, &ask).await;
        let handed = tokio::time::timeout(HANDOVER_DEADLINE, answer).await;
        self.awaiting.remove(&ticket);
        let Ok(Ok(Some(handed))) = handed else {
            self.delivery.call_off_arrival(peer);
            return None;
        };
        let (credential, digest) = Credential::issue(peer, &self.node);
        let session = self
            .adopt(peer.clone(), identity.clone(), digest, handed)
            .await?;
        let generation = {
            let mut link = session.link();
            link.generation += 1;
            link.away_from = Some(link.outbox.last());
            link.generation
        };
        self.keep_away(&session, generation, window);
        self.await_greeting(sid, &session, credential, resume.received, true);
        tracing::debug!(peer = %session.peer, from = %holder, "session taken over from another node");
        Some(session)
    }

    /// Makes a handed-over session this node's, ahead of what was held for it (its room
    /// entries are already). `None` (and the session ended) if it cannot be.
    async fn adopt(
        self: &Arc<Self>,
        peer: PeerId,
        identity: Identity,
        credential: CredentialDigest,
        handed: Handed,
    ) -> Option<Arc<Session>> {
        let session = Arc::new(Session::new(
            peer,
            identity,
            credential,
            Arc::clone(&self.connected),
        ));
        for room in &handed.rooms {
            session.add_room(room);
        }
        session.link().outbox =
            Outbox::handed(handed.received, handed.last, handed.events, Instant::now());
        if self.delivery.arrive(&session) {
            Some(session)
        } else {
            tracing::info!(peer = %session.peer, "session kept too much while moving; giving it up");
            self.delivery.register(Arc::clone(&session));
            self.end(&session, None);
            None
        }
    }

    /// Reads a note from another node (or, for `moved`, from this one).
    pub async fn read_note(self: &Arc<Self>, json: &str) {
        let note = match parse_note(json) {
            Ok(note) => note,
            Err(e) => return tracing::warn!(cause = %e, "unreadable note from another node"),
        };
        match note {
            Note::Ask {
                ticket,
                peer,
                from,
                user,
                digest,
                received,
            } => {
                let (Some(peer), Some(from), Some(digest)) = (
                    PeerId::parse(&peer),
                    NodeId::parse(&from),
                    CredentialDigest::from_hex(&digest),
                ) else {
                    return tracing::warn!("malformed request for a session");
                };
                let Some(session) = self.delivery.session(&peer) else {
                    // Pushed on to an heir meanwhile: the question goes after it.
                    let note = match self.delivery.forwarded_to(&peer) {
                        Some(heir) => (
                            heir,
                            Note::Ask {
                                ticket,
                                peer: peer.to_string(),
                                from: from.to_string(),
                                user,
                                digest: digest.to_hex(),
                                received,
                            },
                        ),
                        None => (from, Note::Refuse { ticket }),
                    };
                    return self.post_note(&note.0, &note.1).await;
                };
                let hub = Arc::clone(self);
                let job_session = Arc::clone(&session);
                // Behind whatever the session is still doing here (a join in flight).
                session.run_always(async move {
                    let ask = Ask {
                        ticket,
                        from,
                        user,
                        digest,
                        received,
                    };
                    hub.let_go(&job_session, ask).await;
                });
            }
            Note::Moved {
                ticket,
                peer,
                to,
                received,
                pushed,
            } => {
                let (Some(peer), Some(to)) = (PeerId::parse(&peer), NodeId::parse(&to)) else {
                    return tracing::warn!("malformed move note");
                };
                let Some(session) = self.delivery.session(&peer) else {
                    return self.post_note(&to, &Note::Refuse { ticket }).await;
                };
                // Handed from the session's queue: events its client sent before are handled
                // here, those after go to the new node.
                let (hub, job_session) = (Arc::clone(self), Arc::clone(&session));
                session.run_always(async move {
                    hub.hand(ticket, &job_session, to, received, pushed).await;
                });
            }
            Note::Hand {
                ticket,
                peer,
                rooms,
                last,
                received,
                events,
                pushed,
            } => {
                let Some(peer) = PeerId::parse(&peer) else {
                    return tracing::warn!("malformed handed session");
                };
                let Some(events) = events
                    .into_iter()
                    .map(|e| Some((e.seq, p::server_event(&e.event)?, Arc::from(e.data))))
                    .collect::<Option<Vec<_>>>()
                else {
                    return tracing::warn!(%peer, "a handed session with an unknown event");
                };
                let handed = Handed {
                    pushed,
                    rooms,
                    last,
                    received,
                    events,
                };
                if handed.pushed.is_some() {
                    return self.keep_pushed(peer, handed).await;
                }
                match self.awaiting.remove(&ticket) {
                    Some((_, waiter)) => {
                        if let Err(Some(handed)) = waiter.send(Some(handed)) {
                            self.end_stray(peer, handed).await;
                        }
                    }
                    None => self.end_stray(peer, handed).await,
                }
            }
            Note::Refuse { ticket } => {
                if let Some((_, waiter)) = self.awaiting.remove(&ticket) {
                    let _ = waiter.send(None);
                }
            }
            Note::Kick {
                ticket,
                peer,
                reason,
                from,
            } => self.read_kick(ticket, &peer, &reason, &from).await,
            Note::Kicked { ticket } => self.kick_answered(ticket),
            Note::Expect { peers } => {
                for peer in peers.iter().filter_map(|p| PeerId::parse(p)) {
                    self.delivery.expect_arrival(&peer);
                }
            }
            Note::Act { peer, frame } => {
                let Some(session) = PeerId::parse(&peer).and_then(|p| self.delivery.session(&p))
                else {
                    return tracing::debug!(peer, "an event for a session that is not here");
                };
                // `ask-ice`, the one event answered through an acknowledgement, is never
                // forwarded (see `act_elsewhere`).
                self.dispatch(&session, frame, None);
            }
        }
    }

    /// Shutting down: pushes every session of this node to a live heir, within `within`.
    /// True if they all went (this node's clients can then be cut off without a word: they
    /// reconnect and take their sessions up elsewhere).
    pub async fn hand_off(self: &Arc<Self>, within: Duration) -> bool {
        let (RoomStore::Redis(redis), Some(window)) = (&self.rooms, self.limits.recovery_window)
        else {
            return false;
        };
        let heir = match redis.heir().await {
            Ok(Some(heir)) => heir,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(cause = %e, "no heir for this node's sessions");
                return false;
            }
        };
        if let Err(e) = redis.leave_address(&heir, window).await {
            tracing::warn!(cause = %e, "no forwarding address left for this node's sessions");
        }
        // Rounds until none is left: a client may still connect while this node drains.
        let deadline = tokio::time::Instant::now() + within;
        let mut sessions: Vec<Arc<Session>> = Vec::new();
        let mut pushed = std::collections::HashSet::new();
        loop {
            let fresh: Vec<Arc<Session>> = self
                .delivery
                .sessions()
                .into_iter()
                .filter(|s| pushed.insert(s.peer.clone()))
                .collect();
            if !fresh.is_empty() {
                let peers = fresh.iter().map(|s| s.peer.to_string()).collect();
                self.post_note(&heir, &Note::Expect { peers }).await;
                // The heir holds for them before any other node learns they moved.
                if let Some(postbox) = self.rooms.postbox() {
                    postbox
                        .links()
                        .sync(std::slice::from_ref(&heir), None)
                        .await;
                }
                for session in &fresh {
                    let (hub, job_session, heir) =
                        (Arc::clone(self), Arc::clone(session), heir.clone());
                    session.run_always(async move { hub.push_out(&job_session, heir).await });
                }
                sessions.extend(fresh);
            }
            if self.delivery.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What their clients sent meanwhile is passed on to the heir before this process ends.
        for session in &sessions {
            let (done_tx, done) = tokio::sync::oneshot::channel();
            session.run_always(async move {
                let _ = done_tx.send(());
            });
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return false;
            }
        }
        tracing::info!(sessions = sessions.len(), %heir, "sessions handed to another node");
        true
    }

    /// Shutting down, in the session's queue: moves its entries to the heir (step 2 without a
    /// request; its connection stays until this process exits).
    async fn push_out(self: &Arc<Self>, session: &Arc<Session>, heir: NodeId) {
        let (received, generation) = {
            let mut link = session.link();
            if link.ended || link.moving {
                return;
            }
            link.generation += 1;
            link.away_from = None;
            link.moving = true;
            // What it is sent from now on is kept for the heir, not written to the old
            // connection (which stays open until this process exits) or forgotten with age.
            link.socket = None;
            (link.outbox.dropped_through(), link.generation)
        };
        self.keep_until_handed(session, generation);
        let moved = Note::Moved {
            ticket: 0,
            peer: session.peer.to_string(),
            to: heir.to_string(),
            received,
            pushed: true,
        };
        self.move_entries(session, &heir, &moved).await;
    }

    /// Heir: a session pushed here by a node shutting down. It waits, away, for its client.
    async fn keep_pushed(self: &Arc<Self>, peer: PeerId, handed: Handed) {
        let (Some(owner), Some(window)) = (&handed.pushed, self.limits.recovery_window) else {
            return;
        };
        let Some(digest) = CredentialDigest::from_hex(&owner.digest) else {
            return tracing::warn!(%peer, "pushed session without a usable credential");
        };
        let identity = Identity {
            user_id: Arc::from(owner.user.as_str()),
            name: owner.name.as_deref().map(Arc::from),
            rooms: owner.allowed.clone().map(Arc::from),
        };
        let received = handed.received;
        let Some(session) = self.adopt(peer, identity, digest, handed).await else {
            return;
        };
        let generation = {
            let mut link = session.link();
            link.generation += 1;
            link.away_from = Some(received);
            link.generation
        };
        self.keep_away(&session, generation, window);
    }

    /// Old node, in the session's queue: checks the request as a local take-up would, then
    /// moves the session's entries to the asking node.
    async fn let_go(self: &Arc<Self>, session: &Arc<Session>, ask: Ask) {
        let refuse = Note::Refuse { ticket: ask.ticket };
        let verdict = {
            let mut link = session.link();
            if link.ended
                || link.moving
                || session.identity.user_id.as_ref() != ask.user
                || !link.credential.matches(&ask.digest)
            {
                Verdict::NotYours
            } else if link.outbox.after(ask.received).is_none() {
                Verdict::TooLate(link.socket.take())
            } else {
                // No other connection may take it up from here on, and no pending give-up of
                // an earlier drop applies any more.
                link.credential = CredentialDigest::unmatched();
                link.generation += 1;
                link.away_from = None;
                link.moving = true;
                Verdict::Move(link.socket.take(), link.generation)
            }
        };
        let (old_socket, generation) = match verdict {
            Verdict::NotYours => return self.post_note(&ask.from, &refuse).await,
            Verdict::TooLate(old) => {
                self.end_uncaught_up(session, old);
                return self.post_note(&ask.from, &refuse).await;
            }
            Verdict::Move(old, generation) => (old, generation),
        };
        self.close(old_socket);
        self.keep_until_handed(session, generation);
        let moved = Note::Moved {
            ticket: ask.ticket,
            peer: session.peer.to_string(),
            to: ask.from.to_string(),
            received: ask.received,
            pushed: false,
        };
        if !self.move_entries(session, &ask.from, &moved).await {
            self.post_note(&ask.from, &refuse).await;
        }
    }

    /// Step 2: points the session's room entries at `to`, with `moved` to this node's own
    /// inbox behind them. If Redis does not take it, the session stays here, away (see
    /// [`Hub::keep_until_handed`]).
    async fn move_entries(
        self: &Arc<Self>,
        session: &Arc<Session>,
        to: &NodeId,
        moved: &Note,
    ) -> bool {
        let RoomStore::Redis(redis) = &self.rooms else {
            return false;
        };
        let note = match serde_json::to_vec(moved) {
            Ok(json) => inbox::note(&json),
            Err(e) => {
                tracing::error!(cause = %e, "note not serializable");
                return false;
            }
        };
        let Err(e) = redis
            .move_session(&session.rooms(), &session.peer, to, note)
            .await
        else {
            return true;
        };
        tracing::warn!(peer = %session.peer, cause = %e, "could not move a session");
        false
    }

    /// A session on its way out stays, away, until it is handed over: should that never
    /// happen (a note lost, Redis down, the other node gone), it ends when its window runs
    /// out, its departure announced, like any session nobody came back for.
    fn keep_until_handed(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        if let Some(window) = self.limits.recovery_window {
            self.keep_away(session, generation, window);
        }
    }

    /// Old node, once Redis routes the peer's events to `to`: hands the session over as soon
    /// as nothing more is on its way here for it.
    async fn hand(
        self: &Arc<Self>,
        ticket: u64,
        session: &Arc<Session>,
        to: NodeId,
        received: u64,
        pushed: bool,
    ) {
        self.settle_route(&session.peer, &to).await;
        let handed = {
            let mut link = session.link();
            let events: Option<Vec<HandedEvent>> = link.outbox.after(received).map(|kept| {
                kept.map(|k| HandedEvent {
                    seq: k.seq,
                    event: k.event.to_string(),
                    data: (*k.data).to_owned(),
                })
                .collect()
            });
            match events {
                Some(events) if !link.ended => {
                    link.ended = true;
                    link.moved_to = Some(to.clone());
                    let last = link.outbox.last();
                    link.outbox = Outbox::default();
                    let owner = pushed.then(|| Owner {
                        digest: link.credential.to_hex(),
                        user: session.identity.user_id.to_string(),
                        name: session.identity.name.as_deref().map(str::to_string),
                        allowed: session.identity.rooms.as_deref().map(<[String]>::to_vec),
                    });
                    Some((events, last, owner))
                }
                _ => None,
            }
        };
        let Some((events, last, owner)) = handed else {
            // Lost to the bounds meanwhile: its departure is announced here; the entries now
            // pointing at the other node go with the leave.
            self.end(session, None);
            return self.post_note(&to, &Note::Refuse { ticket }).await;
        };
        let hand = Note::Hand {
            ticket,
            peer: session.peer.to_string(),
            rooms: session.rooms().iter().map(|r| r.to_string()).collect(),
            last,
            received,
            events,
            pushed: owner,
        };
        self.post_note(&to, &hand).await;
        // Only now does it leave this node's sessions: shutting down waits for that.
        self.delivery.moved(session, to.clone());
        tracing::debug!(peer = %session.peer, %to, "session handed to another node");
    }

    /// Has every other node point `peer` at `to` and answer behind what it sent here before
    /// (see `cluster::links`): what was on its way is in the session then.
    async fn settle_route(&self, peer: &PeerId, to: &NodeId) {
        let (RoomStore::Redis(redis), Some(postbox)) = (&self.rooms, self.rooms.postbox()) else {
            return;
        };
        match redis.other_nodes().await {
            Ok(nodes) => postbox.links().sync(&nodes, Some((peer, to))).await,
            Err(e) => tracing::warn!(cause = %e, "other nodes unknown; handing over unsettled"),
        }
    }

    /// New node: a session handed over after the wait for it was given up. Nobody will take
    /// it up, so it ends here, its departure announced.
    async fn end_stray(self: &Arc<Self>, peer: PeerId, handed: Handed) {
        let identity = Identity {
            user_id: Arc::from(""),
            name: None,
            rooms: None,
        };
        self.delivery.expect_arrival(&peer);
        let digest = CredentialDigest::unmatched();
        if let Some(session) = self.adopt(peer, identity, digest, handed).await {
            self.end(&session, None);
        }
    }

    /// Passes on an event the client of a session that moved away still sent here. A join or
    /// room check (which may carry a room password, never to cross Redis) is answered with
    /// `unavailable` instead, through the new node: the client tries again.
    pub(crate) async fn act_elsewhere(&self, session: &Session, node: &NodeId, frame: &str) {
        let parsed = p::Frame::parse(frame);
        if parsed.as_ref().is_some_and(|f| f.event == p::ASK_ICE) {
            // Answered only through an acknowledgement, which belonged to a connection of
            // this node that is gone: nobody could receive the answer.
            return;
        }
        if let Some(request) = parsed.filter(|f| matches!(&*f.event, p::JOIN_ROOM | p::CHECK_ROOM))
        {
            let room = request
                .payload
                .and_then(|payload| serde_json::from_str::<serde_json::Value>(payload.get()).ok())
                .and_then(|payload| Some(payload.get("roomId")?.as_str()?.to_string()));
            let refusal = p::Refusal::Unavailable;
            let reply = p::outbound::JoinError {
                room_id: room.as_deref(),
                reason: refusal.code(),
                message: refusal.message(),
                retry_after_ms: None,
            };
            let Some(reply) = crate::delivery::serialize(p::JOIN_ERROR, &reply) else {
                return;
            };
            let letter = inbox::letter(&[&session.peer], &inbox::body(p::JOIN_ERROR, &reply));
            if let Some(postbox) = self.rooms.postbox() {
                postbox.post(vec![(node.clone(), letter)]);
            }
            return;
        }
        let act = Note::Act {
            peer: session.peer.to_string(),
            frame: frame.to_string(),
        };
        self.post_note(node, &act).await;
    }

    pub(super) async fn post_note(&self, node: &NodeId, note: &Note) {
        let Some(postbox) = self.rooms.postbox() else {
            return;
        };
        let json = match serde_json::to_vec(note) {
            Ok(json) => json,
            Err(e) => return tracing::error!(cause = %e, "note not serializable"),
        };
        postbox.post(vec![(node.clone(), inbox::note(&json))]);
    }
}

/// What the old node makes of a request.
enum Verdict {
    NotYours,
    /// The credential is right but the events the client missed are gone.
    TooLate(Option<Sid>),
    /// Handed over: the connection that served it here, if any, is closed.
    Move(Option<Sid>, u64),
}

/// A request to hand a session over, checked.
struct Ask {
    ticket: u64,
    from: NodeId,
    user: String,
    digest: CredentialDigest,
    received: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_session_crosses_as_json_with_its_payloads_untouched() {
        let data = RawValue::from_string(r#"{"sdp": "v=0\r\n"}"#.into()).expect("json");
        let hand = Note::Hand {
            ticket: 7,
            peer: "p".into(),
            rooms: vec!["room 1".into()],
            last: 9,
            received: 8,
            events: vec![HandedEvent {
                seq: 9,
                event: p::RELAY.into(),
                data,
            }],
            pushed: None,
        };
        let json = serde_json::to_string(&hand).expect("serializes");
        let Note::Hand { events, rooms, .. } = serde_json::from_str(&json).expect("reads") else {
            panic!("not a hand: {json}");
        };
        assert_eq!(rooms, vec!["room 1".to_string()]);
        assert_eq!(events[0].data.get(), r#"{"sdp": "v=0\r\n"}"#);
    }
}
