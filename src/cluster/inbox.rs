//! Node-targeted delivery: an event for peers whose sessions live on another node is sent to
//! that node only, over its link (`cluster::links`), so a node receives what its own peers
//! are sent and nothing else, however many nodes there are. Each node also reads its own
//! Redis channel, `rtcio:inbox:{node}`, for the note that ends a session's move.
//!
//! A letter is one event for some peers of the node, as one binary blob (the payload's bytes
//! as they are, nothing re-encoded): `peer peer …\nevent\ndata`. Peer ids and event names
//! never contain a newline or a space; the data runs to the end. A letter with no recipients,
//! `\n{json}`, is a note between nodes about moving a session (`hub::handover`). Relays
//! routed in one batch travel to each node as one bundle of letters ([`unbundle`]).

use std::sync::{Arc, Weak};

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::links::{Frame, Links};
use crate::hub::Hub;
use crate::ids::{NodeId, PeerId};
use crate::protocol as p;

/// The channel a node reads its letters from.
pub fn channel(node: &NodeId) -> String {
    format!("{}{node}", INBOX_PREFIX)
}

/// Prefix of every inbox channel (the relay script builds the name itself).
pub const INBOX_PREFIX: &str = "rtcio:inbox:";

/// A letter's body: the part after the recipients.
pub fn body(event: &str, data: &RawValue) -> Vec<u8> {
    let data = data.get().as_bytes();
    let mut body = Vec::with_capacity(event.len() + 1 + data.len());
    body.extend_from_slice(event.as_bytes());
    body.push(b'\n');
    body.extend_from_slice(data);
    body
}

/// A whole letter for `peers`.
pub fn letter(peers: &[&PeerId], body: &[u8]) -> Vec<u8> {
    let names: usize = peers.iter().map(|peer| peer.len() + 1).sum();
    let mut letter = Vec::with_capacity(names + body.len());
    for (i, peer) in peers.iter().enumerate() {
        if i > 0 {
            letter.push(b' ');
        }
        letter.extend_from_slice(peer.as_bytes());
    }
    letter.push(b'\n');
    letter.extend_from_slice(body);
    letter
}

/// A note between nodes: its JSON after an empty recipients line.
pub fn note(json: &[u8]) -> Vec<u8> {
    let mut note = Vec::with_capacity(1 + json.len());
    note.push(b'\n');
    note.extend_from_slice(json);
    note
}

/// What a node finds in its inbox.
#[derive(Debug)]
pub enum Mail {
    Letter(Letter),
    /// A note's JSON, read by `hub::handover`.
    Note(String),
}

impl Mail {
    /// `None` for anything this server does not write.
    pub fn read(bytes: Vec<u8>) -> Option<Mail> {
        match bytes.strip_prefix(b"\n") {
            Some(json) => String::from_utf8(json.to_vec()).ok().map(Mail::Note),
            None => Letter::read(bytes).map(Mail::Letter),
        }
    }
}

/// A letter as read from the channel.
#[derive(Debug)]
pub struct Letter {
    pub peers: Vec<PeerId>,
    pub event: &'static str,
    pub data: Arc<RawValue>,
}

impl Letter {
    /// `None` for anything that is not a letter this server writes.
    pub fn read(bytes: Vec<u8>) -> Option<Letter> {
        let text = String::from_utf8(bytes).ok()?;
        let (peers, rest) = text.split_once('\n')?;
        let (event, data) = rest.split_once('\n')?;
        let peers = peers
            .split(' ')
            .map(PeerId::parse)
            .collect::<Option<Vec<_>>>()?;
        let event = p::server_event(event)?;
        let data = RawValue::from_string(data.to_string()).ok()?;
        Some(Letter {
            peers,
            event,
            data: Arc::from(data),
        })
    }
}

/// Letters the node has received and not yet delivered: beyond this the subscriber drops
/// them (with an error logged) rather than grow without bound.
pub const INBOX_DEPTH: usize = 65_536;

/// The mail in one message of the inbox, in order. A bundle, `*` and then `<length>:<mail>`
/// for each, holds several (the relay batch script writes them); anything else is one.
/// `None` for a bundle this server did not write.
pub fn unbundle(message: Vec<u8>) -> Option<Vec<Vec<u8>>> {
    let Some(mut rest) = message.strip_prefix(b"*") else {
        return Some(vec![message]);
    };
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let end = (colon + 1).checked_add(len)?;
        parts.push(rest.get(colon + 1..end)?.to_vec());
        rest = &rest[end..];
    }
    Some(parts)
}

/// Delivers the letters of this node's inbox channel in Redis to its sessions and reads its
/// notes, in the order they came (the note that ends a session's move comes this way).
pub async fn read_inbox(hub: Weak<Hub>, mut inbox: mpsc::Receiver<Vec<u8>>) {
    while let Some(message) = inbox.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        read_mail(&hub, message).await;
    }
}

/// Delivers the letters in one message (a bundle or not) and reads its notes, in order.
async fn read_mail(hub: &Arc<Hub>, message: Vec<u8>) {
    let Some(mail) = unbundle(message) else {
        return tracing::warn!("unreadable bundle from another node; dropped");
    };
    crate::metrics::get()
        .letters_received
        .inc_by(mail.len() as u64);
    for bytes in mail {
        match Mail::read(bytes) {
            Some(Mail::Letter(letter)) => hub.delivery.deliver_letter(letter).await,
            Some(Mail::Note(json)) => hub.read_note(&json).await,
            None => tracing::warn!("unreadable letter from another node; dropped"),
        }
    }
}

/// Handles a frame another node sent over its link to this one, in the order it came.
pub async fn read_frame(hub: &Arc<Hub>, links: &Arc<Links>, from: &NodeId, frame: Frame) {
    match frame {
        Frame::Mail(message) => read_mail(hub, message).await,
        Frame::Relay {
            sender,
            target,
            rooms,
            data,
        } => {
            crate::metrics::get().letters_received.inc();
            let Some(data) = String::from_utf8(data)
                .ok()
                .and_then(|data| RawValue::from_string(data).ok())
            else {
                return tracing::warn!("unreadable relay from another node; dropped");
            };
            if !hub
                .delivery
                .deliver_relay(&sender, &target, rooms, &Arc::from(data))
            {
                links.send(from, &Frame::Unreachable { sender, target });
            }
        }
        Frame::Unreachable { sender, target } => {
            links.forget(&target, from);
            if let Some(session) = hub.delivery.session(&sender) {
                hub.delivery
                    .refuse(&session, p::RELAY, p::Refusal::UnknownTarget);
            }
        }
        // Answered by the links themselves.
        Frame::Sync { .. } | Frame::Synced(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerId {
        PeerId::parse(name).expect("valid")
    }

    #[test]
    fn letters_round_trip_with_their_bytes_untouched() {
        let data =
            RawValue::from_string(r#"{"sdp":"v=0\r\n a",  "n": [1, 2]}"#.into()).expect("json");
        let (a, b) = (peer("a-1"), peer("B_2"));
        let bytes = letter(&[&a, &b], &body(p::RELAY, &data));
        let read = Letter::read(bytes).expect("a letter");
        assert_eq!(read.peers, vec![a, b]);
        assert_eq!(read.event, p::RELAY);
        assert_eq!(read.data.get(), data.get());
    }

    #[test]
    fn a_bundle_opens_into_its_letters_in_order() {
        let data = RawValue::from_string("{\"a\":\"x:1*\\n\"}".into()).expect("json");
        let one = letter(&[&peer("a")], &body(p::RELAY, &data));
        let two = letter(&[&peer("b")], &body(p::CHAT_MESSAGE, &data));
        let mut bundle = b"*".to_vec();
        for part in [&one, &two] {
            bundle.extend_from_slice(format!("{}:", part.len()).as_bytes());
            bundle.extend_from_slice(part);
        }
        assert_eq!(unbundle(bundle), Some(vec![one.clone(), two]));
        assert_eq!(unbundle(one.clone()), Some(vec![one]));
        for bad in [
            &b"*3:ab"[..],
            b"*x:abc",
            b"*3abc",
            b"*99999999999999999999999:a",
            b"*2:ab1",
        ] {
            assert_eq!(unbundle(bad.to_vec()), None, "{bad:?}");
        }
    }

    #[test]
    fn anything_else_is_not_a_letter() {
        let data = RawValue::from_string("{}".into()).expect("json");
        let good = letter(&[&peer("a")], &body(p::CHAT_MESSAGE, &data));
        assert!(matches!(Mail::read(good), Some(Mail::Letter(_))));
        assert!(matches!(Mail::read(note(b"{}")), Some(Mail::Note(json)) if json == "{}"));
        for bad in [
            &b""[..],
            b"a\n",
            b"a\nchat-message",
            b"a\nsession\n{}",
            b"a\njoin-room\n{}",
            b"a b.c\nchat-message\n{}",
            b"\nchat-message\n{}",
            b"a\nchat-message\n{oops",
            b"a\nchat-message\n\xff",
        ] {
            assert!(Letter::read(bad.to_vec()).is_none(), "{bad:?}");
        }
    }
}
