//! What clients send: the frame splitter and one validating parser per payload. Everything
//! here reads bytes from the network, so nothing here panics on bad input.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{MAX_NAME_CHARS, MAX_PASSWORD_CHARS, MAX_ROOM_ID_CHARS, Refusal, valid_room_id};

/// One incoming event frame, `["name", payload, ...]`, split without parsing the payload.
pub struct Frame<'a> {
    pub event: std::borrow::Cow<'a, str>,
    pub payload: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Option<Frame<'a>> {
        let parts: Vec<&'a RawValue> = serde_json::from_str(text).ok()?;
        let mut parts = parts.into_iter();
        let event = serde_json::from_str(parts.next()?.get()).ok()?;
        Some(Frame {
            event,
            payload: parts.next(),
        })
    }
}

/// A room password as a client sent it, trimmed and never empty. It is only ever hashed or
/// checked against a hash; `Debug` does not show it, so it cannot reach a log by accident.
pub struct Password(String);

impl Password {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// `join-room { roomId, name, password? }`, validated.
#[derive(Debug)]
pub struct JoinRequest {
    pub room_id: String,
    pub name: String,
    pub password: Option<Password>,
}

/// `check-room { roomId, password? }`, validated.
#[derive(Debug)]
pub struct RoomCheck {
    pub room_id: String,
    pub password: Option<Password>,
}

/// A refused `join-room` or `check-room`: the room id as far as it could be read (for the
/// `join-error` reply), and why.
pub type RoomRefusal = (Option<String>, Refusal);

/// `join-room` and `check-room` name a room the same way.
pub trait RoomRequest {
    fn room_id(&self) -> &str;
}

impl RoomRequest for JoinRequest {
    fn room_id(&self) -> &str {
        &self.room_id
    }
}

impl RoomRequest for RoomCheck {
    fn room_id(&self) -> &str {
        &self.room_id
    }
}

impl JoinRequest {
    pub fn parse(payload: Option<&RawValue>) -> Result<JoinRequest, RoomRefusal> {
        let (room_id, object) = parse_room_request(payload)?;
        let name = match object.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(name)) if name.chars().count() <= MAX_NAME_CHARS => name.clone(),
            Some(_) => return Err((Some(room_id), Refusal::InvalidName)),
        };
        let password = parse_password(&object).map_err(|r| (Some(room_id.clone()), r))?;
        Ok(JoinRequest {
            room_id,
            name,
            password,
        })
    }
}

impl RoomCheck {
    pub fn parse(payload: Option<&RawValue>) -> Result<RoomCheck, RoomRefusal> {
        let (room_id, object) = parse_room_request(payload)?;
        let password = parse_password(&object).map_err(|r| (Some(room_id.clone()), r))?;
        Ok(RoomCheck { room_id, password })
    }
}

/// The object and its valid `roomId`; an invalid one is echoed back cut to the maximum length.
fn parse_room_request(
    payload: Option<&RawValue>,
) -> Result<(String, Map<String, Value>), RoomRefusal> {
    let object = parse_object(payload).map_err(|r| (None, r))?;
    match object.get("roomId") {
        Some(Value::String(room)) if valid_room_id(room) => Ok((room.clone(), object)),
        Some(Value::String(room)) => {
            let shown: String = room.chars().take(MAX_ROOM_ID_CHARS).collect();
            Err((Some(shown), Refusal::InvalidRoom))
        }
        _ => Err((None, Refusal::InvalidRoom)),
    }
}

/// `password`: absent, null, empty or blank means none; otherwise at most 256 characters,
/// trimmed.
fn parse_password(object: &Map<String, Value>) -> Result<Option<Password>, Refusal> {
    match object.get("password") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_PASSWORD_CHARS => {
            let trimmed = text.trim();
            Ok((!trimmed.is_empty()).then(|| Password(trimmed.to_string())))
        }
        Some(_) => Err(Refusal::InvalidPassword),
    }
}

/// `{ roomId, ... }`: `leave-room`, and the start of every echoed event.
pub fn parse_room_of(payload: Option<&RawValue>) -> Result<(String, Map<String, Value>), Refusal> {
    let object = parse_object(payload)?;
    match object.get("roomId") {
        Some(Value::String(room)) if valid_room_id(room) => Ok((room.clone(), object)),
        _ => Err(Refusal::InvalidRoom),
    }
}

/// `media-state { roomId, mic, cam, ... }`: the room, the state to cache, and the whole
/// object to echo (extra fields are kept, as Node does).
pub fn parse_media_state(
    payload: Option<&RawValue>,
) -> Result<(String, MediaState, Map<String, Value>), Refusal> {
    let (room, object) = parse_room_of(payload)?;
    match (object.get("mic"), object.get("cam")) {
        (Some(Value::Bool(mic)), Some(Value::Bool(cam))) => {
            let state = MediaState {
                mic: *mic,
                cam: *cam,
            };
            Ok((room, state, object))
        }
        _ => Err(Refusal::InvalidPayload),
    }
}

fn parse_object(payload: Option<&RawValue>) -> Result<Map<String, Value>, Refusal> {
    let raw = payload.ok_or(Refusal::InvalidPayload)?;
    serde_json::from_str(raw.get()).map_err(|_| Refusal::InvalidPayload)
}

/// `#rtcio:message { source, target, data }` as received; `source` is ignored because the
/// server stamps the real one, and `data` stays unparsed.
#[derive(Debug, Deserialize)]
pub struct RelayRequest<'a> {
    #[serde(borrow)]
    pub target: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl<'a> RelayRequest<'a> {
    pub fn parse(payload: Option<&'a RawValue>) -> Result<RelayRequest<'a>, Refusal> {
        let raw = payload.ok_or(Refusal::InvalidPayload)?;
        serde_json::from_str(raw.get()).map_err(|_| Refusal::InvalidPayload)
    }
}

/// Mic and camera state as last announced by a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaState {
    pub mic: bool,
    pub cam: bool,
}

/// `ask-ice`: no payload, `null` or an object (whose fields are ignored).
pub fn parse_ask_ice(payload: Option<&RawValue>) -> Result<(), Refusal> {
    type AnyObject = Option<std::collections::HashMap<String, serde::de::IgnoredAny>>;
    match payload.map(|raw| serde_json::from_str::<AnyObject>(raw.get())) {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(_)) => Err(Refusal::InvalidPayload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).expect("test json")
    }

    #[test]
    fn frame_splits_event_and_payload() {
        let f = Frame::parse(r#"["join-room",{"roomId":"a"},1]"#).expect("frame");
        assert_eq!(f.event, "join-room");
        assert_eq!(f.payload.map(|p| p.get()), Some(r#"{"roomId":"a"}"#));
        assert!(Frame::parse("[]").is_none());
        assert!(Frame::parse("[1]").is_none());
        assert!(Frame::parse(r#"["x"]"#).expect("frame").payload.is_none());
    }

    #[test]
    fn room_ids_are_bounded_and_printable() {
        assert!(valid_room_id("a"));
        assert!(valid_room_id(&"é".repeat(128)));
        assert!(!valid_room_id(&"a".repeat(129)));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id("a\nb"));
    }

    #[test]
    fn join_request_reports_what_is_wrong() {
        let ok = JoinRequest::parse(Some(&raw(r#"{"roomId":"r","name":"n"}"#))).expect("ok");
        assert_eq!((ok.room_id.as_str(), ok.name.as_str()), ("r", "n"));
        let no_name = JoinRequest::parse(Some(&raw(r#"{"roomId":"r"}"#))).expect("ok");
        assert_eq!(no_name.name, "");
        let bad_room = JoinRequest::parse(Some(&raw(r#"{"roomId":5}"#))).unwrap_err();
        assert_eq!(bad_room, (None, Refusal::InvalidRoom));
        let bad_name = JoinRequest::parse(Some(&raw(r#"{"roomId":"r","name":7}"#))).unwrap_err();
        assert_eq!(bad_name, (Some("r".into()), Refusal::InvalidName));
        let not_object = JoinRequest::parse(Some(&raw(r#""r""#))).unwrap_err();
        assert_eq!(not_object.1, Refusal::InvalidPayload);
    }

    #[test]
    fn passwords_are_trimmed_bounded_and_hidden() {
        let join = |json: &str| JoinRequest::parse(Some(&raw(json)));
        let given = join(r#"{"roomId":"r","password":"  s3cret \t"}"#).expect("ok");
        assert_eq!(
            given.password.as_ref().map(Password::as_bytes),
            Some(&b"s3cret"[..])
        );
        assert!(!format!("{given:?}").contains("s3cret"));
        for none in [r#""""#, r#""   ""#, "null"] {
            let parsed = join(&format!(r#"{{"roomId":"r","password":{none}}}"#)).expect("ok");
            assert!(parsed.password.is_none(), "{none}");
        }
        let longest = format!(r#"{{"roomId":"r","password":"{}"}}"#, "é".repeat(256));
        assert!(join(&longest).expect("ok").password.is_some());
        let too_long = format!(r#"{{"roomId":"r","password":"{}"}}"#, "a".repeat(257));
        assert_eq!(
            join(&too_long).unwrap_err(),
            (Some("r".into()), Refusal::InvalidPassword)
        );
        let not_text = RoomCheck::parse(Some(&raw(r#"{"roomId":"r","password":5}"#)));
        assert_eq!(
            not_text.unwrap_err(),
            (Some("r".into()), Refusal::InvalidPassword)
        );
    }

    #[test]
    fn media_state_needs_booleans() {
        let (room, state, obj) =
            parse_media_state(Some(&raw(r#"{"roomId":"r","mic":true,"cam":false,"x":1}"#)))
                .expect("ok");
        assert_eq!(room, "r");
        assert_eq!(
            state,
            MediaState {
                mic: true,
                cam: false
            }
        );
        assert_eq!(obj.get("x"), Some(&Value::from(1)));
        let bad = parse_media_state(Some(&raw(r#"{"roomId":"r","mic":"yes","cam":false}"#)));
        assert_eq!(bad.unwrap_err(), Refusal::InvalidPayload);
    }
}
