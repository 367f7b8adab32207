//! The soak's honest load: calls. Each call is one room whose members join one at a time,
//! negotiate (offer, answer, ICE candidates) over `#rtcio:message`, talk (a trickle of relays,
//! `chat-message`s and `media-state` toggles), let late joiners in half-way, and leave one at a
//! time (`leave-room` or a plain close). One task owns a call and sees every event its members
//! get, so it keeps an exact model of the room and checks each event against it: rosters in
//! `join-ok`, one `user-connected` and `#rtcio:init-offer` per pair, one departure notice each,
//! and every relay and echo delivered exactly once, in order, to members only. Membership
//! changes wait until nothing is in flight, so the model never has to guess.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sioclient::{Event, Sender};
use tokio::sync::mpsc;

use super::Ctx;
use crate::fleet;

/// How often a talking call sends its trickle.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait for one membership change's events.
const STEP_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for what is in flight before a membership change.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// A call's talk, drawn from this range (cut short by the end of the run).
const TALK_SECS: std::ops::Range<u64> = 20..60;

/// One call: its room, who joins when, how long they talk.
pub struct Spec {
    pub room: String,
    pub password: Option<String>,
    /// Members that join at the start, and those that join half-way through the talk.
    pub first: usize,
    pub late: usize,
    pub talk: Duration,
    /// Others (the hostile clients) may join: what they send is counted, not checked.
    pub open_door: bool,
    /// Member `i` connects to node `(node0 + i) % nodes`.
    pub node0: usize,
    /// Member names are `{names}-{i}`.
    pub names: String,
}

impl Spec {
    /// A call of 2 to 6 peers, a third of them behind a password.
    pub fn random(ctx: &Ctx, rng: &mut u64) -> Spec {
        let id = ctx.unique();
        let peers = 2 + (fleet::xorshift(rng) % 5) as usize;
        let first = ((peers + 1) / 2).max(2);
        let span = TALK_SECS.end - TALK_SECS.start;
        Spec {
            room: format!("call-{id}"),
            password: fleet::xorshift(rng)
                .is_multiple_of(3)
                .then(|| format!("pw-{id}")),
            first,
            late: peers - first,
            talk: Duration::from_secs(TALK_SECS.start + fleet::xorshift(rng) % span),
            open_door: false,
            node0: (fleet::xorshift(rng) % 2) as usize,
            names: format!("peer-{id}"),
        }
    }
}

/// What a message carries: relays per sender and target, echoes per sender and receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Relay,
    Chat,
    Media,
}

/// One stream of numbered messages from one member to another.
#[derive(Default)]
struct Chan {
    /// Messages sent on it, and those counted as lost when they did not come in time.
    sent: u64,
    abandoned: u64,
    delivered: u64,
    /// The number the next message should carry, and earlier ones skipped by a later one.
    next: u64,
    missing: BTreeSet<u64>,
}

impl Chan {
    /// A stream whose first message carries `n` (an echo stream of a member who joined late).
    fn starting_at(n: u64) -> Chan {
        Chan {
            next: n,
            ..Chan::default()
        }
    }

    fn outstanding(&self) -> u64 {
        self.sent.saturating_sub(self.delivered + self.abandoned)
    }
}

/// Receipt of message `n` on a stream.
enum Receipt {
    InOrder,
    /// Overtook earlier ones (which are then expected late).
    Early,
    Late,
    Duplicate,
}

impl Chan {
    fn receive(&mut self, n: u64) -> Receipt {
        if n == self.next {
            self.next += 1;
        } else if n > self.next {
            // Bounded: a wild number does not make a huge set.
            self.missing.extend(self.next..n.min(self.next + 10_000));
            self.next = n + 1;
            self.delivered += 1;
            return Receipt::Early;
        } else if !self.missing.remove(&n) {
            return Receipt::Duplicate;
        } else {
            self.delivered += 1;
            return Receipt::Late;
        }
        self.delivered += 1;
        Receipt::InOrder
    }
}

struct Member {
    id: String,
    name: String,
    sender: Sender,
    /// In the room: from its `join-ok` until it leaves.
    joined: bool,
    /// Left or closed by the call: its connection may end.
    gone: bool,
    media: Option<(bool, bool)>,
    /// What it heard before its `join-ok`: `user-connected` (id -> name), `media-state`.
    roster: BTreeMap<String, String>,
    roster_media: BTreeMap<String, (bool, bool)>,
}

type Incoming = (usize, Option<(Event, Instant)>);

struct Call<'a> {
    ctx: &'a Ctx,
    spec: Spec,
    members: Vec<Member>,
    chans: HashMap<(usize, usize, Kind), Chan>,
    /// Each member's next echo number, per kind.
    echo_seq: HashMap<(usize, Kind), u64>,
    /// Events the current step must bring: (member, event, the peer it names) -> count.
    expect: BTreeMap<(usize, String, String), u32>,
    /// Peers not of the call seen in the room (only with `open_door`).
    outsiders: BTreeSet<String>,
    events: mpsc::UnboundedReceiver<Incoming>,
    tx: mpsc::UnboundedSender<Incoming>,
    rng: u64,
}

/// Runs one call from the first connect to the last departure.
pub async fn run(ctx: &Ctx, spec: Spec, seed: u64) {
    let (tx, events) = mpsc::unbounded_channel();
    let mut call = Call {
        ctx,
        spec,
        members: Vec::new(),
        chans: HashMap::new(),
        echo_seq: HashMap::new(),
        expect: BTreeMap::new(),
        outsiders: BTreeSet::new(),
        events,
        tx,
        rng: seed | 1,
    };
    ctx.stats.with(|c| c.calls_started += 1);
    let talk_end = (Instant::now() + call.spec.talk).min(ctx.deadline);
    let first = call.spec.first;
    if call.add_members(first).await {
        let half = Instant::now() + talk_end.saturating_duration_since(Instant::now()) / 2;
        call.run_until(half, true, |_| false).await;
        let late = call.spec.late;
        if call.add_members(late).await {
            call.run_until(talk_end, true, |_| false).await;
        }
    }
    call.end().await;
    ctx.stats.with(|c| c.calls_ended += 1);
}

impl Call<'_> {
    fn violation(&self, what: String) {
        self.ctx
            .stats
            .violation(format!("{}: {what}", self.spec.room));
    }

    /// Connects and joins `n` more members, one at a time; false if one could not connect.
    async fn add_members(&mut self, n: usize) -> bool {
        for _ in 0..n {
            let i = self.members.len();
            let name = format!("{}-{i}", self.spec.names);
            let node = (self.spec.node0 + i) % self.ctx.nodes.len();
            let address = self.ctx.own_address();
            let mut client = match self.ctx.connect(node, &name, &address).await {
                Ok(c) => c,
                Err(e) => {
                    self.violation(format!("honest client {name} could not connect: {e}"));
                    return false;
                }
            };
            self.members.push(Member {
                id: client.sid.clone(),
                name,
                sender: client.sender(),
                joined: false,
                gone: false,
                media: None,
                roster: BTreeMap::new(),
                roster_media: BTreeMap::new(),
            });
            let tx = self.tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = client.next_timed_event().await {
                    if tx.send((i, Some(ev))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
            self.join(i).await;
        }
        true
    }

    fn joined(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].joined)
            .collect()
    }

    /// Member `i` joins; waits for its `join-ok` and for every member's notice of it.
    async fn join(&mut self, i: usize) {
        // Nothing in flight: the newcomer's roster and echo streams start from a known state.
        self.settle().await;
        let id = self.members[i].id.clone();
        for j in self.joined() {
            self.expect_one(j, "user-connected", &id);
            self.expect_one(j, "#rtcio:init-offer", &id);
        }
        let room = self.spec.room.clone();
        self.expect_one(i, "join-ok", &room);
        let mut join = json!({ "roomId": room, "name": self.members[i].name });
        if let Some(pw) = &self.spec.password {
            join["password"] = json!(pw);
        }
        self.members[i].sender.emit("join-room", &join);
        self.step(&format!("join of {}", self.members[i].name))
            .await;
    }

    /// Member `i` leaves, by `leave-room` then a close, or by a close alone; waits for every
    /// remaining member's notice of it.
    async fn depart(&mut self, i: usize, by_leave: bool) {
        self.settle().await;
        let id = self.members[i].id.clone();
        let m = &mut self.members[i];
        m.joined = false;
        m.gone = true;
        if by_leave {
            m.sender
                .emit("leave-room", &json!({ "roomId": self.spec.room }));
        }
        m.sender.close();
        for j in self.joined() {
            self.expect_one(j, "#rtcio:peer-left", &id);
            self.expect_one(j, "user-disconnected", &id);
        }
        self.step(&format!("departure of {}", self.members[i].name))
            .await;
    }

    /// Everyone leaves, in a random order.
    async fn end(&mut self) {
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        for k in (1..order.len()).rev() {
            let r = fleet::xorshift(&mut self.rng) as usize % (k + 1);
            order.swap(k, r);
        }
        for i in order {
            if !self.members[i].gone {
                let by_leave = fleet::xorshift(&mut self.rng).is_multiple_of(2);
                self.depart(i, by_leave).await;
            }
        }
        let (lost, outstanding): (u64, u64) = self
            .chans
            .values()
            .map(|c| (c.abandoned, c.outstanding()))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if outstanding > 0 {
            self.violation(format!("{outstanding} messages still in flight at the end"));
        }
        self.ctx.stats.with(|c| c.lost += lost + outstanding);
    }

    fn expect_one(&mut self, member: usize, event: &str, about: &str) {
        *self
            .expect
            .entry((member, event.to_string(), about.to_string()))
            .or_default() += 1;
    }

    /// Takes one expected event; false if it was not expected.
    fn expected(&mut self, member: usize, event: &str, about: &str) -> bool {
        let key = (member, event.to_string(), about.to_string());
        match self.expect.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.expect.remove(&key);
            }
            None => return false,
        }
        true
    }

    /// Waits for the current step's expected events; what never came is a violation.
    async fn step(&mut self, what: &str) {
        let until = Instant::now() + STEP_LIMIT;
        if !self.run_until(until, false, |c| c.expect.is_empty()).await {
            let missing: Vec<String> = self
                .expect
                .keys()
                .take(4)
                .map(|(m, ev, about)| format!("{ev} about {about} to {}", self.members[*m].name))
                .collect();
            self.violation(format!(
                "{what}: {} events missing after {STEP_LIMIT:?}, e.g. {}",
                self.expect.len(),
                missing.join("; ")
            ));
            self.expect.clear();
        }
    }

    /// Waits until every message sent has arrived; what did not is counted lost.
    async fn settle(&mut self) {
        let until = Instant::now() + SETTLE_LIMIT;
        let quiet = |c: &Call| c.chans.values().all(|ch| ch.outstanding() == 0);
        if !self.run_until(until, false, quiet).await {
            let mut lost = 0;
            for ch in self.chans.values_mut() {
                lost += ch.outstanding();
                ch.abandoned += ch.outstanding();
            }
            self.violation(format!(
                "{lost} honest messages not delivered within {SETTLE_LIMIT:?}"
            ));
        }
    }

    /// Handles the members' events (and sends the trickle while `talking`) until `done` or
    /// `until`; false if `until` came first.
    async fn run_until(
        &mut self,
        until: Instant,
        talking: bool,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        let mut tick = Instant::now() + TICK;
        loop {
            if done(self) {
                return true;
            }
            tokio::select! {
                incoming = self.events.recv() => match incoming {
                    Some((i, Some((ev, at)))) => self.on_event(i, ev, at),
                    Some((i, None)) => self.on_closed(i),
                    // Never: the call holds a sender.
                    None => return false,
                },
                _ = tokio::time::sleep_until(tick.into()), if talking => {
                    self.trickle();
                    tick += TICK;
                }
                _ = tokio::time::sleep_until(until.into()) => return false,
            }
        }
    }

    fn on_closed(&mut self, i: usize) {
        if !self.members[i].gone {
            self.violation(format!("{}'s connection dropped", self.members[i].name));
            self.members[i].gone = true;
            self.members[i].joined = false;
        }
    }

    fn member_by_id(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.joined && m.id == id)
    }

    fn on_event(&mut self, i: usize, ev: Event, at: Instant) {
        let name = self.members[i].name.clone();
        if self.members[i].gone && ev.name != "session" {
            self.violation(format!("{name} got {} after it left: {}", ev.name, ev.data));
            return;
        }
        if fleet::peer_of(&ev) == Some(self.members[i].id.as_str()) {
            self.violation(format!("{name} got {} about itself: {}", ev.name, ev.data));
            return;
        }
        let about = fleet::peer_of(&ev).unwrap_or_default().to_string();
        match ev.name.as_str() {
            "session" => {}
            "#rtcio:message" => self.on_relay(i, &ev.data, at),
            "chat-message" => self.on_echo(i, Kind::Chat, &ev.data),
            "media-state" if ev.data.get("n").is_some() => self.on_echo(i, Kind::Media, &ev.data),
            "media-state" if !self.members[i].joined => {
                let state = (ev.data["mic"].as_bool(), ev.data["cam"].as_bool());
                if let (Some(mic), Some(cam)) = state {
                    self.members[i].roster_media.insert(about, (mic, cam));
                } else {
                    self.violation(format!("{name} got a malformed media-state {}", ev.data));
                }
            }
            "user-connected" if !self.members[i].joined => {
                let peer_name = ev.data["name"].as_str().unwrap_or_default().to_string();
                self.members[i].roster.insert(about, peer_name);
            }
            "join-ok" => self.on_join_ok(i, &ev.data),
            event @ ("user-connected" | "#rtcio:init-offer" | "#rtcio:peer-left"
            | "user-disconnected") => {
                if self.expected(i, event, &about) {
                    if event == "#rtcio:init-offer"
                        && let Some(j) = self.members.iter().position(|m| m.id == about)
                    {
                        self.negotiate(i, j, "offer");
                    }
                } else if self.spec.open_door && !self.members.iter().any(|m| m.id == about) {
                    self.outsiders.insert(about);
                } else {
                    self.violation(format!("{name} got an unexpected {event} {}", ev.data));
                }
            }
            _ => self.violation(format!("{name} got {} {}", ev.name, ev.data)),
        }
    }

    /// The newcomer's `join-ok`: its roster must be exactly the members already in.
    fn on_join_ok(&mut self, i: usize, data: &Value) {
        let room = self.spec.room.clone();
        let name = self.members[i].name.clone();
        if data["roomId"] != room.as_str() || !self.expected(i, "join-ok", &room) {
            return self.violation(format!("{name} got an unexpected join-ok {data}"));
        }
        let roster = std::mem::take(&mut self.members[i].roster);
        let media = std::mem::take(&mut self.members[i].roster_media);
        for j in self.joined() {
            let m = &self.members[j];
            match roster.get(&m.id) {
                Some(n) if *n == m.name => {}
                Some(n) => self.violation(format!(
                    "roster of {name}: {} named {n:?}, not {:?}",
                    m.id, m.name
                )),
                None => self.violation(format!("roster of {name}: {} missing", m.name)),
            }
            if media.get(&m.id) != m.media.as_ref() {
                self.violation(format!(
                    "roster of {name}: media state of {} is {:?}, the model says {:?}",
                    m.name,
                    media.get(&m.id),
                    m.media
                ));
            }
        }
        for id in roster.keys() {
            if self.member_by_id(id).is_none() {
                if self.spec.open_door && !self.members.iter().any(|m| &m.id == id) {
                    self.outsiders.insert(id.clone());
                } else {
                    self.violation(format!("roster of {name}: {id} is not in the room"));
                }
            }
        }
        for id in media.keys() {
            if !roster.contains_key(id) {
                self.violation(format!(
                    "{name} got a media-state of {id}, not in its roster"
                ));
            }
        }
        // Echo streams to the newcomer start at each sender's next number.
        for j in self.joined() {
            for kind in [Kind::Chat, Kind::Media] {
                let next = self.echo_seq.get(&(j, kind)).copied().unwrap_or(0);
                self.chans.insert((j, i, kind), Chan::starting_at(next));
            }
        }
        self.members[i].joined = true;
    }

    fn on_relay(&mut self, i: usize, data: &Value, at: Instant) {
        let source = data["source"].as_str().unwrap_or_default();
        let Some(j) = self.member_by_id(source) else {
            if self.spec.open_door && self.outsiders.contains(source) {
                self.ctx.stats.outcome(super::FLOOD_REACHED, 1);
            } else {
                let name = &self.members[i].name;
                self.violation(format!("{name} got a relay from {source}, not in the room"));
            }
            return;
        };
        let d = &data["data"];
        let (Some(n), Some(t), Some(k)) = (d["n"].as_u64(), d["t"].as_u64(), d["k"].as_str())
        else {
            return self.violation(format!("malformed relay {data}"));
        };
        let sent_at = self.ctx.epoch + Duration::from_nanos(t);
        let us = at.saturating_duration_since(sent_at).as_micros();
        self.ctx.stats.with(|c| {
            c.relays_delivered += 1;
            c.relay_lat_us.push(us.min(u32::MAX as u128) as u32);
        });
        self.receive(j, i, Kind::Relay, n);
        if k == "offer" {
            self.negotiate(i, j, "answer");
        }
    }

    fn on_echo(&mut self, i: usize, kind: Kind, data: &Value) {
        let name = &self.members[i].name;
        let id = data["id"].as_str().unwrap_or_default();
        if data["roomId"] != self.spec.room.as_str() {
            return self.violation(format!("{name} got an echo for another room: {data}"));
        }
        let Some(j) = self.member_by_id(id) else {
            if !(self.spec.open_door && self.outsiders.contains(id)) {
                self.violation(format!("{name} got an echo from {id}, not in the room"));
            }
            return;
        };
        let Some(n) = data["n"].as_u64() else {
            return self.violation(format!("malformed echo {data}"));
        };
        self.ctx.stats.with(|c| c.echoes_delivered += 1);
        self.receive(j, i, kind, n);
    }

    /// Message `n` from `from` to `to` arrived: exactly once and in order, or counted.
    fn receive(&mut self, from: usize, to: usize, kind: Kind, n: u64) {
        let receipt = self.chans.entry((from, to, kind)).or_default().receive(n);
        let (a, b) = (&self.members[from].name, &self.members[to].name);
        match receipt {
            Receipt::InOrder | Receipt::Late => {}
            Receipt::Early => {
                self.ctx.stats.with(|c| c.out_of_order += 1);
                self.violation(format!(
                    "{kind:?} {n} from {a} to {b} overtook an earlier one"
                ));
            }
            Receipt::Duplicate => {
                self.ctx.stats.with(|c| c.duplicated += 1);
                self.violation(format!("{kind:?} {n} from {a} to {b} arrived twice"));
            }
        }
    }

    /// Sends one numbered relay: `body` is the rest of its `data` object.
    fn relay(&mut self, from: usize, to: usize, k: &str, body: &str) {
        let ch = self.chans.entry((from, to, Kind::Relay)).or_default();
        let n = ch.sent;
        ch.sent += 1;
        let t = self.ctx.ns();
        let (src, dst) = (&self.members[from].id, &self.members[to].id);
        self.members[from].sender.send_raw(format!(
            r##"42["#rtcio:message",{{"source":"{src}","target":"{dst}","data":{{"n":{n},"t":{t},"k":"{k}",{body}}}}}]"##
        ));
        self.ctx.stats.with(|c| c.relays_sent += 1);
    }

    /// `from`'s side of a negotiation with `to`: its description, then a few candidates and
    /// the end of them.
    fn negotiate(&mut self, from: usize, to: usize, description: &str) {
        let ctx = self.ctx;
        let body = if description == "offer" {
            &ctx.bodies.offer
        } else {
            &ctx.answer
        };
        self.relay(from, to, description, body);
        for _ in 0..2 + fleet::xorshift(&mut self.rng) % 3 {
            self.relay(from, to, "candidate", &ctx.bodies.candidate);
        }
        self.relay(from, to, "end", super::END_OF_CANDIDATES);
    }

    /// Echoes `payload` (with its number) from `from` to the other members.
    fn echo(&mut self, from: usize, kind: Kind, event: &str, mut payload: Value) {
        let seq = self.echo_seq.entry((from, kind)).or_default();
        let n = *seq;
        *seq += 1;
        payload["roomId"] = json!(self.spec.room);
        payload["n"] = json!(n);
        self.members[from].sender.emit(event, &payload);
        let others: Vec<usize> = self.joined().into_iter().filter(|&j| j != from).collect();
        for &j in &others {
            self.chans.entry((from, j, kind)).or_default().sent += 1;
        }
        self.ctx
            .stats
            .with(|c| c.echoes_sent += others.len() as u64);
    }

    /// One tick of talk: each member may relay to another (now and then a renegotiation),
    /// chat, or toggle its microphone or camera.
    fn trickle(&mut self) {
        let joined = self.joined();
        for &i in &joined {
            let r = fleet::xorshift(&mut self.rng);
            if r % 5 == 0 && joined.len() > 1 {
                let j = joined[(r as usize / 7) % joined.len()];
                if j != i {
                    let ctx = self.ctx;
                    if r % 100 < 5 {
                        self.relay(i, j, "offer", &ctx.bodies.offer);
                    } else {
                        self.relay(i, j, "candidate", &ctx.bodies.candidate);
                    }
                }
            }
            if r % 25 == 1 {
                let text = format!("message {} from {}", r % 1000, self.members[i].name);
                self.echo(i, Kind::Chat, "chat-message", json!({ "text": text }));
            }
            if r % 50 == 2 {
                let state = (r & 64 != 0, r & 128 != 0);
                self.members[i].media = Some(state);
                let payload = json!({ "mic": state.0, "cam": state.1 });
                self.echo(i, Kind::Media, "media-state", payload);
            }
        }
    }
}
