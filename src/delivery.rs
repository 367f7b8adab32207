//! The one path every event to a client takes. An event for a peer on this node goes into
//! its session: numbered, kept for replay, and written to the socket serving it, if any (an
//! away session only keeps it). In cluster mode an event for a peer on another node is posted
//! to that node's inbox (`cluster::inbox`), which delivers it the same way. Only the `session`
//! greeting itself bypasses the numbering, as the protocol says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::mpsc;

use crate::cluster::inbox::{self, Letter, Postbox};
use crate::ids::{Credential, NodeId, PeerId};
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;
use crate::session::outbox::KeepLimits;
use crate::store::Recipient;

/// A session that lost, to its bounds, an event sent while it was away, and the connection
/// generation that happened in: it can no longer be recovered, so it is given up at once.
pub type Overflow = (Arc<Session>, u64);

pub struct Delivery {
    io: SocketIo,
    /// How events reach peers on other nodes (cluster mode).
    postbox: Option<Postbox>,
    /// The sessions of this node, connected or away.
    sessions: DashMap<PeerId, Arc<Session>>,
    keep: KeepLimits,
    /// Sessions can be recovered, so connected ones keep what they are sent. Without recovery
    /// only a session not yet greeted keeps anything (to replay it after the greeting).
    recoverable: bool,
    overflow: mpsc::UnboundedSender<Overflow>,
}

impl Delivery {
    pub fn new(
        io: SocketIo,
        postbox: Option<Postbox>,
        keep: KeepLimits,
        recoverable: bool,
        overflow: mpsc::UnboundedSender<Overflow>,
    ) -> Delivery {
        Delivery {
            io,
            postbox,
            sessions: DashMap::new(),
            keep,
            recoverable,
            overflow,
        }
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    pub fn register(&self, session: Arc<Session>) {
        self.sessions.insert(session.peer.clone(), session);
    }

    pub fn unregister(&self, session: &Session) {
        self.sessions
            .remove_if(&session.peer, |_, s| std::ptr::eq(&**s, session));
    }

    pub fn session(&self, peer: &PeerId) -> Option<Arc<Session>> {
        self.sessions.get(peer).map(|s| Arc::clone(&s))
    }

    /// Sessions of this node, for upkeep.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| Arc::clone(&s)).collect()
    }

    /// Sends to one session of this node.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        session: &Arc<Session>,
        event: &'static str,
        data: &T,
    ) {
        if let Some(raw) = serialize(event, data) {
            self.deliver(session, event, &raw);
        }
    }

    /// Numbers and keeps the event, and writes it to the session's socket if it has one.
    fn deliver(&self, session: &Arc<Session>, event: &'static str, data: &Arc<RawValue>) {
        let mut link = session.link();
        if link.ended {
            return;
        }
        if let (Some(sid), false) = (link.socket, self.recoverable) {
            if let Some(socket) = self.io.get_socket(sid) {
                write(&socket, event, &**data);
            }
            return;
        }
        let within = link
            .outbox
            .push(event, Arc::clone(data), Instant::now(), self.keep);
        if let Some(sid) = link.socket {
            if let Some(socket) = self.io.get_socket(sid) {
                write(&socket, event, &**data);
            }
        } else if !within
            && !link.given_up
            && link
                .away_from
                .is_some_and(|seq| link.outbox.lost_after(seq))
        {
            link.given_up = true;
            let _ = self.overflow.send((Arc::clone(session), link.generation));
        }
    }

    /// Sends to exactly these peers, wherever they are: into their sessions on this node, and
    /// (cluster mode) one letter to each other node that serves some of them.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        recipients: &[Recipient],
        event: &'static str,
        data: &T,
    ) {
        let Some(raw) = serialize(event, data) else {
            return;
        };
        let mut elsewhere: HashMap<&NodeId, Vec<&PeerId>> = HashMap::new();
        for recipient in recipients {
            match &recipient.node {
                None => self.deliver_here(&recipient.peer, event, &raw),
                Some(node) => elsewhere.entry(node).or_default().push(&recipient.peer),
            }
        }
        if elsewhere.is_empty() {
            return;
        }
        let Some(postbox) = &self.postbox else {
            return tracing::error!(event, "peers on other nodes, but no cluster to reach them");
        };
        let body = inbox::body(event, &raw);
        let letters = elsewhere
            .into_iter()
            .map(|(node, peers)| (node.clone(), inbox::letter(&peers, &body)))
            .collect();
        if let Err(e) = postbox.post(letters).await {
            tracing::warn!(event, cause = %e, "cross-node delivery failed");
        }
    }

    /// Sends an event already serialized to a peer whose session is on this node, if it still
    /// has one (a session that ended has nobody left to tell).
    pub fn deliver_here(&self, peer: &PeerId, event: &'static str, data: &Arc<RawValue>) {
        if let Some(session) = self.session(peer) {
            self.deliver(&session, event, data);
        }
    }

    /// Delivers a letter another node posted to this one.
    pub fn deliver_letter(&self, letter: Letter) {
        for peer in &letter.peers {
            self.deliver_here(peer, letter.event, &letter.data);
        }
    }

    /// Answers an event of `session` with `error`.
    pub fn refuse(&self, session: &Arc<Session>, event: &str, refusal: Refusal) {
        let reply = out::ErrorReply {
            event,
            code: refusal.code(),
            message: refusal.message(),
            retry_after_ms: refusal.retry_after_ms(),
        };
        self.send(session, p::ERROR, &reply);
    }

    /// Answers a `join-room` or `check-room` with `join-error`.
    pub fn refuse_join(&self, session: &Arc<Session>, room: Option<&str>, refusal: Refusal) {
        let reply = out::JoinError {
            room_id: room,
            reason: refusal.code(),
            message: refusal.message(),
            retry_after_ms: refusal.retry_after_ms(),
        };
        self.send(session, p::JOIN_ERROR, &reply);
    }

    /// Makes `socket` the one serving `session`: the `session` greeting, then every kept
    /// event after the first `received` (for a fresh session, whatever was sent before the
    /// greeting), then everything new. False if the session ended meanwhile, or its events can
    /// no longer be replayed.
    pub fn greet(
        &self,
        socket: &SocketRef,
        session: &Session,
        credential: &Credential,
        received: u64,
        recovered: bool,
    ) -> bool {
        let mut link = session.link();
        // A socket that closed meanwhile must not become the session's: its disconnect has
        // been, or is being, handled without it.
        if link.ended || !socket.connected() {
            return false;
        }
        let Some(missed) = link.outbox.after(received) else {
            return false;
        };
        let greeting = out::SessionGreeting {
            id: &session.peer,
            resume: credential.as_str(),
            recovered,
        };
        write(socket, p::SESSION, &greeting);
        for kept in missed {
            write(socket, kept.event, &*kept.data);
        }
        link.socket = Some(socket.id);
        link.away_from = None;
        true
    }
}

/// An event's payload as JSON, once for however many recipients.
pub fn serialize<T: Serialize + ?Sized>(event: &str, data: &T) -> Option<Arc<RawValue>> {
    match serde_json::value::to_raw_value(data) {
        Ok(raw) => Some(Arc::from(raw)),
        Err(e) => {
            tracing::error!(event, cause = %e, "event not serializable");
            None
        }
    }
}

/// Writes to one socket of this node. A socket whose outgoing queue is full is too far behind
/// to trust its view of the room any more: it is disconnected, so its client reconnects and
/// rejoins with a fresh roster instead of silently missing events.
fn write<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) {
    match socket.emit(event, data) {
        Ok(()) => {}
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            tracing::warn!(sid = %socket.id, event, "outgoing queue full; disconnecting the socket");
            let _ = socket.clone().disconnect();
        }
        Err(e) => tracing::debug!(sid = %socket.id, event, cause = %e, "emit failed"),
    }
}
