//! The HTTP side: probes (`/health`), `/client-config`, the dev-mode token route, the demo
//! files, CORS, and the trimming of Socket.IO requests before socketioxide keeps them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use socketioxide::layer::SocketIoLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::{DEV_TOKEN_SECONDS, Verifier};
use crate::config::Config;
use crate::hub::Hub;
use crate::server::StartError;

/// What the HTTP routes need.
pub struct Http {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    pub ice_servers: serde_json::Value,
}

/// Every route, with the Socket.IO layer and CORS in front.
pub fn router(config: &Config, http: Http, layer: SocketIoLayer) -> Result<Router, StartError> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/client-config", get(client_config))
        .route("/dev/token", get(dev_token));
    #[cfg(feature = "heap-census")]
    let app = app.route(
        "/debug/heap",
        get(|| async { Json(crate::heap_census::snapshot()) }),
    );
    let pinning = config
        .fly_machine_id
        .clone()
        .and_then(|machine| crate::fly::Pinning::new(machine, Arc::clone(&http.hub)));
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
    let app = app.layer(layer);
    let app = match pinning {
        Some(pinning) => app.layer(axum::middleware::from_fn_with_state(
            pinning,
            crate::fly::route_to_holder,
        )),
        None => app,
    };
    Ok(app
        .layer(axum::middleware::map_request(detach_from_read_buffer))
        .layer(cors(&config.allowed_origins)?))
}

/// Where socketioxide listens (its default `req_path`).
pub const SOCKET_IO_PATH: &str = "/socket.io/";

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

async fn health(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "connections": http.hub.connections(),
        "away": http.hub.away(),
        "rooms": http.hub.local_rooms(),
    }))
}

async fn client_config(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "iceServers": http.ice_servers }))
}

#[derive(Deserialize)]
struct TokenQuery {
    name: Option<String>,
}

async fn dev_token(State(http): State<Arc<Http>>, Query(query): Query<TokenQuery>) -> Response {
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
