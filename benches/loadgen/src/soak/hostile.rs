//! The soak's hostile load, running beside the honest calls: a relay flooder in the room of an
//! honest victim, oversized frames, garbage frames, join spam, password guessing against a
//! locked room, and connection spam from one address. Each actor repeats a bounded round until
//! the run's deadline, counts the server's answers as outcomes, and reports an answer that
//! breaks a limit the README promises as a violation.

use std::time::{Duration, Instant};

use serde_json::json;
use sioclient::{Client, Event};
use tokio::task::JoinSet;

use super::{Ctx, limits};

/// How a wait for one kind of answer ended.
enum Answer {
    Got(Event),
    Closed,
    Silent,
}

/// Waits up to `wait` for an event matching `pred` (which sees every event) or the end of the
/// connection.
async fn answer(
    client: &mut Client,
    wait: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Answer {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.next_event()).await {
            Err(_) => return Answer::Silent,
            Ok(None) => return Answer::Closed,
            Ok(Some(ev)) if pred(&ev) => return Answer::Got(ev),
            Ok(Some(_)) => {}
        }
    }
}

fn is_refusal(ev: &Event) -> bool {
    ev.name == "error" || ev.name == "join-error"
}

/// An `error`'s code or a `join-error`'s reason.
fn code(ev: &Event) -> &str {
    ev.data["code"]
        .as_str()
        .or_else(|| ev.data["reason"].as_str())
        .unwrap_or("?")
}

/// What an answer was, for the outcome counts and violation messages.
fn describe(a: &Answer) -> String {
    match a {
        Answer::Got(ev) if is_refusal(ev) => format!("{} {}", ev.name, code(ev)),
        Answer::Got(ev) => ev.name.clone(),
        Answer::Closed => "closed".to_string(),
        Answer::Silent => "no answer".to_string(),
    }
}

/// The rounds of one actor: numbered, one every `period` at most, until the deadline.
struct Rounds<'a> {
    ctx: &'a Ctx,
    period: Duration,
    k: u64,
    next: Instant,
}

impl<'a> Rounds<'a> {
    fn new(ctx: &'a Ctx, period: Duration) -> Rounds<'a> {
        Rounds {
            ctx,
            period,
            k: 0,
            next: Instant::now(),
        }
    }

    /// Waits for the next round's time; its number, or `None` once the run is over.
    async fn next(&mut self) -> Option<u64> {
        tokio::time::sleep_until(self.next.min(self.ctx.deadline).into()).await;
        if !self.ctx.running() {
            return None;
        }
        self.next = Instant::now() + self.period;
        self.k += 1;
        Some(self.k - 1)
    }
}

/// A hostile client with its own address in the trusted header, on node `k % nodes`.
async fn connect(ctx: &Ctx, k: u64, tag: &str) -> Option<Client> {
    let node = k as usize % ctx.nodes.len();
    let sub = format!("{tag}-{}", ctx.unique());
    match ctx.connect(node, &sub, &ctx.own_address()).await {
        Ok(c) => Some(c),
        Err(e) => {
            ctx.stats
                .violation(format!("{tag} client could not connect: {e}"));
            None
        }
    }
}

/// Joins `room` (with `password`): the `join-ok` or `join-error`, and the (id, name) of each
/// `user-connected` before it.
async fn join(
    client: &mut Client,
    room: &str,
    password: Option<&str>,
) -> (Answer, Vec<(String, String)>) {
    let mut join = json!({ "roomId": room, "name": "x" });
    if let Some(pw) = password {
        join["password"] = json!(pw);
    }
    client.emit("join-room", &join);
    let mut roster = Vec::new();
    let reply = answer(client, Duration::from_secs(10), |ev| {
        if ev.name == "user-connected" {
            let field = |f: &str| ev.data[f].as_str().unwrap_or_default().to_string();
            roster.push((field("id"), field("name")));
        }
        (ev.name == "join-ok" || ev.name == "join-error") && ev.data["roomId"] == room
    })
    .await;
    (reply, roster)
}

/// (1) Joins the victim's room and relays to the victim at `ctx.flood_rate` a second until
/// the server cuts it off: it must answer `rate-limited` and disconnect it after
/// FLOOD_DISCONNECT_MS. The victim's call counts what reaches it.
pub async fn flood(ctx: &Ctx) {
    let bound = Duration::from_millis(limits::FLOOD_DISCONNECT_MS) + Duration::from_secs(10);
    let mut rounds = Rounds::new(ctx, Duration::from_secs(3));
    while let Some(k) = rounds.next().await {
        // On the victim's partner's node: in a cluster the flood crosses to the victim's.
        let Some(mut client) = connect(ctx, k * 2 + 1, "flooder").await else {
            continue;
        };
        let (reply, roster) = join(&mut client, super::VICTIM_ROOM, None).await;
        let victim = roster
            .iter()
            .find(|(_, name)| name == super::VICTIM_NAME)
            .map(|(id, _)| id.clone());
        let (Answer::Got(ok), Some(victim)) = (&reply, victim) else {
            ctx.stats.violation(format!(
                "flooder: no victim in {} ({}, roster {roster:?})",
                super::VICTIM_ROOM,
                describe(&reply)
            ));
            client.close();
            continue;
        };
        if ok.name != "join-ok" {
            ctx.stats
                .violation(format!("flooder: join refused: {}", describe(&reply)));
            client.close();
            continue;
        }
        ctx.stats.outcome(super::FLOODS, 1);
        let frame = format!(
            r##"42["#rtcio:message",{{"source":"{}","target":"{victim}","data":{{{}}}}}]"##,
            client.sid, ctx.bodies.candidate
        );
        let per_ms = (ctx.flood_rate / 1000).max(1);
        let started = Instant::now();
        let until = started + bound;
        let mut tick = started;
        let mut limited = 0;
        let ended = loop {
            tokio::select! {
                ev = client.next_event() => match ev {
                    None => break true,
                    Some(ev) if is_refusal(&ev) && code(&ev) == "rate-limited" => limited += 1,
                    Some(ev) if is_refusal(&ev) => {
                        ctx.stats.outcome(&format!("flood: {} {}", ev.name, code(&ev)), 1);
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(tick.into()) => {
                    for _ in 0..per_ms {
                        client.send_raw(frame.clone());
                    }
                    tick += Duration::from_millis(1);
                }
                _ = tokio::time::sleep_until(until.into()) => break false,
            }
        };
        ctx.stats.outcome("flood: rate-limited replies", limited);
        if limited == 0 {
            ctx.stats
                .violation("flooder: never answered rate-limited".to_string());
        }
        if ended {
            ctx.stats.outcome("flood: disconnected", 1);
        } else {
            ctx.stats.violation(format!(
                "flooder: still connected after {bound:?} of flooding"
            ));
        }
        client.close();
    }
}

/// (2) An event over MAX_PAYLOAD_BYTES must get `error` `payload-too-large`; a frame over 16
/// times it must close the connection.
pub async fn oversize(ctx: &Ctx) {
    let event = |bytes: usize| {
        format!(
            r#"42["chat-message",{{"roomId":"soak-oversize","text":"{}"}}]"#,
            "x".repeat(bytes)
        )
    };
    let big = event(limits::MAX_PAYLOAD_BYTES + 1024);
    let huge = event(16 * limits::MAX_PAYLOAD_BYTES + 1024);
    let mut rounds = Rounds::new(ctx, Duration::from_secs(10));
    while let Some(k) = rounds.next().await {
        let Some(mut client) = connect(ctx, k, "oversize").await else {
            continue;
        };
        client.send_raw(big.clone());
        let reply = answer(&mut client, Duration::from_secs(3), is_refusal).await;
        match &reply {
            Answer::Got(ev) if code(ev) == "payload-too-large" => {
                ctx.stats.outcome("oversize: payload-too-large", 1);
            }
            _ => ctx.stats.violation(format!(
                "oversize: an event of {} bytes got {}, not payload-too-large",
                big.len(),
                describe(&reply)
            )),
        }
        client.send_raw(huge.clone());
        let reply = answer(&mut client, Duration::from_secs(3), |_| true).await;
        match &reply {
            Answer::Closed => ctx.stats.outcome("oversize: closed (over 16x)", 1),
            _ => ctx.stats.violation(format!(
                "oversize: a frame of {} bytes got {}, not the connection closed",
                huge.len(),
                describe(&reply)
            )),
        }
        client.close();
    }
}

/// What the server must do with a garbage frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refuse it with `error` (the payload is a Socket.IO event of the wrong shape).
    Refusal,
    /// Close the connection (not a Socket.IO packet).
    Close,
}

const GARBAGE: [(&str, &str, Expect); 9] = [
    ("not a packet", "hello", Expect::Close),
    ("unknown engine.io type", "9{}", Expect::Close),
    ("bad socket.io type", "4z[]", Expect::Close),
    (
        "truncated JSON",
        r#"42["join-room",{"roomId":"#,
        Expect::Close,
    ),
    (
        "event name not a string",
        r#"42[5,{"roomId":"r"}]"#,
        Expect::Close,
    ),
    (
        "join-room with a number",
        r#"42["join-room",5]"#,
        Expect::Refusal,
    ),
    (
        "relay with wrong types",
        r##"42["#rtcio:message",{"source":1,"target":[],"data":null}]"##,
        Expect::Refusal,
    ),
    (
        "media-state with wrong types",
        r#"42["media-state",{"roomId":7,"mic":"yes"}]"#,
        Expect::Refusal,
    ),
    (
        "unknown event",
        r#"42["no-such-event",{}]"#,
        Expect::Refusal,
    ),
];

/// (3) Garbage frames, each on a fresh connection: refused or the connection closed, as the
/// README says.
pub async fn garbage(ctx: &Ctx) {
    let mut rounds = Rounds::new(ctx, Duration::from_secs(10));
    while let Some(k) = rounds.next().await {
        for (label, frame, expect) in GARBAGE {
            let Some(mut client) = connect(ctx, k, "garbage").await else {
                continue;
            };
            client.send_raw(frame.to_string());
            let reply = answer(&mut client, Duration::from_secs(2), is_refusal).await;
            let seen = describe(&reply);
            let ok = match (&reply, expect) {
                (Answer::Got(_), Expect::Refusal) | (Answer::Closed, Expect::Close) => true,
                _ => false,
            };
            if ok {
                ctx.stats.outcome(&format!("garbage: {label}: {seen}"), 1);
            } else {
                ctx.stats
                    .violation(format!("garbage {label} ({frame}): got {seen}"));
            }
            client.close();
        }
    }
}

/// (4) One socket joins MAX_ROOMS_PER_SOCKET fresh rooms, then one more: that one must get
/// `join-error` `too-many-rooms`.
pub async fn join_spam(ctx: &Ctx) {
    let mut rounds = Rounds::new(ctx, Duration::from_secs(10));
    while let Some(k) = rounds.next().await {
        let Some(mut client) = connect(ctx, k, "join-spam").await else {
            continue;
        };
        let u = ctx.unique();
        for r in 0..=limits::MAX_ROOMS_PER_SOCKET {
            let room = format!("spam-{u}-{r}");
            let (reply, roster) = join(&mut client, &room, None).await;
            let seen = describe(&reply);
            let want = if r < limits::MAX_ROOMS_PER_SOCKET {
                "join-ok"
            } else {
                "join-error too-many-rooms"
            };
            if seen != want || !roster.is_empty() {
                ctx.stats.violation(format!(
                    "join spam: join {} of {room} got {seen} (roster {roster:?}), not {want}",
                    r + 1
                ));
                break;
            }
            if r == limits::MAX_ROOMS_PER_SOCKET {
                ctx.stats.outcome("join spam: too-many-rooms", 1);
            }
        }
        client.close();
    }
}

/// Wrong passwords one guesser tries per round: more than the room's allowance.
const GUESSES: u32 = limits::WRONG_PASSWORDS + 2;

/// (5) A fresh socket of a fresh user each round tries wrong passwords on the locked vault
/// room: at most WRONG_PASSWORDS_PER_USER of them may get `wrong-password` per round (one,
/// once the room has had its WRONG_PASSWORDS_PER_ROOM in the window), then `rate-limited`.
/// Then a guest who knows the password joins the vault, from the other node: it must get in.
pub async fn guess(ctx: &Ctx) {
    let mut rounds = Rounds::new(ctx, Duration::from_secs(7));
    while let Some(k) = rounds.next().await {
        let Some(mut client) = connect(ctx, k, "guesser").await else {
            continue;
        };
        let (mut wrong, mut limited) = (0, 0);
        for g in 0..GUESSES {
            let pw = format!("guess-{k}-{g}");
            let (reply, _) = join(&mut client, super::VAULT_ROOM, Some(&pw)).await;
            match describe(&reply).as_str() {
                "join-error wrong-password" => wrong += 1,
                "join-error rate-limited" => limited += 1,
                other => {
                    ctx.stats
                        .violation(format!("guesser: a wrong password got {other}"));
                    break;
                }
            }
        }
        ctx.stats.outcome("guess: wrong-password", wrong);
        ctx.stats.outcome("guess: rate-limited", limited);
        if wrong > u64::from(limits::WRONG_PASSWORDS) || limited == 0 {
            ctx.stats.violation(format!(
                "guesser: {wrong} wrong-password and {limited} rate-limited in {GUESSES} guesses \
                 (at most {} wrong-password allowed per window)",
                limits::WRONG_PASSWORDS
            ));
        }
        client.close();
        guest(ctx, k + 1).await;
    }
}

/// A newcomer who knows the vault's password, on node `k mod nodes`: the guessers must not
/// have locked it out.
async fn guest(ctx: &Ctx, k: u64) {
    let Some(mut guest) = connect(ctx, k, "vault-guest").await else {
        return;
    };
    let (reply, _) = join(&mut guest, super::VAULT_ROOM, Some(super::VAULT_PASSWORD)).await;
    let got = describe(&reply);
    ctx.stats.outcome(&format!("vault guest: {got}"), 1);
    if got != "join-ok" {
        ctx.stats
            .violation(format!("a vault guest with the password got {got}"));
    }
    guest.close();
}

/// Connections the spammer opens per round beyond the per-address cap.
const OVER_CAP: usize = 16;

/// (6) MAX_CONNECTIONS_PER_ADDRESS + 16 connections from one address to one node: no more
/// than the cap may be admitted, the rest refused.
pub async fn conn_spam(ctx: &Ctx) {
    let mut rounds = Rounds::new(ctx, Duration::from_secs(10));
    while let Some(k) = rounds.next().await {
        let node = k as usize % ctx.nodes.len();
        let mut set = JoinSet::new();
        let mut admitted = Vec::new();
        let mut refused = 0;
        for _ in 0..limits::MAX_PER_ADDRESS + OVER_CAP {
            let (addr, secret) = (ctx.nodes[node], ctx.secret.clone());
            let sub = format!("conn-spam-{}", ctx.unique());
            set.spawn(async move {
                let header = [(
                    limits::CLIENT_IP_HEADER.to_string(),
                    limits::SPAMMER.to_string(),
                )];
                crate::fleet::connect_from(addr, &secret, &sub, &header).await
            });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(c)) => admitted.push(c),
                Ok(Err(sioclient::ConnectError::Refused(why))) => {
                    refused += 1;
                    ctx.stats.outcome(&format!("conn spam: refused: {why}"), 1);
                }
                Ok(Err(e)) => ctx.stats.outcome(&format!("conn spam: {e}"), 1),
                Err(e) => ctx.stats.outcome(&format!("conn spam: task {e}"), 1),
            }
        }
        if admitted.len() > limits::MAX_PER_ADDRESS || refused < OVER_CAP {
            ctx.stats.violation(format!(
                "conn spam: {} admitted and {refused} refused of {} from one address (cap {})",
                admitted.len(),
                limits::MAX_PER_ADDRESS + OVER_CAP,
                limits::MAX_PER_ADDRESS
            ));
        }
        ctx.stats
            .outcome("conn spam: admitted", admitted.len() as u64);
        for c in &admitted {
            c.close();
        }
    }
}
