//! Puts the pieces together: the Socket.IO layer, the HTTP routes (`/health`,
//! `/client-config`, `/dev/token`, the demo files), CORS, and the listener with its graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use serde::Deserialize;
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide::{SocketIo, SocketIoBuilder};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::{DEV_TOKEN_SECONDS, Verifier};
use crate::cluster::{HEARTBEAT_EVERY, RedisRooms};
use crate::config::Config;
use crate::pubsub::PubSub;
use crate::rooms::{MemoryRooms, RoomStore};
use crate::signaling::{Limits, Signaling};

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<crate::auth::KeyError> for StartError {
    fn from(e: crate::auth::KeyError) -> Self {
        StartError(e.0)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError(e.to_string())
    }
}

/// Frames over this multiple of the event cap close the connection instead of getting an
/// `error` reply, so a client cannot make the server buffer arbitrarily large frames.
const FRAME_LIMIT_FACTOR: usize = 16;

/// What the HTTP routes need.
struct Http<A: Adapter> {
    signaling: Arc<Signaling<A>>,
    verifier: Arc<Verifier>,
    ice_servers: serde_json::Value,
}

/// Runs the server until `shutdown` resolves, then disconnects every client and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let verifier = Arc::new(Verifier::from_config(&config)?);
    let ice_servers: serde_json::Value = serde_json::from_str(&config.ice_servers)
        .map_err(|e| StartError(format!("ICE_SERVERS is not valid JSON: {e}")))?;
    if !ice_servers.is_array() {
        return Err(StartError("ICE_SERVERS must be a JSON array".into()));
    }
    let listener = TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot listen on {}:{}: {e}",
                config.host, config.port
            ))
        })?;
    let limits = limits(&config);

    let Some(redis_url) = config.redis_url.clone() else {
        let (layer, io) = socket_io_builder(&config).build_layer();
        let store = RoomStore::Memory(MemoryRooms::default());
        let signaling = Signaling::new(io.clone(), store, Arc::clone(&verifier), limits);
        signaling.attach();
        let http = Http {
            signaling,
            verifier,
            ice_servers,
        };
        return serve(config, listener, layer, io, http, shutdown).await;
    };

    let client = redis::Client::open(with_resp3(&redis_url))
        .map_err(|e| StartError(format!("REDIS_URL is not usable: {e}")))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        StartError(format!("cannot reach Redis at {}: {e}", redact(&redis_url)))
    };
    let connect = async {
        // One plain round trip first, so a wrong address fails at once instead of after the
        // connection managers' reconnect back-off.
        let mut probe = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| unreachable(&e))?;
        redis::cmd("PING")
            .query_async::<()>(&mut probe)
            .await
            .map_err(|e| unreachable(&e))?;
        let pubsub = PubSub::connect(client.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let rooms = RedisRooms::connect(client)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok::<_, StartError>((pubsub, rooms))
    };
    let (pubsub, rooms) = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(&"no answer within 10 s"))??;
    tracing::info!(node = rooms.node(), "cluster mode: room state in Redis");
    let adapter = RedisAdapterCtr::new_with_driver(pubsub.clone(), RedisAdapterConfig::default());
    let (layer, io) = socket_io_builder(&config)
        .with_adapter::<ClusterAdapter>(adapter)
        .build_layer();
    let signaling = Signaling::new(
        io.clone(),
        RoomStore::Redis(Box::new(rooms)),
        Arc::clone(&verifier),
        limits,
    );
    signaling.attach().await.map_err(|e| unreachable(&e))?;

    let heartbeat = tokio::spawn(keep_node_alive(Arc::clone(&signaling), io.clone(), pubsub));
    let grace = config.shutdown_grace();
    let http = Http {
        signaling: Arc::clone(&signaling),
        verifier,
        ice_servers,
    };
    let served = serve(config, listener, layer, io, http, shutdown).await;
    // The heartbeat runs until this node's sockets have left their rooms; if they don't in
    // time, the node's entries stay and the survivors reap them once the heartbeat lapses.
    let drained = signaling.drained(grace).await;
    heartbeat.abort();
    if drained && let Err(e) = signaling.deregister_node().await {
        tracing::warn!(cause = %e, "could not deregister this node; survivors will reap it");
    }
    served
}

const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type ClusterAdapter = CustomRedisAdapter<Emitter, PubSub>;

/// The pub/sub transport needs RESP3; add it unless the URL says otherwise.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Cluster mode: refresh this node's heartbeat, and announce the members of nodes that died.
async fn keep_node_alive(
    signaling: Arc<Signaling<ClusterAdapter>>,
    io: SocketIo<ClusterAdapter>,
    pubsub: PubSub,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match signaling.heartbeat().await {
            Ok(true) => {}
            Ok(false) => {
                // The others may have announced our members as gone: make every client
                // reconnect and rejoin so the rooms agree again.
                tracing::error!(
                    "this node's heartbeat had lapsed; disconnecting its clients so they rejoin"
                );
                if let Err(e) = io.local().disconnect().await {
                    tracing::warn!(cause = %e, "disconnecting clients failed");
                }
            }
            Err(e) => tracing::error!(cause = %e, "heartbeat failed; Redis unreachable"),
        }
        if let Err(e) = pubsub.ping().await {
            tracing::error!(cause = %e, "cluster pub/sub connection down");
        }
        if let Err(e) = signaling.reap_dead_nodes().await {
            tracing::error!(cause = %e, "looking for dead nodes failed; Redis unreachable");
        }
    }
}

/// Packets one socket may have waiting to be written. socketioxide's default (128) overflows
/// when a busy server fans a storm of joins out; the queue allocates in blocks of 32 as it
/// fills, so a deep limit costs an idle socket nothing.
const SOCKET_QUEUE_PACKETS: usize = 4096;

/// WebSocket read chunk. Signaling frames are mostly a few hundred bytes; a 3 KB SDP takes
/// three reads, and every idle connection keeps 3 KiB less than with the 4 KiB default.
const WS_READ_CHUNK: usize = 1024;

fn socket_io_builder(config: &Config) -> SocketIoBuilder<LocalAdapter> {
    let frame_limit = config.max_payload_bytes.saturating_mul(FRAME_LIMIT_FACTOR);
    SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .max_buffer_size(SOCKET_QUEUE_PACKETS)
        .max_payload(frame_limit as u64)
        .ws_read_buffer_size(WS_READ_CHUNK)
        .ws_max_message_size(frame_limit)
        .ws_max_frame_size(frame_limit)
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_payload_bytes: config.max_payload_bytes,
        max_peers_per_room: config.max_peers_per_room,
    }
}

async fn serve<A: Adapter>(
    config: Config,
    listener: TcpListener,
    layer: socketioxide::layer::SocketIoLayer<A>,
    io: SocketIo<A>,
    http: Http<A>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if http.verifier.is_dev() {
        tracing::warn!(
            "DEV MODE: tokens are signed with a random secret made at start and anyone can \
             get one from GET /dev/token. Do not expose this server to the internet."
        );
        eprintln!("*** rtcio-signal is running in DEV MODE: GET /dev/token hands out tokens ***");
    }

    let app = Router::new()
        .route("/health", get(health::<A>))
        .route("/client-config", get(client_config::<A>))
        .route("/dev/token", get(dev_token::<A>));
    #[cfg(feature = "heap-census")]
    let app = app.route(
        "/debug/heap",
        get(|| async { Json(crate::heap_census::snapshot()) }),
    );
    let mut app = app.with_state(Arc::new(http));
    if let Some(dir) = &config.demo_dir {
        if !dir.join("index.html").is_file() {
            return Err(StartError(format!(
                "demo directory {} has no index.html",
                dir.display()
            )));
        }
        app = app.fallback_service(ServeDir::new(dir));
    }
    let app = app
        .layer(layer)
        .layer(axum::middleware::map_request(detach_from_read_buffer))
        .layer(cors(&config.allowed_origins)?);

    let addr = listener.local_addr()?;
    // Tests and scripts wait for this exact line.
    println!("rtcio-signal listening on http://{addr}");
    tracing::info!(%addr, "listening");

    let grace = config.shutdown_grace();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let close_io = io.clone();
    // Signaling messages are small and latency-bound: Nagle plus delayed ACKs would hold
    // them back for tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "TCP_NODELAY not set");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: disconnecting clients");
        let _ = stopping_tx.send(());
        // Clients get a clean disconnect, so peers on other nodes hear about it.
        if tokio::time::timeout(grace, close_io.close()).await.is_err() {
            tracing::warn!("clients did not all disconnect within the grace period");
        }
    });
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = server => result?,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace * 2).await;
        } => tracing::warn!("shutdown grace period over; exiting with connections open"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where socketioxide listens (its default `req_path`).
const SOCKET_IO_PATH: &str = "/socket.io/";

/// The headers a Socket.IO request keeps: what the WebSocket and polling handshakes read (CORS
/// has already run). socketioxide stores each socket's request for the socket's whole life, so a
/// browser's user agent, language list and cookies would otherwise stay in memory with every
/// connection (measured with Chromium's upgrade headers: 0.3 KB, plus 2.6 KB for a 1 KB cookie).
const SOCKET_IO_HEADERS: [HeaderName; 9] = [
    header::HOST,
    header::ORIGIN,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// hyper parses a request's URI and headers as slices of its connection read buffer (8 to 16
/// KiB), and socketioxide keeps them for the socket's whole life, which would pin that buffer
/// once per WebSocket. Copying them out (and dropping axum's copy of the URI) lets it go; a
/// Socket.IO request keeps only [`SOCKET_IO_HEADERS`].
async fn detach_from_read_buffer(mut request: Request) -> Request {
    if let Ok(uri) = request.uri().to_string().parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    let socket_io = request.uri().path().starts_with(SOCKET_IO_PATH);
    let headers: HeaderMap = request
        .headers()
        .iter()
        .filter(|(name, _)| !socket_io || SOCKET_IO_HEADERS.contains(name))
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect();
    *request.headers_mut() = headers;
    request.extensions_mut().remove::<OriginalUri>();
    request
}

fn cors(allowed: &str) -> Result<CorsLayer, StartError> {
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if allowed.trim() == "*" {
        return Ok(layer.allow_origin(Any));
    }
    let origins = allowed
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(HeaderValue::from_str)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError(format!("ALLOWED_ORIGINS has an invalid origin: {e}")))?;
    Ok(layer.allow_origin(AllowOrigin::list(origins)))
}

async fn health<A: Adapter>(State(http): State<Arc<Http<A>>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "connections": http.signaling.connections(),
        "rooms": http.signaling.local_rooms(),
    }))
}

async fn client_config<A: Adapter>(State(http): State<Arc<Http<A>>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "iceServers": http.ice_servers }))
}

#[derive(Deserialize)]
struct TokenQuery {
    name: Option<String>,
}

async fn dev_token<A: Adapter>(
    State(http): State<Arc<Http<A>>>,
    Query(query): Query<TokenQuery>,
) -> Response {
    match http.verifier.dev_token(query.name.as_deref()) {
        Some(token) => Json(serde_json::json!({
            "token": token,
            "expiresIn": DEV_TOKEN_SECONDS,
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "dev mode is off").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser_request(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .header(header::HOST, "signal.example")
            .header(header::ORIGIN, "https://app.example")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(
                header::USER_AGENT,
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
            )
            .header(header::ACCEPT_LANGUAGE, "en-US,en;q=0.9")
            .header(header::COOKIE, "session=0123456789abcdef")
            .body(axum::body::Body::empty())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn a_socket_io_request_keeps_only_the_handshake_headers() {
        let request =
            detach_from_read_buffer(browser_request("/socket.io/?EIO=4&transport=websocket")).await;
        let mut kept: Vec<&str> = request.headers().keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "connection",
                "host",
                "origin",
                "sec-websocket-key",
                "sec-websocket-version",
                "upgrade"
            ]
        );
        assert_eq!(request.uri().query(), Some("EIO=4&transport=websocket"));
    }

    #[tokio::test]
    async fn other_requests_keep_every_header() {
        let request = detach_from_read_buffer(browser_request("/index.html")).await;
        assert_eq!(request.headers().len(), 9);
        assert!(request.headers().contains_key(header::COOKIE));
    }
}
