//! Shared by the integration tests: starts the real server binary on a loopback port, mints
//! tokens, and connects real Socket.IO clients to it.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod redis;
pub mod storm;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sioclient::{Client, ConnectError, Event, Options};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rtcio-signal")
}

/// Every setting the server reads from the environment: each `env = "NAME"` of
/// `src/config.rs`, read from the source so no setting can be missed. A test's server starts
/// without any of them, so the shell running the tests cannot change what they see.
pub fn server_env() -> Vec<&'static str> {
    include_str!("../../src/config.rs")
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect()
}

/// The server binary on a loopback port of the OS's choosing, with `args` and none of the
/// settings' environment variables.
pub fn server_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(server_bin());
    cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
    for var in server_env() {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs the server with `env`, expecting it to refuse to start; returns what it said.
pub async fn refused_start(env: &[(&str, &str)]) -> String {
    let mut command = server_command(&[]);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().await.expect("run server");
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A running server process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    key: EncodingKey,
    alg: Algorithm,
}

impl Server {
    /// HS256 with [`SECRET`], default settings.
    pub async fn start() -> Server {
        Server::start_with(&[], &[("JWT_SECRET", SECRET)]).await
    }

    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_logging_to(args, env, Stdio::inherit()).await
    }

    /// [`Server::start_with`], its log (stderr) going to `log`. `RUST_LOG` in `env` wins over
    /// the default.
    pub async fn start_logging_to(args: &[&str], env: &[(&str, &str)], log: Stdio) -> Server {
        let mut cmd = server_command(args);
        cmd.env(
            "RUST_LOG",
            std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let addr = wait_listening(&mut child).await;
        Server {
            addr,
            child,
            key: EncodingKey::from_secret(SECRET.as_bytes()),
            alg: Algorithm::HS256,
        }
    }

    /// Tokens from now on are signed with this key and algorithm.
    pub fn signing_with(mut self, key: EncodingKey, alg: Algorithm) -> Server {
        self.key = key;
        self.alg = alg;
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key).expect("sign")
    }

    /// A valid token for user `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&json!({ "sub": sub, "exp": unix_now() + 600 }))
    }

    pub async fn connect_with(&self, auth: Option<Value>) -> Result<Client, ConnectError> {
        Client::connect(Options::new(self.addr, auth)).await
    }

    /// [`Server::client`] taking an owned name, for building many at once.
    pub async fn client_named(&self, sub: String) -> Peer {
        self.client(&sub).await
    }

    /// A connected client for user `sub`.
    pub async fn client(&self, sub: &str) -> Peer {
        self.client_with_token(&self.token(sub)).await
    }

    /// A client connected with this exact token, its `session` greeting consumed.
    pub async fn client_with_token(&self, token: &str) -> Peer {
        self.client_with_auth(json!({ "token": token })).await
    }

    /// A client connected with this CONNECT auth payload, its `session` greeting consumed.
    pub async fn client_with_auth(&self, auth: Value) -> Peer {
        let client = self
            .connect_with(Some(auth))
            .await
            .expect("connect with token");
        Peer::greeted(client).await
    }

    /// A client that has joined `room` under `name` (its `join-ok` consumed, its backfill
    /// returned).
    pub async fn joined(&self, sub: &str, room: &str) -> (Peer, Vec<Event>) {
        let mut peer = self.client(sub).await;
        peer.join(room, sub);
        let backfill = peer.until("join-ok").await;
        (peer, backfill)
    }

    /// How many letters (events from other nodes) this node has read, from `/metrics`.
    pub async fn letters_received(&self) -> u64 {
        self.metric("rtcio_cluster_letters_received_total").await as u64
    }

    /// The value of one series in `/metrics`, named with its labels as exposed (0 when it is
    /// not there yet).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.addr, "/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn health(&self) -> Value {
        http_get_json(self.addr, "/health").await
    }

    /// Polls `/health` until `done` holds, for at most [`WAIT`]: cleanup after clients leave
    /// has no event a client could await.
    pub async fn health_until(&self, done: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let health = self.health().await;
            if done(&health) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still not done after {WAIT:?}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter
        }
    }

    /// Sends SIGTERM, as a deploy does, without waiting for the process to exit.
    pub async fn sigterm(&self) {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits (up to 15 s) for the process to exit successfully.
    pub async fn terminate(&mut self) {
        self.sigterm().await;
        let exit = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("server exits within the grace period")
            .expect("wait");
        assert!(exit.success(), "exit status {exit}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("server pid")
    }
}

/// A server's log in a file of its own, for a test that waits on what the server says;
/// removed when dropped.
pub struct LogFile(std::path::PathBuf);

impl LogFile {
    pub fn new(name: &str) -> LogFile {
        let file = format!("rtcio-{name}-{}.log", std::process::id());
        LogFile(std::env::temp_dir().join(file))
    }

    /// A fresh, empty log for a server to write to.
    pub fn stdio(&self) -> Stdio {
        std::fs::File::create(&self.0).expect("log file").into()
    }

    /// Waits (up to [`WAIT`]) until the server has logged `text`.
    pub async fn until_said(&self, text: &str) {
        poll_until(
            WAIT,
            Duration::from_millis(10),
            async || match std::fs::read_to_string(&self.0) {
                Ok(said) if said.contains(text) => Ok(()),
                _ => Err(format!("not yet said: {text}")),
            },
        )
        .await;
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Drops `peer`'s connection without a close frame and waits until the server holds its
/// session away (there is no event to await: the server tells nobody). For a server with no
/// other session away.
pub async fn drop_connection(server: &Server, peer: &Peer) {
    peer.client.abort();
    server.health_until(|h| h["away"] == json!(1)).await;
}

/// The id in the next `user-disconnected` `peer` hears.
pub async fn departure_heard(peer: &mut Peer) -> Value {
    let seen = peer.until("user-disconnected").await;
    seen.last().expect("an event").data["id"].clone()
}

/// `alice` (on `alice_on`) and then `bob` (on `bob_on`) in `room`, with alice's
/// `user-connected` and `#rtcio:init-offer` for bob already consumed.
pub async fn pair(alice_on: &Server, bob_on: &Server, room: &str) -> (Peer, Peer) {
    let (mut alice, _) = alice_on.joined("alice", room).await;
    let (bob, _) = bob_on.joined("bob", room).await;
    alice.until("#rtcio:init-offer").await;
    (alice, bob)
}

async fn wait_listening(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("rtcio-signal listening on http://") {
                return url.parse::<SocketAddr>().expect("listening address");
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server did not start listening within 30 s");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// Polls `check` every `every` until it answers `Ok`, for at most `within`: for state no event
/// announces. `Err` describes what it found, for the failure message.
pub async fn poll_until(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let found = match check().await {
            Ok(()) => return,
            Err(found) => found,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not done after {within:?}: {found}"
        );
        tokio::time::sleep(every).await; // polling state
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A tiny HTTP/1.1 GET over a raw socket, with extra request headers; returns the whole
/// response, status line and headers included.
pub async fn http_get_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    http_raw(addr, "GET", path, headers, "").await
}

/// [`http_get_raw`] with any method and no body (`OPTIONS` for a CORS preflight).
pub async fn http_request_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    http_raw(addr, method, path, headers, "").await
}

/// Any request, as status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    status_and_body(&http_raw(addr, method, path, headers, body).await)
}

async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}{length}Connection: close\r\n\r\n{body}"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("http write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("http read");
    response
}

/// [`http_get_raw`] without extra headers, as status and body: enough for `/health` and friends.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    status_and_body(&http_get_raw(addr, path, &[]).await)
}

fn status_and_body(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("http status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn http_get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} body {body:?}: {e}"))
}

/// A test's handle on one client, with waiting helpers that fail loudly.
pub struct Peer {
    pub client: Client,
    /// The `session` greeting: `{ id, resume, recovered }`.
    pub session: Value,
    /// Events read since the session began (not counting `session` greetings), as a client
    /// following the recovery recipe counts them.
    pub received: u64,
}

impl Peer {
    /// Reads the greeting every connection starts with.
    pub async fn greeted(client: Client) -> Peer {
        let mut peer = Peer {
            client,
            session: Value::Null,
            received: 0,
        };
        peer.session = peer.expect("session").await;
        peer.received = 0;
        peer
    }

    /// Reconnects to `server` presenting this session's credential and count, as the recovery
    /// recipe does; the new connection's `session` greeting is read.
    pub async fn reconnect(&mut self, server: &Server, token: &str) {
        let auth = json!({
            "token": token,
            "resume": self.session["resume"],
            "received": self.received,
        });
        let client = server.connect_with(Some(auth)).await.expect("reconnect");
        self.client = client;
        self.session = self.expect("session").await;
        if self.session["recovered"] == json!(true) {
            self.received -= 1; // the greeting is not counted
        } else {
            self.received = 0;
        }
    }

    /// The peer id: what every other client knows this one by.
    pub fn id(&self) -> &str {
        self.session["id"].as_str().expect("session.id")
    }

    pub fn emit(&self, event: &str, data: Value) {
        self.client.emit(event, &data);
    }

    pub fn join(&self, room: &str, name: &str) {
        self.emit("join-room", json!({ "roomId": room, "name": name }));
    }

    pub fn relay(&self, target: &str, data: Value) {
        self.emit(
            "#rtcio:message",
            json!({ "source": "spoofed", "target": target, "data": data }),
        );
    }

    /// The next event, whatever it is.
    pub async fn next(&mut self) -> Event {
        let event = self
            .client
            .next_event_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no event within {WAIT:?}", self.client.sid));
        self.received += 1;
        event
    }

    /// The next event, which must be `name`; returns its payload.
    pub async fn expect(&mut self, name: &str) -> Value {
        let event = self.next().await;
        assert_eq!(
            event.name, name,
            "{}: expected {name}, got {} {}",
            self.client.sid, event.name, event.data
        );
        event.data
    }

    /// The next event, which must be an `error` reply with this `code`.
    pub async fn expect_error(&mut self, code: &str) {
        let reply = self.expect("error").await;
        assert_eq!(reply["code"], json!(code), "{}: {reply}", self.client.sid);
    }

    /// Every event up to and including the first `name`.
    pub async fn until(&mut self, name: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.name == name;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    /// Proves nothing else is pending for this client: `from` relays a probe to it, and the
    /// probe must be the very next event (a socket's events arrive in order).
    pub async fn assert_nothing_before_probe(&mut self, from: &Peer) {
        let nonce = format!("probe-{}", unix_now_nanos());
        from.relay(self.id(), json!({ "probe": nonce }));
        let data = self.expect("#rtcio:message").await;
        assert_eq!(
            data["data"]["probe"],
            json!(nonce),
            "unexpected relay {data}"
        );
    }

    /// Waits for the server to close this client.
    pub async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.client.next_event()).await {
                Ok(None) => return,
                Ok(Some(_)) => continue,
                Err(_) => panic!("{}: still connected after {WAIT:?}", self.client.sid),
            }
        }
    }
}

pub fn unix_now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}
