//! `join-room`: the join of the contract, step by step, atomic per room.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::Hub;
use crate::delivery::{refuse_join, room_key, send};
use crate::protocol::{self as p, JoinRequest, Refusal, outbound as out};
use crate::session::Session;
use crate::store::{JoinOutcome, Member};

impl<A: Adapter> Hub<A> {
    pub(crate) async fn join_room(
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
                return send(socket, p::JOIN_OK, &out::JoinOk { room_id: room });
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
                &out::UserConnected {
                    id: &id,
                    name: &member.name,
                    user_id: &member.user_id,
                },
            );
            if let Some(state) = member.media {
                send(
                    socket,
                    p::MEDIA_STATE,
                    &out::MediaStateBackfill {
                        id: &id,
                        room_id: room,
                        mic: state.mic,
                        cam: state.cam,
                    },
                );
            }
        }
        send(socket, p::JOIN_OK, &out::JoinOk { room_id: room });

        let others: Vec<Sid> = existing.iter().map(|m| m.sid).collect();
        let me = &*session.sid_str;
        let announcement = out::UserConnected {
            id: me,
            name: &name,
            user_id: &session.identity.user_id,
        };
        self.delivery
            .send_to(&others, p::USER_CONNECTED, &announcement)
            .await;
        self.delivery
            .send_to(&others, p::INIT_OFFER, &out::InitOffer { source: me })
            .await;
    }
}
