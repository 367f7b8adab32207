//! Events a member sends to everyone else in one of its rooms, with `id` stamped by the server:
//! `media-state` (whose `{mic, cam}` is also cached for late joiners), `stopScreenShare` and
//! `chat-message` (neither cached nor replayed to late joiners).

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use super::Hub;
use crate::delivery::{refuse, room_key};
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;

impl<A: Adapter> Hub<A> {
    pub(crate) async fn media_state(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
        let (room, state, object) = match p::inbound::parse_media_state(payload) {
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
        echo(socket, session, p::MEDIA_STATE, &room, object).await;
    }

    /// `stopScreenShare` and `chat-message`: echoed as they are.
    pub(crate) async fn pass_on(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        event: &str,
        payload: Option<&RawValue>,
    ) {
        let (room, object) = match p::inbound::parse_room_of(payload) {
            Ok(parsed) => parsed,
            Err(refusal) => return refuse(socket, event, refusal),
        };
        if !session.in_room(&room) {
            return refuse(socket, event, Refusal::NotInRoom);
        }
        echo(socket, session, event, &room, object).await;
    }
}

/// Sends `object`, stamped with the sender's id, to the other members of `room`.
async fn echo<A: Adapter>(
    socket: &SocketRef<A>,
    session: &Session,
    event: &str,
    room: &str,
    object: Map<String, Value>,
) {
    let stamped = out::stamp_id(object, &session.sid_str);
    if let Err(e) = socket.to(room_key(room)).emit(event, &stamped).await {
        tracing::warn!(room, event, cause = %e, "echo failed");
    }
}
