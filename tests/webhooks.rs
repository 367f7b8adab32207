//! Webhooks: the real server POSTs signed membership events to a receiver running in the
//! test, which checks every signature with the README's scheme (its own HMAC, not the
//! server's code), dedupes by `Webhook-Id` and hands the events over in arrival order.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::redis::Redis;
use support::{SECRET, Server, WAIT};
use tokio::sync::mpsc;

const HOOK_SECRET: &str = "webhook-test-secret-0123456789";

/// The receiver side of the README's scheme: `t=<secs>,v1=<hex HMAC(secret, "t.body")>`,
/// recent, compared in constant time.
fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if support::unix_now().abs_diff(t) > 300 {
        return false;
    }
    let Some(given) = decode_hex(v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One delivery as it arrived.
#[derive(Debug, Clone)]
struct Delivery {
    event: Value,
    signature: String,
    body: String,
}

#[derive(Clone)]
struct Shared {
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Deliveries still to answer with 500.
    failing: Arc<AtomicUsize>,
    /// Deliveries answered 500.
    refused: Arc<AtomicUsize>,
    seen: Arc<Mutex<HashSet<String>>>,
    duplicates: Arc<AtomicUsize>,
}

/// An HTTP receiver on a loopback port.
struct Receiver {
    url: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    shared: Shared,
}

impl Receiver {
    /// Answers the first `failing` deliveries with 500.
    async fn start(failing: usize) -> Receiver {
        let (mut receiver, app) = Receiver::new(failing);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        receiver.url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// A receiver not listening yet, and its routes.
    fn new(failing: usize) -> (Receiver, axum::Router) {
        let (tx, deliveries) = mpsc::unbounded_channel();
        let shared = Shared {
            deliveries: tx,
            failing: Arc::new(AtomicUsize::new(failing)),
            refused: Arc::default(),
            seen: Arc::default(),
            duplicates: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(shared.clone());
        let receiver = Receiver {
            url: String::new(),
            deliveries,
            shared,
        };
        (receiver, app)
    }

    /// The next new event.
    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(WAIT, self.deliveries.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook within {WAIT:?}"))
            .expect("receiver running")
    }

    /// The next new event, which must be `kind` in `room` (about `participant`, if given).
    /// `participant_joined` for each of `peers` (with its user) in `room`, in order; returns
    /// the events' ids.
    async fn expect_joined(&mut self, room: &str, peers: &[(&support::Peer, &str)]) -> Vec<Value> {
        let mut ids = Vec::new();
        for (peer, user) in peers {
            let joined = self
                .expect("participant_joined", room, Some(peer.id()))
                .await;
            assert_eq!(
                joined.event["participant"],
                json!({ "id": peer.id(), "name": user, "userId": user })
            );
            ids.push(joined.event["id"].clone());
        }
        ids
    }

    async fn expect(&mut self, kind: &str, room: &str, participant: Option<&str>) -> Delivery {
        let delivery = self.next().await;
        let event = &delivery.event;
        assert_eq!(
            (event["event"].as_str(), event["roomId"].as_str()),
            (Some(kind), Some(room)),
            "{event}"
        );
        assert!(event["createdAt"].as_u64().is_some(), "{event}");
        match participant {
            Some(id) => assert_eq!(event["participant"]["id"], json!(id), "{event}"),
            None => assert_eq!(event.get("participant"), None, "{event}"),
        }
        delivery
    }

    /// [`Receiver::start`] over TLS, with a certificate for 127.0.0.1 from a private CA made
    /// in `dir`; returns the receiver and the CA's file.
    async fn start_tls(dir: &std::path::Path) -> (Receiver, std::path::PathBuf) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = support::redis::make_certificates(dir);
        let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (mut receiver, app) = Receiver::new(0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        receiver.url = format!("https://{}/hooks", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (receiver, ca)
    }

    fn duplicates(&self) -> usize {
        self.shared.duplicates.load(Ordering::SeqCst)
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    if shared
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let signature = header("webhook-signature");
    assert!(
        verify(HOOK_SECRET, &signature, &body),
        "bad signature {signature:?} for {body}"
    );
    let event: Value = serde_json::from_str(&body).expect("JSON body");
    let id = header("webhook-id");
    assert_eq!(event["id"], json!(id), "Webhook-Id is the event's id");
    if !shared.seen.lock().expect("seen").insert(id) {
        shared.duplicates.fetch_add(1, Ordering::SeqCst);
        return StatusCode::OK;
    }
    let _ = shared.deliveries.send(Delivery {
        event,
        signature,
        body,
    });
    StatusCode::OK
}

fn hook_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_URL", receiver.url.clone()),
        ("WEBHOOK_SECRET", HOOK_SECRET.into()),
    ]
}

async fn single_node(receiver: &Receiver, extra: &[(&str, &str)]) -> Server {
    let env = hook_env(receiver);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("JWT_SECRET", SECRET));
    all.extend_from_slice(extra);
    Server::start_with(&[], &all).await
}

/// A room opened and closed after everything else: its events must come next, so nothing
/// else (no repeat of an earlier event) was still on its way.
async fn nothing_else_pending(server: &Server, receiver: &mut Receiver) {
    let (marker, _) = server.joined("marker", "marker-room").await;
    receiver.expect("room_started", "marker-room", None).await;
    receiver
        .expect("participant_joined", "marker-room", Some(marker.id()))
        .await;
    assert_eq!(receiver.duplicates(), 0, "an event came twice");
}

#[tokio::test]
async fn a_call_is_told_in_order_and_signed() {
    let mut receiver = Receiver::start(0).await;
    let server = single_node(&receiver, &[("RECOVERY_WINDOW_MS", "500")]).await;

    let (alice, _) = server.joined("alice", "w").await;
    let (bob, _) = server.joined("bob", "w").await;
    let (carol, _) = server.joined("carol", "w").await;
    let (dave, _) = server.joined("dave", "w").await;

    let started = receiver.expect("room_started", "w", None).await;
    let mut ids = vec![started.event["id"].clone()];
    let joined = receiver
        .expect_joined(
            "w",
            &[
                (&alice, "alice"),
                (&bob, "bob"),
                (&carol, "carol"),
                (&dave, "dave"),
            ],
        )
        .await;
    ids.extend(joined);
    let distinct: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    assert_eq!(distinct.len(), ids.len(), "ids are unique: {ids:?}");

    // A wrong secret does not verify, nor does a changed body.
    assert!(verify(HOOK_SECRET, &started.signature, &started.body));
    assert!(!verify(
        "another-secret-0123456789",
        &started.signature,
        &started.body
    ));
    assert!(!verify(
        HOOK_SECRET,
        &started.signature,
        &started.body.replace("\"w\"", "\"x\"")
    ));

    // Leaving on purpose, disconnecting, and a drop whose recovery window runs out.
    bob.emit("leave-room", json!({ "roomId": "w" }));
    receiver
        .expect("participant_left", "w", Some(bob.id()))
        .await;
    carol.client.close();
    receiver
        .expect("participant_left", "w", Some(carol.id()))
        .await;
    dave.client.abort();
    receiver
        .expect("participant_left", "w", Some(dave.id()))
        .await;
    alice.emit("leave-room", json!({ "roomId": "w" }));
    receiver
        .expect("participant_left", "w", Some(alice.id()))
        .await;
    receiver.expect("room_finished", "w", None).await;

    nothing_else_pending(&server, &mut receiver).await;
}

/// An https:// receiver whose certificate the system's roots (here `SSL_CERT_FILE`) trust.
#[tokio::test]
async fn webhooks_go_over_https() {
    let dir = std::env::temp_dir().join(format!("rtcio-hooks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut receiver, ca) = Receiver::start_tls(&dir).await;
    let ca = ca.display().to_string();
    let server = single_node(&receiver, &[("SSL_CERT_FILE", &ca)]).await;
    let (alice, _) = server.joined("alice", "t").await;
    receiver.expect("room_started", "t", None).await;
    receiver
        .expect("participant_joined", "t", Some(alice.id()))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn failed_deliveries_are_retried_in_order() {
    let mut receiver = Receiver::start(3).await;
    let server = single_node(&receiver, &[]).await;

    let (mut alice, _) = server.joined("alice", "r").await;
    let (bob, _) = server.joined("bob", "r").await;
    bob.emit("leave-room", json!({ "roomId": "r" }));
    alice.until("#rtcio:peer-left").await;
    alice.client.close();

    receiver.expect("room_started", "r", None).await;
    assert_eq!(receiver.shared.refused.load(Ordering::SeqCst), 3);
    receiver
        .expect("participant_joined", "r", Some(alice.id()))
        .await;
    receiver
        .expect("participant_joined", "r", Some(bob.id()))
        .await;
    receiver
        .expect("participant_left", "r", Some(bob.id()))
        .await;
    receiver
        .expect("participant_left", "r", Some(alice.id()))
        .await;
    receiver.expect("room_finished", "r", None).await;

    nothing_else_pending(&server, &mut receiver).await;
}

/// One node's queue, full while the receiver fails: the oldest events are dropped and the
/// metric counts them.
#[tokio::test]
async fn a_full_queue_counts_what_it_drops() {
    let receiver = Receiver::start(usize::MAX).await;
    let server = single_node(&receiver, &[("WEBHOOK_QUEUE", "2")]).await;
    let (mut alice, _) = server.joined("alice", "q").await;
    let (bob, _) = server.joined("bob", "q").await;
    bob.emit("leave-room", json!({ "roomId": "q" }));
    alice.until("#rtcio:peer-left").await;
    // room_started, two participant_joined, participant_left: four into a queue of two.
    dropped_metric_reaches(&server, 2).await;

    // A second round, after the first was counted: the metric adds only what is new.
    let (carol, _) = server.joined("carol", "q").await;
    carol.emit("leave-room", json!({ "roomId": "q" }));
    alice.until("#rtcio:peer-left").await;
    // participant_joined, participant_left: two more into the still full queue.
    dropped_metric_reaches(&server, 2 + 2).await;
}

/// Polls `server`'s `/metrics` until `rtcio_webhooks_dropped_total` is `count`; drops are
/// looked for every 10 s.
async fn dropped_metric_reaches(server: &Server, count: u64) {
    let within = WAIT + Duration::from_secs(10);
    support::poll_until(within, Duration::from_millis(200), async || {
        let (_, body) = support::http_get(server.addr, "/metrics").await;
        let value = body
            .lines()
            .find_map(|line| line.strip_prefix("rtcio_webhooks_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        match value {
            Some(found) if found == count => Ok(()),
            _ => Err(format!(
                "rtcio_webhooks_dropped_total is {value:?}, not {count}"
            )),
        }
    })
    .await;
}

/// SIGTERM on a single node: every member leaves, the one away after a drop too, and the
/// events are delivered before the process exits.
#[tokio::test]
async fn a_shutdown_delivers_every_departure_first() {
    let mut receiver = Receiver::start(0).await;
    let mut server = single_node(&receiver, &[]).await;
    let (alice, _) = server.joined("alice", "s").await;
    let (bob, _) = server.joined("bob", "s").await;
    receiver.expect("room_started", "s", None).await;
    receiver
        .expect("participant_joined", "s", Some(alice.id()))
        .await;
    receiver
        .expect("participant_joined", "s", Some(bob.id()))
        .await;
    bob.client.abort();
    server.health_until(|h| h["away"] == json!(1)).await;

    server.terminate().await;
    let mut left = HashSet::new();
    for _ in 0..2 {
        let event = receiver.next().await.event;
        assert_eq!(event["event"], json!("participant_left"), "{event}");
        left.insert(event["participant"]["id"].as_str().map(str::to_string));
    }
    let members = HashSet::from([Some(alice.id().to_string()), Some(bob.id().to_string())]);
    assert_eq!(left, members);
    receiver.expect("room_finished", "s", None).await;
    assert_eq!(receiver.duplicates(), 0);
}

#[tokio::test]
async fn a_cluster_sends_each_event_once_in_order() {
    let mut receiver = Receiver::start(0).await;
    let redis = Redis::start().await;
    let env = hook_env(&receiver);
    let settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut a, mut b) = (
        redis.node_with(&settings).await,
        redis.node_with(&settings).await,
    );

    // Members on both nodes join and leave one room, alternating nodes.
    let (alice, _) = a.joined("alice", "c").await;
    let (bob, _) = b.joined("bob", "c").await;
    let (carol, _) = a.joined("carol", "c").await;
    let (dave, _) = b.joined("dave", "c").await;
    carol.emit("leave-room", json!({ "roomId": "c" }));
    receiver.expect("room_started", "c", None).await;
    receiver
        .expect_joined(
            "c",
            &[
                (&alice, "alice"),
                (&bob, "bob"),
                (&carol, "carol"),
                (&dave, "dave"),
            ],
        )
        .await;
    receiver
        .expect("participant_left", "c", Some(carol.id()))
        .await;
    dave.client.close();
    receiver
        .expect("participant_left", "c", Some(dave.id()))
        .await;
    assert_eq!(receiver.duplicates(), 0);

    // The sending node is killed with its member in the room: the other node reaps that
    // member and takes the sending over once the lease lapses. (A node killed between a POST
    // and its removal from the list may send that one event again; the receiver dedupes it
    // by id.)
    let mut conn = redis.connection().await.expect("redis");
    let sender: String = redis::cmd("GET")
        .arg("rtcio:webhooks:sender")
        .query_async(&mut conn)
        .await
        .expect("a node holds the lease");
    // A resume credential is `<peer>.<node>.<secret>`.
    let node_of = |peer: &support::Peer| {
        let resume = peer.session["resume"].as_str().expect("resume");
        resume.split('.').nth(1).expect("node").to_string()
    };
    let (killed, (gone, staying), survivor) = if sender == node_of(&alice) {
        (&mut a, (&alice, &bob), &b)
    } else {
        assert_eq!(sender, node_of(&bob), "the lease names a node");
        (&mut b, (&bob, &alice), &a)
    };
    killed.child.start_kill().expect("kill -9");
    killed.child.wait().await.expect("reaped");
    receiver
        .expect("participant_left", "c", Some(gone.id()))
        .await;
    staying.emit("leave-room", json!({ "roomId": "c" }));
    receiver
        .expect("participant_left", "c", Some(staying.id()))
        .await;
    receiver.expect("room_finished", "c", None).await;

    let (marker, _) = survivor.joined("marker", "marker-room").await;
    receiver.expect("room_started", "marker-room", None).await;
    receiver
        .expect("participant_joined", "marker-room", Some(marker.id()))
        .await;
}

/// A receiver that keeps failing while more events come than `WEBHOOK_QUEUE` allows: the
/// list in Redis keeps the newest, counts the dropped, and delivers what it kept in order.
#[tokio::test]
async fn a_full_list_in_redis_drops_its_oldest_and_counts_them() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let redis = Redis::start().await;
    let env = hook_env(&receiver);
    let mut settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.push(("WEBHOOK_QUEUE", "2"));
    let node = redis.node_with(&settings).await;
    let mut conn = redis.connection().await.expect("redis");
    // The node reports drops from when it holds the delivery lease.
    support::poll_until(WAIT, Duration::from_millis(20), async || {
        let sender: Option<String> = redis::cmd("GET")
            .arg("rtcio:webhooks:sender")
            .query_async(&mut conn)
            .await
            .expect("GET");
        sender
            .map(drop)
            .ok_or_else(|| "no lease holder".to_string())
    })
    .await;

    let (mut alice, _) = node.joined("alice", "q").await;
    let (bob, _) = node.joined("bob", "q").await;
    bob.emit("leave-room", json!({ "roomId": "q" }));
    alice.until("#rtcio:peer-left").await;

    let kept: Vec<String> = redis::cmd("LRANGE")
        .arg("rtcio:webhooks")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE");
    let kept: Vec<Value> = kept
        .iter()
        .map(|body| serde_json::from_str(body).expect("JSON"))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0]["event"], json!("participant_joined"));
    assert_eq!(kept[0]["participant"]["id"], json!(bob.id()));
    assert_eq!(kept[1]["event"], json!("participant_left"));
    let dropped: u64 = redis::cmd("GET")
        .arg("rtcio:webhooks:dropped")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(dropped, 2);
    dropped_metric_reaches(&node, 2).await;

    // The receiver recovers. The event the sender was retrying (the room's first, if it had
    // started before the list filled) goes out, then what the list kept, in order.
    receiver.shared.failing.store(0, Ordering::SeqCst);
    let mut first = receiver.next().await;
    if first.event["event"] == json!("room_started") {
        first = receiver.next().await;
    }
    assert_eq!(first.event, kept[0]);
    assert_eq!(receiver.next().await.event, kept[1]);
    alice.emit("leave-room", json!({ "roomId": "q" }));
    receiver
        .expect("participant_left", "q", Some(alice.id()))
        .await;
    receiver.expect("room_finished", "q", None).await;
}

#[tokio::test]
async fn a_webhook_url_without_a_secret_is_refused_at_start() {
    let stderr = support::refused_start(&[
        ("JWT_SECRET", SECRET),
        ("WEBHOOK_URL", "http://127.0.0.1:9/hooks"),
    ])
    .await;
    assert!(
        stderr.contains("WEBHOOK_URL is set but WEBHOOK_SECRET is not"),
        "{stderr}"
    );
    let stderr = support::refused_start(&[
        ("JWT_SECRET", SECRET),
        ("WEBHOOK_URL", "ftp://127.0.0.1/hooks"),
        ("WEBHOOK_SECRET", HOOK_SECRET),
    ])
    .await;
    assert!(stderr.contains("http:// or https://"), "{stderr}");
    assert!(!stderr.contains(HOOK_SECRET), "{stderr}");
}
