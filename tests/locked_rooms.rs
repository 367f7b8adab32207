//! Rooms with passwords, `check-room` and `chat-message` (the rtc.io production example's
//! events). Every scenario runs twice: on one server, and with its two sides on two cluster
//! nodes sharing a real `redis-server`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::redis::Redis;
use support::{Peer, SECRET, Server};

#[derive(Clone, Copy)]
enum Mode {
    Single,
    Cluster,
}

/// Where a scenario's clients connect: side `a` and side `b` are one server, or two nodes.
struct Setup {
    a: Server,
    b: Option<Server>,
    /// Kept running for the nodes; stopped with the setup.
    _redis: Option<Redis>,
}

impl Setup {
    async fn new(mode: Mode, settings: &[(&str, &str)]) -> Setup {
        let mut env = vec![("JWT_SECRET", SECRET)];
        env.extend_from_slice(settings);
        match mode {
            Mode::Single => Setup {
                a: Server::start_with(&[], &env).await,
                b: None,
                _redis: None,
            },
            Mode::Cluster => {
                let redis = Redis::start().await;
                let url = redis.url();
                env.push(("REDIS_URL", &url));
                Setup {
                    a: Server::start_with(&[], &env).await,
                    b: Some(Server::start_with(&[], &env).await),
                    _redis: Some(redis),
                }
            }
        }
    }

    fn a(&self) -> &Server {
        &self.a
    }

    fn b(&self) -> &Server {
        self.b.as_ref().unwrap_or(&self.a)
    }
}

/// Runs each scenario on one server and on two cluster nodes, as two tests.
macro_rules! single_and_cluster {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn single_node() {
                super::$scenario(super::Mode::Single).await
            }

            #[tokio::test]
            async fn two_nodes() {
                super::$scenario(super::Mode::Cluster).await
            }
        }
    )*};
}

single_and_cluster!(
    a_password_locks_a_room_until_it_empties,
    parallel_guessers_share_the_limits,
    simultaneous_first_joins_agree_on_one_password,
    wrong_passwords_cost_the_guesser_not_the_room,
    chat_reaches_the_other_members_only,
);

fn join(peer: &Peer, room: &str, password: Option<&str>) {
    let mut payload = json!({ "roomId": room, "name": peer.id() });
    if let Some(password) = password {
        payload["password"] = json!(password);
    }
    peer.emit("join-room", payload);
}

fn check(peer: &Peer, room: &str, password: Option<&str>) {
    let mut payload = json!({ "roomId": room });
    if let Some(password) = password {
        payload["password"] = json!(password);
    }
    peer.emit("check-room", payload);
}

async fn expect_refusal(peer: &mut Peer, room: &str, reason: &str) -> Value {
    let reply = peer.expect("join-error").await;
    assert_eq!(reply["reason"], json!(reason), "{reply}");
    assert_eq!(reply["roomId"], json!(room), "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    reply
}

async fn expect_check_ok(peer: &mut Peer, room: &str, password_required: bool) {
    let reply = peer.expect("room-check-ok").await;
    assert_eq!(
        reply,
        json!({ "roomId": room, "passwordRequired": password_required })
    );
}

/// A client on `server` that has sealed the empty `room` with `password`.
async fn first_in(server: &Server, sub: &str, room: &str, password: &str) -> Peer {
    let mut peer = server.client(sub).await;
    join(&peer, room, Some(password));
    assert_eq!(peer.expect("join-ok").await, json!({ "roomId": room }));
    peer
}

async fn a_password_locks_a_room_until_it_empties(mode: Mode) {
    let s = Setup::new(mode, &[("MAX_PEERS_PER_ROOM", "3")]).await;
    let (room, password) = ("locked", "pw-7f3a91c2e5");
    // The first joiner's password is trimmed.
    let mut alice = first_in(s.a(), "alice", room, &format!("  {password}\t")).await;

    let mut carol = s.b().client("carol").await;
    check(&carol, room, None);
    expect_refusal(&mut carol, room, "password-required").await;
    check(&carol, room, Some("   "));
    expect_refusal(&mut carol, room, "password-required").await;
    check(&carol, room, Some("pw-wrong"));
    expect_refusal(&mut carol, room, "wrong-password").await;
    check(&carol, room, Some(password));
    expect_check_ok(&mut carol, room, true).await;
    check(&carol, "nobody-here", Some("anything"));
    expect_check_ok(&mut carol, "nobody-here", false).await;
    // Checking changed nothing: carol is not a member, and no lock was set.
    carol.emit(
        "media-state",
        json!({ "roomId": room, "mic": true, "cam": true }),
    );
    carol.expect_error("not-in-room").await;
    check(&carol, "nobody-here", None);
    expect_check_ok(&mut carol, "nobody-here", false).await;

    let mut bob = s.b().client("bob").await;
    join(&bob, room, None);
    expect_refusal(&mut bob, room, "password-required").await;
    join(&bob, room, Some("pw-also-wrong"));
    expect_refusal(&mut bob, room, "wrong-password").await;
    join(&bob, room, Some(&format!(" {password} ")));
    assert_eq!(bob.expect("user-connected").await["id"], json!(alice.id()));
    assert_eq!(bob.expect("join-ok").await, json!({ "roomId": room }));
    assert_eq!(alice.expect("user-connected").await["id"], json!(bob.id()));
    alice.expect("#rtcio:init-offer").await;
    // Nothing of the refused attempts reached the member.
    alice.assert_nothing_before_probe(&bob).await;
    // A member checking its own room is told it is locked, without giving the password.
    check(&alice, room, None);
    expect_check_ok(&mut alice, room, true).await;
    let mut grace = s.b().client("grace").await;
    join(&grace, "open-room", None);
    grace.until("join-ok").await;
    check(&grace, "open-room", None);
    expect_check_ok(&mut grace, "open-room", false).await;

    let mut dave = s.a().client("dave").await;
    join(&dave, room, Some(password));
    dave.until("join-ok").await;
    let mut erin = s.b().client("erin").await;
    check(&erin, room, Some(password));
    expect_refusal(&mut erin, room, "room-full").await;
    join(&erin, room, Some(password));
    expect_refusal(&mut erin, room, "room-full").await;

    // Emptied, the room forgets its password: the next first joiner sets a new one.
    for peer in [&dave, &bob] {
        peer.emit("leave-room", json!({ "roomId": room }));
    }
    for _ in 0..2 {
        alice.until("user-disconnected").await;
    }
    alice.emit("leave-room", json!({ "roomId": room }));
    // alice's events are handled in order: this answer comes after her leave.
    check(&alice, room, None);
    let reply = alice
        .until("room-check-ok")
        .await
        .pop()
        .expect("reply")
        .data;
    assert_eq!(reply, json!({ "roomId": room, "passwordRequired": false }));
    let _frank = first_in(s.b(), "frank", room, "pw-second-lock").await;
    join(&erin, room, Some(password));
    expect_refusal(&mut erin, room, "wrong-password").await;
    join(&erin, room, Some("pw-second-lock"));
    erin.until("join-ok").await;
}

async fn simultaneous_first_joins_agree_on_one_password(mode: Mode) {
    let s = Setup::new(mode, &[]).await;
    for round in 0..10 {
        let room = format!("race-{round}");
        let mut x = s.a().client("x").await;
        let mut y = s.b().client("y").await;
        let (x_password, y_password) = (format!("pw-x-{round}"), format!("pw-y-{round}"));
        join(&x, &room, Some(&x_password));
        join(&y, &room, Some(&y_password));
        let (x_reply, y_reply) = (x.next().await, y.next().await);
        let (mut winner, winning, mut loser, loss) =
            match (x_reply.name.as_str(), y_reply.name.as_str()) {
                ("join-ok", "join-error") => (x, x_password, y, y_reply),
                ("join-error", "join-ok") => (y, y_password, x, x_reply),
                other => panic!("round {round}: exactly one must get in, got {other:?}"),
            };
        assert_eq!(
            loss.data["reason"],
            json!("wrong-password"),
            "{}",
            loss.data
        );
        // The loser agrees with the winner's password.
        join(&loser, &room, Some(&winning));
        assert_eq!(
            loser.expect("user-connected").await["id"],
            json!(winner.id())
        );
        loser.expect("join-ok").await;
        assert_eq!(
            winner.expect("user-connected").await["id"],
            json!(loser.id())
        );
        winner.expect("#rtcio:init-offer").await;
    }
}

async fn wrong_passwords_cost_the_guesser_not_the_room(mode: Mode) {
    let window_ms: u64 = 4000;
    let window = window_ms.to_string();
    let s = Setup::new(
        mode,
        &[
            ("WRONG_PASSWORDS_PER_SOCKET", "3"),
            ("WRONG_PASSWORDS_PER_USER", "2"),
            ("WRONG_PASSWORDS_PER_ROOM", "4"),
            ("WRONG_PASSWORD_WINDOW_MS", &window),
        ],
    )
    .await;
    let mut alice = first_in(s.a(), "alice", "vault", "pw-vault").await;
    let bob = s.b().client("bob").await;
    join(&bob, "vault", Some("pw-vault"));
    let _zed = first_in(s.a(), "zed", "safe", "pw-safe").await;
    alice.until("#rtcio:init-offer").await;
    // Everyone connects first, so that the steps below fit well inside one window.
    let mut guesser = s.b().client("guesser").await;
    let mut guesser_again = s.a().client("guesser").await;
    let mut other = s.a().client("other").await;
    let mut another = s.b().client("another").await;
    let mut newcomer = s.b().client("newcomer").await;
    let mut latecomer = s.a().client("latecomer").await;

    // One user on one room: two wrong, then it waits, whatever it sends.
    for attempt in 0..2 {
        if attempt == 1 {
            check(&guesser, "vault", Some("pw-guess"));
        } else {
            join(&guesser, "vault", Some("pw-guess"));
        }
        expect_refusal(&mut guesser, "vault", "wrong-password").await;
    }
    join(&guesser, "vault", Some("pw-vault"));
    let limited = expect_refusal(&mut guesser, "vault", "rate-limited").await;
    assert_retry_within(&limited, window_ms);
    // ... from its other sockets too, on the other side.
    join(&guesser_again, "vault", Some("pw-vault"));
    expect_refusal(&mut guesser_again, "vault", "rate-limited").await;
    // One socket: a third wrong password (another room's), then even that room's right one
    // is refused.
    join(&guesser, "safe", Some("pw-guess"));
    expect_refusal(&mut guesser, "safe", "wrong-password").await;
    join(&guesser, "safe", Some("pw-safe"));
    let limited = expect_refusal(&mut guesser, "safe", "rate-limited").await;
    assert_retry_within(&limited, window_ms);
    // Open rooms need no password, so nothing limits them.
    join(&guesser, "open", None);
    guesser.expect("join-ok").await;

    // The room: two more users fill its allowance of four; one of them then waits.
    join(&other, "vault", Some("pw-guess-2"));
    expect_refusal(&mut other, "vault", "wrong-password").await;
    join(&another, "vault", Some("pw-guess-3"));
    expect_refusal(&mut another, "vault", "wrong-password").await;
    join(&other, "vault", Some("pw-vault"));
    let limited = expect_refusal(&mut other, "vault", "rate-limited").await;
    let wait = assert_retry_within(&limited, window_ms);
    // But a user who has not guessed wrong there may still try: the right password gets in,
    // so no guesser can lock a call's members-to-be out; a wrong one is its only try.
    join(&newcomer, "vault", Some("pw-vault"));
    newcomer.until("join-ok").await;
    check(&latecomer, "vault", Some("pw-guess-4"));
    expect_refusal(&mut latecomer, "vault", "wrong-password").await;
    join(&latecomer, "vault", Some("pw-vault"));
    expect_refusal(&mut latecomer, "vault", "rate-limited").await;

    // The members heard of the newcomer, and of nothing else.
    assert_eq!(
        alice.expect("user-connected").await["id"],
        json!(newcomer.id())
    );
    alice.expect("#rtcio:init-offer").await;
    alice.assert_nothing_before_probe(&bob).await;

    // Once the window the server named has passed, the right password works again.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await; // the limit is a span of time
    join(&other, "vault", Some("pw-vault"));
    other.until("join-ok").await;
}

/// A refusal's `retryAfterMs`, which must lie within the window.
fn assert_retry_within(limited: &Value, window_ms: u64) -> u64 {
    let wait = limited["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=window_ms).contains(&wait), "{limited}");
    wait
}

/// Guesses sent at the same instant from many sockets (on both nodes) are counted before they
/// are checked: one user's sockets together get exactly the user's allowance (two); past the
/// room's allowance (four), users who have not guessed wrong there get exactly one try each.
async fn parallel_guessers_share_the_limits(mode: Mode) {
    let s = Setup::new(
        mode,
        &[
            ("WRONG_PASSWORDS_PER_USER", "2"),
            ("WRONG_PASSWORDS_PER_ROOM", "4"),
        ],
    )
    .await;
    let _alice = first_in(s.a(), "alice", "vault", "pw-vault").await;
    let mut one_user = Vec::new();
    let mut many_users = Vec::new();
    for i in 0..10 {
        let server = if i % 2 == 0 { s.a() } else { s.b() };
        one_user.push(server.client("guesser").await);
        many_users.push(server.client_named(format!("guesser-{i}")).await);
    }
    assert_eq!(guess_at_once(&mut one_user).await, (2, 8));
    assert_eq!(
        guess_at_once(&mut many_users).await,
        (10, 0),
        "the room has its four after the first two, but none of these had guessed"
    );
    assert_eq!(guess_at_once(&mut many_users).await, (0, 10));
}

/// Every peer sends a wrong password to the vault at once: how many were tried and how many
/// told to wait.
async fn guess_at_once(guessers: &mut [Peer]) -> (usize, usize) {
    for (i, guesser) in guessers.iter().enumerate() {
        check(guesser, "vault", Some(&format!("pw-guess-{i}")));
    }
    let mut reasons = Vec::new();
    for guesser in guessers.iter_mut() {
        reasons.push(guesser.expect("join-error").await["reason"].clone());
    }
    let count = |reason: &str| reasons.iter().filter(|r| **r == json!(reason)).count();
    let counts = (count("wrong-password"), count("rate-limited"));
    assert_eq!(counts.0 + counts.1, guessers.len(), "{reasons:?}");
    counts
}

async fn chat_reaches_the_other_members_only(mode: Mode) {
    let s = Setup::new(mode, &[]).await;
    let (mut alice, mut bob) = support::pair(s.a(), s.b(), "talk").await;
    let (mut carol, _) = s.a().joined("carol", "elsewhere").await;
    let (dave, _) = s.b().joined("dave", "elsewhere").await;
    carol.until("#rtcio:init-offer").await;

    let message = json!({
        "roomId": "talk", "text": "hello", "name": "Alice", "sentAt": 17, "id": "spoofed"
    });
    alice.emit("chat-message", message.clone());
    let got = bob.expect("chat-message").await;
    let mut expected = message;
    expected["id"] = json!(alice.id());
    assert_eq!(got, expected);
    alice.assert_nothing_before_probe(&bob).await;
    carol.assert_nothing_before_probe(&dave).await;

    carol.emit(
        "chat-message",
        json!({ "roomId": "talk", "text": "let me in" }),
    );
    carol.expect_error("not-in-room").await;
    carol.emit("chat-message", json!({ "roomId": "", "text": "x" }));
    carol.expect_error("invalid-room").await;
    bob.assert_nothing_before_probe(&alice).await;

    // Chat is not kept for late joiners.
    let mut erin = s.b().client("erin").await;
    erin.join("talk", "erin");
    let backfill: Vec<String> = erin
        .until("join-ok")
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(backfill, ["user-connected", "user-connected", "join-ok"]);
}

/// Passwords, wrong guesses and tokens never reach a log line (at `RUST_LOG=trace`), an event,
/// or Redis; what Redis holds is an argon2id seal.
#[tokio::test]
async fn secrets_stay_out_of_logs_events_and_redis() {
    let redis = Redis::start().await;
    let url = redis.url();
    let env = [
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", url.as_str()),
        ("RUST_LOG", "trace"),
    ];
    let logs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| std::env::temp_dir().join(format!("rtcio-secrets-{}-{i}.log", std::process::id())))
        .collect();
    let log_to = |path: &std::path::PathBuf| Stdio::from(std::fs::File::create(path).expect("log"));
    let a = Server::start_logging_to(&[], &env, log_to(&logs[0])).await;
    let b = Server::start_logging_to(&[], &env, log_to(&logs[1])).await;
    let (password, guess) = ("pw-SECRET-3b9d51", "pw-GUESS-77aa02");

    let token = a.token("alice");
    let mut alice = a.client_with_token(&token).await;
    join(&alice, "vault", Some(password));
    alice.expect("join-ok").await;
    let mut bob = b.client("bob").await;
    join(&bob, "vault", Some(guess));
    expect_refusal(&mut bob, "vault", "wrong-password").await;
    check(&bob, "vault", Some(guess));
    expect_refusal(&mut bob, "vault", "wrong-password").await;
    check(&bob, "vault", Some(password));
    expect_check_ok(&mut bob, "vault", true).await;
    join(&bob, "vault", Some(password));
    let mut seen = bob.until("join-ok").await;
    seen.extend(alice.until("#rtcio:init-offer").await);
    for event in &seen {
        let text = event.data.to_string();
        assert!(!text.contains(password) && !text.contains(guess), "{text}");
    }

    let mut conn = redis.connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut stored = String::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET"),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("HGETALL"),
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("SMEMBERS"),
            other => panic!("unexpected {other} at {key}"),
        };
        stored.push_str(&format!("{key} = {values:?}\n"));
    }
    assert!(
        stored.contains("rtcio:lock:vault = [\"$argon2id$"),
        "{stored}"
    );
    assert!(
        !stored.contains(password) && !stored.contains(guess),
        "{stored}"
    );

    drop((alice, bob, a, b));
    let mut both = String::new();
    for path in &logs {
        both.push_str(&std::fs::read_to_string(path).expect("read log"));
        let _ = std::fs::remove_file(path);
    }
    assert!(
        both.contains("TRACE"),
        "the servers did not log at trace level"
    );
    assert!(
        both.contains("wrong room password"),
        "the attempt is logged"
    );
    for secret in [password, guess, token.as_str()] {
        assert!(!both.contains(secret), "a secret reached the log");
    }
}
