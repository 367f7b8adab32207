//! The HTTP side: the router, one module per concern (probes and metrics, the admin API, the
//! client's configuration and dev tokens, the trimming of Socket.IO requests), the demo files
//! and CORS.

mod admin;
mod client_address;
mod client_config;
mod probes;

pub use client_address::{ClientAddress, ClientAddressSource, SOCKET_IO_PATH};
pub use probes::metrics_router;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::routing::get;
use socketioxide::layer::SocketIoLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;

use crate::auth::Verifier;
use crate::config::Config;
use crate::hub::Hub;
use crate::server::StartError;
use crate::turn::IceServers;

/// What the HTTP routes need.
pub struct Http {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    pub ice: Arc<IceServers>,
}

/// Every route, with the Socket.IO layer and CORS in front.
pub fn router(config: &Config, http: Http, layer: SocketIoLayer) -> Result<Router, StartError> {
    let app = Router::new()
        .route("/health", get(probes::health))
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz))
        .route("/client-config", get(client_config::client_config))
        .route("/dev/token", get(client_config::dev_token));
    #[cfg(feature = "heap-census")]
    let app = app.route(
        "/debug/heap",
        get(|| async { axum::Json(crate::heap_census::snapshot()) }),
    );
    let app = if config.metrics_addr.is_none() {
        app.route(
            "/metrics",
            get(|State(http): State<Arc<Http>>| async move { probes::metrics(&http.hub) }),
        )
    } else {
        app
    };
    let app = match &config.admin_token {
        Some(token) => app.merge(admin::routes(Arc::new(admin::AdminToken::new(
            token.expose(),
        )))),
        None => app,
    };
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
    let app = app.layer(axum::middleware::map_request_with_state(
        Arc::new(client_address),
        client_address::detach_from_read_buffer,
    ));
    // Outside the header trimming: it reads Fly's `fly-replay-src`, which a Socket.IO request
    // does not keep.
    let app = match pinning {
        Some(pinning) => app.layer(axum::middleware::from_fn_with_state(
            pinning,
            crate::fly::route_to_holder,
        )),
        None => app,
    };
    Ok(app.layer(cors(&config.allowed_origins)?))
}

fn cors(allowed: &str) -> Result<CorsLayer, StartError> {
    // Mirrored rather than `*`: browsers never let a wildcard cover `Authorization`, which
    // `GET /client-config` takes with TURN.
    let layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(AllowHeaders::mirror_request());
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
