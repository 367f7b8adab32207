//! `#rtcio:message`: one peer to another, only between peers that share a room. The payload's
//! `data` is passed on without being parsed.

use std::str::FromStr;

use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::Hub;
use crate::delivery::refuse;
use crate::protocol::{self as p, Refusal, RelayRequest, outbound as out};
use crate::session::Session;

impl<A: Adapter> Hub<A> {
    pub(crate) async fn relay(
        &self,
        socket: &SocketRef<A>,
        session: &Session,
        payload: Option<&RawValue>,
    ) {
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
        let relayed = out::Relayed {
            source: &session.sid_str,
            target: &request.target,
            data: request.data,
        };
        self.delivery.send_to(&[target], p::RELAY, &relayed).await;
    }
}
