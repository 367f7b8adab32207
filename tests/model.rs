//! Model-based test: random sequences of connect, join (with right, wrong and no passwords),
//! leave, relay, media-state, chat, drop-and-resume and disconnect from 20 clients across 5
//! rooms, on one node and on two, each step checked against a small reference model of the
//! contract: every client gets exactly the events the model predicts (rosters, init-offers
//! once, no events about itself, nothing from rooms it is not in, departures once), and a
//! recovered session gets what it missed exactly once, in order.
//!
//! The seed is printed; `MODEL_SEED=<n>` replays a run.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::redis::Redis;
use support::{Peer, Server, WAIT, http_request};

const CLIENTS: usize = 20;
const ROOMS: usize = 5;
const STEPS: usize = 600;

/// Lets the model ask the admin API when a clean disconnect has taken effect.
const ADMIN_TOKEN: &str = "model-admin-token-0123456789abcdef";

/// Settings that keep the limits out of the model's way.
const UNLIMITED: [(&str, &str); 10] = [
    ("RELAY_BURST", "100000"),
    ("ROOM_EVENT_BURST", "100000"),
    ("ECHO_BURST", "100000"),
    ("WRONG_PASSWORDS_PER_SOCKET", "100000"),
    ("WRONG_PASSWORDS_PER_USER", "100000"),
    ("WRONG_PASSWORDS_PER_ROOM", "100000"),
    ("RECOVERY_WINDOW_MS", "300000"),
    ("MAX_CONNECTIONS_PER_ADDRESS", "400"),
    ("JWT_SECRET", support::SECRET),
    ("ADMIN_TOKEN", ADMIN_TOKEN),
];

/// xorshift64*: small, seedable, good enough to pick steps.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn seed() -> u64 {
    std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| support::unix_now_nanos() as u64 | 1)
}

/// A client as the model sees it.
enum State {
    Offline,
    Online(Peer),
    /// Its connection dropped; the events the server should keep for it, with their steps.
    Away(Peer, Vec<(usize, (String, Value))>),
}

#[derive(Default)]
struct Room {
    /// Client indexes in joining order.
    members: Vec<usize>,
    /// The password the first joiner set (`None`: open).
    lock: Option<String>,
    /// Cached `{mic, cam}` per member.
    media: BTreeMap<usize, (bool, bool)>,
}

struct Model<'a> {
    servers: Vec<&'a Server>,
    clients: Vec<State>,
    rooms: Vec<Room>,
    /// Events each client must get from the current step.
    expected: BTreeMap<usize, Vec<(String, Value)>>,
    rng: Rng,
    step: usize,
}

fn room_id(room: usize) -> String {
    format!("model-room-{room}")
}

/// An event as the model compares it: refusals by code only (their messages are prose).
fn normalized(name: &str, data: &Value) -> (String, Value) {
    let data = match name {
        "error" => json!({ "code": data["code"], "event": data["event"] }),
        "join-error" => json!({ "roomId": data["roomId"], "reason": data["reason"] }),
        _ => data.clone(),
    };
    (name.to_string(), data)
}

impl<'a> Model<'a> {
    fn peer_id(&self, client: usize) -> Option<String> {
        match &self.clients[client] {
            State::Offline => None,
            State::Online(peer) | State::Away(peer, _) => Some(peer.id().to_string()),
        }
    }

    fn id(&self, client: usize) -> String {
        self.peer_id(client).expect("a client with a session")
    }

    /// `client` must get this event from the current step (kept for it if it is away).
    fn expect(&mut self, client: usize, name: &str, data: Value) {
        let event = normalized(name, &data);
        match &mut self.clients[client] {
            State::Away(_, kept) => kept.push((self.step, event)),
            State::Online(_) => self.expected.entry(client).or_default().push(event),
            State::Offline => panic!("step {}: an event for an offline client", self.step),
        }
    }

    fn rooms_of(&self, client: usize) -> Vec<usize> {
        (0..ROOMS)
            .filter(|r| self.rooms[*r].members.contains(&client))
            .collect()
    }

    /// Reads every online client's events for this step and compares them with the model's.
    async fn check(&mut self, what: &str) {
        let expected = std::mem::take(&mut self.expected);
        for (client, events) in expected {
            let State::Online(peer) = &mut self.clients[client] else {
                continue;
            };
            let mut got = Vec::new();
            for _ in 0..events.len() {
                let event = peer.next().await;
                got.push(normalized(&event.name, &event.data));
            }
            let (mut want_sorted, mut got_sorted) = (events.clone(), got.clone());
            want_sorted.sort_by_key(|e| format!("{e:?}"));
            got_sorted.sort_by_key(|e| format!("{e:?}"));
            assert_eq!(
                got_sorted, want_sorted,
                "step {} ({what}): client {client} got {got:?}, the model says {events:?}",
                self.step
            );
            // A newcomer's roster comes before its join-ok.
            if let Some(ok) = got.iter().position(|e| e.0 == "join-ok") {
                assert!(
                    !got[ok..]
                        .iter()
                        .any(|e| e.0 == "user-connected" || e.0 == "media-state"),
                    "step {} ({what}): client {client}'s roster after its join-ok: {got:?}",
                    self.step
                );
            }
        }
    }

    async fn run(&mut self) {
        for step in 0..STEPS {
            self.step = step;
            let client = self.rng.below(CLIENTS);
            let what = match &self.clients[client] {
                State::Offline => self.connect(client).await,
                State::Away(..) => self.resume(client).await,
                State::Online(_) => match self.rng.below(100) {
                    0..30 => self.join(client).await,
                    30..40 => self.leave(client),
                    40..60 => self.relay(client),
                    60..72 => self.media_state(client),
                    72..82 => self.chat(client),
                    82..91 => self.drop_connection(client),
                    _ => self.disconnect(client).await,
                },
            };
            self.probe(client);
            if std::env::var_os("MODEL_TRACE").is_some() {
                eprintln!("step {step}: {what}");
            }
            self.check(&what).await;
        }
        self.barrier().await;
    }

    /// The acting client (if still connected) asks something only it hears the answer to:
    /// once it has the answer, the server has done everything its step caused, so the next
    /// step cannot overtake it.
    fn probe(&mut self, client: usize) {
        if let State::Online(peer) = &self.clients[client] {
            peer.emit("leave-room", json!({ "roomId": "model-nowhere" }));
            self.expect(
                client,
                "error",
                json!({ "code": "not-in-room", "event": "leave-room" }),
            );
        }
    }

    async fn connect(&mut self, client: usize) -> String {
        let server = self.servers[client % self.servers.len()];
        let peer = server.client(&format!("c{client}")).await;
        self.clients[client] = State::Online(peer);
        format!("{client} connects")
    }

    async fn join(&mut self, client: usize) -> String {
        let room = self.rng.below(ROOMS);
        let locked_room = room < 2;
        let password = match self.rng.below(10) {
            _ if !locked_room => None,
            0 => None,
            1 => Some("wrong".to_string()),
            _ => Some(format!("pw{room}")),
        };
        let id = self.id(client);
        let mut payload = json!({ "roomId": room_id(room), "name": format!("n{client}") });
        if let Some(password) = &password {
            payload["password"] = json!(password);
        }
        if let State::Online(peer) = &self.clients[client] {
            peer.emit("join-room", payload);
        }
        let what = format!("{client} joins {room} with {password:?}");
        let r = &self.rooms[room];
        if r.members.contains(&client) {
            self.expect(client, "join-ok", json!({ "roomId": room_id(room) }));
            return what;
        }
        if let (Some(lock), false) = (&r.lock, r.members.is_empty()) {
            let refusal = match &password {
                None => Some("password-required"),
                Some(given) if given != lock => Some("wrong-password"),
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                self.expect(
                    client,
                    "join-error",
                    json!({ "roomId": room_id(room), "reason": reason }),
                );
                return what;
            }
        }
        if r.members.is_empty() {
            self.rooms[room].lock = password.clone();
            self.rooms[room].media.clear();
        }
        let existing = self.rooms[room].members.clone();
        for member in existing {
            let member_id = self.id(member);
            self.expect(
                client,
                "user-connected",
                json!({ "id": member_id, "name": format!("n{member}"), "userId": format!("c{member}") }),
            );
            if let Some((mic, cam)) = self.rooms[room].media.get(&member).copied() {
                self.expect(
                    client,
                    "media-state",
                    json!({ "id": member_id, "roomId": room_id(room), "mic": mic, "cam": cam }),
                );
            }
            self.expect(
                member,
                "user-connected",
                json!({ "id": id, "name": format!("n{client}"), "userId": format!("c{client}") }),
            );
            self.expect(member, "#rtcio:init-offer", json!({ "source": id }));
        }
        self.expect(client, "join-ok", json!({ "roomId": room_id(room) }));
        self.rooms[room].members.push(client);
        what
    }

    /// `client` has left `room`: the others hear it once.
    fn depart(&mut self, client: usize, room: usize) {
        let id = self.id(client);
        self.rooms[room].members.retain(|m| *m != client);
        self.rooms[room].media.remove(&client);
        for member in self.rooms[room].members.clone() {
            self.expect(member, "#rtcio:peer-left", json!({ "id": id }));
            self.expect(member, "user-disconnected", json!({ "id": id }));
        }
    }

    fn leave(&mut self, client: usize) -> String {
        let room = self.rng.below(ROOMS);
        if let State::Online(peer) = &self.clients[client] {
            peer.emit("leave-room", json!({ "roomId": room_id(room) }));
        }
        if self.rooms[room].members.contains(&client) {
            self.depart(client, room);
        } else {
            self.expect(
                client,
                "error",
                json!({ "code": "not-in-room", "event": "leave-room" }),
            );
        }
        format!("{client} leaves {room}")
    }

    fn relay(&mut self, client: usize) -> String {
        let target = (client + 1 + self.rng.below(CLIENTS - 1)) % CLIENTS;
        let target_id = self
            .peer_id(target)
            .unwrap_or_else(|| "never-connected".into());
        let data = json!({ "step": self.step });
        if let State::Online(peer) = &self.clients[client] {
            peer.relay(&target_id, data.clone());
        }
        let shared = self
            .rooms_of(client)
            .iter()
            .any(|r| self.rooms[*r].members.contains(&target));
        if shared {
            let message = json!({ "source": self.id(client), "target": target_id, "data": data });
            self.expect(target, "#rtcio:message", message);
        } else {
            self.expect(
                client,
                "error",
                json!({ "code": "unknown-target", "event": "#rtcio:message" }),
            );
        }
        format!("{client} relays to {target}")
    }

    /// `event` with `fields` from `client` in a random room: echoed to the others if it is a
    /// member. Returns the room and whether it was echoed.
    fn echo(&mut self, client: usize, event: &str, fields: Value) -> (usize, bool) {
        let room = self.rng.below(ROOMS);
        let mut payload = fields;
        payload["roomId"] = json!(room_id(room));
        if let State::Online(peer) = &self.clients[client] {
            peer.emit(event, payload.clone());
        }
        if !self.rooms[room].members.contains(&client) {
            self.expect(
                client,
                "error",
                json!({ "code": "not-in-room", "event": event }),
            );
            return (room, false);
        }
        payload["id"] = json!(self.id(client));
        for member in self.rooms[room].members.clone() {
            if member != client {
                self.expect(member, event, payload.clone());
            }
        }
        (room, true)
    }

    fn media_state(&mut self, client: usize) -> String {
        let (mic, cam) = (self.rng.chance(50), self.rng.chance(50));
        let (room, echoed) = self.echo(client, "media-state", json!({ "mic": mic, "cam": cam }));
        if echoed {
            self.rooms[room].media.insert(client, (mic, cam));
        }
        format!("{client} media-state in {room}")
    }

    fn chat(&mut self, client: usize) -> String {
        let text = format!("hello {}", self.step);
        let (room, _) = self.echo(client, "chat-message", json!({ "text": text }));
        format!("{client} chats in {room}")
    }

    fn drop_connection(&mut self, client: usize) -> String {
        let State::Online(peer) = std::mem::replace(&mut self.clients[client], State::Offline)
        else {
            unreachable!("only online clients drop");
        };
        peer.client.abort();
        self.clients[client] = State::Away(peer, Vec::new());
        format!("{client} drops")
    }

    /// Back on the other node (in a cluster) with its credential: the session is recovered and
    /// what it missed arrives exactly once, in order, before anything new.
    async fn resume(&mut self, client: usize) -> String {
        let State::Away(mut peer, kept) =
            std::mem::replace(&mut self.clients[client], State::Offline)
        else {
            unreachable!("only away clients resume");
        };
        let server = self.servers[self.rng.below(self.servers.len())];
        let token = server.token(&format!("c{client}"));
        peer.reconnect(server, &token).await;
        assert_eq!(
            peer.session["recovered"],
            json!(true),
            "step {}: {client} was not recovered",
            self.step
        );
        // In the order of the steps that sent them (within one step, in any order).
        let mut got = Vec::new();
        for _ in 0..kept.len() {
            let event = peer.next().await;
            got.push(normalized(&event.name, &event.data));
        }
        let by_step = |events: &[(usize, (String, Value))]| {
            let mut sorted: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
            sorted.sort();
            sorted
        };
        let got_by_step: Vec<(usize, (String, Value))> =
            kept.iter().map(|(step, _)| *step).zip(got).collect();
        assert_eq!(
            by_step(&got_by_step),
            by_step(&kept),
            "step {}: {client}'s missed events, in the order of their steps: {got_by_step:?}",
            self.step
        );
        self.clients[client] = State::Online(peer);
        format!("{client} resumes ({} missed)", kept.len())
    }

    async fn disconnect(&mut self, client: usize) -> String {
        let id = self.id(client);
        let rooms = self.rooms_of(client);
        for room in &rooms {
            self.depart(client, *room);
        }
        if let State::Online(peer) = std::mem::replace(&mut self.clients[client], State::Offline) {
            peer.client.close();
        }
        // Nobody may hear of it (its rooms may hold only it, or only away clients), so the
        // next step could overtake it: wait until the server has taken it out of its rooms.
        for room in rooms {
            self.until_gone(&id, room).await;
        }
        format!("{client} disconnects")
    }

    /// Polls the admin API until `room`'s roster no longer lists `id` (no event says so).
    async fn until_gone(&self, id: &str, room: usize) {
        let path = format!("/admin/rooms/{}", room_id(room));
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let (addr, step) = (self.servers[0].addr, self.step);
        support::poll_until(WAIT, Duration::from_millis(5), async || {
            let (status, body) =
                http_request(addr, "GET", &path, &[("Authorization", &bearer)], "").await;
            match status {
                404 => Ok(()),
                200 if !body.contains(&format!("\"{id}\"")) => Ok(()),
                200 => Err(format!("step {step}: {id} still in {path}: {body}")),
                _ => panic!("step {step}: GET {path} answered {status}: {body}"),
            }
        })
        .await;
    }

    /// Nothing the model did not predict is left: every away client is taken up again, and
    /// then every client's next event is the answer to a probe it sends now.
    async fn barrier(&mut self) {
        for client in 0..CLIENTS {
            if let State::Away(..) = self.clients[client] {
                self.resume(client).await;
            }
        }
        for (client, state) in self.clients.iter_mut().enumerate() {
            let State::Online(peer) = state else { continue };
            peer.emit("leave-room", json!({ "roomId": "model-nowhere" }));
            let event = peer.next().await;
            assert_eq!(
                normalized(&event.name, &event.data),
                normalized(
                    "error",
                    &json!({ "code": "not-in-room", "event": "leave-room" })
                ),
                "client {client}: an event the model did not predict"
            );
        }
    }
}

async fn run_model(servers: Vec<&Server>, label: &str) {
    let seed = seed();
    eprintln!("model ({label}): MODEL_SEED={seed}");
    let mut model = Model {
        servers,
        clients: (0..CLIENTS).map(|_| State::Offline).collect(),
        rooms: (0..ROOMS).map(|_| Room::default()).collect(),
        expected: BTreeMap::new(),
        rng: Rng(seed),
        step: 0,
    };
    model.run().await;
    let members: BTreeSet<usize> = model.rooms.iter().flat_map(|r| r.members.clone()).collect();
    eprintln!(
        "model ({label}): {STEPS} steps, {} clients in rooms at the end",
        members.len()
    );
}

#[tokio::test]
async fn one_node_follows_the_model() {
    let server = Server::start_with(&[], &UNLIMITED).await;
    run_model(vec![&server], "one node").await;
}

#[tokio::test]
async fn two_nodes_follow_the_model() {
    let redis = Redis::start().await;
    let settings: Vec<(&str, &str)> = UNLIMITED
        .iter()
        .copied()
        .filter(|(k, _)| *k != "JWT_SECRET")
        .collect();
    let (one, two) = (
        redis.node_with(&settings).await,
        redis.node_with(&settings).await,
    );
    run_model(vec![&one, &two], "two nodes").await;
}
