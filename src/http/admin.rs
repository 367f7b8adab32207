//! The admin API: an operator lists rooms, looks into one, closes it, or kicks a peer, on any
//! node of a cluster. Off unless `ADMIN_TOKEN` is set; every request must carry it as a bearer
//! token (401 otherwise). Only the token's SHA-256 digest is kept, compared in constant time.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Http;
use crate::ids::{PeerId, same_digest};
use crate::store::StoreError;

/// What the admin routes check a request's bearer token against.
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Compares digests in constant time, so the comparison tells nothing about the token.
    fn admits(&self, presented: &str) -> bool {
        same_digest(&self.0, &Sha256::digest(presented.as_bytes()).into())
    }
}

/// The admin routes, each behind the token.
pub(super) fn routes(token: Arc<AdminToken>) -> Router<Arc<Http>> {
    Router::new()
        .route("/admin/rooms", get(list_rooms))
        .route("/admin/rooms/{room_id}", get(show_room).delete(close_room))
        .route("/admin/peers/{peer_id}/kick", post(kick_peer))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token))
}

async fn require_token(
    State(token): State<Arc<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.admits(presented.trim()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "a valid admin token is required" })),
        )
            .into_response(),
    }
}

fn unavailable(e: &StoreError) -> Response {
    tracing::error!(cause = %e, "admin request failed: room state unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "room state unavailable" })),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

async fn list_rooms(State(http): State<Arc<Http>>) -> Response {
    let mut rooms = match http.hub.rooms.rooms().await {
        Ok(rooms) => rooms,
        Err(e) => return unavailable(&e),
    };
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    let rooms: Vec<_> = rooms
        .iter()
        .map(|r| {
            json!({
                "roomId": r.room,
                "members": r.members,
                "locked": r.locked,
                "createdAt": r.created_at_ms,
            })
        })
        .collect();
    Json(json!({ "rooms": rooms })).into_response()
}

async fn show_room(State(http): State<Arc<Http>>, Path(room_id): Path<String>) -> Response {
    let members = match http.hub.rooms.roster(&room_id).await {
        Ok(members) if members.is_empty() => return not_found("no such room"),
        Ok(members) => members,
        Err(e) => return unavailable(&e),
    };
    let here = &http.hub.node;
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            json!({
                "id": m.peer.as_str(),
                "name": &*m.name,
                "userId": &*m.user_id,
                "mic": m.media.map(|s| s.mic),
                "cam": m.media.map(|s| s.cam),
                "node": m.node.as_ref().unwrap_or(here).as_str(),
            })
        })
        .collect();
    Json(json!({ "roomId": room_id, "members": members })).into_response()
}

async fn close_room(State(http): State<Arc<Http>>, Path(room_id): Path<String>) -> Response {
    match http.hub.close_room(&room_id, "the room was closed").await {
        Ok(members) if members.is_empty() => not_found("no such room"),
        Ok(members) => {
            tracing::info!(room = %room_id, members = members.len(), "admin: room closed");
            Json(json!({ "roomId": room_id, "kicked": members.len() })).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize, Default)]
struct KickBody {
    reason: Option<String>,
}

/// Longest reason passed on to the kicked client.
const MAX_REASON_CHARS: usize = 200;

async fn kick_peer(
    State(http): State<Arc<Http>>,
    Path(peer_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: KickBody = if body.is_empty() {
        KickBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "the body must be JSON: { \"reason\": string }" })),
                )
                    .into_response();
            }
        }
    };
    let reason: String = body
        .reason
        .as_deref()
        .unwrap_or("removed by an operator")
        .chars()
        .take(MAX_REASON_CHARS)
        .collect();
    let Some(peer) = PeerId::parse(&peer_id) else {
        return not_found("no such peer");
    };
    match http.hub.kick(&peer, &reason).await {
        Ok(true) => {
            tracing::info!(%peer, reason, "admin: peer kicked");
            Json(json!({ "peerId": peer_id, "kicked": true })).into_response()
        }
        Ok(false) => not_found("no such peer"),
        Err(e) => unavailable(&e),
    }
}
