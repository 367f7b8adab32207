//! The HTTP side: probes (`/health`), `/client-config`, the dev-mode token route, the demo
//! files, CORS, and the trimming of Socket.IO requests before socketioxide keeps them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, OriginalUri, Query, Request, State};
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
    let client_address = ClientAddressSource {
        header: match &config.trusted_client_ip_header {
            Some(name) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                StartError(format!(
                    "TRUSTED_CLIENT_IP_HEADER {name:?} is not a header name"
                ))
            })?),
            None => None,
        },
    };
    Ok(app
        .layer(axum::middleware::map_request_with_state(
            Arc::new(client_address),
            detach_from_read_buffer,
        ))
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

/// The address of the client behind a request, as the connection caps count it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// Where a request's client address comes from: a trusted proxy's header, else the TCP peer.
pub struct ClientAddressSource {
    header: Option<HeaderName>,
}

impl ClientAddressSource {
    fn of(&self, request: &Request) -> Option<IpAddr> {
        match &self.header {
            Some(header) => request
                .headers()
                .get(header)?
                .to_str()
                .ok()?
                .trim()
                .parse()
                .ok(),
            None => request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        }
    }
}

/// hyper parses a request's URI and headers as slices of its connection read buffer (8 to 16
/// KiB), and socketioxide keeps them for the socket's whole life, which would pin that buffer
/// once per WebSocket. Copying them out (and dropping axum's copy of the URI) lets it go; a
/// Socket.IO request keeps only [`SOCKET_IO_HEADERS`], and its client's address (read first,
/// from the trusted proxy's header if there is one).
async fn detach_from_read_buffer(
    State(source): State<Arc<ClientAddressSource>>,
    mut request: Request,
) -> Request {
    if let Some(address) = source.of(&request) {
        request.extensions_mut().insert(ClientAddress(address));
    }
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

    fn from_peer() -> State<Arc<ClientAddressSource>> {
        State(Arc::new(ClientAddressSource { header: None }))
    }

    #[tokio::test]
    async fn a_socket_io_request_keeps_only_the_handshake_headers() {
        let path = "/socket.io/?EIO=4&transport=websocket";
        let request = detach_from_read_buffer(from_peer(), browser_request(path)).await;
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
        let request = detach_from_read_buffer(from_peer(), browser_request("/index.html")).await;
        assert_eq!(request.headers().len(), 9);
        assert!(request.headers().contains_key(header::COOKIE));
    }

    #[tokio::test]
    async fn the_client_address_is_the_peer_unless_a_trusted_header_names_it() {
        let mut request = browser_request("/socket.io/?EIO=4&transport=websocket");
        let peer: SocketAddr = "192.0.2.7:5000".parse().expect("address");
        request.extensions_mut().insert(ConnectInfo(peer));
        request
            .headers_mut()
            .insert("fly-client-ip", HeaderValue::from_static("203.0.113.9"));
        let from_header = State(Arc::new(ClientAddressSource {
            header: Some(HeaderName::from_static("fly-client-ip")),
        }));
        let address = |request: &Request| request.extensions().get::<ClientAddress>().map(|a| a.0);
        let (peer_only, trusted) = (
            detach_from_read_buffer(from_peer(), clone(&request)).await,
            detach_from_read_buffer(from_header, request).await,
        );
        assert_eq!(address(&peer_only), Some(peer.ip()));
        assert_eq!(address(&trusted), "203.0.113.9".parse().ok());
    }

    fn clone(request: &Request) -> Request {
        let mut copy = Request::builder()
            .uri(request.uri().clone())
            .body(axum::body::Body::empty())
            .expect("a valid request");
        *copy.headers_mut() = request.headers().clone();
        if let Some(info) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            copy.extensions_mut().insert(*info);
        }
        copy
    }
}
