//! Puts the pieces together: the Socket.IO layer, the HTTP routes (`/health`,
//! `/client-config`, `/dev/token`, the demo files), CORS, and the listener with its graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::{SocketIo, SocketIoBuilder};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::{DEV_TOKEN_SECONDS, Verifier};
use crate::config::Config;
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
    if config.redis_url.is_some() {
        return Err(StartError("cluster mode is not available in this build".into()));
    }
    let listener = TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .map_err(|e| StartError(format!("cannot listen on {}:{}: {e}", config.host, config.port)))?;

    let (layer, io) = socket_io_builder(&config).build_layer();
    let signaling = Signaling::new(
        io.clone(),
        RoomStore::Memory(MemoryRooms::default()),
        Arc::clone(&verifier),
        limits(&config),
    );
    signaling.attach();
    serve(config, listener, layer, io, signaling, verifier, ice_servers, shutdown).await
}

fn socket_io_builder(config: &Config) -> SocketIoBuilder<LocalAdapter> {
    let frame_limit = config.max_payload_bytes.saturating_mul(FRAME_LIMIT_FACTOR);
    SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .max_payload(frame_limit as u64)
        .ws_max_message_size(frame_limit)
        .ws_max_frame_size(frame_limit)
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_payload_bytes: config.max_payload_bytes,
        max_peers_per_room: config.max_peers_per_room,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve<A: Adapter>(
    config: Config,
    listener: TcpListener,
    layer: socketioxide::layer::SocketIoLayer<A>,
    io: SocketIo<A>,
    signaling: Arc<Signaling<A>>,
    verifier: Arc<Verifier>,
    ice_servers: serde_json::Value,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if verifier.is_dev() {
        tracing::warn!(
            "DEV MODE: tokens are signed with a random secret made at start and anyone can \
             get one from GET /dev/token. Do not expose this server to the internet."
        );
        eprintln!("*** rtcio-signal is running in DEV MODE: GET /dev/token hands out tokens ***");
    }

    let http = Arc::new(Http {
        signaling,
        verifier,
        ice_servers,
    });
    let mut app = Router::new()
        .route("/health", get(health::<A>))
        .route("/client-config", get(client_config::<A>))
        .route("/dev/token", get(dev_token::<A>))
        .with_state(http);
    if let Some(dir) = &config.demo_dir {
        if !dir.join("index.html").is_file() {
            return Err(StartError(format!(
                "demo directory {} has no index.html",
                dir.display()
            )));
        }
        app = app.fallback_service(ServeDir::new(dir));
    }
    let app = app.layer(layer).layer(cors(&config.allowed_origins)?);

    let addr = listener.local_addr()?;
    // Tests and scripts wait for this exact line.
    println!("rtcio-signal listening on http://{addr}");
    tracing::info!(%addr, "listening");

    let grace = config.shutdown_grace();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let close_io = io.clone();
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
