//! `#rtcio:message`: one peer to another, only between peers that share a room. The payload's
//! `data` is passed on without being parsed.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;

use super::Hub;
use crate::ids::PeerId;
use crate::protocol::{self as p, Refusal, RelayRequest, outbound as out};
use crate::session::Session;

impl<A: Adapter> Hub<A> {
    pub(crate) async fn relay(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let request = match RelayRequest::parse(payload) {
            Ok(request) => request,
            Err(refusal) => return self.delivery.refuse(session, p::RELAY, refusal),
        };
        let target = match PeerId::parse(&request.target) {
            Some(target) if target != session.peer => target,
            _ => {
                return self
                    .delivery
                    .refuse(session, p::RELAY, Refusal::UnknownTarget);
            }
        };
        let refusal = match self.rooms.shares_room(session, &target).await {
            Ok(true) => None,
            Ok(false) => Some(Refusal::UnknownTarget),
            Err(e) => {
                tracing::error!(cause = %e, "relay refused: room state unavailable");
                Some(Refusal::Unavailable)
            }
        };
        if let Some(refusal) = refusal {
            return self.delivery.refuse(session, p::RELAY, refusal);
        }
        let relayed = out::Relayed {
            source: &session.peer,
            target: &request.target,
            data: request.data,
        };
        self.delivery.send_to(&[target], p::RELAY, &relayed).await;
    }
}
