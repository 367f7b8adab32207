//! What the server sends: one type per payload, serialized straight from borrowed data.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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

/// Sets the server-stamped `id` on an echoed object.
pub fn stamp_id(mut object: Map<String, Value>, id: &str) -> Map<String, Value> {
    object.insert("id".into(), Value::String(id.into()));
    object
}
