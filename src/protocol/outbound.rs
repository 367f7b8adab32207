//! What the server sends: one type per payload, serialized straight from borrowed data.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Refusal;

#[derive(Serialize)]
pub struct Relayed<'a> {
    pub source: &'a str,
    pub target: &'a str,
    pub data: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConnected<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub user_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaStateBackfill<'a> {
    pub id: &'a str,
    pub room_id: &'a str,
    pub mic: bool,
    pub cam: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinOk<'a> {
    pub room_id: &'a str,
}

#[derive(Serialize)]
pub struct Kicked<'a> {
    pub reason: &'a str,
}

#[derive(Serialize)]
pub struct InitOffer<'a> {
    pub source: &'a str,
}

/// `#rtcio:peer-left` and `user-disconnected` both carry just the id.
#[derive(Serialize)]
pub struct PeerId<'a> {
    pub id: &'a str,
}

/// The first event of every connection.
#[derive(Serialize)]
pub struct SessionGreeting<'a> {
    pub id: &'a str,
    pub resume: &'a str,
    pub recovered: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomCheckOk<'a> {
    pub room_id: &'a str,
    pub password_required: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinError<'a> {
    pub room_id: Option<&'a str>,
    pub reason: &'static str,
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply<'a> {
    pub event: &'a str,
    pub code: &'static str,
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// What `GET /client-config` and the `ask-ice` acknowledgement carry: the configured ICE
/// servers and, with TURN configured, a fresh credential (`ttl`: its lifetime in seconds).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceConfig<'a> {
    pub ice_servers: Vec<IceServer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum IceServer<'a> {
    /// An `ICE_SERVERS` entry, as configured.
    Configured(&'a Value),
    /// A TURN server with a credential in coturn's REST API scheme.
    Turn {
        urls: &'a [String],
        username: String,
        credential: String,
    },
}

/// An acknowledgement refusing its event: `{ error: { code, message, retryAfterMs? } }`.
#[derive(Serialize)]
pub struct AckRefusal {
    pub error: AckError,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AckError {
    pub code: &'static str,
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl From<Refusal> for AckRefusal {
    fn from(refusal: Refusal) -> Self {
        AckRefusal {
            error: AckError {
                code: refusal.code(),
                message: refusal.message(),
                retry_after_ms: refusal.retry_after_ms(),
            },
        }
    }
}

/// Sets the server-stamped `id` on an echoed object.
pub fn stamp_id(mut object: Map<String, Value>, id: &str) -> Map<String, Value> {
    object.insert("id".into(), Value::String(id.into()));
    object
}
