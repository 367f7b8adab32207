//! What a page fetches before it connects: its ICE servers, and in dev mode a token. With TURN
//! configured the ICE servers carry a credential minted for the caller (see `turn`), so the
//! route then wants the same JWT as the socket, as `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use super::Http;
use crate::auth::{AuthError, DEV_TOKEN_SECONDS};
use crate::limits::retry_after_ms;
use crate::turn::RateLimited;

pub(super) async fn client_config(State(http): State<Arc<Http>>, headers: HeaderMap) -> Response {
    if !http.ice.mints_credentials() {
        return Json(http.ice.configured()).into_response();
    }
    let identity = match http.verifier.verify_token(bearer_token(&headers)) {
        Ok(identity) => identity,
        Err(refusal) => return unauthorized(refusal),
    };
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    match http.ice.for_user(&identity.user_id) {
        Ok(config) => (no_store, Json(config)).into_response(),
        Err(RateLimited(wait)) => {
            let retry_ms = retry_after_ms(wait);
            let retry_secs = retry_ms.div_ceil(1000).to_string();
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                no_store,
                Json(serde_json::json!({ "error": "rate-limited", "retryAfterMs": retry_ms })),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&retry_secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn unauthorized(refusal: AuthError) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        Json(serde_json::json!({ "error": refusal.to_string() })),
    )
        .into_response()
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
