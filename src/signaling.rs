//! The socket handlers: one method per row of the contract's tables. Every event of a socket
//! enters through [`Dispatcher`], which checks its size, parses the frame and queues the
//! handler behind the socket's earlier events (see `session`).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::handler::{MessageHandler, Value};
use socketioxide::socket::{Sid, Socket};
use socketioxide::{SendError, SocketError, SocketIo};
use socketioxide_core::adapter::DefinedAdapter;

use crate::auth::{AuthError, Verifier};
use crate::protocol::{self as p, Frame, JoinRequest, Refusal, RelayRequest};
use crate::rooms::{JoinOutcome, Member, RoomStore, RoomTurns, StoreError};
use crate::session::Session;

/// Limits that shape what clients may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_peers_per_room: usize,
}

/// Everything the handlers share.
pub struct Signaling<A: Adapter> {
    io: SocketIo<A>,
    rooms: RoomStore,
    turns: RoomTurns,
    verifier: Arc<Verifier>,
    limits: Limits,
    /// Live sessions; each [`Session`] counts itself in and out.
    connected: Arc<AtomicUsize>,
}

/// The adapter room carrying a protocol room's echoes. Prefixed so a client-chosen room id
/// can never collide with a socket's own delivery room.
fn room_key(room: &str) -> String {
    format!("r:{room}")
}

/// The adapter room every socket sits in alone, so a targeted emit reaches it on any node.
fn socket_key(sid: Sid) -> String {
    format!("s:{sid}")
}

impl<A: Adapter> Signaling<A> {
    pub fn new(
        io: SocketIo<A>,
        rooms: RoomStore,
        verifier: Arc<Verifier>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Signaling {
            io,
            rooms,
            turns: RoomTurns::default(),
            verifier,
            limits,
            connected: Arc::default(),
        })
    }

    /// Registers the default namespace. All the work happens in the connect middleware:
    /// socketioxide acknowledges the CONNECT before it runs the connect handler, so handlers
    /// registered there could miss a client's first events. With a remote adapter the result
    /// is a future that resolves once the adapter is ready.
    pub fn attach(self: &Arc<Self>) -> A::InitRes
    where
        A: DefinedAdapter,
    {
        use socketioxide::handler::ConnectHandler;
        let signaling = Arc::clone(self);
        self.io.ns(
            "/",
            (async || {}).with(
                async move |socket: SocketRef<A>, Data(auth): Data<Option<serde_json::Value>>| {
                    signaling.admit(&socket, auth.as_ref())
                },
            ),
        )
    }

    pub fn connections(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn local_rooms(&self) -> usize {
        self.rooms.local_room_count()
    }

    /// Checks the token, then sets the socket up: its delivery room, its event dispatcher and
    /// its disconnect handling.
    fn admit(
        self: &Arc<Self>,
        socket: &SocketRef<A>,
        auth: Option<&serde_json::Value>,
    ) -> Result<(), AuthError> {
        let identity = self.verifier.verify(auth).inspect_err(|e| {
            tracing::info!(sid = %socket.id, reason = %e, "connection refused");
        })?;
        tracing::debug!(sid = %socket.id, user = %identity.user_id, "connected");
        let session = Arc::new(Session::new(
            socket.id,
            identity,
            Arc::clone(&self.connected),
        ));
        if self.rooms.is_shared() {
            socket.join(socket_key(socket.id));
        }
        socket.on_fallback(Dispatcher {
            signaling: Arc::clone(self),
            session: Arc::clone(&session),
        });
        let signaling = Arc::clone(self);
        socket.on_disconnect(async move |socket: SocketRef<A>| {
            let job_session = Arc::clone(&session);
            // Queued like any event, so it runs after everything the socket sent before.
            let queued = session.run_in_order(async move {
                signaling.disconnected(&socket, &job_session).await;
            });
            if !queued {
                tracing::warn!(sid = %session.sid, "disconnect dropped behind a full event queue");
            }
        });
        Ok(())
    }

    // ---- client -> server, one method per row of the contract ----

    async fn join_room(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let request = match JoinRequest::parse(payload) {
            Ok(request) => request,
            Err((room, refusal)) => return refuse_join(socket, room.as_deref(), refusal),
        };
        let room = request.room_id.as_str();
        if !session.identity.may_join(room) {
            return refuse_join(socket, Some(room), Refusal::Forbidden);
        }
        let name: Arc<str> = match &session.identity.name {
            Some(name) => Arc::clone(name),
            None => request.name.into(),
        };
        let newcomer = Member {
            sid: session.sid,
            name: Arc::clone(&name),
            user_id: Arc::clone(&session.identity.user_id),
            media: None,
        };

        let _turn = self.turns.take(room).await;
        let existing = match self
            .rooms
            .join(room, newcomer, self.limits.max_peers_per_room)
            .await
        {
            Ok(JoinOutcome::Joined(existing)) => existing,
            Ok(JoinOutcome::AlreadyMember) => {
                return send(socket, p::JOIN_OK, &p::JoinOk { room_id: room });
            }
            Ok(JoinOutcome::Full) => {
                return refuse_join(socket, Some(room), Refusal::RoomFull);
            }
            Err(e) => {
                tracing::error!(room, cause = %e, "join failed: room state unavailable");
                return refuse_join(socket, Some(room), Refusal::Unavailable);
            }
        };
        session.add_room(room);
        socket.join(room_key(room));
        tracing::debug!(sid = %session.sid, room, peers = existing.len(), "joined");

        for member in &existing {
            let id = member.sid.to_string();
            send(
                socket,
                p::USER_CONNECTED,
                &p::UserConnected {
                    id: &id,
                    name: &member.name,
                    user_id: &member.user_id,
                },
            );
            if let Some(state) = member.media {
                send(
                    socket,
                    p::MEDIA_STATE,
                    &p::MediaStateBackfill {
                        id: &id,
                        room_id: room,
                        mic: state.mic,
                        cam: state.cam,
                    },
                );
            }
        }
        send(socket, p::JOIN_OK, &p::JoinOk { room_id: room });

        let others: Vec<Sid> = existing.iter().map(|m| m.sid).collect();
        let me = &*session.sid_str;
        let announcement = p::UserConnected {
            id: me,
            name: &name,
            user_id: &session.identity.user_id,
        };
        self.send_to(&others, p::USER_CONNECTED, &announcement)
            .await;
        self.send_to(&others, p::INIT_OFFER, &p::InitOffer { source: me })
            .await;
    }

    async fn leave_room(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let room = match p::parse_room_of(payload) {
            Ok((room, _)) => room,
            Err(refusal) => return refuse(socket, p::LEAVE_ROOM, refusal),
        };
        if !self.leave(socket, session, &room).await {
            refuse(socket, p::LEAVE_ROOM, Refusal::NotInRoom);
        }
    }

    async fn media_state(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let (room, state, object) = match p::parse_media_state(payload) {
            Ok(parsed) => parsed,
            Err(refusal) => return refuse(socket, p::MEDIA_STATE, refusal),
        };
        if !session.in_room(&room) {
            return refuse(socket, p::MEDIA_STATE, Refusal::NotInRoom);
        }
        // Taking the room's turn keeps the cache and the echo in step with a concurrent join's
        // backfill: the newcomer sees either the old state then this echo, or the new state.
        let _turn = self.turns.take(&room).await;
        if let Err(e) = self.rooms.set_media(&room, session.sid, state).await {
            tracing::error!(room, cause = %e, "media-state not cached: room state unavailable");
        }
        let echo = p::stamp_id(object, &session.sid_str);
        if let Err(e) = socket.to(room_key(&room)).emit(p::MEDIA_STATE, &echo).await {
            tracing::warn!(room, cause = %e, "media-state echo failed");
        }
    }

    async fn stop_screen_share(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let (room, object) = match p::parse_room_of(payload) {
            Ok(parsed) => parsed,
            Err(refusal) => return refuse(socket, p::STOP_SCREEN_SHARE, refusal),
        };
        if !session.in_room(&room) {
            return refuse(socket, p::STOP_SCREEN_SHARE, Refusal::NotInRoom);
        }
        let echo = p::stamp_id(object, &session.sid_str);
        if let Err(e) = socket
            .to(room_key(&room))
            .emit(p::STOP_SCREEN_SHARE, &echo)
            .await
        {
            tracing::warn!(room, cause = %e, "stopScreenShare echo failed");
        }
    }

    async fn relay(&self, socket: &SocketRef<A>, session: &Session, payload: Option<&RawValue>) {
        let request = match RelayRequest::parse(payload) {
            Ok(request) => request,
            Err(refusal) => return refuse(socket, p::RELAY, refusal),
        };
        let target = match Sid::from_str(&request.target) {
            Ok(target) if target != session.sid => target,
            _ => return refuse(socket, p::RELAY, Refusal::UnknownTarget),
        };
        match self.rooms.shares_room(session, target).await {
            Ok(true) => {}
            Ok(false) => return refuse(socket, p::RELAY, Refusal::UnknownTarget),
            Err(e) => {
                tracing::error!(cause = %e, "relay refused: room state unavailable");
                return refuse(socket, p::RELAY, Refusal::Unavailable);
            }
        }
        let relayed = p::Relayed {
            source: &session.sid_str,
            target: &request.target,
            data: request.data,
        };
        self.send_to(&[target], p::RELAY, &relayed).await;
    }

    // ---- leaving ----

    async fn disconnected(&self, socket: &SocketRef<A>, session: &Session) {
        for room in session.rooms() {
            self.leave(socket, session, &room).await;
        }
        tracing::debug!(sid = %session.sid, "disconnected");
    }

    /// Takes the socket out of `room` and tells the others; false if it was not a member.
    async fn leave(&self, socket: &SocketRef<A>, session: &Session, room: &str) -> bool {
        let _turn = self.turns.take(room).await;
        let remaining = match self.rooms.leave(room, session.sid).await {
            Ok(Some(remaining)) => remaining,
            Ok(None) => return false,
            Err(e) => {
                // The member entry stays behind in Redis; the node heartbeat purges it.
                tracing::error!(room, cause = %e, "leave not recorded: room state unavailable");
                Vec::new()
            }
        };
        session.remove_room(room);
        socket.leave(room_key(room));
        self.announce_departure(&session.sid_str, &remaining).await;
        true
    }

    /// Tells the members left in a room that `sid` is gone.
    async fn announce_departure(&self, sid: &str, remaining: &[Sid]) {
        let gone = p::PeerId { id: sid };
        self.send_to(remaining, p::PEER_LEFT, &gone).await;
        self.send_to(remaining, p::USER_DISCONNECTED, &gone).await;
    }

    // ---- cluster upkeep ----

    /// Refreshes this node's heartbeat; false if it had lapsed (see `cluster`).
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

    // ---- delivery ----

    /// Emits to exactly these sockets, wherever they are connected: straight to the ones on
    /// this node, and (cluster mode) through the adapter to the rest.
    async fn send_to<T: Serialize + ?Sized>(&self, sids: &[Sid], event: &str, data: &T) {
        let mut remote = Vec::new();
        for sid in sids {
            match self.io.get_socket(*sid) {
                Some(socket) => send(&socket, event, data),
                None if self.rooms.is_shared() => remote.push(socket_key(*sid)),
                None => {} // gone from this single node: nobody to tell
            }
        }
        if remote.is_empty() {
            return;
        }
        if let Err(e) = self.io.to(remote).emit(event, data).await {
            tracing::warn!(event, cause = %e, "cross-node delivery failed");
        }
    }
}

/// Emits to one socket on this node. A socket whose outgoing queue is full is too far behind
/// to trust its view of the room any more: it is disconnected, so its client reconnects and
/// rejoins with a fresh roster instead of silently missing events.
fn send<A: Adapter, T: Serialize + ?Sized>(socket: &SocketRef<A>, event: &str, data: &T) {
    match socket.emit(event, data) {
        Ok(()) => {}
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            tracing::warn!(sid = %socket.id, event, "outgoing queue full; disconnecting the socket");
            let _ = socket.clone().disconnect();
        }
        Err(e) => tracing::debug!(sid = %socket.id, event, cause = %e, "emit failed"),
    }
}

fn refuse_join<A: Adapter>(socket: &SocketRef<A>, room: Option<&str>, refusal: Refusal) {
    let reply = p::JoinError {
        room_id: room,
        reason: refusal.code(),
        message: refusal.message(),
    };
    send(socket, p::JOIN_ERROR, &reply);
}

fn refuse<A: Adapter>(socket: &SocketRef<A>, event: &str, refusal: Refusal) {
    let reply = p::ErrorReply {
        event,
        code: refusal.code(),
        message: refusal.message(),
    };
    send(socket, p::ERROR, &reply);
}

/// Receives every event of one socket (registered as its fallback handler).
pub struct Dispatcher<A: Adapter> {
    signaling: Arc<Signaling<A>>,
    session: Arc<Session>,
}

/// Marker for [`MessageHandler`]'s type parameter.
pub struct InOrder;

impl<A: Adapter> MessageHandler<A, InOrder> for Dispatcher<A> {
    fn call(&self, socket: Arc<Socket<A>>, value: Value, _ack: Option<i64>) {
        let socket = SocketRef::from(socket);
        let text = match &value {
            Value::Str(text, None) => text,
            _ => return refuse(&socket, "", Refusal::InvalidPayload),
        };
        if text.len() > self.signaling.limits.max_payload_bytes {
            let event = Frame::parse(text).map(|f| f.event.into_owned());
            return refuse(
                &socket,
                event.as_deref().unwrap_or(""),
                Refusal::PayloadTooLarge,
            );
        }
        let signaling = Arc::clone(&self.signaling);
        let session = Arc::clone(&self.session);
        let job_socket = socket.clone();
        let queued = self.session.run_in_order(async move {
            let Some(text) = value.as_str() else { return };
            let Some(frame) = Frame::parse(text) else {
                return refuse(&job_socket, "", Refusal::InvalidPayload);
            };
            let (s, socket, payload) = (&*signaling, &job_socket, frame.payload);
            match &*frame.event {
                p::JOIN_ROOM => s.join_room(socket, &session, payload).await,
                p::LEAVE_ROOM => s.leave_room(socket, &session, payload).await,
                p::MEDIA_STATE => s.media_state(socket, &session, payload).await,
                p::STOP_SCREEN_SHARE => s.stop_screen_share(socket, &session, payload).await,
                p::RELAY => s.relay(socket, &session, payload).await,
                other => refuse(socket, other, Refusal::UnknownEvent),
            }
        });
        if !queued {
            refuse(&socket, "", Refusal::Busy);
        }
    }
}
