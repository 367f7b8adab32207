//! What a page fetches before it connects: its ICE servers, and in dev mode a token.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use super::Http;
use crate::auth::DEV_TOKEN_SECONDS;

pub(super) async fn client_config(State(http): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "iceServers": http.ice_servers }))
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    pub name: Option<String>,
}

pub(super) async fn dev_token(
    State(http): State<Arc<Http>>,
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
