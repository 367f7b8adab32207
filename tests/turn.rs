//! Short-lived TURN credentials (coturn's REST API scheme): `GET /client-config` with a bearer
//! token and the `ask-ice` event, the credential checked the way coturn checks it, the limit
//! per user across both, and a real `turnserver` allocating a relay with one.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use support::{SECRET, Server, WAIT, unix_now};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TURN_SECRET: &str = "turn-shared-secret-for-tests";
const TURN_URLS: &str = "turn:127.0.0.1:3478?transport=udp, turns:turn.example:5349";
const STUN: &str = r#"[{"urls":"stun:stun.example:3478"}]"#;

async fn turn_server(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("JWT_SECRET", SECRET),
        ("TURN_SECRET", TURN_SECRET),
        ("TURN_URLS", TURN_URLS),
        ("TURN_TTL_SECS", "300"),
        ("ICE_SERVERS", STUN),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&[], &env).await
}

/// A response's status, headers (lowercase names) and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{:?}: {e}", self.body))
    }
}

async fn request(addr: SocketAddr, method: &str, headers: &[(&str, &str)]) -> Response {
    let raw = support::http_request_raw(addr, method, "/client-config", headers).await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn client_config(server: &Server, token: Option<&str>) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("Authorization", b))
        .into_iter()
        .collect();
    request(server.addr, "GET", &headers).await
}

/// What coturn computes for `use-auth-secret`: base64(HMAC-SHA1(secret, username)).
fn coturn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    Base64::encode_string(&mac.finalize().into_bytes())
}

/// Checks the TURN entry of an `iceServers` list as coturn would, for `user` and a TTL of
/// 300 s; returns its username and credential.
fn assert_turn_entry(config: &Value, user: &str) -> (String, String) {
    let servers = config["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 2, "{config}");
    assert_eq!(servers[0], json!({ "urls": "stun:stun.example:3478" }));
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turns:turn.example:5349"
        ])
    );
    let username = turn["username"].as_str().expect("username").to_string();
    let credential = turn["credential"].as_str().expect("credential").to_string();
    let (expiry, user_part) = username.split_once(':').expect("expiry:user");
    let expiry: u64 = expiry.parse().expect("unix seconds");
    let now = unix_now();
    assert!(
        (now + 298..=now + 300).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert_eq!(user_part, user);
    assert_eq!(credential, coturn_password(TURN_SECRET, &username));
    assert_eq!(config["ttl"], json!(300));
    (username, credential)
}

#[tokio::test]
async fn the_route_gives_a_token_holder_a_credential_coturn_accepts() {
    let server = turn_server(&[]).await;
    let response = client_config(&server, Some(&server.token("alice"))).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_turn_entry(&response.json(), "alice");
    // Browsers cannot send `Authorization` cross-origin unless the preflight names it.
    let preflight = request(
        server.addr,
        "OPTIONS",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await;
    assert_eq!(
        preflight
            .header("access-control-allow-headers")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("authorization")
    );
}

#[tokio::test]
async fn the_route_refuses_a_missing_bad_or_expired_token() {
    let server = turn_server(&[]).await;
    let expired = server.sign(&json!({ "sub": "alice", "exp": unix_now() - 3600 }));
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "alice", "exp": unix_now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-0123456789"),
    )
    .expect("sign");
    for (token, error) in [
        (None, "missing token"),
        (Some(""), "missing token"),
        (Some("not-a-jwt"), "invalid token"),
        (Some(other_key.as_str()), "invalid token"),
        (Some(expired.as_str()), "token expired"),
    ] {
        let response = client_config(&server, token).await;
        assert_eq!(response.status, 401, "{token:?}: {}", response.body);
        assert_eq!(response.json(), json!({ "error": error }), "{token:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    // A token in another scheme is no bearer token.
    let basic = request(
        server.addr,
        "GET",
        &[("Authorization", "Basic YWxpY2U6cHc=")],
    )
    .await;
    assert_eq!(basic.status, 401);
    assert_eq!(basic.json(), json!({ "error": "missing token" }));
}

#[tokio::test]
async fn without_turn_the_route_needs_no_token_and_gives_the_configured_servers() {
    let server = Server::start_with(&[], &[("JWT_SECRET", SECRET), ("ICE_SERVERS", STUN)]).await;
    let expected = json!({ "iceServers": [{ "urls": "stun:stun.example:3478" }] });
    for token in [None, Some("not-a-jwt")] {
        let response = client_config(&server, token).await;
        assert_eq!(response.status, 200, "{token:?}");
        assert_eq!(response.json(), expected);
    }
    // ask-ice answers with the same list.
    let peer = server.client("alice").await;
    let mut client = peer.client;
    client.emit_with_ack("ask-ice", &json!({}));
    let ack = client.next_ack_within(WAIT).await.expect("an ack");
    assert_eq!(ack.args, vec![expected]);
}

#[tokio::test]
async fn ask_ice_answers_through_the_acknowledgement() {
    let server = turn_server(&[]).await;
    let mut bob = server.client("bob").await;

    let asked = bob.client.emit_with_ack("ask-ice", &json!({}));
    let ack = bob.client.next_ack_within(WAIT).await.expect("an ack");
    assert_eq!((ack.id, ack.args.len()), (asked, 1), "{ack:?}");
    assert_turn_entry(&ack.args[0], "bob");

    // No payload at all, as `socket.emit("ask-ice", cb)` sends it.
    bob.client.send_raw("4217[\"ask-ice\"]".into());
    let ack = bob.client.next_ack_within(WAIT).await.expect("an ack");
    assert_eq!(ack.id, 17);
    assert_turn_entry(&ack.args[0], "bob");

    // A payload that is not an object is refused in the ack.
    bob.client.emit_with_ack("ask-ice", &json!("please"));
    let ack = bob.client.next_ack_within(WAIT).await.expect("an ack");
    assert_eq!(ack.args[0]["error"]["code"], json!("invalid-payload"));

    // Without a callback the answer could not arrive: an `error` event says so.
    bob.emit("ask-ice", json!({}));
    bob.expect_error("ack-required").await;
}

#[tokio::test]
async fn credentials_are_limited_per_user_across_the_route_and_the_event() {
    let server = turn_server(&[("TURN_CREDENTIALS_PER_MINUTE", "3")]).await;
    let token = server.token("carol");
    let mut carol = server.client_with_token(&token).await;
    for _ in 0..2 {
        assert_eq!(client_config(&server, Some(&token)).await.status, 200);
    }
    carol.client.emit_with_ack("ask-ice", &json!({}));
    let ack = carol.client.next_ack_within(WAIT).await.expect("an ack");
    assert_turn_entry(&ack.args[0], "carol");

    let refused = client_config(&server, Some(&token)).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["error"], json!("rate-limited"));
    let retry = body["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((55_000..=60_000).contains(&retry), "{retry}");
    assert!(refused.header("retry-after").is_some());

    carol.client.emit_with_ack("ask-ice", &json!({}));
    let ack = carol.client.next_ack_within(WAIT).await.expect("an ack");
    let error = &ack.args[0]["error"];
    assert_eq!(error["code"], json!("rate-limited"), "{ack:?}");
    assert!(
        error["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms <= 60_000)
    );

    // Someone else has their own allowance.
    let dave = client_config(&server, Some(&server.token("dave"))).await;
    assert_eq!(dave.status, 200);
}

#[tokio::test]
async fn ask_ice_over_the_socket_event_rate_is_refused_in_its_acknowledgement() {
    let server = turn_server(&[("ECHO_RATE", "0.001"), ("ECHO_BURST", "1")]).await;
    let mut frank = server.client("frank").await;
    frank.client.emit_with_ack("ask-ice", &json!({}));
    let ack = frank.client.next_ack_within(WAIT).await.expect("an ack");
    assert_turn_entry(&ack.args[0], "frank");
    frank.client.emit_with_ack("ask-ice", &json!({}));
    let ack = frank.client.next_ack_within(WAIT).await.expect("an ack");
    assert_eq!(
        ack.args[0]["error"]["code"],
        json!("rate-limited"),
        "{ack:?}"
    );
    // The refusal went to the acknowledgement only: the next event is the probe's reply.
    frank.emit("leave-room", json!({ "roomId": "nowhere" }));
    frank.expect_error("not-in-room").await;
}

/// A `turnserver` (coturn) on a loopback port with the REST API scheme, killed on drop.
struct Coturn {
    port: u16,
    _child: Child,
    dir: std::path::PathBuf,
}

impl Coturn {
    async fn start(secret: &str) -> Coturn {
        let port = free_udp_and_tcp_port();
        let dir = std::env::temp_dir().join(format!("rtcio-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("coturn dir");
        let mut child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
                "--log-file=stdout",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("turnserver runs (coturn is installed by scripts/setup)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Its listeners and relays are up once it has created its servers.
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read turnserver") {
                if line.contains("Total General servers") {
                    return;
                }
            }
            panic!("turnserver exited before it was ready");
        })
        .await
        .expect("turnserver ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Coturn {
            port,
            _child: child,
            dir,
        }
    }

    /// Runs coturn's own client: two allocations on the relay sending to each other. `Ok` if
    /// it allocated and relayed, else its output.
    async fn allocate(&self, username: &str, password: &str) -> Result<(), String> {
        let run = Command::new("turnutils_uclient")
            .args(["-y", "-n", "1", "-m", "1", "-p", &self.port.to_string()])
            .args(["-u", username, "-w", password, "127.0.0.1"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("turnutils_uclient finishes")
            .expect("turnutils_uclient runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && text.contains("Total lost packets 0") {
            Ok(())
        } else {
            Err(text)
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        let port = udp.local_addr().expect("udp addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test]
async fn coturn_allocates_a_relay_with_the_credential_and_refuses_a_tampered_one() {
    let coturn = Coturn::start(TURN_SECRET).await;
    let server = turn_server(&[]).await;
    let response = client_config(&server, Some(&server.token("erin"))).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let (username, credential) = assert_turn_entry(&response.json(), "erin");

    if let Err(output) = coturn.allocate(&username, &credential).await {
        panic!("coturn refused the server's credential:\n{output}");
    }
    // Another user's name with erin's credential, and a credential with one byte changed.
    let (expiry, _) = username.split_once(':').expect("expiry:user");
    let mut tampered = credential.into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("base64 is ascii");
    for (user, password) in [
        (
            format!("{expiry}:mallory"),
            coturn_password(TURN_SECRET, &username),
        ),
        (username.clone(), tampered),
        (
            username.clone(),
            coturn_password("not-the-secret", &username),
        ),
    ] {
        let output = coturn
            .allocate(&user, &password)
            .await
            .expect_err("coturn must refuse a tampered credential");
        assert!(
            output.contains("Cannot complete Allocation"),
            "failed for another reason:\n{output}"
        );
    }
}
