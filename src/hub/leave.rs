//! Leaving: `leave-room`, a disconnect, and the announcement every departure gets.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Hub;
use crate::ids::PeerId;
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;
use crate::store::Recipient;

impl Hub {
    pub(crate) async fn leave_room(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let room = match p::inbound::parse_room_of(payload) {
            Ok((room, _)) => room,
            Err(refusal) => return self.delivery.refuse(session, p::LEAVE_ROOM, refusal),
        };
        if !self.leave(session, &room).await {
            self.delivery
                .refuse(session, p::LEAVE_ROOM, Refusal::NotInRoom);
        }
    }

    /// Takes the session out of `room` and tells the others; false if it was not a member.
    pub(crate) async fn leave(&self, session: &Session, room: &str) -> bool {
        let _turn = self.turns.take(room).await;
        let remaining = match self.rooms.leave(room, &session.peer).await {
            Ok(Some(remaining)) => remaining,
            Ok(None) => return false,
            Err(e) => {
                // Recorded and announced once Redis answers again (`record_missed_leaves`).
                tracing::error!(room, cause = %e, "leave not recorded yet: room state unavailable");
                self.missed_leaves
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((room.into(), session.peer.clone()));
                Vec::new()
            }
        };
        session.remove_room(room);
        self.announce_departure(room, &session.peer, &remaining)
            .await;
        true
    }

    /// Records the leaves Redis could not take when they happened, and announces them; those it
    /// still cannot take wait for the next try. A peer that is back in the room meanwhile
    /// stays.
    pub async fn record_missed_leaves(&self) {
        let missed =
            std::mem::take(&mut *self.missed_leaves.lock().unwrap_or_else(|p| p.into_inner()));
        for (room, peer) in missed {
            let _turn = self.turns.take(&room).await;
            if self
                .delivery
                .session(&peer)
                .is_some_and(|s| s.in_room(&room))
            {
                continue;
            }
            match self.rooms.leave(&room, &peer).await {
                Ok(Some(remaining)) => self.announce_departure(&room, &peer, &remaining).await,
                Ok(None) => {}
                Err(_) => self
                    .missed_leaves
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((room, peer)),
            }
        }
    }

    /// Tells the members left in `room` that `peer` is gone.
    pub(crate) async fn announce_departure(
        &self,
        room: &str,
        peer: &PeerId,
        remaining: &[Recipient],
    ) {
        let gone = out::PeerId { id: peer };
        let delivery = &self.delivery;
        delivery.send_to(room, remaining, p::PEER_LEFT, &gone).await;
        delivery
            .send_to(room, remaining, p::USER_DISCONNECTED, &gone)
            .await;
    }
}
