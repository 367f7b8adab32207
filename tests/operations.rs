//! Operating it: the Prometheus metrics move by exactly what a scripted call does, `/livez`
//! and `/readyz` answer as a load balancer needs (unready on SIGTERM before the drain, and
//! while Redis is away), and `METRICS_ADDR` moves the metrics off the main port.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value as Sampled};
use serde_json::{Value, json};
use support::redis::{Redis, free_port};
use support::{Server, WAIT, departure_heard, drop_connection, http_get, pair};

/// One scrape of `/metrics` at `addr`, parsed by a Prometheus exposition parser.
async fn scrape(addr: SocketAddr) -> Metrics {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Metrics(Scrape::parse(lines).expect("the exposition parses"))
}

struct Metrics(Scrape);

impl Metrics {
    /// The value of `name` with exactly these labels (0 when the series is not there yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && *s.labels == wanted)
            .map(|s| match s.value {
                Sampled::Counter(v) | Sampled::Gauge(v) | Sampled::Untyped(v) => v,
                _ => panic!("{name} is not a single number"),
            })
            .sum()
    }
}

/// How much each series moved between two scrapes.
fn moved(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// Polls `path` until it answers `status`, for at most [`WAIT`]: readiness has no event a
/// client could await.
async fn until_status(addr: SocketAddr, path: &str, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, body) = http_get(addr, path).await;
        if got == status {
            return serde_json::from_str(&body).unwrap_or(Value::Null);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still {got} after {WAIT:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // polling a probe
    }
}

/// A dropped session taken up again counts as resumed, once; one whose window runs out counts
/// as expired, once; the sessions that simply connect count as neither.
#[tokio::test]
async fn metrics_count_resumed_and_expired_sessions() {
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", support::SECRET),
            ("RECOVERY_WINDOW_MS", "1500"),
        ],
    )
    .await;
    let before = scrape(server.addr).await;
    let (mut alice, mut bob) = pair(&server, &server, "kept").await;
    drop_connection(&server, &bob).await;
    bob.reconnect(&server, &server.token("bob")).await;
    assert_eq!(bob.session["recovered"], json!(true));

    // Carol drops after bob is back and never returns: when alice hears her leave, bob's
    // window (counted again from his return) has run out too, with bob connected.
    let (carol, _) = server.joined("carol", "kept").await;
    alice.expect("user-connected").await;
    let carol_id = carol.id().to_string();
    carol.client.abort();
    assert_eq!(departure_heard(&mut alice).await, json!(carol_id));

    let after = scrape(server.addr).await;
    let d = |name: &str| moved(&before, &after, name, &[]);
    assert_eq!(d("rtcio_sessions_resumed_total"), 1.0);
    assert_eq!(d("rtcio_sessions_expired_total"), 1.0);
}

#[tokio::test]
async fn metrics_count_a_scripted_call_exactly() {
    let server = Server::start_with(
        &[],
        // No refill to speak of, however slowly the test runs: the 4th relay is refused.
        &[
            ("JWT_SECRET", support::SECRET),
            ("RELAY_BURST", "3"),
            ("RELAY_RATE", "0.001"),
        ],
    )
    .await;
    let before = scrape(server.addr).await;

    let (mut alice, mut bob) = pair(&server, &server, "metered").await;
    let alice_id = alice.id().to_string();
    let mut relayed_bytes = 0;
    for n in 0..3 {
        bob.relay(&alice_id, json!({ "n": n }));
        let got = alice.expect("#rtcio:message").await;
        relayed_bytes += serde_json::to_string(&got).expect("json").len();
    }
    // Over the burst of 3: dropped and refused.
    bob.relay(&alice_id, json!({ "n": 3 }));
    bob.expect_error("rate-limited").await;
    alice.emit(
        "media-state",
        json!({ "roomId": "metered", "mic": false, "cam": true }),
    );
    bob.expect("media-state").await;
    bob.emit("no-such-event", json!({}));
    bob.expect_error("unknown-event").await;
    assert!(
        server
            .connect_with(Some(json!({ "token": "not-a-token" })))
            .await
            .is_err()
    );

    let after = scrape(server.addr).await;
    let d = |name: &str, labels: &[(&str, &str)]| moved(&before, &after, name, labels);
    assert_eq!(d("rtcio_connections_opened_total", &[]), 2.0);
    assert_eq!(
        d(
            "rtcio_connections_refused_total",
            &[("reason", "invalid-token")]
        ),
        1.0
    );
    let event = |e| d("rtcio_events_received_total", &[("event", e)]);
    assert_eq!(event("join-room"), 2.0);
    assert_eq!(event("#rtcio:message"), 4.0);
    assert_eq!(event("media-state"), 1.0);
    assert_eq!(event("other"), 1.0);
    assert_eq!(event("leave-room"), 0.0);
    assert_eq!(d("rtcio_refusals_total", &[("code", "unknown-event")]), 1.0);
    assert_eq!(d("rtcio_refusals_total", &[("code", "rate-limited")]), 1.0);
    assert_eq!(d("rtcio_rate_limited_total", &[("class", "relay")]), 1.0);
    assert_eq!(d("rtcio_relayed_messages_total", &[]), 3.0);
    assert_eq!(d("rtcio_relayed_bytes_total", &[]), relayed_bytes as f64);
    assert_eq!(d("rtcio_join_seconds_count", &[]), 2.0);
    assert_eq!(d("rtcio_relay_seconds_count", &[]), 3.0);
    assert_eq!(after.value("rtcio_connections", &[]), 2.0);
    assert_eq!(after.value("rtcio_rooms", &[]), 1.0);
    assert_eq!(after.value("rtcio_members", &[]), 2.0);
    assert_eq!(after.value("rtcio_sessions_away", &[]), 0.0);

    bob.client.close();
    alice.until("user-disconnected").await;
    let left = scrape(server.addr).await;
    assert_eq!(left.value("rtcio_connections", &[]), 1.0);
    assert_eq!(left.value("rtcio_members", &[]), 1.0);
}

#[tokio::test]
async fn metrics_addr_moves_them_off_the_main_port() {
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let server = Server::start_with(
        &[],
        &[
            ("JWT_SECRET", support::SECRET),
            ("METRICS_ADDR", &metrics_addr),
        ],
    )
    .await;
    let (_alice, _) = server.joined("alice", "elsewhere").await;
    let (status, _) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 404, "the main port no longer serves /metrics");
    let metrics = scrape(metrics_addr.parse().expect("address")).await;
    assert_eq!(metrics.value("rtcio_connections", &[]), 1.0);
}

#[tokio::test]
async fn readyz_turns_unready_on_sigterm_before_the_drain() {
    let mut server = Server::start_with(
        &[],
        &[("JWT_SECRET", support::SECRET), ("DRAIN_DELAY_MS", "3000")],
    )
    .await;
    let (mut alice, _) = server.joined("alice", "leaving").await;
    assert_eq!(
        until_status(server.addr, "/readyz", 200).await["status"],
        "ready"
    );
    server.sigterm().await;
    let unready = until_status(server.addr, "/readyz", 503).await;
    assert_eq!(unready["reason"], "draining");
    // Still alive and still serving its client while the balancer catches up.
    let (live, _) = http_get(server.addr, "/livez").await;
    assert_eq!(live, 200);
    alice.emit("check-room", json!({ "roomId": "leaving" }));
    alice.expect("room-check-ok").await;
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server exits after the delay and the drain")
        .expect("wait");
    assert!(exit.success());
    alice.expect_closed().await;
}

/// A node that dies with members is counted once, by the survivor that removed them; the
/// survivor's reaps that found every node alive count nothing. A relay between two members
/// of one node stays there: no letter.
#[tokio::test]
async fn metrics_count_a_reaped_node_once_and_no_letter_within_a_node() {
    let redis = Redis::start().await;
    let (mut dying, survivor) = (redis.node().await, redis.node().await);
    let before = scrape(survivor.addr).await;
    let (alice, mut bob) = pair(&survivor, &survivor, "k").await;
    alice.relay(bob.id(), json!({ "n": 1 }));
    assert_eq!(bob.expect("#rtcio:message").await["data"]["n"], json!(1));
    let local = scrape(survivor.addr).await;
    assert_eq!(
        moved(&before, &local, "rtcio_cluster_letters_sent_total", &[]),
        0.0,
        "a relay within one node was sent as a letter"
    );

    let (carol, _) = dying.joined("carol", "k").await;
    let carol_id = carol.id().to_string();
    bob.until("#rtcio:init-offer").await;

    dying.child.start_kill().expect("kill -9");
    assert_eq!(departure_heard(&mut bob).await, json!(carol_id));
    let after = scrape(survivor.addr).await;
    assert_eq!(moved(&before, &after, "rtcio_reaped_nodes_total", &[]), 1.0);
}

#[tokio::test]
async fn readyz_follows_redis_and_cluster_metrics_count_letters() {
    let redis = Redis::start().await;
    let (one, two) = (redis.node().await, redis.node().await);
    assert_eq!(
        until_status(one.addr, "/readyz", 200).await["status"],
        "ready"
    );
    let (before_one, before_two) = (scrape(one.addr).await, scrape(two.addr).await);
    let (mut alice, bob) = pair(&one, &two, "across").await;
    bob.relay(alice.id(), json!({ "sdp": "offer" }));
    alice.expect("#rtcio:message").await;
    let (after_one, after_two) = (scrape(one.addr).await, scrape(two.addr).await);
    let letters = |b, a, name| moved(b, a, name, &[]);
    // Bob's relay is a letter from two to one.
    assert!(letters(&before_two, &after_two, "rtcio_cluster_letters_sent_total") >= 1.0);
    assert!(
        letters(
            &before_one,
            &after_one,
            "rtcio_cluster_letters_received_total"
        ) >= 1.0
    );
    assert_eq!(
        letters(&before_two, &after_two, "rtcio_relayed_messages_total"),
        1.0
    );

    let stopped = redis.shut_down_saving().await;
    let unready = until_status(one.addr, "/readyz", 503).await;
    assert_eq!(unready["reason"], "room state unreachable");
    let (live, _) = http_get(one.addr, "/livez").await;
    assert_eq!(
        live, 200,
        "a Redis outage is no reason to restart the process"
    );
    let _redis = Redis::start_again(stopped).await;
    until_status(one.addr, "/readyz", 200).await;
}
