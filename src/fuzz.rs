//! Property tests of every decoder that reads bytes from a client (the frame splitter, each
//! payload parser, the CONNECT auth payload and its resume fields) or from another node (link
//! frames, inbox letters, handover notes), fed generated input: none may panic, and what a well-formed input
//! says must come out of it unchanged. proptest keeps any failing case it finds in
//! `proptest-regressions/`, which is committed, so each is tried again on every run.

use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::cluster::inbox::{self, Mail};
use crate::cluster::links::Frame as LinkFrame;
use crate::ids::{Credential, NodeId, PeerId, Presented};
use crate::protocol::inbound::{self, Frame, JoinRequest, RelayRequest, RoomCheck};
use crate::protocol::{self as p, MAX_NAME_CHARS};

/// Cases per property: enough to find the shallow crashes, few enough for CI (about a second).
const CASES: u32 = 400;

/// Any JSON value, a few levels deep, with the keys the parsers look for among random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("roomId".to_string()),
        Just("name".to_string()),
        Just("password".to_string()),
        Just("target".to_string()),
        Just("data".to_string()),
        Just("mic".to_string()),
        Just("cam".to_string()),
        Just("token".to_string()),
        Just("resume".to_string()),
        Just("received".to_string()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,140}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("a serialized value is JSON")
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| PeerId::parse(&s).expect("valid by construction"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_frame_splitter_takes_anything(text in ".{0,300}") {
        let _ = Frame::parse(&text);
    }

    #[test]
    fn a_frame_gives_back_its_event_and_payload(event in ".{0,40}", payload in json_value()) {
        let text = json!([event, payload]).to_string();
        let frame = Frame::parse(&text).expect("a well-formed frame");
        prop_assert_eq!(&*frame.event, event.as_str());
        // The payload's bytes, untouched (numbers are never re-encoded).
        prop_assert_eq!(frame.payload.expect("payload").get(), payload.to_string());
    }

    #[test]
    fn payload_parsers_take_any_json_and_keep_their_bounds(payload in json_value()) {
        let payload = raw(&payload);
        let payload = Some(&*payload);
        if let Ok(join) = JoinRequest::parse(payload) {
            prop_assert!(p::valid_room_id(&join.room_id));
            prop_assert!(join.name.chars().count() <= MAX_NAME_CHARS);
        }
        if let Ok(check) = RoomCheck::parse(payload) {
            prop_assert!(p::valid_room_id(&check.room_id));
        }
        if let Ok((room, _)) = inbound::parse_room_of(payload) {
            prop_assert!(p::valid_room_id(&room));
        }
        if let Ok((room, _, _)) = inbound::parse_media_state(payload) {
            prop_assert!(p::valid_room_id(&room));
        }
        let _ = RelayRequest::parse(payload);
        let _ = JoinRequest::parse(None);
    }

    #[test]
    fn a_relay_keeps_its_target_and_data(target in ".{0,70}", data in json_value()) {
        let payload = raw(&json!({ "source": "x", "target": target, "data": data }));
        let request = RelayRequest::parse(Some(&payload)).expect("a well-formed relay");
        prop_assert_eq!(&*request.target, target.as_str());
        prop_assert_eq!(request.data.get(), data.to_string());
    }

    #[test]
    fn connect_auth_payloads_cannot_break_the_verifier(auth in json_value(), junk in ".{0,200}") {
        let verifier = verifier();
        let _ = verifier.verify(Some(&auth));
        let _ = verifier.verify(Some(&json!({ "token": junk })));
        let _ = crate::hub::Resume::parse(&auth);
        let _ = Presented::parse(&junk);
    }

    #[test]
    fn a_token_gives_back_its_user(sub in ".{1,80}", name in proptest::option::of(".{0,64}")) {
        let verifier = verifier();
        let claims = json!({ "sub": sub, "exp": 4_000_000_000u64, "name": name });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        let identity = verifier.verify(Some(&json!({ "token": token }))).expect("valid token");
        prop_assert_eq!(&*identity.user_id, sub.as_str());
    }

    #[test]
    fn a_credential_gives_back_its_peer_and_node(peer in peer_id()) {
        let node = NodeId::random();
        let (credential, digest) = Credential::issue(&peer, &node);
        let presented = Presented::parse(credential.as_str()).expect("parses");
        prop_assert_eq!(&presented.peer, &peer);
        prop_assert_eq!(&presented.node, &node);
        prop_assert!(presented.digest.matches(&digest));
    }

    #[test]
    fn the_inbox_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Mail::read(bytes.clone());
        let mut bundle = b"*".to_vec();
        bundle.extend_from_slice(&bytes);
        for part in inbox::unbundle(bundle).into_iter().flatten() {
            let _ = Mail::read(part);
        }
    }

    #[test]
    fn a_letter_gives_back_its_peers_and_payload(
        peers in prop::collection::vec(peer_id(), 1..6),
        data in json_value(),
    ) {
        let data = raw(&data);
        let refs: Vec<&PeerId> = peers.iter().collect();
        let bytes = inbox::letter(&refs, &inbox::body(p::CHAT_MESSAGE, &data));
        let Some(Mail::Letter(letter)) = Mail::read(bytes) else {
            return Err(TestCaseError::fail("not read back as a letter"));
        };
        prop_assert_eq!(letter.peers, peers);
        prop_assert_eq!(letter.event, p::CHAT_MESSAGE);
        prop_assert_eq!(letter.data.get(), data.get());
    }

    #[test]
    fn links_take_any_frame(bytes in prop::collection::vec(any::<u8>(), 0..300), tag in 0..6usize) {
        let _ = LinkFrame::decode(&bytes);
        let mut tagged = vec![b"MRSsUx"[tag]];
        tagged.extend_from_slice(&bytes);
        let _ = LinkFrame::decode(&tagged);
    }

    #[test]
    fn a_relay_frame_gives_back_its_peers_rooms_and_data(
        sender in peer_id(),
        target in peer_id(),
        rooms in prop::collection::vec(".{0,40}", 0..5),
        data in json_value(),
    ) {
        let frame = LinkFrame::Relay { sender, target, rooms, data: data.to_string().into_bytes() };
        prop_assert_eq!(LinkFrame::decode(&frame.encode()), Some(frame));
    }

    #[test]
    fn notes_from_other_nodes_take_any_json(note in json_value()) {
        let _ = crate::hub::parse_note(&note.to_string());
    }
}

const SECRET: &str = "fuzzing-secret-0123456789";

fn verifier() -> crate::auth::Verifier {
    use clap::Parser;
    let config = crate::config::Config::try_parse_from(["rtcio-signal", "--jwt-secret", SECRET])
        .expect("config");
    crate::auth::Verifier::from_config(&config).expect("verifier")
}
