//! Socket.IO requests, trimmed before socketioxide keeps them for a socket's whole life, and
//! the client address the connection caps count by.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};

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
    pub(super) header: Option<HeaderName>,
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
pub(super) async fn detach_from_read_buffer(
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
