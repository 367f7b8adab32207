//! Cluster mode: several server processes against one real `redis-server` (each test starts
//! its own on a free loopback port), with clients spread across them.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::redis::{Redis, ReplyGate, TurnAway, free_port};
use support::{LogFile, Peer, SECRET};

#[tokio::test]
async fn a_call_spans_two_nodes() {
    call_across_nodes(&Redis::start().await).await;
}

/// The same call over a Redis that speaks only TLS, with a private CA (`REDIS_CA_FILE`) and an
/// ACL user, as managed Redis offerings are.
#[tokio::test]
async fn a_call_spans_two_nodes_on_a_tls_redis_with_an_acl_user() {
    call_across_nodes(&Redis::start_tls().await).await;
}

#[tokio::test]
async fn a_redis_certificate_that_does_not_verify_is_a_clear_error_at_start() {
    let redis = Redis::start_tls().await;
    let (url, other_ca) = (redis.url(), redis.other_ca().display().to_string());
    let stderr = support::refused_start(&[
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", &url),
        ("REDIS_CA_FILE", &other_ca),
    ])
    .await;
    assert!(
        stderr.contains("cannot reach Redis at rediss://***@localhost"),
        "{stderr}"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains(redis.password()), "{stderr}");
}

async fn call_across_nodes(redis: &Redis) {
    let (a, b) = (redis.node().await, redis.node().await);

    let (mut alice, _) = a.joined("alice", "x").await;
    alice.emit(
        "media-state",
        json!({ "roomId": "x", "mic": false, "cam": true }),
    );
    let mut bob = b.client("bob").await;
    bob.join("x", "bob");
    let backfill = bob.until("join-ok").await;
    assert_eq!(backfill[0].name, "user-connected");
    assert_eq!(backfill[0].data["id"], json!(alice.id()));

    assert_eq!(alice.expect("user-connected").await["id"], json!(bob.id()));
    assert_eq!(
        alice.expect("#rtcio:init-offer").await,
        json!({ "source": bob.id() })
    );

    let offer = json!({ "description": { "type": "offer", "sdp": "v=0\r\n" } });
    alice.relay(bob.id(), offer.clone());
    let got = bob.until("#rtcio:message").await.pop().expect("relay").data;
    assert_eq!(
        (got["source"].clone(), got["data"].clone()),
        (json!(alice.id()), offer)
    );
    for i in 0..20 {
        bob.relay(
            alice.id(),
            json!({ "candidate": { "candidate": format!("c{i}") } }),
        );
    }
    for i in 0..20 {
        let got = alice.expect("#rtcio:message").await;
        assert_eq!(got["source"], json!(bob.id()));
        assert_eq!(
            got["data"]["candidate"]["candidate"],
            json!(format!("c{i}")),
            "order kept across nodes"
        );
    }

    bob.emit("stopScreenShare", json!({ "roomId": "x" }));
    assert_eq!(alice.expect("stopScreenShare").await["id"], json!(bob.id()));

    // A third node's newcomer is backfilled with both, including alice's cached state.
    let c = redis.node().await;
    let mut carol = c.client("carol").await;
    carol.join("x", "carol");
    let backfill = carol.until("join-ok").await;
    let summary: Vec<(String, serde_json::Value)> = backfill
        .iter()
        .map(|e| (e.name.clone(), e.data["id"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("user-connected".into(), json!(alice.id())),
            ("media-state".into(), json!(alice.id())),
            ("user-connected".into(), json!(bob.id())),
            ("join-ok".into(), json!(null)),
        ]
    );
    assert_eq!(
        (
            backfill[1].data["mic"].clone(),
            backfill[1].data["cam"].clone()
        ),
        (json!(false), json!(true))
    );

    // Carol's arrival reaches both (events from different nodes have no order between them,
    // so it is awaited before bob leaves).
    for peer in [&mut alice, &mut bob] {
        assert_eq!(peer.expect("user-connected").await["id"], json!(carol.id()));
        peer.expect("#rtcio:init-offer").await;
    }

    // Leaving on node B is heard on nodes A and C exactly once.
    bob.client.close();
    for peer in [&mut alice, &mut carol] {
        let seen = peer.until("user-disconnected").await;
        let left: Vec<&str> = seen.iter().map(|e| e.name.as_str()).collect();
        assert!(
            left.ends_with(&["#rtcio:peer-left", "user-disconnected"]),
            "{left:?}"
        );
        assert_eq!(seen.last().expect("event").data["id"], json!(bob.id()));
    }
    alice.assert_nothing_before_probe(&carol).await;
    carol.assert_nothing_before_probe(&alice).await;
}

#[tokio::test]
async fn isolation_holds_across_nodes() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, bob) = support::pair(&a, &b, "private").await;
    let (mut mallory, _) = b.joined("mallory", "elsewhere").await;

    mallory.relay(alice.id(), json!({ "x": 1 }));
    mallory.expect_error("unknown-target").await;
    mallory.emit(
        "media-state",
        json!({ "roomId": "private", "mic": true, "cam": true }),
    );
    mallory.expect_error("not-in-room").await;
    mallory.emit("stopScreenShare", json!({ "roomId": "private" }));
    mallory.expect_error("not-in-room").await;
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_joins_across_nodes_keep_every_invariant() {
    let redis = Redis::start().await;
    // 100 clients from one address at once, and the last round's may still be closing.
    let cap = [("MAX_CONNECTIONS_PER_ADDRESS", "400")];
    let (a, b) = (redis.node_with(&cap).await, redis.node_with(&cap).await);
    for round in 0..6 {
        support::storm::storm(&[&a, &b], 25, 4, &format!("c{round}")).await;
    }
    // Two at a time in one room, many times: the pair always meets exactly once.
    for round in 0..30 {
        support::storm::storm(&[&a, &b], 1, 2, &format!("pair{round}")).await;
    }
}

#[tokio::test]
async fn a_killed_node_is_announced_and_purged() {
    let redis = Redis::start().await;
    let (mut a, b) = (redis.node().await, redis.node().await);
    let (alice, _) = a.joined("alice", "k").await;
    let (mut bob, _) = b.joined("bob", "k").await;
    let (mut carol, _) = b.joined("carol", "k").await;
    bob.until("#rtcio:init-offer").await;
    let alice_id = alice.id().to_string();

    let killed = Instant::now();
    a.child.start_kill().expect("kill -9");
    a.child.wait().await.expect("reaped");
    for peer in [&mut bob, &mut carol] {
        let seen = peer.until("user-disconnected").await;
        assert_eq!(seen.last().expect("event").data["id"], json!(alice_id));
        assert!(
            seen.iter()
                .any(|e| e.name == "#rtcio:peer-left" && e.data["id"] == json!(alice_id))
        );
    }
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_secs(10),
        "survivors heard after {noticed:?}"
    );
    println!(
        "survivors notified {} ms after kill -9",
        noticed.as_millis()
    );

    let mut conn = redis.connection().await.expect("redis");
    let members: Vec<String> = redis::cmd("HKEYS")
        .arg("rtcio:room:k")
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert_eq!(
        members.len(),
        2,
        "alice purged, bob and carol remain: {members:?}"
    );
    assert!(!members.contains(&alice_id));
    // Her session died with its node: coming back to a survivor, alice starts afresh.
    let mut alice = alice;
    alice.reconnect(&b, &b.token("alice")).await;
    assert_eq!(alice.session["recovered"], json!(false));
    assert_ne!(alice.id(), alice_id);
    drop(alice);
    bob.assert_nothing_before_probe(&carol).await;

    // After everyone leaves, nothing of the room, the dead node or its members is left.
    drop((bob, carol));
    support::poll_until(support::WAIT, Duration::from_millis(50), async || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rtcio:*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        let leftovers: Vec<&String> = keys
            .iter()
            .filter(|k| {
                // What the surviving node keeps of itself: its heartbeat and link address.
                !k.ends_with(":alive")
                    && !k.ends_with(":link")
                    && !["rtcio:nodes", "rtcio:seq", "rtcio:link-secret"].contains(&k.as_str())
            })
            .collect();
        let links = keys.iter().filter(|k| k.ends_with(":link")).count();
        if leftovers.is_empty() && links == 1 {
            Ok(())
        } else {
            Err(format!(
                "left in redis: {leftovers:?}, {links} link addresses"
            ))
        }
    })
    .await;
}

/// The last node of a cluster, stopped with SIGTERM, has nobody to hand its sessions to: its
/// clients leave their rooms and the node leaves the registry before it exits, so nothing of
/// it is left in Redis for a survivor to reap (only its "draining" mark, which expires).
#[tokio::test]
async fn the_last_node_to_stop_leaves_nothing_behind() {
    let redis = Redis::start().await;
    let mut a = redis.node().await;
    let (mut alice, _) = a.joined("alice", "last").await;
    let (_bob, _) = a.joined("bob", "last").await;
    alice.until("#rtcio:init-offer").await;
    let mut conn = redis.connection().await.expect("redis");
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rtcio:nodes")
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    a.terminate().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("rtcio:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    // The cluster's counter and link secret stay for the nodes to come.
    keys.retain(|k| {
        !["rtcio:seq", "rtcio:link-secret"].contains(&k.as_str())
            && *k != format!("rtcio:node:{}:draining", nodes[0])
    });
    assert_eq!(keys, Vec::<String>::new(), "left in redis");
}

#[tokio::test]
async fn redis_unreachable_at_start_is_a_clear_error() {
    let url = format!("redis://:hunter2@127.0.0.1:{}", free_port());
    let stderr = support::refused_start(&[("JWT_SECRET", SECRET), ("REDIS_URL", &url)]).await;
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
}

#[tokio::test]
async fn losing_redis_is_survived_and_recovered_from() {
    let redis = Redis::start().await;
    let port = redis.port;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "before").await;
    alice.relay(bob.id(), json!({ "n": 1 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(1));
    redis.stop().await;

    // Meanwhile: a clear error, and the server keeps answering.
    alice.join("during", "alice");
    let err = alice.expect("join-error").await;
    assert_eq!(err["reason"], json!("unavailable"));
    assert_eq!(a.health().await["status"], json!("ok"));
    // A call already set up keeps negotiating: alice's node knows where bob is, and his node
    // checks the room itself.
    alice.relay(bob.id(), json!({ "n": 2 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(2));

    // Redis comes back empty, as after a restart. Each node finds its heartbeat lapsed and
    // disconnects its clients so they rejoin; then calls across nodes work again.
    let _redis = Redis::start_on(port).await;
    alice.expect_closed().await;
    bob.expect_closed().await;
    let (mut dave, _) = a.joined("dave", "after").await;
    let (mut erin, _) = b.joined("erin", "after").await;
    assert_eq!(dave.expect("user-connected").await["id"], json!(erin.id()));
    dave.expect("#rtcio:init-offer").await;
    dave.relay(
        erin.id(),
        json!({ "description": { "type": "offer", "sdp": "v=0" } }),
    );
    assert_eq!(
        erin.expect("#rtcio:message").await["source"],
        json!(dave.id())
    );
}

/// A leave Redis cannot take (it is briefly down, its data kept) is recorded and announced once
/// it is back, so no ghost member stays behind for newcomers.
#[tokio::test]
async fn a_leave_during_a_redis_outage_is_announced_once_redis_is_back() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "room").await;
    let bob_id = bob.id().to_string();
    let stopped = redis.shut_down_saving().await;

    bob.emit("leave-room", json!({ "roomId": "room" }));
    // bob's events run in order: this refusal comes after his leave was tried.
    bob.emit("check-room", json!({ "roomId": "room" }));
    assert_eq!(
        bob.expect("join-error").await["reason"],
        json!("unavailable")
    );

    let _redis = Redis::start_again(stopped).await;
    assert_eq!(
        alice.expect("#rtcio:peer-left").await,
        json!({ "id": bob_id })
    );
    assert_eq!(
        alice.expect("user-disconnected").await,
        json!({ "id": bob_id })
    );
    let (mut carol, backfill) = a.joined("carol", "room").await;
    let roster: Vec<&serde_json::Value> = backfill
        .iter()
        .filter(|e| e.name == "user-connected")
        .map(|e| &e.data["id"])
        .collect();
    assert_eq!(roster, [&json!(alice.id())], "no ghost of bob");
    assert_eq!(a.health().await["rooms"], json!(1));
    assert_eq!(b.health().await["rooms"], json!(0));
    alice.until("#rtcio:init-offer").await;
    carol.assert_nothing_before_probe(&alice).await;
}

/// Two joiners on two nodes racing for a room's last place: in every room one gets in and
/// the other hears `room-full`, whichever of them the room's check let through first.
#[tokio::test]
async fn a_rooms_last_place_goes_to_one_of_two_racing_joiners() {
    const ROOMS: usize = 12;
    let redis = Redis::start().await;
    let settings = [("MAX_PEERS_PER_ROOM", "2")];
    let (a, b) = (
        redis.node_with(&settings).await,
        redis.node_with(&settings).await,
    );
    let mut hosts = Vec::new();
    let mut racers = Vec::new();
    for i in 0..ROOMS {
        hosts.push(a.joined("host", &format!("race-{i}")).await.0);
        racers.push((a.client("left").await, b.client("right").await));
    }
    for (i, (left, right)) in racers.iter().enumerate() {
        left.join(&format!("race-{i}"), "left");
        right.join(&format!("race-{i}"), "right");
    }
    for (i, (left, right)) in racers.iter_mut().enumerate() {
        let mut answers = Vec::new();
        for racer in [left, right] {
            let answer = loop {
                let event = racer.next().await;
                match event.name.as_str() {
                    "join-ok" => break "join-ok".to_string(),
                    "join-error" => break format!("join-error {}", event.data["reason"]),
                    _ => {}
                }
            };
            answers.push(answer);
        }
        answers.sort();
        assert_eq!(
            answers,
            [r#"join-error "room-full""#, "join-ok"],
            "race-{i}"
        );
    }
}

/// A member's media state belongs to the room it was sent in: a newcomer to another room the
/// member is also in hears nothing of it, and one to that room does.
#[tokio::test]
async fn a_media_state_stays_in_its_room() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "x").await;
    alice.join("y", "alice");
    alice.until("join-ok").await;
    alice.emit(
        "media-state",
        json!({ "roomId": "x", "mic": false, "cam": false }),
    );
    bob.expect("media-state").await;

    let (_carol, backfill) = b.joined("carol", "y").await;
    let names: Vec<&str> = backfill.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["user-connected", "join-ok"],
        "no media-state of room x"
    );
    let (_dave, backfill) = b.joined("dave", "x").await;
    let muted = backfill
        .iter()
        .find(|e| e.name == "media-state")
        .expect("room x's media-state");
    assert_eq!(muted.data["id"], json!(alice.id()));
    assert_eq!(muted.data["roomId"], json!("x"));
}

/// Leaving drops a member's cached media state and stops the room's echoes to it; an emptied
/// room leaves no key behind.
#[tokio::test]
async fn leaving_takes_the_cached_state_and_the_echoes_with_it() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "x").await;
    alice.emit(
        "media-state",
        json!({ "roomId": "x", "mic": false, "cam": false }),
    );
    bob.expect("media-state").await;

    alice.emit("leave-room", json!({ "roomId": "x" }));
    bob.until("user-disconnected").await;
    // Gone from the room, alice hears none of its echoes.
    bob.emit(
        "chat-message",
        json!({ "roomId": "x", "text": "still there?" }),
    );
    bob.emit("stopScreenShare", json!({ "roomId": "x" }));
    alice.join("elsewhere", "alice");
    alice.until("join-ok").await;
    let (carol, _) = b.joined("carol", "elsewhere").await;
    alice.expect("user-connected").await;
    alice.expect("#rtcio:init-offer").await;
    alice.assert_nothing_before_probe(&carol).await;

    // Back in the room, alice has no stale mute state for newcomers.
    alice.join("x", "alice");
    alice.until("join-ok").await;
    let (_dave, backfill) = b.joined("dave", "x").await;
    let names: Vec<&str> = backfill.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["user-connected", "user-connected", "join-ok"],
        "no media-state"
    );

    let mut conn = redis.connection().await.expect("redis");
    let exists: bool = redis::cmd("EXISTS")
        .arg("rtcio:room:x")
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(exists, "the room is in redis while it has members");
    for peer in [&alice, &bob, &_dave] {
        peer.emit("leave-room", json!({ "roomId": "x" }));
    }
    support::poll_until(support::WAIT, Duration::from_millis(20), async || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rtcio:*:x")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if keys.is_empty() {
            Ok(())
        } else {
            Err(format!("left in redis: {keys:?}"))
        }
    })
    .await;
}

/// The node whose session serves `peer`, as the room's entry in Redis names it.
async fn node_of(redis: &Redis, room: &str, peer: &str) -> String {
    let mut conn = redis.connection().await.expect("redis");
    let entry: String = redis::cmd("HGET")
        .arg(format!("rtcio:room:{room}"))
        .arg(peer)
        .query_async(&mut conn)
        .await
        .expect("member entry");
    entry
        .split('|')
        .nth(1)
        .expect("seq|node|record")
        .to_string()
}

/// The link address `node` advertises, and the cluster's link secret.
async fn link_of(redis: &Redis, node: &str) -> (String, String) {
    let mut conn = redis.connection().await.expect("redis");
    redis::pipe()
        .get(format!("rtcio:node:{node}:link"))
        .get("rtcio:link-secret")
        .query_async(&mut conn)
        .await
        .expect("link address and secret")
}

/// Each event goes to the nodes serving its recipients and nowhere else, over the links
/// between nodes: no payload crosses Redis.
#[tokio::test]
async fn events_reach_only_the_nodes_that_serve_their_peers() {
    let redis = Redis::start().await;
    let nodes = [
        redis.node().await,
        redis.node().await,
        redis.node().await,
        redis.node().await,
    ];
    let (mut alice, mut bob) = support::pair(&nodes[0], &nodes[1], "x").await;
    let (carol, mut dave) = support::pair(&nodes[2], &nodes[3], "y").await;
    let mut before = Vec::new();
    for node in &nodes {
        before.push(node.letters_received().await);
    }
    let publishes_before = command_calls(&redis, "publish").await;

    for n in 0..10 {
        alice.relay(bob.id(), json!({ "n": n, "sdp": "v=0\r\na=x\r\n" }));
    }
    assert_eq!(
        bob.expect("#rtcio:message").await,
        json!({ "source": alice.id(), "target": bob.id(),
                "data": { "n": 0, "sdp": "v=0\r\na=x\r\n" } })
    );
    for n in 1..10 {
        assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(n));
    }
    bob.emit("chat-message", json!({ "roomId": "x", "text": "hi" }));
    assert_eq!(alice.expect("chat-message").await["text"], json!("hi"));
    carol.relay(dave.id(), json!({ "last": true }));
    dave.expect("#rtcio:message").await;

    let mut received = Vec::new();
    for (node, before) in nodes.iter().zip(before) {
        received.push(node.letters_received().await - before);
    }
    assert_eq!(
        received,
        [1, 10, 0, 1],
        "one letter per event, to its node only"
    );
    assert_eq!(command_calls(&redis, "publish").await, publishes_before);
}

#[tokio::test]
async fn no_relay_gets_past_a_leave_across_nodes() {
    let redis = Redis::start().await;
    // Bob relays in bursts, well over a person's rate.
    let burst = [("RELAY_BURST", "100000")];
    let (a, b) = (redis.node_with(&burst).await, redis.node_with(&burst).await);
    let (mut alice, mut bob) = support::pair(&a, &b, "r").await;
    const BURST: usize = 200;
    const AFTER: usize = 5;
    for round in 0..5 {
        for i in 0..BURST {
            bob.relay(alice.id(), json!({ "i": i }));
        }
        // Alice leaves while the burst is still crossing over to her node.
        assert_eq!(alice.expect("#rtcio:message").await["data"]["i"], json!(0));
        alice.emit("leave-room", json!({ "roomId": "r" }));

        // Every relay is either delivered, as an unbroken prefix, or refused; once bob has
        // heard alice is gone, none of his relays reach her.
        let (mut delivered, mut refused, mut told) = (1, 0, false);
        while delivered + refused < BURST + AFTER {
            let (event, from_bob) = tokio::select! {
                event = alice.client.next_event() => (event, false),
                event = bob.client.next_event() => (event, true),
                _ = tokio::time::sleep(Duration::from_secs(10)) => panic!(
                    "round {round}: stalled at {delivered} delivered, {refused} refused"
                ),
            };
            let event = event.expect("connected");
            match (from_bob, event.name.as_str()) {
                (false, "#rtcio:message") => {
                    assert_eq!(event.data["data"]["i"], json!(delivered), "round {round}");
                    delivered += 1;
                }
                (true, "error") => {
                    assert_eq!(event.data["code"], json!("unknown-target"));
                    refused += 1;
                }
                (true, "#rtcio:peer-left") => {}
                (true, "user-disconnected") => {
                    told = true;
                    for _ in 0..AFTER {
                        bob.relay(alice.id(), json!({ "after": true }));
                    }
                }
                other => panic!("round {round}: unexpected {other:?} {}", event.data),
            }
        }
        assert!(told, "round {round}: bob was told alice left");
        assert!(
            delivered <= BURST,
            "round {round}: a relay passed the leave"
        );

        alice.join("r", "alice");
        alice.until("join-ok").await;
        bob.until("#rtcio:init-offer").await;
    }
    alice.assert_nothing_before_probe(&bob).await;
}

/// Relays `alice` to `bob` until one arrives: across a link that just broke, what was
/// written as it broke is lost.
async fn relay_until_heard(alice: &Peer, bob: &mut Peer) {
    for n in 0..40 {
        alice.relay(bob.id(), json!({ "n": n }));
        if let Some(event) = bob
            .client
            .next_event_within(Duration::from_millis(250))
            .await
        {
            assert_eq!(event.name, "#rtcio:message");
            return;
        }
    }
    panic!("no relay reached bob");
}

/// A link that breaks is opened again with the next frame. One that cannot be opened is given
/// up after a few tries (what was sent meanwhile is lost), and opened afresh once the node
/// can be reached.
#[tokio::test]
async fn a_broken_link_is_opened_again() {
    let redis = Redis::start().await;
    let (b, gate) = redis.node_behind_gate().await;
    let a = redis.node().await;
    let (alice, mut bob) = support::pair(&a, &b, "call").await;
    relay_until_heard(&alice, &mut bob).await;
    let opened = gate.links();
    assert!(opened >= 1, "alice's relay came through the gate");

    gate.break_links();
    relay_until_heard(&alice, &mut bob).await;
    assert_eq!(gate.links(), opened + 1, "the link was opened again");

    gate.refuse(true);
    gate.break_links();
    for n in 0.. {
        if gate.refused() >= 3 {
            break;
        }
        assert!(n < 100, "{} links tried in 10 s", gate.refused());
        alice.relay(bob.id(), json!({ "lost": n }));
        tokio::time::sleep(Duration::from_millis(100)).await; // the writer backs off between tries
    }
    gate.refuse(false);
    relay_until_heard(&alice, &mut bob).await;
}

/// A node that stops reading its link (stalled) costs the sending node at most 64 MiB: past
/// that, frames for it are dropped with an error, and the sender carries on.
#[tokio::test]
async fn a_link_to_a_stalled_node_is_capped() {
    let redis = Redis::start().await;
    let (b, gate) = redis.node_behind_gate().await;
    let log = LogFile::new("link-cap");
    let a = redis
        .node_logging_to(
            &[
                ("RELAY_BURST", "100000"),
                ("SEND_BYTES_RATE", "1000000000"),
                ("SEND_BYTES_BURST", "1000000000"),
            ],
            log.stdio(),
        )
        .await;
    let (alice, mut bob) = support::pair(&a, &b, "call").await;
    relay_until_heard(&alice, &mut bob).await;
    assert_eq!(gate.links(), 1);

    gate.hold_first();
    // 80 MiB in relays of 60 KiB, within the 5 s a stalled write is given: made once.
    let relay = json!(["#rtcio:message", { "target": bob.id(), "data": "x".repeat(60 * 1024) }]);
    let frame = format!("42{relay}");
    for _ in 0..1400 {
        alice.client.send_raw(frame.clone());
    }
    log.until_said("frame for another node dropped: its link is behind")
        .await;
    assert_eq!(a.health().await["status"], json!("ok"));
}

/// A node whose Redis handshake times out at start (a busy machine) tries again, and starts.
#[tokio::test]
async fn a_handshake_that_times_out_at_start_is_tried_again() {
    let redis = Redis::start().await;
    // A node's first two connections are its probe and its subscriber. The next three, its
    // command connection's first attempt and the two retries it makes, get no answer.
    let gate = ReplyGate::start_turning_away(&redis, 3..=5, TurnAway::Silently).await;
    let a = redis.node_with(&[("REDIS_URL", &gate.url())]).await;
    assert!(
        gate.accepted() >= 6,
        "{} connections: the silent one was never tried again",
        gate.accepted()
    );
    let b = redis.node().await;
    let (alice, mut bob) = support::pair(&a, &b, "x").await;
    alice.relay(bob.id(), json!({ "n": 1 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(1));
}

/// A Redis that turns the node away part way through its start (its client limit reached)
/// stops the start at once, saying why; only a handshake that times out is tried again.
#[tokio::test]
async fn a_redis_that_turns_a_node_away_at_start_is_a_clear_error() {
    let redis = Redis::start().await;
    let full = TurnAway::Saying(b"-ERR max number of clients reached\r\n");
    let gate = ReplyGate::start_turning_away(&redis, 3..=usize::MAX, full).await;
    let stderr =
        support::refused_start(&[("JWT_SECRET", SECRET), ("REDIS_URL", &gate.url())]).await;
    // Redis closes such a connection at once: the node, writing its handshake to it, reads a
    // broken pipe or a reset, and says so instead of trying until no time is left.
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("no answer"), "{stderr}");
}

/// A departure that reaches a joiner's node before the joiner's own join reply (Redis sent
/// the reply first, but on another connection, which the node reads later) is told after the
/// roster that names the one departing, never before it: no peer leaves and then arrives.
#[tokio::test]
async fn a_departure_that_overtakes_a_join_reply_comes_after_the_roster() {
    let redis = Redis::start().await;
    let gate = ReplyGate::start(&redis).await;
    let a = redis.node_with(&[("REDIS_URL", &gate.url())]).await;
    let b = redis.node().await;
    let (bob, _) = b.joined("bob", "x").await;
    let mut alice = a.client("alice").await;
    let received = a.letters_received().await;

    // The join script's reply starts with its outcome.
    gate.hold_from(b"joined");
    alice.join("x", "alice");
    let mut conn = redis.connection().await.expect("redis");
    support::poll_until(support::WAIT, Duration::from_millis(10), async || {
        let joined: bool = redis::cmd("HEXISTS")
            .arg("rtcio:room:x")
            .arg(alice.id())
            .query_async(&mut conn)
            .await
            .expect("HEXISTS");
        // Her join ran in Redis; its reply waits at the gate.
        if joined {
            Ok(())
        } else {
            Err("alice's join has not run".into())
        }
    })
    .await;
    bob.emit("leave-room", json!({ "roomId": "x" }));
    support::poll_until(support::WAIT, Duration::from_millis(10), async || {
        // Bob's departure is in alice's node: its subscriber connection is not held back.
        let now = a.letters_received().await;
        if now > received {
            Ok(())
        } else {
            Err(format!("{now} letters received"))
        }
    })
    .await;
    gate.open();

    let names: Vec<String> = alice
        .until("user-disconnected")
        .await
        .into_iter()
        .map(|event| event.name)
        .collect();
    assert_eq!(
        names,
        [
            "user-connected",
            "join-ok",
            "#rtcio:peer-left",
            "user-disconnected"
        ]
    );
}

/// Many senders relaying at once across nodes: each target gets its sender's relays exactly
/// once and in order, and only the first relay to each target asks Redis where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_cross_in_order_asking_redis_once_per_target() {
    const PAIRS: usize = 10;
    const RELAYS: usize = 100;
    let redis = Redis::start().await;
    let settings = [
        ("RELAY_BURST", "100000"),
        ("MAX_CONNECTIONS_PER_ADDRESS", "400"),
    ];
    let (a, b) = (
        redis.node_with(&settings).await,
        redis.node_with(&settings).await,
    );
    let mut pairs = Vec::new();
    for k in 0..PAIRS {
        pairs.push(support::pair(&b, &a, &format!("batch-{k}")).await);
    }
    let lookups_before = command_calls(&redis, "evalsha").await;
    for (target, sender) in &pairs {
        for i in 0..RELAYS {
            sender.relay(target.id(), json!({ "i": i }));
        }
    }
    for (target, sender) in &mut pairs {
        for i in 0..RELAYS {
            let got = target.expect("#rtcio:message").await;
            assert_eq!(
                (got["source"].clone(), got["data"]["i"].clone()),
                (json!(sender.id()), json!(i))
            );
        }
        target.assert_nothing_before_probe(sender).await;
    }
    let lookups = command_calls(&redis, "evalsha").await - lookups_before;
    assert!(
        lookups <= PAIRS as u64,
        "{lookups} script calls for {} relays to {PAIRS} targets",
        PAIRS * RELAYS
    );
}

/// How many times Redis has run `command` (inside scripts too).
async fn command_calls(redis: &Redis, command: &str) -> u64 {
    let mut conn = redis.connection().await.expect("redis");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// Opens a link to the node listening at `address` as node `from`, answering its challenge
/// with an HMAC under `key`; whether the node took the answer.
async fn knock(address: &str, from: &str, to: &str, key: &[u8]) -> (tokio::net::TcpStream, bool) {
    use hmac::{Hmac, Mac};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("link listener");
    let mut challenge = [0; 32];
    stream.read_exact(&mut challenge).await.expect("challenge");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
    for part in [
        &b"rtcio-link\n"[..],
        &challenge,
        from.as_bytes(),
        b"\n",
        to.as_bytes(),
    ] {
        mac.update(part);
    }
    let mut hello = (from.len() as u16).to_be_bytes().to_vec();
    hello.extend_from_slice(from.as_bytes());
    hello.extend_from_slice(&mac.finalize().into_bytes());
    // A challenge of its own, which a real node checks the listener's answer to.
    hello.extend_from_slice(&[7; 32]);
    stream.write_all(&hello).await.expect("hello");
    let mut answer = [0; 1];
    let taken = matches!(stream.read(&mut answer).await, Ok(1) if answer[0] == 1);
    (stream, taken)
}

/// The links between nodes take frames only from a node that proves it knows the cluster's
/// secret: a wrong answer to the challenge is refused and what follows it never delivered,
/// while the right one (as a node gives it) can reach a client.
#[tokio::test]
async fn links_take_frames_only_from_nodes_that_know_the_secret() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, bob) = support::pair(&a, &b, "room").await;
    let node = node_of(&redis, "room", alice.id()).await;
    let (address, secret) = link_of(&redis, &node).await;
    let alice_id = alice.id().to_string();
    let frame = |text: &str| {
        let body = format!("M{alice_id}\nchat-message\n{{\"text\":\"{text}\"}}");
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        frame
    };

    let (mut forged, taken) = knock(&address, "feedface", &node, b"not the secret").await;
    assert!(!taken, "a wrong answer was taken");
    let _ = forged.write_all(&frame("forged")).await;
    let (mut misnamed, taken) = knock(&address, "feedface", "beef", secret.as_bytes()).await;
    assert!(!taken, "an answer for another node was taken");
    let _ = misnamed.write_all(&frame("misnamed")).await;
    alice.assert_nothing_before_probe(&bob).await;

    let (mut link, taken) = knock(&address, "feedface", &node, secret.as_bytes()).await;
    assert!(taken, "the right answer was refused");
    link.write_all(&frame("genuine")).await.expect("frame");
    assert_eq!(alice.expect("chat-message").await["text"], json!("genuine"));

    // Not even a node that knows the secret makes this one set 16 MiB aside for a frame:
    // the link is closed at the frame's length.
    let (mut greedy, taken) = knock(&address, "c0ffee", &node, secret.as_bytes()).await;
    assert!(taken, "the right answer was refused");
    let too_long = 16 * 1024 * 1024 + 1_u32;
    greedy
        .write_all(&too_long.to_be_bytes())
        .await
        .expect("length");
    // What is left of the handshake's answer, then the end of the link.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(support::WAIT, greedy.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the link stayed open");
}

/// A node checks the node it links to as that node checks it: to a listener that cannot
/// answer its challenge it sends nothing, and to one that can, a relay goes as one frame
/// naming the sender, the target, the sender's rooms and the payload's bytes as they are.
#[tokio::test]
async fn a_node_sends_only_to_a_listener_that_knows_the_secret() {
    use hmac::{Hmac, Mac};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Plays a node at a fake address: answers the handshake with `key`, then returns
    /// whatever the real node writes until it closes the link or stays quiet for a while.
    async fn fake_node(listener: &tokio::net::TcpListener, me: &str, key: &[u8]) -> Vec<u8> {
        let (mut stream, _) = listener.accept().await.expect("a link");
        stream.write_all(&[9; 32]).await.expect("challenge");
        let len = stream.read_u16().await.expect("id length") as usize;
        let mut from = vec![0; len];
        stream.read_exact(&mut from).await.expect("id");
        let mut rest = [0; 64];
        stream
            .read_exact(&mut rest)
            .await
            .expect("answer and challenge");
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
        for part in [
            &b"rtcio-link\n"[..],
            &rest[32..],
            me.as_bytes(),
            b"\n",
            &from,
        ] {
            mac.update(part);
        }
        let mut answer = vec![1];
        answer.extend_from_slice(&mac.finalize().into_bytes());
        stream.write_all(&answer).await.expect("answer");
        let mut written = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut written)).await;
        written
    }

    let redis = Redis::start().await;
    let a = redis.node().await;
    let (alice, _) = a.joined("alice", "x").await;
    let mut conn = redis.connection().await.expect("redis");
    let secret: String = redis::cmd("GET")
        .arg("rtcio:link-secret")
        .query_async(&mut conn)
        .await
        .expect("secret");
    for (fake, key, expected) in [
        ("f00d", b"wrong".to_vec(), false),
        ("beef", secret.into_bytes(), true),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let peer = format!("peer-of-{fake}");
        let _: () = redis::pipe()
            .set(
                format!("rtcio:node:{fake}:link"),
                listener.local_addr().expect("addr").to_string(),
            )
            .hset("rtcio:room:x", &peer, format!("99|{fake}|{{}}"))
            .query_async(&mut conn)
            .await
            .expect("a fake member on a fake node");
        alice.relay(&peer, json!({ "sdp": "v=0\r\n" }));
        let written = fake_node(&listener, fake, &key).await;
        if !expected {
            assert!(
                written.is_empty(),
                "{} bytes sent to a listener that failed",
                written.len()
            );
            continue;
        }
        let relay = format!(
            r#"{{"source":"{}","target":"{peer}","data":{{"sdp":"v=0\r\n"}}}}"#,
            alice.id()
        );
        let mut frame = vec![b'R'];
        for field in [alice.id(), &peer] {
            frame.extend_from_slice(&(field.len() as u16).to_be_bytes());
            frame.extend_from_slice(field.as_bytes());
        }
        frame.extend_from_slice(&[0, 1, 0, 1, b'x']);
        frame.extend_from_slice(relay.as_bytes());
        let mut expected = (frame.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(&frame);
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&expected)
        );
    }
}

/// A node cut off from Redis keeps relaying for calls already set up only while its
/// heartbeat is fresh: past 4 s the others may reap it (at 5 s) and announce its peers gone,
/// so from then on nothing of theirs may reach anyone.
#[tokio::test]
async fn a_node_cut_off_from_redis_stops_sending_before_it_can_be_reaped() {
    let redis = Redis::start().await;
    // Alice relays without pause until her node stops.
    let burst = [("RELAY_BURST", "100000")];
    let started = Instant::now();
    let (a, b) = (redis.node_with(&burst).await, redis.node_with(&burst).await);
    let (alice, mut bob) = support::pair(&a, &b, "call").await;
    // While heartbeats are taken, a node keeps sending past its first 4 s.
    while started.elapsed() < Duration::from_secs(5) {
        alice.relay(bob.id(), json!({ "n": 0 }));
        assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(0));
    }
    let cut_off = Instant::now();
    redis.stop().await;

    let mut n = 1;
    let stopped = loop {
        alice.relay(bob.id(), json!({ "n": n }));
        match bob
            .client
            .next_event_within(Duration::from_millis(300))
            .await
        {
            Some(event) => assert_eq!(event.data["data"]["n"], json!(n), "in order"),
            None => break cut_off.elapsed(),
        }
        assert!(
            cut_off.elapsed() < Duration::from_secs(10),
            "still relaying"
        );
        n += 1;
    };
    // The last heartbeat was at most a second or two before the cut.
    assert!(
        stopped < Duration::from_secs(5),
        "stopped {stopped:?} after Redis did"
    );
    alice.relay(bob.id(), json!({ "n": "after" }));
    assert!(
        bob.client
            .next_event_within(Duration::from_millis(500))
            .await
            .is_none()
    );
}

/// Should Redis lose the link secret, the nodes put theirs back; should another node make a
/// new one, every node takes it up within a heartbeat or two: new links are authenticated
/// with it, not the old one.
#[tokio::test]
async fn nodes_follow_the_link_secret_redis_holds() {
    let redis = Redis::start().await;
    let a = redis.node().await;
    let (alice, _) = a.joined("alice", "room").await;
    let node = node_of(&redis, "room", alice.id()).await;
    let (address, old) = link_of(&redis, &node).await;
    let mut conn = redis.connection().await.expect("redis");
    // Lost altogether, it is put back by the next heartbeat: the one the nodes use.
    let _: () = redis::cmd("DEL")
        .arg("rtcio:link-secret")
        .query_async(&mut conn)
        .await
        .expect("DEL");
    support::poll_until(support::WAIT, Duration::from_millis(100), async || {
        let secret: Option<String> = redis::cmd("GET")
            .arg("rtcio:link-secret")
            .query_async(&mut redis.connection().await.map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        match secret {
            Some(secret) if secret == old => Ok(()),
            other => Err(format!("the secret in Redis is {other:?}")),
        }
    })
    .await;
    let _: () = redis::cmd("SET")
        .arg("rtcio:link-secret")
        .arg("a-new-secret")
        .query_async(&mut conn)
        .await
        .expect("SET");
    support::poll_until(
        support::WAIT,
        Duration::from_millis(100),
        async || match knock(&address, "feedface", &node, b"a-new-secret").await {
            (_, true) => Ok(()),
            _ => Err("the new secret is not taken yet".to_string()),
        },
    )
    .await;
    assert!(!knock(&address, "feedface", &node, old.as_bytes()).await.1);
}
