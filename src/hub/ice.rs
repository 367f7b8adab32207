//! `ask-ice`: the ICE servers for the asking user, with a fresh TURN credential when TURN is
//! configured, as `GET /client-config` gives them. A socket.io client asks for an answer with
//! an acknowledgement callback, so the answer (or its refusal, `{ error }`) goes there; an
//! `ask-ice` without a callback could not be answered, so it gets an `error` `ack-required`
//! event instead, and no credential is minted for it.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::extract::AckSender;

use super::Hub;
use crate::limits::retry_after_ms;
use crate::protocol::{self as p, Refusal, outbound as out};
use crate::session::Session;
use crate::turn::RateLimited;

impl Hub {
    pub(crate) fn ask_ice(
        &self,
        session: &Arc<Session>,
        payload: Option<&RawValue>,
        ack: Option<AckSender>,
    ) {
        let Some(ack) = ack else {
            return self
                .delivery
                .refuse(session, p::ASK_ICE, Refusal::AckRequired);
        };
        let answer = p::inbound::parse_ask_ice(payload).and_then(|()| {
            self.ice
                .for_user(&session.identity.user_id)
                .map_err(|RateLimited(wait)| Refusal::RateLimited {
                    retry_after_ms: retry_after_ms(wait),
                })
        });
        self.answer_ask_ice(session, ack, answer);
    }

    /// Sends the acknowledgement: the ICE servers, or `{ error }`.
    pub(crate) fn answer_ask_ice(
        &self,
        session: &Session,
        ack: AckSender,
        answer: Result<out::IceConfig, Refusal>,
    ) {
        let sent = match answer {
            Ok(config) => ack.send(&config),
            Err(refusal) => ack.send(&out::AckRefusal::from(refusal)),
        };
        if let Err(e) = sent {
            tracing::debug!(peer = %session.peer, cause = %e, "ask-ice answer not sent");
        }
    }
}
