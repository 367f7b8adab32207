//! Cluster mode: a session taken up on another node than the one holding it. The credential
//! names the holding node; the new node asks it for the session over their inboxes:
//!
//! 1. `ask` (new → old): a client here presented this credential.
//! 2. The old node checks it as a local take-up would, closes the old connection if any,
//!    and in one Redis step points the peer's room entries at the new node and publishes
//!    `moved` to its own inbox. From then on letters for the peer go to the new node, which
//!    holds them until the session arrives.
//! 3. `moved` (old → old): read in inbox order, so every letter routed to the old node before
//!    the move is in the session by now. The session ends there without a departure and the
//!    old node forwards whatever still reaches it.
//! 4. `hand` (old → new): rooms, the last event number and the events the client has not
//!    received. The new node takes over the entries, registers the session ahead of what
//!    it held, and greets the client with `recovered: true`. Or `refuse`: a fresh session.
//!
//! A new node that gave up waiting and then gets a `hand` ends that session properly, so no
//! peer is left in a room with nobody serving it.

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
    },
    Hand {
        ticket: u64,
        peer: String,
        from: String,
        rooms: Vec<String>,
        last: u64,
        received: u64,
        events: Vec<HandedEvent>,
    },
    Refuse {
        ticket: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandedEvent {
    seq: u64,
    event: String,
    data: Box<RawValue>,
}

/// What the old node answered.
pub(crate) struct Handed {
    from: NodeId,
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
        let (peer, holder) = (&resume.presented.peer, &resume.presented.node);
        if *holder == self.node || !redis.is_alive(holder).await.unwrap_or(false) {
            return None;
        }
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
        let session = self.adopt(peer.clone(), identity.clone(), handed).await?;
        let (credential, digest) = Credential::issue(peer, &self.node);
        let generation = {
            let mut link = session.link();
            link.credential = digest;
            link.generation += 1;
            link.away_from = Some(link.outbox.last());
            link.generation
        };
        self.keep_away(&session, generation, window);
        self.await_greeting(sid, &session, credential, resume.received, true);
        tracing::debug!(peer = %session.peer, from = %holder, "session taken over from another node");
        Some(session)
    }

    /// Makes a handed-over session this node's: its room entries, then the session itself,
    /// ahead of what was held for it. `None` (and the session ended) if it cannot be.
    async fn adopt(
        self: &Arc<Self>,
        peer: PeerId,
        identity: Identity,
        handed: Handed,
    ) -> Option<Arc<Session>> {
        let RoomStore::Redis(redis) = &self.rooms else {
            return None;
        };
        let rooms = match redis.adopt(&handed.from, &handed.rooms, &peer).await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(%peer, cause = %e, "could not take over a session's rooms");
                handed.rooms.clone()
            }
        };
        let (_, digest) = Credential::issue(&peer, &self.node);
        let session = Arc::new(Session::new(
            peer,
            identity,
            digest,
            Arc::clone(&self.connected),
        ));
        for room in &rooms {
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
        let note = match serde_json::from_str::<Note>(json) {
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
                    return self.post_note(&from, &Note::Refuse { ticket }).await;
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
            } => {
                let (Some(peer), Some(to)) = (PeerId::parse(&peer), NodeId::parse(&to)) else {
                    return tracing::warn!("malformed move note");
                };
                self.hand(ticket, &peer, to, received).await;
            }
            Note::Hand {
                ticket,
                peer,
                from,
                rooms,
                last,
                received,
                events,
            } => {
                let (Some(peer), Some(from)) = (PeerId::parse(&peer), NodeId::parse(&from)) else {
                    return tracing::warn!("malformed handed session");
                };
                let events = events
                    .into_iter()
                    .filter_map(|e| Some((e.seq, p::peer_event(&e.event)?, Arc::from(e.data))))
                    .collect();
                let handed = Handed {
                    from,
                    rooms,
                    last,
                    received,
                    events,
                };
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
        }
    }

    /// Old node, in the session's queue: checks the request as a local take-up would, then
    /// moves the session's entries to the asking node.
    async fn let_go(self: &Arc<Self>, session: &Arc<Session>, ask: Ask) {
        let refuse = Note::Refuse { ticket: ask.ticket };
        let verdict = {
            let mut link = session.link();
            if link.ended
                || session.identity.user_id.as_ref() != ask.user
                || !link.credential.matches(&ask.digest)
            {
                Verdict::NotYours
            } else if link.outbox.after(ask.received).is_none() {
                Verdict::TooLate(link.socket.take())
            } else {
                // No other connection may take it up from here on, and no pending give-up of
                // an earlier drop applies any more.
                link.credential = Credential::issue(&session.peer, &self.node).1;
                link.generation += 1;
                link.away_from = None;
                Verdict::Move(link.socket.take())
            }
        };
        let old_socket = match verdict {
            Verdict::NotYours => return self.post_note(&ask.from, &refuse).await,
            Verdict::TooLate(old) => {
                // Its owner is back but cannot be caught up: end it here, announced.
                self.close(old);
                self.end(session, None);
                return self.post_note(&ask.from, &refuse).await;
            }
            Verdict::Move(old) => old,
        };
        self.close(old_socket);
        let RoomStore::Redis(redis) = &self.rooms else {
            return;
        };
        let moved = Note::Moved {
            ticket: ask.ticket,
            peer: session.peer.to_string(),
            to: ask.from.to_string(),
            received: ask.received,
        };
        let note = inbox::note(&serde_json::to_vec(&moved).unwrap_or_default());
        if let Err(e) = redis
            .move_session(&session.rooms(), &session.peer, &ask.from, note)
            .await
        {
            tracing::warn!(peer = %session.peer, cause = %e, "could not move a session");
            self.post_note(&ask.from, &refuse).await;
            // It stays away here, and ends when its window runs out.
            if let Some(window) = self.limits.recovery_window {
                let generation = session.link().generation;
                self.keep_away(session, generation, window);
            }
        }
    }

    /// Old node, once every letter routed here before the move has arrived: hands the session
    /// to `to`.
    async fn hand(self: &Arc<Self>, ticket: u64, peer: &PeerId, to: NodeId, received: u64) {
        let Some(session) = self.delivery.session(peer) else {
            return self.post_note(&to, &Note::Refuse { ticket }).await;
        };
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
                    Some((events, last))
                }
                _ => None,
            }
        };
        let Some((events, last)) = handed else {
            // Lost to the bounds meanwhile: its departure is announced here; the entries now
            // pointing at the other node go with the leave.
            self.end(&session, None);
            return self.post_note(&to, &Note::Refuse { ticket }).await;
        };
        self.delivery.moved(&session, to.clone());
        let hand = Note::Hand {
            ticket,
            peer: peer.to_string(),
            from: self.node.to_string(),
            rooms: session.rooms().iter().map(|r| r.to_string()).collect(),
            last,
            received,
            events,
        };
        self.post_note(&to, &hand).await;
        tracing::debug!(%peer, %to, "session handed to another node");
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
        if let Some(session) = self.adopt(peer, identity, handed).await {
            self.end(&session, None);
        }
    }

    async fn post_note(&self, node: &NodeId, note: &Note) {
        let Some(postbox) = self.rooms.postbox() else {
            return;
        };
        let json = match serde_json::to_vec(note) {
            Ok(json) => json,
            Err(e) => return tracing::error!(cause = %e, "note not serializable"),
        };
        if let Err(e) = postbox.post(vec![(node.clone(), inbox::note(&json))]).await {
            tracing::warn!(%node, cause = %e, "note to another node not sent");
        }
    }
}

/// What the old node makes of a request.
enum Verdict {
    NotYours,
    /// The credential is right but the events the client missed are gone.
    TooLate(Option<Sid>),
    /// Handed over: the connection that served it here, if any, is closed.
    Move(Option<Sid>),
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
            from: "ab".into(),
            rooms: vec!["room 1".into()],
            last: 9,
            received: 8,
            events: vec![HandedEvent {
                seq: 9,
                event: p::RELAY.into(),
                data,
            }],
        };
        let json = serde_json::to_string(&hand).expect("serializes");
        let Note::Hand { events, rooms, .. } = serde_json::from_str(&json).expect("reads") else {
            panic!("not a hand: {json}");
        };
        assert_eq!(rooms, vec!["room 1".to_string()]);
        assert_eq!(events[0].data.get(), r#"{"sdp": "v=0\r\n"}"#);
    }
}
