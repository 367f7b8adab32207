//! Leaving: `leave-room`, a disconnect, and the announcement every departure gets.

use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::Hub;
use crate::delivery::{refuse, room_key};
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;

impl<A: Adapter> Hub<A> {
    pub(crate) async fn leave_room(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let room = match p::inbound::parse_room_of(payload) {
            Ok((room, _)) => room,
            Err(refusal) => return refuse(socket, p::LEAVE_ROOM, refusal),
        };
        if !self.leave(socket, session, &room).await {
            refuse(socket, p::LEAVE_ROOM, Refusal::NotInRoom);
        }
    }

    pub(crate) async fn disconnected(&self, socket: &SocketRef<A>, session: &Session) {
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
    pub(crate) async fn announce_departure(&self, sid: &str, remaining: &[Sid]) {
        let gone = out::PeerId { id: sid };
        self.delivery.send_to(remaining, p::PEER_LEFT, &gone).await;
        self.delivery
            .send_to(remaining, p::USER_DISCONNECTED, &gone)
            .await;
    }
}
