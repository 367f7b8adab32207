//! Caps on what clients may hold: connections per client address and in all, refused at
//! CONNECT with a clear message while the server goes on answering everyone else.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sioclient::{Client, ConnectError, Options};
use support::{SECRET, Server};

/// Connects from the loopback address `from` (each 127.x.y.z is another client address).
async fn connect_from(server: &Server, from: &str, sub: &str) -> Result<Client, ConnectError> {
    let mut options = Options::new(server.addr, Some(json!({ "token": server.token(sub) })));
    options.bind = Some(from.parse().expect("an address"));
    Client::connect(options).await
}

fn refusal(result: Result<Client, ConnectError>) -> String {
    match result {
        Err(ConnectError::Refused(message)) => message,
        Err(e) => panic!("not refused at CONNECT: {e}"),
        Ok(_) => panic!("connected over the cap"),
    }
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_all() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("MAX_CONNECTIONS_PER_ADDRESS", "2"),
            ("MAX_CONNECTIONS", "3"),
        ],
    )
    .await;
    let first = connect_from(&server, "127.0.0.2", "a")
        .await
        .expect("first");
    let _second = connect_from(&server, "127.0.0.2", "b")
        .await
        .expect("second");
    assert_eq!(
        refusal(connect_from(&server, "127.0.0.2", "c").await),
        "too many connections from your address"
    );
    let _elsewhere = connect_from(&server, "127.0.0.3", "d")
        .await
        .expect("another address");
    assert_eq!(
        refusal(connect_from(&server, "127.0.0.4", "e").await),
        "the server is at its connection limit; try again later"
    );
    assert_eq!(server.health().await["status"], json!("ok"));

    // A connection that goes gives its place back.
    first.close();
    let deadline = Instant::now() + support::WAIT;
    loop {
        match connect_from(&server, "127.0.0.2", "f").await {
            Ok(_) => break,
            Err(ConnectError::Refused(_)) if Instant::now() < deadline => {
                // Polling: the place comes back when the server drops the socket.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the place never came back: {e}"),
        }
    }
}

#[tokio::test]
async fn a_handshake_without_connect_is_closed() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("CONNECT_TIMEOUT_MS", "300"),
            ("PING_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let open = support::http_get_raw(server.addr, "/socket.io/?EIO=4&transport=polling", &[]).await;
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no Engine.IO session: {open}"))
        .to_string();
    // Each poll returns within a ping interval; the session must be gone well before
    // socketioxide's own 45 s.
    let poll = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::http_get_raw(server.addr, &poll, &[])
        .await
        .contains("Session ID unknown")
    {
        assert!(
            Instant::now() < deadline,
            "the half-done handshake is still open"
        );
    }
}

/// A member flooding another with relays is held to its rate, then disconnected; its victim
/// gets no more than the rate lets through and stays in the call.
#[tokio::test]
async fn a_flooder_pays_for_its_flood_and_its_victim_does_not() {
    let log = std::env::temp_dir().join(format!("rtcio-flood-{}.log", std::process::id()));
    let server = Server::start_logging_to(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("RELAY_RATE", "50"),
            ("RELAY_BURST", "100"),
            ("FLOOD_DISCONNECT_MS", "1000"),
        ],
        std::fs::File::create(&log).expect("log file").into(),
    )
    .await;
    let (mut victim, mut mallory) = support::pair(&server, &server, "call").await;
    let mallory_id = mallory.id().to_string();
    let started = Instant::now();
    let mut refused = 0;
    // Mallory floods until the server cuts it off.
    let closed = loop {
        for n in 0..200 {
            mallory.relay(victim.id(), json!({ "n": n }));
        }
        match tokio::time::timeout(Duration::from_millis(200), mallory.client.next_event()).await {
            Ok(None) => break started.elapsed(),
            Ok(Some(event)) => {
                assert_eq!(event.name, "error");
                assert_eq!(event.data["code"], json!("rate-limited"));
                assert!(
                    event.data["retryAfterMs"]
                        .as_u64()
                        .is_some_and(|ms| ms >= 1)
                );
                refused += 1;
            }
            Err(_) => {}
        }
        assert!(
            started.elapsed() < support::WAIT,
            "the flooder was never disconnected"
        );
    };
    assert!(refused > 0);
    // The victim got the burst and the trickle the rate allows, then mallory's departure.
    let seen = victim.until("user-disconnected").await;
    let relays = seen.iter().filter(|e| e.name == "#rtcio:message").count();
    let allowed = 100.0 + 50.0 * closed.as_secs_f64() + 1.0;
    assert!(
        relays >= 100 && relays as f64 <= allowed,
        "{relays} relays in {closed:?}"
    );
    assert_eq!(
        seen.last().expect("departure").data["id"],
        json!(mallory_id)
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("kept flooding over its rate limit") && text.contains("bob"),
        "{text}"
    );
    // Logged (and counted) once, though more of its relays were queued behind the one that
    // got it disconnected.
    assert_eq!(
        text.matches("kept flooding over its rate limit").count(),
        1,
        "{text}"
    );
    let _ = std::fs::remove_file(&log);
    // The victim is still connected and in the room.
    let (carol, _) = server.joined("carol", "call").await;
    victim.expect("user-connected").await;
    victim.expect("#rtcio:init-offer").await;
    victim.assert_nothing_before_probe(&carol).await;
}

/// What a flooder sends a stalled peer: its relays, or chat messages to the room they share.
#[derive(Clone, Copy)]
enum Flood {
    Relays,
    Chat,
}

/// With the rate limits lifted, a member whose relays fill a stalled peer's outgoing queue is
/// the one disconnected; the peer it flooded stays, and gets what its queue held.
#[tokio::test]
async fn an_overflowed_queue_costs_the_sender_not_its_target() {
    overflow_costs_the_sender(Flood::Relays).await;
}

/// The same for a flood of chat messages: an echo names its sender in `id`, not `source`.
#[tokio::test]
async fn a_chat_flood_that_overflows_a_queue_costs_the_sender() {
    overflow_costs_the_sender(Flood::Chat).await;
}

async fn overflow_costs_the_sender(flood: Flood) {
    let log = std::env::temp_dir().join(format!(
        "rtcio-overflow-{}-{}.log",
        std::process::id(),
        matches!(flood, Flood::Chat)
    ));
    let server = Server::start_logging_to(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("RELAY_RATE", "1000000"),
            ("RELAY_BURST", "1000000"),
            ("ECHO_RATE", "1000000"),
            ("ECHO_BURST", "1000000"),
            ("SEND_BYTES_RATE", "1000000000"),
            ("SEND_BYTES_BURST", "1000000000"),
            ("MAX_QUEUED_BYTES", "4000000000"),
        ],
        std::fs::File::create(&log).expect("log file").into(),
    )
    .await;
    let (mut victim, mut mallory) = support::pair(&server, &server, "call").await;
    let (mut carol, _) = server.joined("carol", "call").await;
    victim.until("#rtcio:init-offer").await;
    mallory.until("#rtcio:init-offer").await;
    let mallory_id = mallory.id().to_string();
    victim.client.sender().read(false);
    // 4 KiB each: the kernel's socket buffers fill first, then the server's queue of 4,096.
    let blob = "x".repeat(4096);
    let (event, message) = match flood {
        Flood::Relays => ("#rtcio:message", json!({ "blob": blob })),
        Flood::Chat => ("chat-message", json!({ "roomId": "call", "text": blob })),
    };
    let mut sent = 0;
    let cut_off = loop {
        for _ in 0..500 {
            match flood {
                Flood::Relays => mallory.relay(victim.id(), message.clone()),
                Flood::Chat => mallory.emit(event, message.clone()),
            }
        }
        sent += 500;
        let next = tokio::time::timeout(Duration::from_millis(100), mallory.client.next_event());
        if let Ok(None) = next.await {
            break true;
        }
        if sent >= 40_000 {
            break false;
        }
    };
    assert!(cut_off, "the sender was never disconnected ({sent} sent)");
    // Carol hears mallory leave, not the victim.
    let gone = carol.until("user-disconnected").await;
    assert_eq!(
        gone.last().expect("departure").data["id"],
        json!(mallory_id)
    );
    // The victim drains what was queued, still connected and in the room.
    victim.client.sender().read(true);
    let seen = victim.until("user-disconnected").await;
    assert!(seen.iter().filter(|e| e.name == event).count() > 1000);
    victim.emit("check-room", json!({ "roomId": "call" }));
    victim.until("room-check-ok").await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("overflowed a peer's outgoing queue; disconnecting the sender"),
        "{text}"
    );
    let _ = std::fs::remove_file(&log);
}

/// A flooder that does not read what it is told (its refusals fill its own queue) is cut off
/// all the same, and its departure announced at once: not kept for recovery until its pings
/// fail, and not taken up again.
#[tokio::test]
async fn a_flooder_that_does_not_read_is_still_cut_off() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("RELAY_RATE", "50"),
            ("RELAY_BURST", "100"),
            ("FLOOD_DISCONNECT_MS", "1000"),
        ],
    )
    .await;
    let (mut victim, mut mallory) = support::pair(&server, &server, "call").await;
    let mallory_id = mallory.id().to_string();
    mallory.client.sender().read(false);
    let relay = format!(
        "42{}",
        json!(["#rtcio:message", { "target": victim.id(), "data": {} }])
    );
    // More refusals than the kernel's buffers and the socket's queue of 4,096 hold.
    for _ in 0..200_000 {
        mallory.client.send_raw(relay.clone());
    }
    let seen = victim.until("user-disconnected").await;
    assert_eq!(
        seen.last().expect("departure").data["id"],
        json!(mallory_id)
    );
    assert_eq!(server.health().await["away"], json!(0));
    // Its session is over: coming back, the flooder starts afresh.
    mallory.reconnect(&server, &server.token("bob")).await;
    assert_eq!(mallory.session["recovered"], json!(false));
}

/// A socket that stops reading, with events waiting behind its full queue, is cut off once it
/// has not caught up for 10 s (its pings would take minutes here), and its departure is
/// announced: its queue has no room even for a disconnect packet, yet its session ends, and
/// is not kept for recovery. Its own refusals are what it waits for: only events nobody else
/// sent are kept behind a full queue.
#[tokio::test]
async fn a_socket_that_stops_reading_is_cut_off_when_its_backlog_is_10_s_old() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("RELAY_RATE", "1000000"),
            ("RELAY_BURST", "1000000"),
            ("PING_INTERVAL_MS", "60000"),
            ("PING_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let (mut watcher, slow) = support::pair(&server, &server, "call").await;
    let slow_id = slow.id().to_string();
    slow.client.sender().read(false);
    let refused = format!(
        "42{}",
        json!(["#rtcio:message", { "target": "nobody", "data": {} }])
    );
    let refusals = "rtcio_refusals_total{code=\"unknown-target\"}";
    // Kernel buffers, then the socket's queue of 4,096, then the backlog: in steps well under
    // the backlog's 1,024, each handled before the next, until the backlog has begun. (Once
    // the socket's writes are stuck, the server may stop reading it too: what is left of the
    // last step then waits unread.)
    let mut sent = 0;
    let backlogged = loop {
        for _ in 0..500 {
            slow.client.send_raw(refused.clone());
        }
        sent += 500;
        let mut begun = false;
        support::poll_until(support::WAIT, Duration::from_millis(5), async || {
            begun = server.metric("rtcio_backlogged_sockets").await >= 1.0;
            match server.metric(refusals).await as usize {
                handled if handled >= sent || begun => Ok(()),
                handled => Err(format!("{handled} of {sent} refused")),
            }
        })
        .await;
        if begun {
            break Instant::now();
        }
        assert!(sent < 400_000, "no backlog after {sent} refusals");
    };
    let gone = loop {
        let event = watcher
            .client
            .next_event_within(Duration::from_secs(20))
            .await
            .expect("the slow socket's departure, within 20 s");
        if event.name == "user-disconnected" {
            break event.data["id"].clone();
        }
    };
    let after = backlogged.elapsed();
    assert_eq!(gone, json!(slow_id));
    assert!(
        after >= Duration::from_millis(9_500),
        "cut off {after:?} after its backlog began, before its 10 s"
    );
    assert_eq!(server.health().await["away"], json!(0));
    assert_eq!(server.metric("rtcio_backlogged_sockets").await, 0.0);
}

/// Relays and echoes also spend their bytes: big ones run out before the event count does.
#[tokio::test]
async fn big_relays_are_limited_by_their_bytes() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("SEND_BYTES_BURST", "100000"),
            ("SEND_BYTES_RATE", "1"),
        ],
    )
    .await;
    let (mut victim, mut mallory) = support::pair(&server, &server, "call").await;
    let blob = "x".repeat(40_000);
    for n in 0..3 {
        mallory.relay(victim.id(), json!({ "n": n, "blob": blob }));
    }
    mallory.expect_error("rate-limited").await;
    // A small relay still fits in what is left.
    mallory.relay(victim.id(), json!({ "n": 3 }));
    for n in [0, 1, 3] {
        assert_eq!(victim.expect("#rtcio:message").await["data"]["n"], json!(n));
    }
    victim.assert_nothing_before_probe(&mallory).await;
}

/// Joins, checks and leaves share one bucket per socket: over it a join or a check is refused
/// with `join-error` `rate-limited` naming its room, a leave with `error`, while the socket's
/// echoes, in a bucket of their own, still go through.
#[tokio::test]
async fn room_events_over_their_rate_are_refused_as_room_events() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("ROOM_EVENT_RATE", "0.001"),
            ("ROOM_EVENT_BURST", "2"),
        ],
    )
    .await;
    let (mut bob, _) = server.joined("bob", "a").await;
    let mut alice = server.client("alice").await;
    alice.join("a", "alice");
    alice.until("join-ok").await;
    alice.emit("check-room", json!({ "roomId": "b" }));
    alice.expect("room-check-ok").await;

    alice.join("c", "alice");
    let refused = alice.expect("join-error").await;
    assert_eq!(refused["reason"], json!("rate-limited"), "{refused}");
    assert_eq!(refused["roomId"], json!("c"), "{refused}");
    assert!(refused["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0));
    alice.emit("leave-room", json!({ "roomId": "a" }));
    alice.expect_error("rate-limited").await;

    bob.until("#rtcio:init-offer").await;
    alice.emit(
        "chat-message",
        json!({ "roomId": "a", "text": "still here" }),
    );
    let chat = bob.expect("chat-message").await;
    assert_eq!(chat["id"], json!(alice.id()), "{chat}");
}

/// A member that sends a stalled peer more bytes than may wait for it (`MAX_QUEUED_BYTES`)
/// has what goes over dropped and is told to wait, long before the queue's event count fills;
/// the stalled peer stays connected and gets what was let through, and a third member's
/// small relay still fits.
#[tokio::test]
async fn the_bytes_waiting_for_a_socket_are_capped_at_the_senders_cost() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("RELAY_RATE", "1000000"),
            ("RELAY_BURST", "1000000"),
            ("SEND_BYTES_RATE", "1000000000"),
            ("SEND_BYTES_BURST", "1000000000"),
            ("MAX_QUEUED_BYTES", "1048576"),
        ],
    )
    .await;
    let (mut victim, mut mallory) = support::pair(&server, &server, "call").await;
    let (carol, _) = server.joined("carol", "call").await;
    victim.until("#rtcio:init-offer").await;
    mallory.until("#rtcio:init-offer").await;
    victim.client.sender().read(false);
    let blob = "x".repeat(40_000);
    // Half a MiB may wait at once: 13 of these.
    const SENT: usize = 40;
    for n in 0..SENT {
        mallory.relay(victim.id(), json!({ "n": n, "blob": blob }));
    }
    for _ in 13..SENT {
        let error = mallory.expect("error").await;
        assert_eq!(error["code"], json!("rate-limited"));
        assert_eq!(error["event"], json!("#rtcio:message"));
        assert!(error["retryAfterMs"].as_u64().is_some_and(|ms| ms >= 1));
    }
    carol.relay(victim.id(), json!({ "small": true }));
    victim.client.sender().read(true);
    for n in 0..13 {
        let got = victim.expect("#rtcio:message").await;
        assert_eq!(got["data"]["n"], json!(n));
    }
    let got = victim.expect("#rtcio:message").await;
    assert_eq!(got["source"], json!(carol.id()));
    victim.assert_nothing_before_probe(&mallory).await;
}

#[tokio::test]
async fn a_queue_cap_below_four_events_is_refused_at_start_and_four_are_enough() {
    let stderr = support::refused_start(&[
        ("JWT_SECRET", SECRET),
        ("MAX_PAYLOAD_BYTES", "65536"),
        ("MAX_QUEUED_BYTES", "262143"),
    ])
    .await;
    assert!(
        stderr.contains("MAX_QUEUED_BYTES must be at least 4 times MAX_PAYLOAD_BYTES"),
        "{stderr}"
    );
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            ("MAX_PAYLOAD_BYTES", "65536"),
            ("MAX_QUEUED_BYTES", "262144"),
        ],
    )
    .await;
    let (alice, mut bob) = support::pair(&server, &server, "four-events").await;
    alice.relay(bob.id(), json!({ "hello": true }));
    assert_eq!(
        bob.expect("#rtcio:message").await["data"],
        json!({ "hello": true })
    );
}

#[tokio::test]
async fn a_wrong_password_allowance_of_zero_is_refused_at_start() {
    for setting in [
        "WRONG_PASSWORDS_PER_SOCKET",
        "WRONG_PASSWORDS_PER_USER",
        "WRONG_PASSWORDS_PER_ROOM",
    ] {
        let stderr = support::refused_start(&[("JWT_SECRET", SECRET), (setting, "0")]).await;
        assert!(stderr.contains(setting), "{stderr}");
    }
}

/// A client that goes silent (a half-open connection: nothing read, no pong) is dropped once a
/// ping goes unanswered for PING_INTERVAL_MS + PING_TIMEOUT_MS; its peers hear it leave.
#[tokio::test]
async fn a_half_open_connection_is_dropped_within_the_ping_settings() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", SECRET),
            // Short, yet long enough for a busy test machine to answer the live client's pings.
            ("PING_INTERVAL_MS", "1000"),
            ("PING_TIMEOUT_MS", "1000"),
            ("RECOVERY_WINDOW_MS", "0"),
        ],
    )
    .await;
    let (mut alice, silent) = support::pair(&server, &server, "call").await;
    let silent_id = silent.id().to_string();
    silent.client.sender().read(false);
    // Within the test's wait (10 s); with the default settings it would take 85 s.
    let gone = alice.until("user-disconnected").await;
    assert_eq!(gone.last().expect("departure").data["id"], json!(silent_id));
}
