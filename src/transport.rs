//! The socketioxide glue: admitting a connection (token check, its session, its delivery
//! room, its dispatcher and disconnect handling), greeting it, and the dispatcher that checks
//! each event's size, splits its frame and queues the handler behind the session's earlier
//! events (see `session`).

use std::ops::Deref;
use std::sync::Arc;

use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value};
use socketioxide::socket::{DisconnectReason, Socket};

use crate::auth::AuthError;
use crate::http::ClientAddress;
use crate::hub::{Hub, Resume};
use crate::limits::{CapRefusal, EventClass, Verdict, retry_after_ms};
use crate::metrics;
use crate::protocol::{self as p, Frame, Refusal};
use crate::session::Session;

impl Hub {
    /// Registers the default namespace. The work happens in the connect middleware, which
    /// runs before socketioxide acknowledges the CONNECT: the socket's session and event
    /// handlers are in place before the client can send anything. The connect handler, which
    /// socketioxide runs as a task after the acknowledgement, greets the client with `session`;
    /// the session's events wait for it (see `lifecycle`), so `session` is the first event.
    pub fn attach(self: &Arc<Self>) {
        use socketioxide::handler::ConnectHandler;
        let (admitting, greeting) = (Arc::clone(self), Arc::clone(self));
        self.delivery.io().ns(
            "/",
            (async move |socket: SocketRef| greeting.greet(&socket)).with(
                async move |socket: SocketRef, Data(auth): Data<Option<serde_json::Value>>| {
                    admitting.admit(&socket, auth.as_ref()).await
                },
            ),
        );
    }

    /// Checks the token, finds or makes the socket's session, and sets the socket up: its
    /// event dispatcher and its disconnect handling.
    async fn admit(
        self: &Arc<Self>,
        socket: &SocketRef,
        auth: Option<&serde_json::Value>,
    ) -> Result<(), ConnectRefusal> {
        let address = socket
            .req_parts()
            .extensions
            .get::<ClientAddress>()
            .map(|a| a.0);
        let admitted = self
            .verifier
            .verify(auth)
            .map_err(ConnectRefusal::Auth)
            .and_then(|identity| {
                let slot = self.caps.admit(address).map_err(ConnectRefusal::Caps)?;
                Ok((identity, slot))
            });
        let (identity, slot) = admitted.inspect_err(|refusal| {
            tracing::info!(sid = %socket.id, ?address, reason = %refusal, "connection refused");
            metrics::get().connection_refused(refusal.label());
        })?;
        metrics::get().connections_opened.inc();
        let resume = auth.and_then(Resume::parse);
        let session = self.open_session(socket.id, identity, resume).await;
        socket.on_fallback(Dispatcher {
            hub: Arc::clone(self),
            session: Arc::clone(&session),
        });
        let hub = Arc::clone(self);
        // The handler holds the connection's place under the caps: it is given back when the
        // socket, and with it the handler, is gone.
        let slot = Arc::new(slot);
        socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
            let _slot = &slot;
            hub.socket_gone(&session, socket.id, reason);
        });
        Ok(())
    }
}

impl Hub {
    /// Counts the event against its class's rate. Over it, the client is told (an `ask-ice`
    /// in its acknowledgement, taken from `ack`) and the event dropped; a socket that keeps
    /// flooding is disconnected. False if the event is dropped.
    fn within_rate(
        &self,
        session: &Arc<Session>,
        frame: &Frame,
        ack: &mut Option<AckSender>,
    ) -> bool {
        let event = &*frame.event;
        let class = match event {
            p::RELAY => EventClass::Relay,
            p::JOIN_ROOM | p::CHECK_ROOM | p::LEAVE_ROOM => EventClass::Room,
            _ => EventClass::Echo,
        };
        let size = frame.payload.map_or(0, |payload| payload.get().len());
        let wait = match session.check_rate(class, size, &self.limits.rates) {
            Verdict::Allowed => return true,
            // What it sent before its disconnect took effect: dropped, counted once already.
            Verdict::CutOff => return false,
            Verdict::Refused(wait) => {
                metrics::get().rate_limited(class);
                wait
            }
            Verdict::Flooding => {
                metrics::get().flood_disconnects.inc();
                let socket = session.link().socket;
                tracing::warn!(
                    sid = ?socket,
                    peer = %session.peer,
                    user = %session.identity.user_id,
                    event,
                    "kept flooding over its rate limit; disconnecting the socket"
                );
                self.delivery.cut_off(session);
                return false;
            }
        };
        let refusal = Refusal::RateLimited {
            retry_after_ms: retry_after_ms(wait),
        };
        if event == p::ASK_ICE
            && let Some(ack) = ack.take()
        {
            self.answer_ask_ice(session, ack, Err(refusal));
        } else if class == EventClass::Room && event != p::LEAVE_ROOM {
            let room = frame
                .payload
                .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
                .and_then(|p| Some(p.get("roomId")?.as_str()?.to_string()));
            self.delivery.refuse_join(session, room.as_deref(), refusal);
        } else {
            self.delivery.refuse(session, event, refusal);
        }
        false
    }
}

/// Why a connection was refused at CONNECT; the client's `connect_error` carries the message.
#[derive(Debug)]
pub enum ConnectRefusal {
    Auth(AuthError),
    Caps(CapRefusal),
}

impl ConnectRefusal {
    /// Its metrics label.
    fn label(&self) -> &'static str {
        match self {
            ConnectRefusal::Auth(AuthError::MissingToken) => "missing-token",
            ConnectRefusal::Auth(AuthError::InvalidToken) => "invalid-token",
            ConnectRefusal::Auth(AuthError::TokenExpired) => "token-expired",
            ConnectRefusal::Caps(CapRefusal::TooManyFromAddress) => "address-full",
            ConnectRefusal::Caps(CapRefusal::ServerFull) => "server-full",
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectRefusal::Auth(e) => e.fmt(f),
            ConnectRefusal::Caps(CapRefusal::TooManyFromAddress) => {
                f.write_str("too many connections from your address")
            }
            ConnectRefusal::Caps(CapRefusal::ServerFull) => {
                f.write_str("the server is at its connection limit; try again later")
            }
        }
    }
}

impl std::error::Error for ConnectRefusal {}

/// Receives every event of one socket (registered as its fallback handler).
pub struct Dispatcher {
    hub: Arc<Hub>,
    session: Arc<Session>,
}

/// Marker for [`MessageHandler`]'s type parameter.
pub struct InOrder;

impl MessageHandler<LocalAdapter, InOrder> for Dispatcher {
    fn call(&self, socket: Arc<Socket<LocalAdapter>>, mut value: Value, ack: Option<i64>) {
        // Only `ask-ice` answers through the acknowledgement; its absence matters there.
        let ack = ack.map(
            |_| match AckSender::from_message_parts(&socket, &mut value, &ack) {
                Ok(sender) => sender,
                Err(never) => match never {},
            },
        );
        let Value::Str(text, None) = value else {
            return self
                .hub
                .delivery
                .refuse(&self.session, "", Refusal::InvalidPayload);
        };
        if text.len() > self.hub.limits.max_payload_bytes {
            let event = Frame::parse(&text).map(|f| f.event.into_owned());
            let event = event.as_deref().unwrap_or("");
            return self
                .hub
                .delivery
                .refuse(&self.session, event, Refusal::PayloadTooLarge);
        }
        self.hub.dispatch(&self.session, text, ack);
    }
}

impl Hub {
    /// Queues one event of `session`'s client, `["name", payload]`, behind its earlier ones;
    /// `ack` answers its acknowledgement callback, if the client gave one.
    pub(crate) fn dispatch<F>(
        self: &Arc<Self>,
        session: &Arc<Session>,
        frame: F,
        ack: Option<AckSender>,
    ) where
        F: Deref<Target = str> + Send + 'static,
    {
        let (hub, job_session) = (Arc::clone(self), Arc::clone(session));
        let queued = session.run_in_order(async move {
            let (hub, session) = (&hub, &job_session);
            let moved = {
                let link = session.link();
                (link.ended || link.given_up).then(|| link.moved_to.clone())
            };
            match moved {
                None => {}
                // Sent to this node after its session left: the session's new node handles it.
                Some(Some(node)) => return hub.act_elsewhere(session, &node, &frame).await,
                // Events still in flight when the session ended (or was given up) belong to
                // nobody.
                Some(None) => return,
            }
            let Some(frame) = Frame::parse(&frame) else {
                return hub.delivery.refuse(session, "", Refusal::InvalidPayload);
            };
            metrics::get().event(&frame.event).inc();
            let mut ack = ack;
            if !hub.within_rate(session, &frame, &mut ack) {
                return;
            }
            let payload = frame.payload;
            match &*frame.event {
                p::JOIN_ROOM => hub.join_room(session, payload).await,
                p::CHECK_ROOM => hub.check_room(session, payload).await,
                p::LEAVE_ROOM => hub.leave_room(session, payload).await,
                p::MEDIA_STATE => hub.media_state(session, payload).await,
                p::STOP_SCREEN_SHARE => hub.pass_on(session, p::STOP_SCREEN_SHARE, payload).await,
                p::CHAT_MESSAGE => hub.pass_on(session, p::CHAT_MESSAGE, payload).await,
                p::RELAY => hub.relay(session, payload).await,
                p::ASK_ICE => hub.ask_ice(session, payload, ack),
                other => hub.delivery.refuse(session, other, Refusal::UnknownEvent),
            }
        });
        if !queued {
            self.delivery.refuse(session, "", Refusal::Busy);
        }
    }
}
