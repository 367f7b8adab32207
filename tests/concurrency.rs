//! Joins at the same instant must look exactly as if they had happened one by one. 200
//! clients join 50 rooms (4 each) at once, over and over, and every round is checked against
//! the contract's invariants.

mod support;

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use serde_json::json;
use support::{Peer, Server};

const ROOMS: usize = 50;
const PER_ROOM: usize = 4;
const ROUNDS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_keep_every_invariant() {
    let server = Server::start().await;
    for round in 0..ROUNDS {
        storm(&server, round).await;
    }
    // Every room of every round emptied when its clients went away.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let health = server.health().await;
        if health["rooms"] == json!(0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rooms left behind: {health}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // polling a counter
    }
}

async fn storm(server: &Server, round: usize) {
    let names: Vec<String> = (0..ROOMS * PER_ROOM).map(|i| format!("u{round}-{i}")).collect();
    let mut peers: Vec<Peer> = join_all(names.iter().map(|n| server.client(n))).await;

    // Everyone is connected; now all join at once.
    for (i, peer) in peers.iter().enumerate() {
        peer.join(&format!("storm-{round}-{}", i % ROOMS), "p");
    }

    // Each client reads until its own join-ok and a complete roster.
    let ids: Vec<String> = peers.iter().map(|p| p.id().to_string()).collect();
    let reads = peers.iter_mut().map(|peer| async move {
        let mut events = Vec::new();
        let mut joined = false;
        let mut roster = 0;
        while !(joined && roster == PER_ROOM - 1) {
            let event = peer.next().await;
            joined |= event.name == "join-ok";
            roster += usize::from(event.name == "user-connected");
            assert!(roster < PER_ROOM, "{}: more than {} peers announced", peer.id(), PER_ROOM - 1);
            events.push(event);
        }
        events
    });
    let mut events: Vec<Vec<sioclient::Event>> = join_all(reads).await;

    // Flush: two members per room send media-state, which takes the room's turn like a join,
    // so each echo is queued after every join notification of that room. What arrives before
    // the echoes is the rest of the story (init-offers still in flight); nothing comes after.
    let is_flusher = |i: usize| i < 2 * ROOMS;
    for (i, peer) in peers.iter().enumerate().filter(|(i, _)| is_flusher(*i)) {
        let room_id = format!("storm-{round}-{}", i % ROOMS);
        peer.emit("media-state", json!({ "roomId": room_id, "mic": true, "cam": true }));
    }
    let flushes = peers.iter_mut().zip(events.iter_mut()).enumerate().map(|(i, (peer, seen))| async move {
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

    // The invariants.
    let mut offers: HashMap<(String, String), usize> = HashMap::new();
    for (i, seen) in events.iter_mut().enumerate() {
        let me = &ids[i];
        let room_mates: HashSet<&str> = (0..ROOMS * PER_ROOM)
            .filter(|j| j % ROOMS == i % ROOMS && *j != i)
            .map(|j| ids[j].as_str())
            .collect();
        let mut announced = HashSet::new();
        for event in seen.iter() {
            let about = event.data["id"]
                .as_str()
                .or_else(|| event.data["source"].as_str())
                .unwrap_or_default();
            assert_ne!(about, me, "round {round}: {me} heard about itself: {} {}", event.name, event.data);
            match event.name.as_str() {
                "user-connected" => {
                    assert!(room_mates.contains(about), "round {round}: {me} got a stranger {about}");
                    assert!(announced.insert(about.to_string()), "round {round}: {me} got {about} twice");
                }
                "#rtcio:init-offer" => {
                    assert!(room_mates.contains(about), "round {round}: offer from a stranger");
                    let pair = if me < &about.to_string() {
                        (me.clone(), about.to_string())
                    } else {
                        (about.to_string(), me.clone())
                    };
                    *offers.entry(pair).or_default() += 1;
                }
                "join-ok" => {}
                other => panic!("round {round}: {me} got unexpected {other}"),
            }
        }
        assert_eq!(announced.len(), PER_ROOM - 1, "round {round}: {me} roster incomplete");
    }
    let pairs = ROOMS * PER_ROOM * (PER_ROOM - 1) / 2;
    assert_eq!(offers.len(), pairs, "round {round}: some pair got no init-offer");
    assert!(
        offers.values().all(|n| *n == 1),
        "round {round}: a pair got more than one init-offer"
    );
}
