//! Several machines behind Fly's proxy with socket.io's default transports. socket.io-client
//! starts on HTTP long-polling, and every polling request, and the WebSocket upgrade, must
//! reach the machine holding its Engine.IO session; Fly's proxy balances each request on its
//! own. So each machine records, in Redis, the sessions it opens over polling, and answers a
//! request for a session it does not hold with `fly-replay: instance=<machine>`: Fly's proxy
//! then replays the request on that machine. Outside Fly (no `FLY_MACHINE_ID`) none of this
//! runs, and a proxy in front needs sticky sessions instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;

use crate::hub::Hub;
use crate::store::RoomStore;

/// A polling handshake's reply is a few hundred bytes; anything larger is left alone.
const HANDSHAKE_BODY_LIMIT: usize = 16 * 1024;

/// How long a session opened here counts as here before its socket exists (the client's
/// CONNECT may take this long to come).
const OPENING_FOR: Duration = Duration::from_secs(60);

/// The header Fly's proxy adds to a replayed request: it is never replayed again.
const REPLAYED: &str = "fly-replay-src";

/// This machine's part in routing Engine.IO requests to their machine.
pub struct Pinning {
    machine: String,
    hub: Arc<Hub>,
    /// Sessions opened here over polling whose socket may not exist yet.
    opening: DashMap<String, Instant>,
}

impl Pinning {
    /// `machine` is Fly's id of this machine; `None` unless the hub's rooms are in Redis.
    pub fn new(machine: String, hub: Arc<Hub>) -> Option<Arc<Pinning>> {
        matches!(hub.rooms, RoomStore::Redis(_)).then(|| {
            Arc::new(Pinning {
                machine,
                hub,
                opening: DashMap::new(),
            })
        })
    }

    fn redis(&self) -> Option<&crate::store::RedisRooms> {
        match &self.hub.rooms {
            RoomStore::Redis(redis) => Some(redis),
            RoomStore::Memory(_) => None,
        }
    }

    fn holds(&self, sid: &str) -> bool {
        if self.opening.contains_key(sid) {
            return true;
        }
        sid.parse()
            .ok()
            .is_some_and(|sid| self.hub.delivery.socket(sid).is_some())
    }

    /// Records a session opened here, for the other machines to find.
    async fn opened(&self, sid: &str) {
        let now = Instant::now();
        self.opening
            .retain(|_, since| now.saturating_duration_since(*since) < OPENING_FOR);
        self.opening.insert(sid.to_string(), now);
        let Some(redis) = self.redis() else { return };
        if let Err(e) = redis.pin_engine_session(sid, &self.machine).await {
            tracing::warn!(cause = %e, "engine session not recorded; other machines cannot route to it");
        }
    }
}

/// The middleware in front of socketioxide.
pub async fn route_to_holder(
    State(pinning): State<Arc<Pinning>>,
    request: Request,
    next: Next,
) -> Response {
    if !request
        .uri()
        .path()
        .starts_with(crate::http::SOCKET_IO_PATH)
    {
        return next.run(request).await;
    }
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    match param("sid") {
        None if param("transport").as_deref() == Some("polling") => {
            let response = next.run(request).await;
            record_handshake(&pinning, response).await
        }
        None => next.run(request).await,
        Some(sid) => {
            if pinning.holds(&sid) || request.headers().contains_key(REPLAYED) {
                return next.run(request).await;
            }
            let holder = match pinning.redis() {
                Some(redis) => redis.engine_session_machine(&sid).await.ok().flatten(),
                None => None,
            };
            match holder {
                Some(machine) if machine != pinning.machine => replay_on(&machine),
                _ => next.run(request).await,
            }
        }
    }
}

/// Reads the session id out of a polling handshake's reply (`0{"sid":…}`) and records it.
async fn record_handshake(pinning: &Pinning, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, HANDSHAKE_BODY_LIMIT).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "handshake reply too large",
        )
            .into_response();
    };
    let sid = bytes
        .strip_prefix(b"0")
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(json).ok())
        .and_then(|open| Some(open.get("sid")?.as_str()?.to_string()));
    if let Some(sid) = sid {
        pinning.opened(&sid).await;
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Tells Fly's proxy to replay the request on `machine`.
fn replay_on(machine: &str) -> Response {
    match HeaderValue::from_str(&format!("instance={machine}")) {
        Ok(value) => {
            let mut response = StatusCode::CONFLICT.into_response();
            response.headers_mut().insert("fly-replay", value);
            response
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
