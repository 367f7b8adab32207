//! The join storm: many clients join many rooms at one instant, spread over one or more
//! server processes, and the contract's invariants are checked on everything they received.

use futures_util::future::{join_all, select_all};
use serde_json::json;
use sioclient::Event;
use std::collections::{HashMap, HashSet};

use super::{Peer, Server};

/// Runs one storm of `rooms` x `per_room` clients; client `i` joins room `i % rooms` on
/// server `(i / rooms) % servers.len()`, so every room spans every server.
pub async fn storm(servers: &[&Server], rooms: usize, per_room: usize, tag: &str) {
    let total = rooms * per_room;
    let connects =
        (0..total).map(|i| servers[(i / rooms) % servers.len()].client_named(format!("{tag}-{i}")));
    let mut peers: Vec<Peer> = join_all(connects).await;
    let room_of = |i: usize| format!("storm-{tag}-{}", i % rooms);

    // Everyone is connected; now all join at once.
    for (i, peer) in peers.iter().enumerate() {
        peer.join(&room_of(i), "p");
    }

    // 1. Each client reads until its own join-ok and a complete roster.
    let reads = peers.iter_mut().map(|peer| async move {
        let mut events = Vec::new();
        let (mut joined, mut roster) = (false, 0);
        while !(joined && roster == per_room - 1) {
            let event = peer.next().await;
            joined |= event.name == "join-ok";
            roster += usize::from(event.name == "user-connected");
            assert!(
                roster < per_room,
                "{}: more than {} peers announced",
                peer.id(),
                per_room - 1
            );
            events.push(event);
        }
        events
    });
    let mut events: Vec<Vec<Event>> = join_all(reads).await;

    // 2. Offers may still be in flight: read on until every pair has had one.
    let pairs = rooms * per_room * (per_room - 1) / 2;
    let offers_seen = |events: &Vec<Vec<Event>>| {
        events
            .iter()
            .flatten()
            .filter(|e| e.name == "#rtcio:init-offer")
            .count()
    };
    while offers_seen(&events) < pairs {
        let next = select_all(peers.iter_mut().map(|p| Box::pin(p.client.next_event())));
        match tokio::time::timeout(super::WAIT, next).await {
            Ok((Some(event), index, _)) => events[index].push(event),
            Ok((None, index, _)) => panic!("{tag}: client {index} was disconnected"),
            Err(_) => panic!(
                "{tag}: only {} of {pairs} init-offers arrived",
                offers_seen(&events)
            ),
        }
    }

    // 3. Flush: two members per room send media-state; whatever a client receives before the
    // echoes is still part of the storm, and is checked with the rest.
    let is_flusher = |i: usize| i < 2 * rooms;
    for (i, peer) in peers.iter().enumerate().filter(|(i, _)| is_flusher(*i)) {
        peer.emit(
            "media-state",
            json!({ "roomId": room_of(i), "mic": true, "cam": true }),
        );
    }
    let flushes =
        peers
            .iter_mut()
            .zip(events.iter_mut())
            .enumerate()
            .map(|(i, (peer, seen))| async move {
                let mut echoes = if is_flusher(i) { 1 } else { 2 };
                while echoes > 0 {
                    let event = peer.next().await;
                    if event.name == "media-state" {
                        echoes -= 1;
                    } else {
                        seen.push(event);
                    }
                }
            });
    join_all(flushes).await;

    // 4. The invariants.
    let ids: Vec<String> = peers.iter().map(|p| p.id().to_string()).collect();
    let mut offers: HashMap<(String, String), usize> = HashMap::new();
    for (i, seen) in events.iter().enumerate() {
        let me = ids[i].as_str();
        let mates: HashSet<&str> = (0..total)
            .filter(|j| j % rooms == i % rooms && *j != i)
            .map(|j| ids[j].as_str())
            .collect();
        let mut announced = HashSet::new();
        for event in seen {
            let about = event.data["id"]
                .as_str()
                .or_else(|| event.data["source"].as_str())
                .unwrap_or_default();
            assert_ne!(
                about, me,
                "{tag}: {me} heard about itself: {} {}",
                event.name, event.data
            );
            match event.name.as_str() {
                "user-connected" => {
                    assert!(mates.contains(about), "{tag}: {me} got a stranger {about}");
                    assert!(announced.insert(about), "{tag}: {me} got {about} twice");
                }
                "#rtcio:init-offer" => {
                    assert!(mates.contains(about), "{tag}: offer from a stranger");
                    let pair = if me < about { (me, about) } else { (about, me) };
                    *offers
                        .entry((pair.0.to_string(), pair.1.to_string()))
                        .or_default() += 1;
                }
                "join-ok" => {}
                other => panic!("{tag}: {me} got unexpected {other}"),
            }
        }
        assert_eq!(
            announced.len(),
            per_room - 1,
            "{tag}: {me} roster incomplete"
        );
    }
    assert_eq!(offers.len(), pairs, "{tag}: some pair got no init-offer");
    assert!(
        offers.values().all(|n| *n == 1),
        "{tag}: a pair got more than one init-offer"
    );
}
