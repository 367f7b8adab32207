//! `#rtcio:message`: one peer to another, only between peers that share a room. The payload's
//! `data` is passed on without being parsed. In cluster mode a relay goes straight to the
//! target's node, which checks the rooms again (`cluster::inbox::read_frame`).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Hub;
use crate::delivery;
use crate::ids::PeerId;
use crate::metrics::{self, Timer};
use crate::protocol::{self as p, Refusal, RelayRequest, outbound as out};
use crate::session::Session;
use crate::store::RelayRoute;

impl Hub {
    pub(crate) async fn relay(&self, session: &Arc<Session>, payload: Option<&RawValue>) {
        let metrics = metrics::get();
        let _timer = Timer::start(&metrics.relay_seconds);
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
        let relayed = out::Relayed {
            source: &session.peer,
            target: &request.target,
            data: request.data,
        };
        let Some(relayed) = delivery::serialize(p::RELAY, &relayed) else {
            return;
        };
        let route = self
            .rooms
            .route_relay(session, &target, || relayed.get().as_bytes().to_vec())
            .await;
        if let Ok(RelayRoute::Here | RelayRoute::Posted) = route {
            metrics.relayed.inc();
            metrics.relayed_bytes.inc_by(relayed.get().len() as u64);
        }
        if let Ok(RelayRoute::Posted) = route {
            metrics.letters_sent.inc();
        }
        match route {
            Ok(RelayRoute::Here) => {
                self.delivery
                    .deliver_here(&target, p::RELAY, &relayed)
                    .await
            }
            Ok(RelayRoute::Posted) => {}
            Ok(RelayRoute::Unshared) => {
                self.delivery
                    .refuse(session, p::RELAY, Refusal::UnknownTarget)
            }
            Err(e) => {
                tracing::error!(cause = %e, "relay refused: room state unavailable");
                self.delivery
                    .refuse(session, p::RELAY, Refusal::Unavailable)
            }
        }
    }
}
