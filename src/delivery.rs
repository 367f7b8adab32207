//! The one path every event to a client takes. An event for a peer on this node goes into
//! its session: numbered, kept for replay, and written to the socket serving it, if any (an
//! away session only keeps it). In cluster mode an event for a peer on another node is posted
//! to that node's inbox (`cluster::inbox`), which delivers it the same way. Only the `session`
//! greeting itself bypasses the numbering, as the protocol says.
//!
//! While a session moves between nodes (`hub::handover`), the node it is coming to holds the
//! events that reach it early, and the node it left forwards what still arrives there.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::{Notify, mpsc};

use crate::cluster::inbox::{self, Letter};
use crate::cluster::links::Frame;
use crate::ids::{Credential, CredentialDigest, NodeId, PeerId};
use crate::limits::Rate;
use crate::metrics;
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::outbox::KeepLimits;
use crate::session::{Held, HeldEvent, Link, Session};
use crate::store::{Postbox, Recipient};

/// A session given up, and the connection generation that happened in: it lost, to its
/// bounds, an event sent while it was away, so it can no longer be recovered; or the server
/// cut its socket off (see [`cut_off_locked`]). It ends at once.
pub type GivenUp = (Arc<Session>, u64);

pub struct Delivery {
    io: SocketIo,
    /// How events reach peers on other nodes (cluster mode).
    postbox: Option<Postbox>,
    /// The sessions of this node, connected or away.
    sessions: DashMap<PeerId, Arc<Session>>,
    keep: KeepLimits,
    /// Bytes of relays and echoes a socket may be given (see `over_budget`).
    queue_budget: Rate,
    /// Sessions on their way here from another node: the events that came first, held until
    /// the session itself arrives.
    arriving: DashMap<PeerId, Arrival>,
    /// Woken whenever arrivals end (taken up, called off or forgotten), for a client that
    /// waits for its own session to finish arriving.
    arrivals_ended: Notify,
    /// Sessions that moved to another node, and when: what still reaches them here follows.
    forwards: DashMap<PeerId, (NodeId, Instant)>,
    /// Peers cut off lately for overflowing another's queue: what they still send to a socket
    /// that is behind is dropped.
    flooders: DashMap<PeerId, Instant>,
    /// Sessions can be recovered, so connected ones keep what they are sent. Without recovery
    /// only a session not yet greeted keeps anything (to replay it after the greeting).
    recoverable: bool,
    given_up: mpsc::UnboundedSender<GivenUp>,
}

impl Delivery {
    pub fn new(
        io: SocketIo,
        postbox: Option<Postbox>,
        keep: KeepLimits,
        queue_budget: Rate,
        recoverable: bool,
        given_up: mpsc::UnboundedSender<GivenUp>,
    ) -> Delivery {
        Delivery {
            io,
            postbox,
            sessions: DashMap::new(),
            arriving: DashMap::new(),
            arrivals_ended: Notify::new(),
            forwards: DashMap::new(),
            flooders: DashMap::new(),
            keep,
            queue_budget,
            recoverable,
            given_up,
        }
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    /// This node's socket `sid`, if it is still connected. Once the server has closed there is
    /// no namespace left (and `SocketIo::get_socket` would panic), yet sessions still end and
    /// announce their departures: their webhook events are flushed then.
    pub fn socket(&self, sid: Sid) -> Option<SocketRef> {
        socket_of(&self.io, sid)
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
            // An answer to a session that has just moved away is of no use to it.
            let _ = self.deliver(session, event, &raw);
        }
    }

    /// Numbers and keeps the event, and writes it to the session's socket if it has one.
    /// Returns the node to forward it to if the session has moved there.
    fn deliver(
        &self,
        session: &Arc<Session>,
        event: &'static str,
        data: &Arc<RawValue>,
    ) -> Option<NodeId> {
        self.deliver_locked(session, session.link(), event, data)
    }

    /// [`Delivery::deliver`], with the session's link already locked.
    fn deliver_locked(
        &self,
        session: &Arc<Session>,
        mut link: MutexGuard<'_, Link>,
        event: &'static str,
        data: &Arc<RawValue>,
    ) -> Option<NodeId> {
        if link.ended {
            return link.moved_to.clone();
        }
        let now = Instant::now();
        if link.socket.is_some()
            && let Some(over) = self.over_budget(&mut link, now, event, data)
        {
            drop(link);
            self.refuse_for_target(over, event);
            return None;
        }
        if let (Some(sid), false) = (link.socket, self.recoverable) {
            self.write_in_order(session, &mut link, sid, event, data);
            return None;
        }
        let within = link.outbox.push(event, Arc::clone(data), now, self.keep);
        if let Some(sid) = link.socket {
            self.write_in_order(session, &mut link, sid, event, data);
        } else if !within
            && !link.given_up
            && link
                .away_from
                .is_some_and(|seq| link.outbox.lost_after(seq))
        {
            link.given_up = true;
            let _ = self.given_up.send((Arc::clone(session), link.generation));
        }
        None
    }

    /// Counts a relay or echo against the bytes its target's socket may be given (see
    /// `MAX_QUEUED_BYTES`); one over them is dropped (neither kept nor written), and its sender
    /// and the wait are returned, so the sender can be told. What the server itself sends
    /// always goes through.
    fn over_budget(
        &self,
        link: &mut Link,
        now: Instant,
        event: &str,
        data: &RawValue,
    ) -> Option<(PeerId, Duration)> {
        let size = u32::try_from(data.get().len()).unwrap_or(u32::MAX);
        let wait = link
            .room_to_queue
            .take_many(now, self.queue_budget, size)
            .err()?;
        Some((self.sender_of(event, data)?, wait))
    }

    /// Sends to exactly these members of `room`, wherever they are: into their sessions on this
    /// node, and (cluster mode) one letter to each other node that serves some of them, found
    /// in the same Redis step that publishes it.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        room: &str,
        recipients: &[Recipient],
        event: &'static str,
        data: &T,
    ) {
        let Some(raw) = serialize(event, data) else {
            return;
        };
        let mut elsewhere = Vec::new();
        for recipient in recipients {
            match &recipient.node {
                None => self.deliver_here(&recipient.peer, event, &raw).await,
                Some(_) => elsewhere.push(&recipient.peer),
            }
        }
        if elsewhere.is_empty() {
            return;
        }
        let Some(postbox) = &self.postbox else {
            return tracing::error!(event, "peers on other nodes, but no cluster to reach them");
        };
        match postbox
            .post_in_room(room, &elsewhere, inbox::body(event, &raw))
            .await
        {
            // Moved here since they were looked up.
            Ok(here) => {
                for peer in &here {
                    self.deliver_here(peer, event, &raw).await;
                }
            }
            Err(e) => tracing::warn!(event, cause = %e, "cross-node delivery failed"),
        }
    }

    /// Sends an event already serialized to a peer whose session is on this node: held if the
    /// session is still arriving, forwarded if it has moved on, dropped if it ended (nobody is
    /// left to tell).
    pub async fn deliver_here(&self, peer: &PeerId, event: &'static str, data: &Arc<RawValue>) {
        let unchecked = HeldEvent {
            event,
            data: Arc::clone(data),
            only_in: None,
        };
        let forward = match self.hold_for_arrival(peer, unchecked) {
            None => None,
            Some(unchecked) => match self.session(peer) {
                Some(session) => self.deliver_unless_held(&session, unchecked).flatten(),
                None => self.forwarded_to(peer),
            },
        };
        if let Some(node) = forward {
            let letter = inbox::letter(&[peer], &inbox::body(event, data));
            self.forward(vec![(node, letter)]);
        }
    }

    /// Delivers a relay from `sender` that another node sent to `target`, if the target is
    /// in one of `rooms` (the sender's when it was sent). A relay held for the target (behind
    /// its join, or until its session arrives from another node) is checked when it is
    /// delivered. False if the target is not here or shares none of the rooms: its sender is
    /// to be told.
    pub fn deliver_relay(
        &self,
        sender: &PeerId,
        target: &PeerId,
        rooms: Vec<String>,
        data: &Arc<RawValue>,
    ) -> bool {
        let relay = HeldEvent {
            event: p::RELAY,
            data: Arc::clone(data),
            only_in: Some(rooms),
        };
        let Some(relay) = self.hold_for_arrival(target, relay) else {
            return true;
        };
        let Some(session) = self.session(target) else {
            // Moved on, its old node not told in time (see `cluster::links`): it follows.
            let (Some(node), Some(postbox)) = (self.forwarded_to(target), &self.postbox) else {
                return false;
            };
            let frame = Frame::Relay {
                sender: sender.clone(),
                target: target.clone(),
                rooms: relay.only_in.unwrap_or_default(),
                data: data.get().as_bytes().to_vec(),
            };
            postbox.links().send(&node, &frame);
            return true;
        };
        match self.deliver_unless_held(&session, relay) {
            None => false,
            Some(forward) => {
                if let Some(node) = forward {
                    let letter = inbox::letter(&[target], &inbox::body(p::RELAY, data));
                    self.forward(vec![(node, letter)]);
                }
                true
            }
        }
    }

    /// Holds the event if `peer`'s session is on its way here; gives it back if not.
    fn hold_for_arrival(&self, peer: &PeerId, event: HeldEvent) -> Option<HeldEvent> {
        let Some(mut arrival) = self.arriving.get_mut(peer) else {
            return Some(event);
        };
        // One more than the session may keep marks it as overflowed (see `arrive`).
        if arrival.held.len() <= self.keep.events {
            arrival.held.push(event);
        }
        None
    }

    /// Delivers a letter another node posted to this one.
    pub async fn deliver_letter(&self, letter: Letter) {
        for peer in &letter.peers {
            self.deliver_here(peer, letter.event, &letter.data).await;
        }
    }

    /// Holds what reaches `session` through [`Delivery::deliver_here`] (letters from other
    /// nodes, relays and echoes from this one) until the returned guard is dropped, and then
    /// delivers it in order; what the session is sent directly ([`Delivery::send`]) is not
    /// held. A join takes this around its Redis step: a departure or an echo that Redis
    /// routes to the joiner after that step can reach this node before the step's own reply
    /// (it comes on another connection), and must not reach the client before the roster
    /// that names its sender. Everything else is held too, so no sender's events overtake
    /// each other (one that moves to this node meanwhile sends here directly).
    pub fn hold_events<'a>(&'a self, session: &'a Arc<Session>) -> EventHold<'a> {
        session.link().held_events.get_or_insert_with(Held::default);
        EventHold {
            delivery: self,
            session,
        }
    }

    /// Keeps the event if `session` holds its events now, else delivers it (under the same
    /// lock) if it is still for the session (see [`HeldEvent`]): `None` if it is not, else
    /// the node to forward it to if the session moved there. Past what a session may keep,
    /// the hold ends early: what it held is delivered, in order, rather than lost.
    fn deliver_unless_held(
        &self,
        session: &Arc<Session>,
        event: HeldEvent,
    ) -> Option<Option<NodeId>> {
        let mut link = session.link();
        let Some(held) = &mut link.held_events else {
            if !event.still_for(session) {
                return None;
            }
            return Some(self.deliver_locked(session, link, event.event, &event.data));
        };
        held.events.push(event);
        let overflowing = !held.releasing && held.events.len() > self.keep.events;
        drop(link);
        if overflowing {
            self.release_held(session);
        }
        Some(None)
    }

    /// Ends `session`'s hold, delivering what it held in order; events that come meanwhile
    /// join the end of the line until it is empty. One caller drains; another finding it
    /// draining leaves it to that one.
    fn release_held(&self, session: &Arc<Session>) {
        match &mut session.link().held_events {
            Some(held) if !held.releasing => held.releasing = true,
            _ => return,
        }
        let mut forwards = Vec::new();
        loop {
            let batch = {
                let mut link = session.link();
                match &mut link.held_events {
                    Some(held) if !held.events.is_empty() => std::mem::take(&mut held.events),
                    _ => {
                        link.held_events = None;
                        break;
                    }
                }
            };
            for held in batch {
                let link = session.link();
                if !held.still_for(session) {
                    continue;
                }
                if let Some(node) = self.deliver_locked(session, link, held.event, &held.data) {
                    let letter =
                        inbox::letter(&[&session.peer], &inbox::body(held.event, &held.data));
                    forwards.push((node, letter));
                }
            }
        }
        self.forward(forwards);
    }

    /// Forwards letters to sessions that moved on, in order.
    fn forward(&self, letters: Vec<(NodeId, Vec<u8>)>) {
        if let Some(postbox) = &self.postbox
            && !letters.is_empty()
        {
            postbox.post(letters);
        }
    }

    /// From now on, hold what reaches `peer` until its session arrives (or the wait is called
    /// off). A wait already under way is not disturbed; false then.
    pub fn expect_arrival(&self, peer: &PeerId) -> bool {
        match self.arriving.entry(peer.clone()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(Arrival {
                    since: Instant::now(),
                    held: Vec::new(),
                });
                true
            }
        }
    }

    /// The session `peer` awaited is here: it is registered and gets what was held for it, in
    /// order, before anything newer (the held list stays locked until it is registered).
    /// False if more was held than the session may keep: it cannot be recovered.
    pub fn arrive(&self, session: &Arc<Session>) -> bool {
        let Entry::Occupied(mut arrival) = self.arriving.entry(session.peer.clone()) else {
            return false;
        };
        if arrival.get().held.len() > self.keep.events {
            arrival.remove();
            self.arrivals_ended.notify_waiters();
            return false;
        }
        self.register(Arc::clone(session));
        // Back from a trip to another node: nothing here follows it any more.
        self.forwards.remove(&session.peer);
        for held in arrival.get_mut().held.drain(..) {
            let link = session.link();
            if held.still_for(session) {
                let _ = self.deliver_locked(session, link, held.event, &held.data);
            }
        }
        arrival.remove();
        self.arrivals_ended.notify_waiters();
        true
    }

    /// Whether a session for `peer` is on its way here.
    pub fn is_arriving(&self, peer: &PeerId) -> bool {
        self.arriving.contains_key(peer)
    }

    /// Waits until no session for `peer` is on its way here, or until `deadline`.
    pub async fn until_arrived(&self, peer: &PeerId, deadline: tokio::time::Instant) {
        loop {
            // Registered before looking, so an arrival that ends in between still wakes us.
            let ended = self.arrivals_ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            if !self.is_arriving(peer) {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }

    /// Stops holding for `peer`: its session is not coming.
    pub fn call_off_arrival(&self, peer: &PeerId) {
        self.arriving.remove(peer);
        self.arrivals_ended.notify_waiters();
    }

    /// `session` has moved to `node`: it leaves this node, and what still reaches it here
    /// follows it for a while.
    pub fn moved(&self, session: &Session, node: NodeId) {
        self.forwards
            .insert(session.peer.clone(), (node, Instant::now()));
        self.unregister(session);
    }

    /// Where `peer`'s session moved from this node, lately.
    pub fn forwarded_to(&self, peer: &PeerId) -> Option<NodeId> {
        self.forwards.get(peer).map(|f| f.0.clone())
    }

    /// Whether no session is left on this node.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Forgets forwarding addresses, and arrivals that never came, older than `age`: letters
    /// routed before a move have long arrived by then.
    pub fn forget_moves(&self, age: Duration) {
        let now = Instant::now();
        self.forwards
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < age);
        self.arriving
            .retain(|_, arrival| now.saturating_duration_since(arrival.since) < age);
        self.arrivals_ended.notify_waiters();
        self.flooders
            .retain(|_, since| now.saturating_duration_since(*since) < age);
    }

    /// Writes to a socket just taken up (its queue is empty, and a session keeps far fewer
    /// events than the queue holds); one whose queue is full anyway is disconnected.
    fn write<T: Serialize + ?Sized>(&self, socket: &SocketRef, event: &str, data: &T) {
        match socket.emit(event, data) {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tracing::warn!(sid = %socket.id, event, "outgoing queue full; disconnecting the socket");
                let _ = socket.clone().disconnect();
            }
            Err(e) => tracing::debug!(sid = %socket.id, event, cause = %e, "emit failed"),
        }
    }

    /// Writes to the socket serving `session`, behind any backlog it has. A full outgoing
    /// queue (thousands of events behind) is blamed on whoever filled it: a peer whose relays
    /// or echoes overflow it is disconnected, and that event dropped. Anything else waits in
    /// the session's backlog (bounded) for the queue to drain, in order, so the client's view of
    /// the room stays whole; a socket that does not catch up in time is disconnected.
    fn write_in_order(
        &self,
        session: &Arc<Session>,
        link: &mut Link,
        sid: Sid,
        event: &'static str,
        data: &Arc<RawValue>,
    ) {
        let Some(socket) = self.socket(sid) else {
            return;
        };
        if link.backlog.is_empty() {
            match socket.emit(event, &**data) {
                Ok(()) => return,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {}
                Err(e) => {
                    return tracing::debug!(sid = %socket.id, event, cause = %e, "emit failed");
                }
            }
        }
        if let Some(sender) = self.sender_of(event, data)
            && (link.backlog.is_empty() || self.flooders.contains_key(&sender))
        {
            return self.cut_off_flooder(sender, socket.id);
        }
        if link.backlog.len() >= BACKLOG_EVENTS {
            tracing::warn!(sid = %socket.id, event, "too far behind its events; disconnecting the socket");
            return cut_off_locked(&self.io, &self.given_up, session, link);
        }
        if link.backlog.is_empty() {
            let (io, given_up) = (self.io.clone(), self.given_up.clone());
            tokio::spawn(drain_backlog(io, given_up, Arc::clone(session), sid));
        }
        link.backlog.push_back((event, Arc::clone(data)));
    }

    /// The peer that sent a relayed or echoed event (read only when its target overflowed).
    fn sender_of(&self, event: &str, data: &RawValue) -> Option<PeerId> {
        #[derive(serde::Deserialize)]
        struct Sent<'a> {
            #[serde(borrow)]
            source: Option<&'a str>,
            #[serde(borrow)]
            id: Option<&'a str>,
        }
        let sent: Sent = serde_json::from_str(data.get()).ok()?;
        let peer = match event {
            p::RELAY => sent.source?,
            p::MEDIA_STATE | p::STOP_SCREEN_SHARE | p::CHAT_MESSAGE => sent.id?,
            _ => return None,
        };
        PeerId::parse(peer)
    }

    /// Closes the socket serving `session` for good and ends the session (see
    /// [`cut_off_locked`]).
    pub(crate) fn cut_off(&self, session: &Arc<Session>) {
        cut_off_locked(&self.io, &self.given_up, session, &mut session.link());
    }

    /// Disconnects `sender`, whose events overflowed `target`'s outgoing queue (if its session
    /// is on another node, that node's rate limits are what hold it back); what it still sends
    /// to a socket that is behind is dropped. In a task of its own: the target's link is locked
    /// here, and two peers may flood each other.
    fn cut_off_flooder(&self, sender: PeerId, target: Sid) {
        if self
            .flooders
            .insert(sender.clone(), Instant::now())
            .is_some()
        {
            return;
        }
        let Some(session) = self.session(&sender) else {
            return tracing::warn!(%target, %sender, "a remote peer's events overflowed a socket's queue; dropped");
        };
        let (io, given_up) = (self.io.clone(), self.given_up.clone());
        tokio::spawn(async move {
            let mut link = session.link();
            tracing::warn!(
                sid = ?link.socket,
                peer = %session.peer,
                user = %session.identity.user_id,
                %target,
                "its events overflowed a peer's outgoing queue; disconnecting the sender"
            );
            metrics::get().flood_disconnects.inc();
            cut_off_locked(&io, &given_up, &session, &mut link);
        });
    }

    /// Tells the sender of an event dropped for going over its target's queued bytes (if its
    /// session is on this node) to wait (`rate-limited`). Called with no link locked: two peers
    /// may be sending to each other.
    fn refuse_for_target(&self, (sender, wait): (PeerId, Duration), event: &'static str) {
        let Some(session) = self.session(&sender) else {
            return tracing::debug!(%sender, event, "a remote peer's event went over its target's queued bytes; dropped");
        };
        let refusal = Refusal::RateLimited {
            retry_after_ms: crate::limits::retry_after_ms(wait),
        };
        self.refuse(&session, event, refusal);
    }

    /// Answers an event of `session` with `error`.
    pub fn refuse(&self, session: &Arc<Session>, event: &str, refusal: Refusal) {
        metrics::get().refused(refusal.code());
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
        metrics::get().refused(refusal.code());
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
        self.write(socket, p::SESSION, &greeting);
        for kept in missed {
            self.write(socket, kept.event, &*kept.data);
        }
        link.socket = Some(socket.id);
        link.away_from = None;
        link.backlog.clear();
        true
    }
}

/// See [`Delivery::socket`].
fn socket_of(io: &SocketIo, sid: Sid) -> Option<SocketRef> {
    io.of("/")?.get_socket(sid)
}

/// Most events a socket whose queue is full may have waiting behind it.
const BACKLOG_EVENTS: usize = 1024;

/// How long a socket may take to work off its backlog.
const BACKLOG_FOR: Duration = Duration::from_secs(10);

/// How often a backlog is offered to its socket again. socketioxide does not say when a queue
/// has room, so a backlogged socket (and only one) is polled.
const BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// Moves `session`'s backlog into socket `sid`'s queue as it drains, in order; disconnects the
/// socket if it does not catch up within [`BACKLOG_FOR`].
async fn drain_backlog(
    io: SocketIo,
    given_up: mpsc::UnboundedSender<GivenUp>,
    session: Arc<Session>,
    sid: Sid,
) {
    let _counted = Backlogged::count();
    let started = Instant::now();
    loop {
        tokio::time::sleep(BACKLOG_RETRY).await;
        let socket = socket_of(&io, sid);
        let mut link = session.link();
        let Some(socket) = socket.filter(|_| link.socket == Some(sid)) else {
            link.backlog.clear();
            return;
        };
        while let Some((event, data)) = link.backlog.front() {
            match socket.emit(*event, &**data) {
                Ok(()) => {
                    link.backlog.pop_front();
                }
                Err(SendError::Socket(SocketError::InternalChannelFull)) => break,
                Err(_) => {
                    link.backlog.clear();
                    return;
                }
            }
        }
        if link.backlog.is_empty() {
            return;
        }
        if started.elapsed() > BACKLOG_FOR {
            tracing::warn!(%sid, "did not catch up with its events; disconnecting the socket");
            return cut_off_locked(&io, &given_up, &session, &mut link);
        }
    }
}

/// Closes the socket serving `session` (its `link` locked) for good, the server's own
/// decision (a flooder, a socket too far behind its events), and ends the session.
/// socketioxide closes a socket only once its disconnect packet is queued: one whose queue is
/// full would stay open until its next ping found no room either, and would then pass for a
/// dropped connection, kept for recovery. So the session lets go of the socket here, takes
/// no resume and no more events from it, and ends at once either way.
fn cut_off_locked(
    io: &SocketIo,
    given_up: &mpsc::UnboundedSender<GivenUp>,
    session: &Arc<Session>,
    link: &mut Link,
) {
    link.backlog.clear();
    let Some(sid) = link.socket.take() else {
        return;
    };
    link.credential = CredentialDigest::unmatched();
    link.given_up = true;
    link.generation += 1;
    let _ = given_up.send((Arc::clone(session), link.generation));
    if let Some(socket) = socket_of(io, sid) {
        let _ = socket.disconnect();
    }
}

/// Counts a socket among the backlogged (`rtcio_backlogged_sockets`) while its backlog is
/// being drained.
struct Backlogged;

impl Backlogged {
    fn count() -> Backlogged {
        metrics::get().backlogged_sockets.inc();
        Backlogged
    }
}

impl Drop for Backlogged {
    fn drop(&mut self) {
        metrics::get().backlogged_sockets.dec();
    }
}

/// A session's hold on what reaches it (see [`Delivery::hold_events`]); dropping it
/// delivers what was held.
pub struct EventHold<'a> {
    delivery: &'a Delivery,
    session: &'a Arc<Session>,
}

impl Drop for EventHold<'_> {
    fn drop(&mut self) {
        self.delivery.release_held(self.session);
    }
}

/// A session on its way to this node, and what reached it before it did.
struct Arrival {
    since: Instant,
    held: Vec<HeldEvent>,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::auth::Identity;

    fn delivery(keep_events: usize) -> Delivery {
        let (_layer, io) = SocketIo::new_layer();
        let (given_up, _) = mpsc::unbounded_channel();
        let keep = KeepLimits {
            events: keep_events,
            bytes: 1 << 20,
            age: Duration::from_secs(60),
        };
        let unlimited = Rate {
            per_second: 1e9,
            burst: u32::MAX,
        };
        Delivery::new(io, None, keep, unlimited, true, given_up)
    }

    fn session() -> Arc<Session> {
        let peer = PeerId::of_socket(Sid::new());
        let (_, digest) = Credential::issue(&peer, &NodeId::random());
        let identity = Identity {
            user_id: "ann".into(),
            name: None,
            rooms: None,
        };
        Arc::new(Session::new(
            peer,
            identity,
            digest,
            Arc::new(AtomicUsize::new(0)),
        ))
    }

    /// A session on its way here may find as many events held for it as it may keep, and
    /// still be taken up; one more, and it cannot be recovered.
    #[tokio::test]
    async fn an_arrival_holds_what_its_session_may_keep_and_no_more() {
        let data =
            serialize(p::CHAT_MESSAGE, &serde_json::json!({ "text": "hi" })).expect("serializable");
        for (held, taken_up) in [(3, true), (4, false)] {
            let delivery = delivery(3);
            let session = session();
            assert!(delivery.expect_arrival(&session.peer));
            for _ in 0..held {
                delivery
                    .deliver_here(&session.peer, p::CHAT_MESSAGE, &data)
                    .await;
            }
            assert_eq!(delivery.arrive(&session), taken_up, "{held} held");
            assert_eq!(delivery.session(&session.peer).is_some(), taken_up);
            assert!(!delivery.is_arriving(&session.peer));
        }
    }

    /// An arrival called off holds nothing more, and the session can no longer arrive through
    /// it (with what was held so far).
    #[tokio::test]
    async fn an_arrival_called_off_is_over() {
        let data =
            serialize(p::CHAT_MESSAGE, &serde_json::json!({ "text": "hi" })).expect("serializable");
        let delivery = delivery(3);
        let session = session();
        delivery.expect_arrival(&session.peer);
        delivery
            .deliver_here(&session.peer, p::CHAT_MESSAGE, &data)
            .await;
        delivery.call_off_arrival(&session.peer);
        assert!(!delivery.is_arriving(&session.peer));
        assert!(!delivery.arrive(&session));
        assert!(delivery.session(&session.peer).is_none());
    }

    /// A client waiting for its session to finish arriving is woken when it has (not by
    /// another session's arrival), and gives up at its deadline.
    #[tokio::test]
    async fn a_wait_for_an_arrival_ends_when_it_is_taken_up_or_at_the_deadline() {
        let delivery = Arc::new(delivery(3));
        let (coming, other, late) = (session(), session(), session());
        for session in [&coming, &other, &late] {
            assert!(delivery.expect_arrival(&session.peer));
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let waiter = {
            let (delivery, peer) = (Arc::clone(&delivery), coming.peer.clone());
            tokio::spawn(async move { delivery.until_arrived(&peer, far).await })
        };
        tokio::task::yield_now().await;
        assert!(delivery.arrive(&other));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woken by another session's arrival");
        assert!(delivery.arrive(&coming));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the arrival, long before its deadline")
            .expect("the waiter ends");

        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        delivery.until_arrived(&late.peer, deadline).await;
        assert!(tokio::time::Instant::now() >= deadline);
        assert!(delivery.is_arriving(&late.peer));
    }

    /// A session that moved on leaves a forwarding address, which is forgotten once older
    /// than the age given (with stale arrivals).
    #[test]
    fn a_move_is_followed_for_a_while_then_forgotten() {
        let delivery = delivery(3);
        let (session, stranger) = (session(), session());
        delivery.register(Arc::clone(&session));
        let node = NodeId::random();
        delivery.moved(&session, node.clone());
        assert!(delivery.session(&session.peer).is_none());
        assert_eq!(
            delivery.forwarded_to(&session.peer).map(|n| n.to_string()),
            Some(node.to_string())
        );
        assert!(delivery.forwarded_to(&stranger.peer).is_none());
        delivery.expect_arrival(&stranger.peer);
        delivery.forget_moves(Duration::from_secs(60));
        assert!(
            delivery.forwarded_to(&session.peer).is_some(),
            "still young"
        );
        assert!(delivery.is_arriving(&stranger.peer), "still young");
        delivery.forget_moves(Duration::ZERO);
        assert!(delivery.forwarded_to(&session.peer).is_none());
        assert!(!delivery.is_arriving(&stranger.peer));
    }

    /// What reaches a session during its join (letters from other nodes, and events from
    /// this one) waits for the hold to end and then comes in order, after what the join sent
    /// directly; past what the session may keep, the hold ends early and nothing is lost.
    #[tokio::test]
    async fn held_events_come_after_the_join_in_order() {
        let delivery = delivery(3);
        let session = session();
        delivery.register(Arc::clone(&session));
        let chat =
            |i: u32| serialize(p::CHAT_MESSAGE, &serde_json::json!({ "i": i })).expect("json");
        let letter = |i: u32| Letter {
            peers: vec![session.peer.clone()],
            event: p::CHAT_MESSAGE,
            data: chat(i),
        };
        let kept = |session: &Session| -> Vec<String> {
            let link = session.link();
            let from = link.outbox.dropped_through();
            let kept = link.outbox.after(from).expect("what is kept");
            kept.map(|k| format!("{} {}", k.event, k.data.get()))
                .collect()
        };

        let held = delivery.hold_events(&session);
        delivery.deliver_letter(letter(0)).await;
        delivery
            .deliver_here(&session.peer, p::CHAT_MESSAGE, &chat(1))
            .await;
        assert_eq!(session.link().outbox.last(), 0, "held back");
        delivery.send(&session, p::JOIN_OK, &serde_json::json!({}));
        drop(held);
        assert_eq!(
            kept(&session),
            [
                "join-ok {}",
                "chat-message {\"i\":0}",
                "chat-message {\"i\":1}"
            ]
        );
        delivery.deliver_letter(letter(2)).await;
        assert_eq!(session.link().outbox.last(), 4, "no hold, no wait");

        let _held = delivery.hold_events(&session);
        for i in 3..6 {
            delivery.deliver_letter(letter(i)).await;
        }
        assert_eq!(session.link().outbox.last(), 4, "held back");
        delivery.deliver_letter(letter(6)).await;
        assert_eq!(
            session.link().outbox.last(),
            8,
            "one more than kept ends the hold"
        );
        assert!(session.link().held_events.is_none());
        assert_eq!(
            kept(&session),
            [
                "chat-message {\"i\":4}",
                "chat-message {\"i\":5}",
                "chat-message {\"i\":6}"
            ]
        );
    }

    /// A hold that another caller is draining (an overflow on another thread, say) is left
    /// to it: a second drainer could deliver a later event before an earlier one.
    #[tokio::test]
    async fn a_hold_being_drained_is_left_to_its_drainer() {
        let delivery = delivery(3);
        let session = session();
        delivery.register(Arc::clone(&session));
        let chat = serialize(p::CHAT_MESSAGE, &serde_json::json!({ "i": 0 })).expect("json");
        let hold = delivery.hold_events(&session);
        delivery
            .deliver_here(&session.peer, p::CHAT_MESSAGE, &chat)
            .await;
        session.link().held_events.as_mut().expect("held").releasing = true;
        drop(hold);
        let link = session.link();
        assert_eq!(link.outbox.last(), 0, "not delivered by the second caller");
        assert_eq!(link.held_events.as_ref().map(|h| h.events.len()), Some(1));
    }

    /// A relay from another node reaches its target only in one of the rooms the sender was
    /// in: checked at once, or, behind the target's join, once the join is done.
    #[tokio::test]
    async fn a_relay_from_another_node_is_checked_against_the_rooms_when_delivered() {
        let delivery = delivery(8);
        let (session, arriving) = (session(), session());
        delivery.register(Arc::clone(&session));
        let sender = PeerId::parse("sender").expect("peer");
        let relay = |i: u32| serialize(p::RELAY, &serde_json::json!({ "i": i })).expect("json");
        let rooms = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let relay_to = |i: u32, names: &[&str]| {
            delivery.deliver_relay(&sender, &session.peer, rooms(names), &relay(i))
        };
        let kept = |session: &Session| -> Vec<String> {
            let link = session.link();
            let kept = link.outbox.after(0).expect("kept");
            kept.map(|k| k.data.get().to_string()).collect()
        };
        let nobody = PeerId::parse("nobody").expect("peer");
        assert!(!delivery.deliver_relay(&sender, &nobody, rooms(&["a"]), &relay(0)));

        session.add_room("a");
        assert!(relay_to(1, &["b", "a"]));
        assert!(!relay_to(2, &["b"]), "no room in common");
        assert_eq!(session.link().outbox.last(), 1);

        // Behind a join of "b": held whatever the rooms, then checked.
        let held = delivery.hold_events(&session);
        assert!(relay_to(3, &["b"]));
        assert!(relay_to(4, &["c"]));
        assert!(relay_to(5, &["a"]));
        session.add_room("b");
        drop(held);
        assert_eq!(kept(&session), [r#"{"i":1}"#, r#"{"i":3}"#, r#"{"i":5}"#]);

        // Held for a session on its way here from another node: checked once it arrives.
        arriving.add_room("a");
        assert!(delivery.expect_arrival(&arriving.peer));
        for (i, rooms) in [(6, ["a"]), (7, ["b"]), (8, ["a"])] {
            assert!(delivery.deliver_relay(
                &sender,
                &arriving.peer,
                rooms.iter().map(|r| r.to_string()).collect(),
                &relay(i)
            ));
        }
        assert!(delivery.arrive(&arriving));
        assert_eq!(kept(&arriving), [r#"{"i":6}"#, r#"{"i":8}"#]);
    }

    /// A sender cut off for flooding is remembered (what it still sends to a socket that is
    /// behind is dropped), then forgotten with age.
    #[tokio::test]
    async fn a_flooder_is_remembered_for_a_while_then_forgotten() {
        let delivery = delivery(3);
        let flooder = PeerId::of_socket(Sid::new());
        delivery.cut_off_flooder(flooder.clone(), Sid::new());
        delivery.forget_moves(Duration::from_secs(60));
        assert!(delivery.flooders.contains_key(&flooder), "still young");
        delivery.forget_moves(Duration::ZERO);
        assert!(!delivery.flooders.contains_key(&flooder));
    }
}
