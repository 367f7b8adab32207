//! The path every emit takes. A peer is addressed by id; [`Delivery::send_to`] finds it on this
//! node or, in cluster mode, hands the emit to the adapter for the node that holds it. Emits
//! to one local socket go through [`send`], which is where a socket too far behind is cut off.

use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};

use crate::protocol::{self as p, Refusal, outbound as out};

/// The adapter room carrying a protocol room's echoes. Prefixed so a client-chosen room id
/// can never collide with a socket's own delivery room.
pub fn room_key(room: &str) -> String {
    format!("r:{room}")
}

/// The adapter room every socket sits in alone, so a targeted emit reaches it on any node.
pub fn socket_key(sid: Sid) -> String {
    format!("s:{sid}")
}

pub struct Delivery<A: Adapter> {
    io: SocketIo<A>,
    /// Other nodes may hold the sockets we address (cluster mode).
    shared: bool,
}

impl<A: Adapter> Delivery<A> {
    pub fn new(io: SocketIo<A>, shared: bool) -> Delivery<A> {
        Delivery { io, shared }
    }

    pub fn io(&self) -> &SocketIo<A> {
        &self.io
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Emits to exactly these sockets, wherever they are connected: straight to the ones on
    /// this node, and (cluster mode) through the adapter to the rest.
    pub async fn send_to<T: Serialize + ?Sized>(&self, sids: &[Sid], event: &str, data: &T) {
        let mut remote = Vec::new();
        for sid in sids {
            match self.io.get_socket(*sid) {
                Some(socket) => send(&socket, event, data),
                None if self.shared => remote.push(socket_key(*sid)),
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
pub fn send<A: Adapter, T: Serialize + ?Sized>(socket: &SocketRef<A>, event: &str, data: &T) {
    match socket.emit(event, data) {
        Ok(()) => {}
        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
            tracing::warn!(sid = %socket.id, event, "outgoing queue full; disconnecting the socket");
            let _ = socket.clone().disconnect();
        }
        Err(e) => tracing::debug!(sid = %socket.id, event, cause = %e, "emit failed"),
    }
}

/// Answers a `join-room` or `check-room` with `join-error`.
pub fn refuse_join<A: Adapter>(socket: &SocketRef<A>, room: Option<&str>, refusal: Refusal) {
    let reply = out::JoinError {
        room_id: room,
        reason: refusal.code(),
        message: refusal.message(),
        retry_after_ms: refusal.retry_after_ms(),
    };
    send(socket, p::JOIN_ERROR, &reply);
}

/// Answers any other event with `error`.
pub fn refuse<A: Adapter>(socket: &SocketRef<A>, event: &str, refusal: Refusal) {
    let reply = out::ErrorReply {
        event,
        code: refusal.code(),
        message: refusal.message(),
        retry_after_ms: refusal.retry_after_ms(),
    };
    send(socket, p::ERROR, &reply);
}
