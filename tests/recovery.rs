//! Session recovery over real sockets: a connection that drops without a close frame comes
//! back with `auth: { token, resume, received }` to the same peer id and every event it missed,
//! exactly once and in order, while its peers hear nothing; leaving on purpose is announced at
//! once; a credential opens only its own session, once, within the window.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis::Redis;
use support::{LogFile, Peer, SECRET, Server, departure_heard, drop_connection};

async fn server(window_ms: Option<&str>) -> Server {
    // Some tests relay 300 at once, past what a session keeps (256) and a person's burst.
    let mut env = vec![("JWT_SECRET", SECRET), ("RELAY_BURST", "1000")];
    if let Some(window) = window_ms {
        env.push(("RECOVERY_WINDOW_MS", window));
    }
    Server::start_with(&[], &env).await
}

async fn expect_relays(peer: &mut Peer, from: &Peer, numbers: std::ops::Range<u64>) {
    for n in numbers {
        let got = peer.expect("#rtcio:message").await;
        assert_eq!(got["source"], json!(from.id()));
        assert_eq!(got["data"], json!({ "n": n }), "relay {n}, in order, once");
    }
}

#[tokio::test]
async fn a_dropped_connection_comes_back_with_every_event_once_in_order() {
    let server = server(None).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    let bob_id = bob.id().to_string();
    for n in 0..10 {
        alice.relay(bob.id(), json!({ "n": n }));
    }
    // bob reads four; the other six are lost in flight with the connection.
    expect_relays(&mut bob, &alice, 0..4).await;
    drop_connection(&server, &bob).await;
    for n in 10..20 {
        alice.relay(&bob_id, json!({ "n": n }));
    }

    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));
    assert_eq!(bob.id(), bob_id, "the same peer id");
    assert_ne!(bob.client.sid, bob_id, "on a new socket");
    expect_relays(&mut bob, &alice, 4..20).await;
    bob.assert_nothing_before_probe(&alice).await;
    // alice heard nothing of the drop, and bob's new socket relays as bob.
    alice.assert_nothing_before_probe(&bob).await;
    assert_eq!(server.health().await["away"], json!(0));
}

#[tokio::test]
async fn a_connection_that_still_looks_alive_is_taken_over_silently() {
    let server = server(None).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    alice.relay(bob.id(), json!({ "n": 0 }));
    expect_relays(&mut bob, &alice, 0..1).await;
    let auth = json!({
        "token": server.token("bob"),
        "resume": bob.session["resume"],
        "received": bob.received,
    });
    let mut bob2 = server.client_with_auth(auth).await;
    assert_eq!(bob2.session["recovered"], json!(true));
    assert_eq!(bob2.id(), bob.id());
    bob.expect_closed().await;
    alice.relay(bob2.id(), json!({ "n": 1 }));
    expect_relays(&mut bob2, &alice, 1..2).await;
    alice.assert_nothing_before_probe(&bob2).await;
}

#[tokio::test]
async fn a_credential_opens_only_its_own_session_and_only_once() {
    let server = server(None).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    let credential = bob.session["resume"].clone();
    let resume_as = |sub: &str, credential: &Value| json!({ "token": server.token(sub), "resume": credential, "received": 0 });

    // Another user's token: a fresh session, and bob's is untouched.
    let mallory = server
        .client_with_auth(resume_as("mallory", &credential))
        .await;
    assert_eq!(mallory.session["recovered"], json!(false));
    assert_ne!(mallory.id(), bob.id());
    assert_eq!(mallory.id(), mallory.client.sid);
    alice.relay(bob.id(), json!({ "n": 0 }));
    expect_relays(&mut bob, &alice, 0..1).await;

    // Used once, the credential is spent; the session's new one works.
    drop_connection(&server, &bob).await;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));
    let again = server.client_with_auth(resume_as("bob", &credential)).await;
    assert_eq!(again.session["recovered"], json!(false));
    assert_ne!(again.id(), bob.id());
    assert_ne!(
        bob.session["resume"], credential,
        "a new credential each time"
    );

    alice.assert_nothing_before_probe(&bob).await;

    // The owner back with a count that cannot be replayed from (beyond what was sent) gets a
    // fresh session, and the old one ends at once rather than linger as a silent duplicate.
    let beyond =
        json!({ "token": server.token("bob"), "resume": bob.session["resume"], "received": 1000 });
    let beyond = server.client_with_auth(beyond).await;
    assert_eq!(beyond.session["recovered"], json!(false));
    assert_eq!(departure_heard(&mut alice).await, json!(bob.id()));
    bob.expect_closed().await;
}

#[tokio::test]
async fn when_the_window_runs_out_the_departure_is_announced_once() {
    let server = server(Some("1500")).await;
    let (mut alice, bob) = support::pair(&server, &server, "call").await;
    let (mut carol, _) = server.joined("carol", "call").await;
    alice.until("#rtcio:init-offer").await;
    let bob_id = bob.id().to_string();
    let dropped = Instant::now();
    drop_connection(&server, &bob).await;
    for peer in [&mut alice, &mut carol] {
        assert_eq!(
            peer.expect("#rtcio:peer-left").await,
            json!({ "id": bob_id })
        );
        assert_eq!(
            peer.expect("user-disconnected").await,
            json!({ "id": bob_id })
        );
    }
    assert!(
        dropped.elapsed() >= Duration::from_millis(1400),
        "announced after {:?}, before the window ran out",
        dropped.elapsed()
    );
    alice.assert_nothing_before_probe(&carol).await;
    carol.assert_nothing_before_probe(&alice).await;

    let mut bob = bob;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(false));
    assert_ne!(bob.id(), bob_id);
}

/// A session taken up again stays, however long its client stays: the window it came back
/// in running out ends nothing.
#[tokio::test]
async fn a_resumed_session_outlives_the_window_it_came_back_in() {
    let server = server(Some("1000")).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    drop_connection(&server, &bob).await;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    alice.relay(bob.id(), json!({ "n": 1 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(1));
    alice.assert_nothing_before_probe(&bob).await;
    assert_eq!(server.health().await["away"], json!(0));
}

/// Each drop keeps the session for a window of its own: the timer of an earlier away spell,
/// ended by a resume, does not end the session dropped again since.
#[tokio::test]
async fn a_second_drop_is_kept_for_a_window_of_its_own() {
    let window = Duration::from_millis(3000);
    let server = server(Some("3000")).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    let bob_id = bob.id().to_string();
    drop_connection(&server, &bob).await;
    bob.reconnect(&server, &server.token("bob")).await;
    let resumed = Instant::now();
    assert_eq!(bob.session["recovered"], json!(true));
    server.health_until(|h| h["away"] == json!(0)).await;

    // Dropped again halfway through the window the resume started...
    tokio::time::sleep_until((resumed + window / 2).into()).await;
    drop_connection(&server, &bob).await;
    // ...and back after that window would have run out, inside the second drop's.
    tokio::time::sleep_until((resumed + window * 5 / 4).into()).await;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(
        bob.session["recovered"],
        json!(true),
        "the second window held"
    );
    assert_eq!(bob.id(), bob_id);
    alice.relay(&bob_id, json!({ "n": 1 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(1));
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn an_away_session_that_overflows_is_given_up_at_once() {
    let server = server(None).await; // a 30 s window: the announcement must come long before
    let (mut alice, bob) = support::pair(&server, &server, "call").await;
    let bob_id = bob.id().to_string();
    drop_connection(&server, &bob).await;
    for n in 0..300 {
        alice.relay(&bob_id, json!({ "n": n }));
    }
    let seen = alice.until("user-disconnected").await;
    let departure: Vec<&str> = seen
        .iter()
        .filter(|e| e.data["id"] == json!(bob_id))
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(departure, ["#rtcio:peer-left", "user-disconnected"]);
    let mut bob = bob;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(false));
}

#[tokio::test]
async fn leaving_on_purpose_is_announced_at_once() {
    let server = server(None).await;
    let (mut alice, mut bob) = support::pair(&server, &server, "call").await;
    let (carol, _) = server.joined("carol", "call").await;
    alice.until("#rtcio:init-offer").await;
    bob.until("#rtcio:init-offer").await;

    // A WebSocket close frame (a page closing) and a Socket.IO namespace disconnect
    // (`socket.disconnect()`) are departures, announced well inside the 30 s window.
    let bob_id = bob.id().to_string();
    bob.client.close();
    assert_eq!(departure_heard(&mut alice).await, json!(bob_id));
    let carol_id = carol.id().to_string();
    carol.client.send_raw("41".into());
    assert_eq!(departure_heard(&mut alice).await, json!(carol_id));
    assert_eq!(server.health().await["away"], json!(0));

    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(
        bob.session["recovered"],
        json!(false),
        "a departed session is over"
    );
}

#[tokio::test]
async fn with_recovery_off_a_drop_is_announced_at_once() {
    let server = server(Some("0")).await;
    let (mut alice, bob) = support::pair(&server, &server, "call").await;
    let bob_id = bob.id().to_string();
    bob.client.abort();
    assert_eq!(departure_heard(&mut alice).await, json!(bob_id));
}

/// Cluster mode: a session dropped on one node comes back on another, which asks the old node
/// for it; relays sent while it was away, and while it moved, arrive once and in order.
#[tokio::test]
async fn a_dropped_session_comes_back_on_another_node() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "call").await;
    let bob_id = bob.id().to_string();
    for n in 0..10 {
        alice.relay(&bob_id, json!({ "n": n }));
    }
    expect_relays(&mut bob, &alice, 0..4).await;
    drop_connection(&b, &bob).await;
    for n in 10..20 {
        alice.relay(&bob_id, json!({ "n": n }));
    }
    // More relays race the move itself.
    let token = a.token("bob");
    tokio::join!(bob.reconnect(&a, &token), async {
        for n in 20..60 {
            alice.relay(&bob_id, json!({ "n": n }));
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(bob.session["recovered"], json!(true));
    assert_eq!(bob.id(), bob_id, "the same peer id");
    expect_relays(&mut bob, &alice, 4..60).await;
    bob.assert_nothing_before_probe(&alice).await;
    alice.assert_nothing_before_probe(&bob).await;
    assert_eq!(b.health().await["away"], json!(0));

    // And back again, this time taking over a connection that still looks alive.
    alice.relay(&bob_id, json!({ "n": 60 }));
    expect_relays(&mut bob, &alice, 60..61).await;
    let auth = json!({
        "token": b.token("bob"),
        "resume": bob.session["resume"],
        "received": bob.received,
    });
    let mut bob2 = b.client_with_auth(auth).await;
    assert_eq!(bob2.session["recovered"], json!(true));
    assert_eq!(bob2.id(), bob_id);
    bob.expect_closed().await;
    alice.relay(&bob_id, json!({ "n": 61 }));
    expect_relays(&mut bob2, &alice, 61..62).await;
    alice.assert_nothing_before_probe(&bob2).await;
    bob2.assert_nothing_before_probe(&alice).await;
}

/// Three nodes: a sender on one keeps relaying while its target's session moves between the
/// other two and back. The sending node goes straight to the target's node over their link,
/// so each move must repoint it without a relay lost, repeated or overtaken.
#[tokio::test]
async fn relays_from_a_third_node_follow_a_moving_session_in_order() {
    let redis = Redis::start().await;
    let burst = [("RELAY_BURST", "1000")];
    let (a, b, c) = (
        redis.node_with(&burst).await,
        redis.node_with(&burst).await,
        redis.node_with(&burst).await,
    );
    let (mut alice, mut bob) = support::pair(&a, &b, "call").await;
    let bob_id = bob.id().to_string();
    let (mut sent, mut next) = (0, 0);
    for (from, to, sub) in [(&b, &c, "bob"), (&c, &b, "bob"), (&b, &c, "bob")] {
        for _ in 0..5 {
            alice.relay(&bob_id, json!({ "n": sent }));
            sent += 1;
        }
        // Bob reads a few on the old connection; the rest are replayed or follow him.
        expect_relays(&mut bob, &alice, next..next + 2).await;
        next += 2;
        let token = to.token(sub);
        tokio::join!(bob.reconnect(to, &token), async {
            for _ in 0..40 {
                alice.relay(&bob_id, json!({ "n": sent }));
                sent += 1;
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(bob.session["recovered"], json!(true));
        assert_eq!(bob.id(), bob_id);
        expect_relays(&mut bob, &alice, next..sent).await;
        next = sent;
        // Alice's node was told where bob went: the node he left is not a detour.
        let detours = from.letters_received().await;
        for _ in 0..5 {
            alice.relay(&bob_id, json!({ "n": sent }));
            sent += 1;
        }
        expect_relays(&mut bob, &alice, next..sent).await;
        next = sent;
        assert_eq!(from.letters_received().await, detours);
    }
    bob.assert_nothing_before_probe(&alice).await;
    alice.assert_nothing_before_probe(&bob).await;
}

/// A node that cannot answer a move's sync in time (stalled, say) may still have sent the
/// old node what it routed there before the move: the old node forwards it, and the client
/// gets it once, on its new node.
#[tokio::test]
async fn what_a_stalled_node_sent_before_a_move_follows_the_session() {
    let redis = Redis::start().await;
    let (a, gate) = redis.node_behind_gate().await;
    let (b, c) = (redis.node().await, redis.node().await);
    let (mut alice, _) = a.joined("alice", "call").await;
    let (carol, _) = c.joined("carol", "call").await;
    let (mut dan, _) = c.joined("dan", "call").await;
    // Their arrivals, and then dan's relay, came to alice over the one link from their node.
    dan.relay(alice.id(), json!({ "ready": true }));
    alice.until("#rtcio:message").await;
    assert_eq!(gate.links(), 1, "only carol's node has sent to alice's");
    gate.hold_first();
    carol.emit("chat-message", json!({ "roomId": "call", "n": 1 }));
    // Her node posts to the other nodes before it delivers to its own peers.
    assert_eq!(dan.expect("chat-message").await["n"], json!(1));

    drop_connection(&a, &alice).await;
    alice.reconnect(&b, &b.token("alice")).await;
    assert_eq!(alice.session["recovered"], json!(true));
    gate.open();
    let chat = alice.expect("chat-message").await;
    assert_eq!(
        (chat["n"].clone(), chat["id"].clone()),
        (json!(1), json!(carol.id()))
    );
    alice.assert_nothing_before_probe(&carol).await;
}

/// A node shutting down hands its sessions to an heir but keeps their connections until it
/// exits: what a client still sends there follows its session to the heir, behind the session
/// itself.
#[tokio::test]
async fn what_a_client_sends_to_a_node_it_left_follows_its_session() {
    let redis = Redis::start().await;
    let (heir, gate) = redis.node_behind_gate().await;
    let log = LogFile::new("left");
    let leaving = redis
        .node_logging_to(&[("RUST_LOG", "rtcio_signal=info")], log.stdio())
        .await;
    let (mut alice, bob) = support::pair(&heir, &leaving, "call").await;
    bob.relay(alice.id(), json!({ "n": 0 }));
    expect_relays(&mut alice, &bob, 0..1).await;
    assert_eq!(gate.links(), 1, "bob's node sends to alice's over one link");

    // Its notes to the heir wait at the gate, so its connections outlive the hand-off.
    gate.hold_first();
    leaving.sigterm().await;
    log.until_said("sessions handed to another node").await;
    bob.relay(alice.id(), json!({ "n": 1 }));
    gate.open();
    expect_relays(&mut alice, &bob, 1..2).await;
}

/// A client that connects to a node while it hands its sessions off (it still accepts them
/// until it is done) is handed off too: it comes back on the heir to its own session.
#[tokio::test]
async fn a_client_that_connects_during_a_hand_off_is_handed_off_too() {
    let redis = Redis::start().await;
    let (heir, gate) = redis.node_behind_gate().await;
    let leaving = redis.node().await;
    let (mut alice, bob) = support::pair(&heir, &leaving, "call").await;
    bob.relay(alice.id(), json!({ "n": 0 }));
    expect_relays(&mut alice, &bob, 0..1).await;

    // The heir's link is held, so handing bob off takes a while: carol comes in meanwhile.
    gate.hold_first();
    leaving.sigterm().await;
    support::poll_until(
        support::WAIT,
        Duration::from_millis(10),
        async || match support::http_get(leaving.addr, "/readyz").await {
            (503, _) => Ok(()),
            (status, body) => Err(format!("/readyz {status}: {body}")),
        },
    )
    .await;
    let (mut carol, _) = leaving.joined("carol", "call").await;
    let carol_id = carol.id().to_string();
    gate.open();
    // The node exits once every session is handed off.
    while carol.client.next_event().await.is_some() {}
    carol.reconnect(&heir, &heir.token("carol")).await;
    assert_eq!(carol.session["recovered"], json!(true));
    assert_eq!(carol.id(), carol_id);
}

/// A client that gives up while another node fetches its session for it (the connection gone
/// before its greeting) leaves that session away for its window, like any drop: it is not
/// ended when the greeting is overdue.
#[tokio::test]
async fn a_session_fetched_for_a_client_that_left_stays_away_for_its_window() {
    let redis = Redis::start().await;
    let holder = redis.node().await;
    let (fetcher, gate) = redis.node_behind_gate().await;
    let (mut alice, bob) = support::pair(&holder, &holder, "call").await;
    let (carol, _) = holder.joined("carol", "call").await;
    alice.until("#rtcio:init-offer").await;
    drop_connection(&holder, &bob).await;

    // The session's hand to the fetching node waits at the gate while its client gives up.
    gate.hold_first();
    let auth = json!({
        "token": fetcher.token("bob"),
        "resume": bob.session["resume"],
        "received": bob.received,
    });
    let resuming = tokio::spawn({
        let fetcher_addr = fetcher.addr;
        async move {
            sioclient::Client::connect(sioclient::Options::new(fetcher_addr, Some(auth))).await
        }
    });
    support::poll_until(
        support::WAIT,
        Duration::from_millis(10),
        async || match gate.links() {
            0 => Err("the holder has not opened its link yet".to_string()),
            _ => Ok(()),
        },
    )
    .await;
    resuming.abort();
    let _ = resuming.await;
    gate.open();
    fetcher.health_until(|h| h["away"] == json!(1)).await;

    // Past the greeting's deadline (10 s), well inside the window (30 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    alice.assert_nothing_before_probe(&carol).await;
    assert_eq!(fetcher.health().await["away"], json!(1));
}

/// A node that gave up waiting for a session (3 s) and then gets it ends it, its departure
/// announced: the client already has a fresh session, and no peer is left in a room with a
/// member nobody serves.
#[tokio::test]
async fn a_session_that_arrives_too_late_is_ended_where_it_arrives() {
    let redis = Redis::start().await;
    let holder = redis.node().await;
    let (fetcher, gate) = redis.node_behind_gate().await;
    let (mut alice, mut bob) = support::pair(&holder, &holder, "call").await;
    let (mut dave, _) = fetcher.joined("dave", "call").await;
    let bob_id = bob.id().to_string();
    // The holder's link to the fetching node is open (a link held in its handshake would
    // be dropped instead, and what it carried with it).
    alice.relay(dave.id(), json!({ "n": 0 }));
    expect_relays(&mut dave, &alice, 0..1).await;
    drop_connection(&holder, &bob).await;

    gate.hold_every();
    bob.reconnect(&fetcher, &fetcher.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(false), "given up after 3 s");
    gate.open();
    for peer in [&mut alice, &mut dave] {
        assert_eq!(departure_heard(peer).await, json!(bob_id));
    }
    assert_eq!(fetcher.health().await["away"], json!(0));
}

/// The server's own replies to a client cross nodes with its session like any other event.
#[tokio::test]
async fn a_reply_the_client_missed_follows_it_to_another_node() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "call").await;
    bob.emit("stopScreenShare", json!({ "roomId": "elsewhere" }));
    // Bob's events are handled in order: once alice has his marker, the refusal is his.
    bob.relay(alice.id(), json!({ "marker": true }));
    assert_eq!(
        alice.expect("#rtcio:message").await["data"],
        json!({ "marker": true })
    );
    drop_connection(&b, &bob).await;
    bob.reconnect(&a, &a.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));
    bob.expect_error("not-in-room").await;
    bob.assert_nothing_before_probe(&alice).await;
}

/// Across nodes a credential still opens only its own session: another user's token gets a
/// fresh session and leaves the owner's alone.
#[tokio::test]
async fn another_node_hands_a_session_only_to_its_owner() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "call").await;
    let auth =
        json!({ "token": a.token("mallory"), "resume": bob.session["resume"], "received": 0 });
    let mallory = a.client_with_auth(auth).await;
    assert_eq!(mallory.session["recovered"], json!(false));
    assert_ne!(mallory.id(), bob.id());
    alice.relay(bob.id(), json!({ "n": 0 }));
    expect_relays(&mut bob, &alice, 0..1).await;
    alice.assert_nothing_before_probe(&bob).await;
}

/// A busy session keeps only its last 256 events; losing older ones to the bound while it is
/// away does not make it unrecoverable, as long as its client received them.
#[tokio::test]
async fn a_busy_session_that_drops_is_still_recoverable() {
    let server = server(None).await;
    let (alice, mut bob) = support::pair(&server, &server, "call").await;
    let bob_id = bob.id().to_string();
    for n in 0..300 {
        alice.relay(&bob_id, json!({ "n": n }));
    }
    expect_relays(&mut bob, &alice, 0..300).await;
    drop_connection(&server, &bob).await;
    for n in 300..305 {
        alice.relay(&bob_id, json!({ "n": n }));
    }
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));
    expect_relays(&mut bob, &alice, 300..305).await;
}

/// Waits for the server to close `peer`'s connection; no event may come first.
async fn cut_off(peer: &mut Peer) {
    match tokio::time::timeout(Duration::from_secs(10), peer.client.next_event()).await {
        Ok(None) => {}
        Ok(Some(event)) => panic!(
            "{}: {} {} before the cut",
            peer.id(),
            event.name,
            event.data
        ),
        Err(_) => panic!("{}: still connected", peer.id()),
    }
}

/// A rolling deploy: each node of a two-node cluster is stopped with SIGTERM in turn (a new
/// one started first) under 20 live calls. A stopping node hands its sessions to another; its
/// clients are cut off without a word and come back, with their credentials, to a survivor.
/// Nobody's roster changes, and every relay arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_is_invisible_to_peers() {
    const PAIRS: usize = 20;
    let redis = Redis::start().await;
    let mut a = redis.node().await;
    let mut b = redis.node().await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        pairs.push(support::pair(&a, &b, &format!("call{i}")).await);
    }
    let send = |pairs: &[(Peer, Peer)], from_alice: bool, numbers: std::ops::Range<u64>| {
        for (alice, bob) in pairs {
            let (from, to) = if from_alice {
                (alice, bob)
            } else {
                (bob, alice)
            };
            for n in numbers.clone() {
                from.relay(to.id(), json!({ "n": n }));
            }
        }
    };
    async fn come_back(peer: &mut Peer, to: &Server, sub: &str) {
        let id = peer.id().to_string();
        peer.reconnect(to, &to.token(sub)).await;
        assert_eq!(
            peer.session["recovered"],
            json!(true),
            "{sub} {id} recovered"
        );
        assert_eq!(peer.id(), id);
    }

    send(&pairs, true, 0..5);
    send(&pairs, false, 0..5);
    for (alice, bob) in &mut pairs {
        expect_relays(bob, alice, 0..5).await;
        expect_relays(alice, bob, 0..5).await;
    }

    // Node A goes; bob relays to alice while she is cut off, then she is back on node B.
    a.terminate().await;
    send(&pairs, false, 5..10);
    for (alice, bob) in &mut pairs {
        cut_off(alice).await;
        come_back(alice, &b, "alice").await;
        expect_relays(alice, bob, 5..10).await;
    }
    send(&pairs, true, 5..10);
    for (alice, bob) in &mut pairs {
        expect_relays(bob, alice, 5..10).await;
    }

    // A new node comes up, and node B goes: everyone moves to the new node.
    let a2 = redis.node().await;
    b.terminate().await;
    for (alice, bob) in &mut pairs {
        cut_off(alice).await;
        cut_off(bob).await;
        come_back(alice, &a2, "alice").await;
        come_back(bob, &a2, "bob").await;
    }
    send(&pairs, true, 10..20);
    send(&pairs, false, 10..20);
    for (alice, bob) in &mut pairs {
        expect_relays(bob, alice, 10..20).await;
        expect_relays(alice, bob, 10..20).await;
        bob.assert_nothing_before_probe(alice).await;
        alice.assert_nothing_before_probe(bob).await;
    }
    assert_eq!(a2.health().await["away"], json!(0));
}

/// Three nodes: the one stopping leaves its sessions to one heir. Its two clients come back,
/// one to each survivor, so one of them lands on the node that is not the heir and is sent
/// after its session there (the stopped node's forwarding address in the registry): both are
/// recovered, and their peer hears nothing.
#[tokio::test]
async fn a_session_left_to_an_heir_is_found_from_another_node() {
    let redis = Redis::start().await;
    let mut a = redis.node().await;
    let (b, c) = (redis.node().await, redis.node().await);
    let (mut alice, mut bob) = support::pair(&a, &b, "call").await;
    let (mut carol, _) = a.joined("carol", "call").await;
    bob.until("#rtcio:init-offer").await;
    alice.until("#rtcio:init-offer").await;

    a.terminate().await;
    for (peer, sub, to) in [(&mut alice, "alice", &b), (&mut carol, "carol", &c)] {
        cut_off(peer).await;
        let id = peer.id().to_string();
        peer.reconnect(to, &to.token(sub)).await;
        assert_eq!(
            peer.session["recovered"],
            json!(true),
            "{sub}: {}",
            peer.session
        );
        assert_eq!(peer.id(), id);
    }

    bob.relay(alice.id(), json!({ "n": 1 }));
    bob.relay(carol.id(), json!({ "n": 1 }));
    expect_relays(&mut alice, &bob, 1..2).await;
    expect_relays(&mut carol, &bob, 1..2).await;
    bob.assert_nothing_before_probe(&alice).await;
}
