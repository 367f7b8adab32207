//! Many client connections: tokens, source addresses, bounded-concurrency connect (+ join).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;
use sioclient::{Client, ConnectError, Options};
use tokio::task::JoinSet;

/// Clients bound to one source address; 127.0.0.0/8 is all loopback, so spreading the
/// client sockets over many addresses keeps ephemeral ports (and TIME_WAIT) from running out.
const CLIENTS_PER_SOURCE_IP: u64 = 500;

static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

/// The next client source address: 127.10.0.1, ... (never 127.0.0.1, where the servers are).
pub fn next_bind_ip() -> IpAddr {
    let k = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) / CLIENTS_PER_SOURCE_IP;
    let b = 10 + (k / 62_500) % 200;
    let c = (k / 250) % 250;
    let d = k % 250 + 1;
    IpAddr::V4(Ipv4Addr::new(127, b as u8, c as u8, d as u8))
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    name: &'a str,
}

pub fn token(secret: &str, sub: &str, name: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 6 * 3600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims { sub, exp, name },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing")
}

/// What to do right after a client connects.
#[derive(Clone)]
pub enum Then {
    Nothing,
    /// Emit join-room for this room and wait for `join-ok`.
    Join(fn(usize) -> String),
}

pub struct Connected {
    pub clients: Vec<Client>,
    pub elapsed: Duration,
}

pub async fn connect_one(
    addr: SocketAddr,
    secret: &str,
    sub: &str,
) -> Result<Client, ConnectError> {
    connect_from(addr, secret, sub, &[]).await
}

/// `connect_one` with extra headers on the upgrade request (the soak gives each client its
/// own address in the server's trusted client-address header).
pub async fn connect_from(
    addr: SocketAddr,
    secret: &str,
    sub: &str,
    headers: &[(String, String)],
) -> Result<Client, ConnectError> {
    const ATTEMPTS: u64 = 3;
    let tok = token(secret, sub, sub);
    let mut attempt = 1;
    loop {
        let opts = Options {
            addr,
            auth: Some(json!({ "token": tok })),
            bind: Some(next_bind_ip()),
            timeout: Duration::from_secs(20),
            headers: headers.to_vec(),
        };
        let err = match Client::connect(opts).await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        // A refusal is the server's answer, not a transient failure: no retry.
        if matches!(err, ConnectError::Refused(_)) || attempt == ATTEMPTS {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        attempt += 1;
    }
}

/// The peer an event is about: the `id` (user-connected, ...) or `source` (relayed
/// messages) in its payload. Our server's `session` greeting names the client itself, by
/// design, so it is about no other peer.
pub fn peer_of(ev: &sioclient::Event) -> Option<&str> {
    if ev.name == "session" {
        return None;
    }
    ev.data["id"]
        .as_str()
        .or_else(|| ev.data["source"].as_str())
}

/// One step of a xorshift64 generator: updates `state` and returns it (`state` must not be
/// zero). Cheap, deterministic randomness for the scenarios.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Waits for the first event matching `pred`, discarding others, within `wait`.
pub async fn wait_for(
    client: &mut Client,
    wait: Duration,
    mut pred: impl FnMut(&sioclient::Event) -> bool,
) -> Option<sioclient::Event> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let ev = client.next_event_within(left).await?;
        if pred(&ev) {
            return Some(ev);
        }
    }
}

pub async fn join(
    client: &mut Client,
    room: &str,
    name: &str,
    wait: Duration,
) -> Result<(), String> {
    client.emit("join-room", &json!({ "roomId": room, "name": name }));
    let ev = wait_for(client, wait, |e| {
        (e.name == "join-ok" || e.name == "join-error") && e.data["roomId"] == room
    })
    .await
    .ok_or_else(|| format!("no join-ok for {room} within {wait:?}"))?;
    if ev.name == "join-error" {
        return Err(format!("join-error {}", ev.data));
    }
    Ok(())
}

/// Connects `n` clients (subs `{tag}-{i}`), at most `concurrency` handshakes at once, and
/// optionally joins each to a room. Returns them in index order.
pub async fn connect_many(
    addr: SocketAddr,
    secret: &str,
    tag: &str,
    n: usize,
    concurrency: usize,
    then: Then,
) -> Result<Connected, String> {
    connect_many_spread(&[addr], secret, tag, n, concurrency, then).await
}

/// `connect_many` over several servers: client `i` connects to `addrs[i % addrs.len()]`
/// (with two cluster nodes, the even clients go to the first and the odd ones to the second).
pub async fn connect_many_spread(
    addrs: &[SocketAddr],
    secret: &str,
    tag: &str,
    n: usize,
    concurrency: usize,
    then: Then,
) -> Result<Connected, String> {
    assert!(!addrs.is_empty());
    let start = Instant::now();
    let mut slots: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut next = 0usize;
    let mut ok = 0usize;
    loop {
        while next < n && set.len() < concurrency {
            let i = next;
            next += 1;
            let secret = secret.to_string();
            let sub = format!("{tag}-{i}");
            let then = then.clone();
            let addr = addrs[i % addrs.len()];
            set.spawn(async move {
                let client = async {
                    let mut c = connect_one(addr, &secret, &sub)
                        .await
                        .map_err(|e| e.to_string())?;
                    if let Then::Join(room) = then {
                        join(&mut c, &room(i), &sub, Duration::from_secs(30)).await?;
                    }
                    Ok::<_, String>(c)
                };
                (i, client.await)
            });
        }
        // None: all `n` are done.
        let Some(joined) = set.join_next().await else {
            break;
        };
        // Stop at the first failure (dropping `set` aborts the other handshakes): a benchmark
        // with missing clients is not comparable.
        match joined {
            Ok((i, Ok(c))) => {
                slots[i] = Some(c);
                ok += 1;
            }
            Ok((i, Err(e))) => {
                return Err(format!(
                    "client {i} of {n} failed after {ok} connected: {e}"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "a connect task of {n} failed after {ok} connected: {e}"
                ));
            }
        }
    }
    Ok(Connected {
        clients: slots.into_iter().map(|s| s.unwrap()).collect(),
        elapsed: start.elapsed(),
    })
}

/// Drops whatever events have already arrived.
pub fn drain(clients: &mut [Client]) {
    for c in clients {
        while c.try_next_event().is_some() {}
    }
}

/// Closes the clients and gives the server a moment to see the disconnects.
pub async fn close_all(clients: Vec<Client>, settle: Duration) {
    for c in &clients {
        c.close();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(clients);
    tokio::time::sleep(settle).await;
}
