//! Every row of the wire contract, driven by real Socket.IO clients over loopback TCP.

mod support;

use serde_json::json;
use support::{Server, http_get};

#[tokio::test]
async fn two_clients_set_up_a_call() {
    let server = Server::start().await;
    let (mut alice, backfill) = server.joined("alice", "call").await;
    assert_eq!(
        backfill.len(),
        1,
        "first member gets only join-ok: {backfill:?}"
    );
    assert_eq!(backfill[0].data, json!({ "roomId": "call" }));

    let mut bob = server.client("bob").await;
    bob.join("call", "bob");
    let seen = bob.expect("user-connected").await;
    assert_eq!(
        seen,
        json!({ "id": alice.id(), "name": "alice", "userId": "alice" })
    );
    assert_eq!(bob.expect("join-ok").await, json!({ "roomId": "call" }));

    let hello = alice.expect("user-connected").await;
    assert_eq!(
        hello,
        json!({ "id": bob.id(), "name": "bob", "userId": "bob" })
    );
    assert_eq!(
        alice.expect("#rtcio:init-offer").await,
        json!({ "source": bob.id() })
    );

    // Alice (the existing, polite peer) offers; Bob answers; candidates trickle both ways.
    let offer =
        json!({ "description": { "type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" } });
    alice.relay(bob.id(), offer.clone());
    let got = bob.expect("#rtcio:message").await;
    assert_eq!(
        got["source"],
        json!(alice.id()),
        "source is stamped by the server"
    );
    assert_eq!(got["target"], json!(bob.id()));
    assert_eq!(got["data"], offer);

    let answer = json!({ "description": { "type": "answer", "sdp": "v=0\r\n" } });
    bob.relay(alice.id(), answer.clone());
    let got = alice.expect("#rtcio:message").await;
    assert_eq!(
        (got["source"].clone(), got["data"].clone()),
        (json!(bob.id()), answer)
    );

    for i in 0..50 {
        let candidate = json!({ "candidate": { "candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 {i} typ host"), "sdpMid": "0", "sdpMLineIndex": 0 } });
        alice.relay(bob.id(), candidate);
    }
    alice.relay(bob.id(), json!({ "candidate": { "candidate": "" } }));
    for i in 0..50 {
        let got = bob.expect("#rtcio:message").await;
        let text = got["data"]["candidate"]["candidate"]
            .as_str()
            .unwrap_or_default();
        assert!(
            text.starts_with(&format!("candidate:{i} ")),
            "candidate {i} out of order: {text}"
        );
    }
    let end = bob.expect("#rtcio:message").await;
    assert_eq!(end["data"], json!({ "candidate": { "candidate": "" } }));
}

#[tokio::test]
async fn media_state_is_echoed_cached_and_backfilled() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "m").await;

    alice.emit(
        "media-state",
        json!({ "roomId": "m", "mic": false, "cam": true, "id": "forged", "extra": "kept" }),
    );
    let echo = bob.expect("media-state").await;
    assert_eq!(
        echo,
        json!({ "roomId": "m", "mic": false, "cam": true, "id": alice.id(), "extra": "kept" })
    );

    let mut carol = server.client("carol").await;
    carol.join("m", "carol");
    let backfill = carol.until("join-ok").await;
    let names: Vec<&str> = backfill.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["user-connected", "media-state", "user-connected", "join-ok"]
    );
    assert_eq!(backfill[0].data["id"], json!(alice.id()));
    assert_eq!(
        backfill[1].data,
        json!({ "id": alice.id(), "roomId": "m", "mic": false, "cam": true })
    );
    assert_eq!(backfill[2].data["id"], json!(bob.id()));

    // The sender never hears its own echo.
    alice.until("#rtcio:init-offer").await;
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn stop_screen_share_is_echoed_to_the_others() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "s").await;
    alice.emit("stopScreenShare", json!({ "roomId": "s", "trackId": "t1" }));
    let echo = bob.expect("stopScreenShare").await;
    assert_eq!(
        echo,
        json!({ "roomId": "s", "trackId": "t1", "id": alice.id() })
    );
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn leaving_and_disconnecting_are_announced_exactly_once() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "one").await;

    bob.emit("leave-room", json!({ "roomId": "one" }));
    assert_eq!(
        alice.expect("#rtcio:peer-left").await,
        json!({ "id": bob.id() })
    );
    assert_eq!(
        alice.expect("user-disconnected").await,
        json!({ "id": bob.id() })
    );
    // Leaving twice is an error for the leaver and no news for anyone.
    bob.emit("leave-room", json!({ "roomId": "one" }));
    let err = bob.expect("error").await;
    assert_eq!(
        (err["event"].clone(), err["code"].clone()),
        (json!("leave-room"), json!("not-in-room"))
    );

    // A socket in two rooms: both rooms hear its disconnect once.
    let (mut carol, _) = server.joined("carol", "one").await;
    alice.until("#rtcio:init-offer").await;
    let (mut dave, _) = server.joined("dave", "two").await;
    carol.join("two", "carol");
    carol.until("join-ok").await;
    dave.until("#rtcio:init-offer").await;
    carol.client.close();
    for peer in [&mut alice, &mut dave] {
        assert_eq!(
            peer.expect("#rtcio:peer-left").await["id"],
            json!(carol.id())
        );
        assert_eq!(
            peer.expect("user-disconnected").await["id"],
            json!(carol.id())
        );
    }
    // Nothing more about carol: alice and dave share no room, so bob probes alice after
    // rejoining, and dave's room gets a fresh member to probe from.
    bob.join("one", "bob");
    bob.until("join-ok").await;
    assert_eq!(alice.expect("user-connected").await["id"], json!(bob.id()));
    alice.expect("#rtcio:init-offer").await;
    alice.assert_nothing_before_probe(&bob).await;
    let (erin, _) = server.joined("erin", "two").await;
    dave.until("#rtcio:init-offer").await;
    dave.assert_nothing_before_probe(&erin).await;

    // Empty rooms leave nothing behind.
    drop((alice, bob, dave, erin));
    server
        .health_until(|h| h["rooms"] == json!(0) && h["connections"] == json!(0))
        .await;
}

#[tokio::test]
async fn joining_twice_changes_nothing_for_the_others() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "r").await;
    bob.join("r", "bob");
    assert_eq!(bob.expect("join-ok").await, json!({ "roomId": "r" }));
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn relays_and_echoes_stay_inside_shared_rooms() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "a").await;
    let (mut mallory, _) = server.joined("mallory", "elsewhere").await;

    mallory.relay(
        alice.id(),
        json!({ "description": { "type": "offer", "sdp": "x" } }),
    );
    mallory.expect_error("unknown-target").await;
    mallory.relay("not-a-socket-id", json!({}));
    mallory.expect_error("unknown-target").await;
    mallory.relay(mallory.id(), json!({}));
    mallory.expect_error("unknown-target").await;

    mallory.emit(
        "media-state",
        json!({ "roomId": "a", "mic": true, "cam": true }),
    );
    let err = mallory.expect("error").await;
    assert_eq!(
        err,
        json!({ "event": "media-state", "code": "not-in-room", "message": err["message"] })
    );
    mallory.emit("stopScreenShare", json!({ "roomId": "a" }));
    mallory.expect_error("not-in-room").await;
    // A room named like a socket's delivery room reaches nobody else.
    mallory.join(&format!("s:{}", alice.id()), "m");
    mallory.until("join-ok").await;

    alice.assert_nothing_before_probe(&bob).await;
    bob.assert_nothing_before_probe(&alice).await;

    // Once mallory's socket has left, its id is just a string.
    let gone = bob.id().to_string();
    bob.client.close();
    alice.until("user-disconnected").await;
    alice.relay(&gone, json!({}));
    alice.expect_error("unknown-target").await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = Server::start().await;
    let (mut alice, mut bob) = support::pair(&server, &server, "b").await;

    let long_room = "x".repeat(129);
    let cases = [
        (json!({ "roomId": long_room, "name": "b" }), "invalid-room"),
        (json!({ "roomId": 5, "name": "b" }), "invalid-room"),
        (json!({ "name": "b" }), "invalid-room"),
        (json!({ "roomId": "" }), "invalid-room"),
        (json!({ "roomId": "a\u{0007}b" }), "invalid-room"),
        (json!({ "roomId": "b", "name": 7 }), "invalid-name"),
        (
            json!({ "roomId": "b", "name": "n".repeat(65) }),
            "invalid-name",
        ),
        (json!("b"), "invalid-payload"),
        (json!(null), "invalid-payload"),
    ];
    for (payload, reason) in cases {
        bob.emit("join-room", payload.clone());
        let err = bob.expect("join-error").await;
        assert_eq!(err["reason"], json!(reason), "join-room {payload}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let err = {
        bob.emit("join-room", json!({ "roomId": long_room }));
        bob.expect("join-error").await
    };
    assert_eq!(
        err["roomId"].as_str().map(str::len),
        Some(128),
        "roomId echoed, capped"
    );

    let cases = [
        (
            "media-state",
            json!({ "roomId": "b", "mic": "on", "cam": true }),
        ),
        ("media-state", json!({ "roomId": "b" })),
        ("media-state", json!([1, 2])),
        ("stopScreenShare", json!(42)),
        ("leave-room", json!({})),
        ("#rtcio:message", json!({ "target": alice.id() })),
        ("#rtcio:message", json!({ "target": 5, "data": {} })),
        ("#rtcio:message", json!("hello")),
    ];
    for (event, payload) in cases {
        bob.emit(event, payload.clone());
        let err = bob.expect("error").await;
        assert_eq!(err["event"], json!(event), "{event} {payload}: {err}");
        assert!(
            ["invalid-payload", "invalid-room"].contains(&err["code"].as_str().unwrap_or("")),
            "{event} {payload}: {err}"
        );
    }
    // Missing payload, unknown event.
    bob.client.send_raw(r#"42["media-state"]"#.into());
    bob.expect_error("invalid-payload").await;
    bob.emit("no-such-event", json!({}));
    bob.expect_error("unknown-event").await;

    // Frames that are not Socket.IO packets at all close that connection (as Node does) and
    // nobody else's.
    for garbage in ["42[1,2]", "42{not json", "4x", ""] {
        let mut vandal = server.client("vandal").await;
        vandal.client.send_raw(garbage.into());
        vandal.expect_closed().await;
    }

    // An event over the 64 KiB cap.
    let sdp = "a".repeat(70_000);
    bob.relay(
        alice.id(),
        json!({ "description": { "type": "offer", "sdp": sdp } }),
    );
    let err = bob.expect("error").await;
    assert_eq!(
        (err["event"].clone(), err["code"].clone()),
        (json!("#rtcio:message"), json!("payload-too-large"))
    );

    // The cap counts the event as sent (`["#rtcio:message",{…}]`): at it, the relay goes
    // through; one byte over, it is refused.
    let target = alice.id().to_string();
    let relay_of = |bytes: usize| {
        let empty = json!({ "target": target, "data": { "pad": "" } });
        let base = serde_json::to_string(&("#rtcio:message", &empty))
            .expect("json")
            .len();
        json!({ "target": target, "data": { "pad": "a".repeat(bytes - base) } })
    };
    let at_cap = relay_of(65_536);
    bob.emit("#rtcio:message", at_cap.clone());
    assert_eq!(alice.expect("#rtcio:message").await["data"], at_cap["data"]);
    bob.emit("#rtcio:message", relay_of(65_537));
    bob.expect_error("payload-too-large").await;

    // Both still work, and alice saw nothing else.
    alice.assert_nothing_before_probe(&bob).await;
    bob.assert_nothing_before_probe(&alice).await;
    let (status, _) = http_get(server.addr, "/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_full_room_refuses_the_next_member() {
    let server = Server::start_with(
        &["--max-peers-per-room", "2"],
        &[("JWT_SECRET", support::SECRET)],
    )
    .await;
    let (mut alice, bob) = support::pair(&server, &server, "small").await;
    let mut carol = server.client("carol").await;
    carol.join("small", "carol");
    let err = carol.expect("join-error").await;
    assert_eq!(
        (err["roomId"].clone(), err["reason"].clone()),
        (json!("small"), json!("room-full"))
    );
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn a_socket_joins_no_more_rooms_than_its_limit() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", support::SECRET),
            ("MAX_ROOMS_PER_SOCKET", "3"),
        ],
    )
    .await;
    let mut alice = server.client("alice").await;
    for room in ["r0", "r1", "r2"] {
        alice.join(room, "alice");
        assert_eq!(alice.expect("join-ok").await, json!({ "roomId": room }));
    }
    alice.join("r3", "alice");
    let refused = alice.expect("join-error").await;
    assert_eq!(
        (refused["roomId"].clone(), refused["reason"].clone()),
        (json!("r3"), json!("too-many-rooms"))
    );
    // A room it is already in is no new room.
    alice.join("r1", "alice");
    assert_eq!(alice.expect("join-ok").await, json!({ "roomId": "r1" }));
    // Leaving one makes room for another.
    alice.emit("leave-room", json!({ "roomId": "r0" }));
    alice.join("r3", "alice");
    assert_eq!(alice.expect("join-ok").await, json!({ "roomId": "r3" }));
    assert_eq!(server.health().await["rooms"], json!(3));
}
