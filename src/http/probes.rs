//! Probes and metrics: what a load balancer, an orchestrator or Prometheus asks to learn whether
//! the server is up, whether it wants clients, and how it is doing.
//!
//! - `/livez`: the process answers (restart it if not).
//! - `/readyz`: it accepts clients: not shutting down, and (cluster mode) Redis answers. On
//!   SIGTERM it turns 503 before the drain begins, so the balancer stops sending newcomers.
//! - `/health`: the older summary, kept for existing checks.
//! - `/metrics`: Prometheus text, on the main port or on `METRICS_ADDR`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};

use super::Http;
use crate::hub::Hub;

pub(super) async fn health(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "connections": http.hub.connections(),
        "away": http.hub.away(),
        "rooms": http.hub.local_rooms(),
    }))
}

pub(super) async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

pub(super) async fn readyz(State(http): State<Arc<Http>>) -> Response {
    match http.hub.unready().await {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unready", "reason": reason })),
        )
            .into_response(),
    }
}

/// The Prometheus exposition of `hub`'s process.
pub fn metrics(hub: &Hub) -> Response {
    let text = crate::metrics::get().render(hub.current());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A router serving only `/metrics`, for `METRICS_ADDR`.
pub fn metrics_router(hub: Arc<Hub>) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(async move || metrics(&hub)))
}
