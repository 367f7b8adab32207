//! Events a member sends to everyone else in one of its rooms, with `id` stamped by the server:
//! `media-state` (whose `{mic, cam}` is also cached for late joiners), `stopScreenShare` and
//! `chat-message` (neither cached nor replayed to late joiners).

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Hub;
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;

impl Hub {
    pub(crate) async fn media_state(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let (room, state, object) = match p::inbound::parse_media_state(payload) {
            Ok(parsed) => parsed,
            Err(refusal) => return self.delivery.refuse(session, p::MEDIA_STATE, refusal),
        };
        if !session.in_room(&room) {
            return self
                .delivery
                .refuse(session, p::MEDIA_STATE, Refusal::NotInRoom);
        }
        // Taking the room's turn keeps the cache and the echo in step with a concurrent join's
        // backfill: the newcomer sees either the old state then this echo, or the new state.
        let _turn = self.turns.take(&room).await;
        if let Err(e) = self.rooms.set_media(&room, &session.peer, state).await {
            tracing::error!(room, cause = %e, "media-state not cached: room state unavailable");
        }
        self.echo(session, p::MEDIA_STATE, &room, object).await;
    }

    /// `stopScreenShare` and `chat-message`: echoed as they are.
    pub(crate) async fn pass_on(
        &self,
        session: &Arc<Session>,
        event: &'static str,
        payload: Option<&RawValue>,
    ) {
        let (room, object) = match p::inbound::parse_room_of(payload) {
            Ok(parsed) => parsed,
            Err(refusal) => return self.delivery.refuse(session, event, refusal),
        };
        if !session.in_room(&room) {
            return self.delivery.refuse(session, event, Refusal::NotInRoom);
        }
        self.echo(session, event, &room, object).await;
    }

    /// Sends `object`, stamped with the sender's id, to the other members of `room`.
    async fn echo(
        &self,
        session: &Session,
        event: &'static str,
        room: &str,
        object: Map<String, Value>,
    ) {
        let mut others = match self.rooms.members(room).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(room, event, cause = %e, "echo failed: room state unavailable");
                return;
            }
        };
        others.retain(|member| member.peer != session.peer);
        let stamped = out::stamp_id(object, &session.peer);
        self.delivery.send_to(room, &others, event, &stamped).await;
    }
}
