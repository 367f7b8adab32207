//! What clients send: the frame splitter and one validating parser per payload. Everything
//! here reads bytes from the network, so nothing here panics on bad input.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{MAX_NAME_CHARS, MAX_ROOM_ID_CHARS, Refusal, valid_room_id};

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

/// `join-room { roomId, name }`, validated.
#[derive(Debug)]
pub struct JoinRequest {
    pub room_id: String,
    pub name: String,
}

impl JoinRequest {
    /// On failure returns the room id as far as it could be read, for the `join-error` reply.
    pub fn parse(payload: Option<&RawValue>) -> Result<JoinRequest, (Option<String>, Refusal)> {
        let object = parse_object(payload).map_err(|r| (None, r))?;
        let room_id = match object.get("roomId") {
            Some(Value::String(room)) if valid_room_id(room) => room.clone(),
            Some(Value::String(room)) => {
                let shown: String = room.chars().take(MAX_ROOM_ID_CHARS).collect();
                return Err((Some(shown), Refusal::InvalidRoom));
            }
            _ => return Err((None, Refusal::InvalidRoom)),
        };
        let name = match object.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(name)) if name.chars().count() <= MAX_NAME_CHARS => name.clone(),
            Some(_) => return Err((Some(room_id), Refusal::InvalidName)),
        };
        Ok(JoinRequest { room_id, name })
    }
}

/// `leave-room { roomId }`.
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
