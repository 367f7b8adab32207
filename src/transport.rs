//! The socketioxide glue: admitting a connection (token check, its delivery room, its
//! dispatcher and disconnect handling) and the dispatcher that checks each event's size,
//! splits its frame and queues the handler behind the socket's earlier events (see `session`).

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::handler::{MessageHandler, Value};
use socketioxide::socket::Socket;
use socketioxide_core::adapter::DefinedAdapter;

use crate::auth::AuthError;
use crate::delivery::{refuse, socket_key};
use crate::hub::Hub;
use crate::protocol::{self as p, Frame, Refusal};
use crate::session::Session;

impl<A: Adapter> Hub<A> {
    /// Registers the default namespace. All the work happens in the connect middleware:
    /// socketioxide acknowledges the CONNECT before it runs the connect handler, so handlers
    /// registered there could miss a client's first events. With a remote adapter the result
    /// is a future that resolves once the adapter is ready.
    pub fn attach(self: &Arc<Self>) -> A::InitRes
    where
        A: DefinedAdapter,
    {
        use socketioxide::handler::ConnectHandler;
        let hub = Arc::clone(self);
        self.delivery.io().ns(
            "/",
            (async || {}).with(
                async move |socket: SocketRef<A>, Data(auth): Data<Option<serde_json::Value>>| {
                    hub.admit(&socket, auth.as_ref())
                },
            ),
        )
    }

    /// Checks the token, then sets the socket up: its delivery room, its event dispatcher and
    /// its disconnect handling.
    fn admit(
        self: &Arc<Self>,
        socket: &SocketRef<A>,
        auth: Option<&serde_json::Value>,
    ) -> Result<(), AuthError> {
        let identity = self.verifier.verify(auth).inspect_err(|e| {
            tracing::info!(sid = %socket.id, reason = %e, "connection refused");
        })?;
        tracing::debug!(sid = %socket.id, user = %identity.user_id, "connected");
        let session = Arc::new(Session::new(
            socket.id,
            identity,
            Arc::clone(&self.connected),
        ));
        if self.delivery.is_shared() {
            socket.join(socket_key(socket.id));
        }
        socket.on_fallback(Dispatcher {
            hub: Arc::clone(self),
            session: Arc::clone(&session),
        });
        let hub = Arc::clone(self);
        socket.on_disconnect(async move |socket: SocketRef<A>| {
            let job_session = Arc::clone(&session);
            // Queued like any event, so it runs after everything the socket sent before.
            let queued = session.run_in_order(async move {
                hub.disconnected(&socket, &job_session).await;
            });
            if !queued {
                tracing::warn!(sid = %session.sid, "disconnect dropped behind a full event queue");
            }
        });
        Ok(())
    }
}

/// Receives every event of one socket (registered as its fallback handler).
pub struct Dispatcher<A: Adapter> {
    hub: Arc<Hub<A>>,
    session: Arc<Session>,
}

/// Marker for [`MessageHandler`]'s type parameter.
pub struct InOrder;

impl<A: Adapter> MessageHandler<A, InOrder> for Dispatcher<A> {
    fn call(&self, socket: Arc<Socket<A>>, value: Value, _ack: Option<i64>) {
        let socket = SocketRef::from(socket);
        let text = match &value {
            Value::Str(text, None) => text,
            _ => return refuse(&socket, "", Refusal::InvalidPayload),
        };
        if text.len() > self.hub.limits.max_payload_bytes {
            let event = Frame::parse(text).map(|f| f.event.into_owned());
            return refuse(
                &socket,
                event.as_deref().unwrap_or(""),
                Refusal::PayloadTooLarge,
            );
        }
        let hub = Arc::clone(&self.hub);
        let session = Arc::clone(&self.session);
        let job_socket = socket.clone();
        let queued = self.session.run_in_order(async move {
            let Some(text) = value.as_str() else { return };
            let Some(frame) = Frame::parse(text) else {
                return refuse(&job_socket, "", Refusal::InvalidPayload);
            };
            let (hub, socket, payload) = (&*hub, &job_socket, frame.payload);
            match &*frame.event {
                p::JOIN_ROOM => hub.join_room(socket, &session, payload).await,
                p::CHECK_ROOM => hub.check_room(socket, &session, payload).await,
                p::LEAVE_ROOM => hub.leave_room(socket, &session, payload).await,
                p::MEDIA_STATE => hub.media_state(socket, &session, payload).await,
                event @ (p::STOP_SCREEN_SHARE | p::CHAT_MESSAGE) => {
                    hub.pass_on(socket, &session, event, payload).await
                }
                p::RELAY => hub.relay(socket, &session, payload).await,
                other => refuse(socket, other, Refusal::UnknownEvent),
            }
        });
        if !queued {
            refuse(&socket, "", Refusal::Busy);
        }
    }
}
