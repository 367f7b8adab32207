//! Probes: what a load balancer or an operator asks to learn whether the server is up.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;

use super::Http;

pub(super) async fn health(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "connections": http.hub.connections(),
        "away": http.hub.away(),
        "rooms": http.hub.local_rooms(),
    }))
}
