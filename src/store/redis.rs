//! Room state shared by every node of a cluster, in Redis, and the node registry that lets
//! survivors clean up after a node that died.
//!
//! Each membership change is one Lua script, so Redis runs it atomically: a join reads the
//! room and adds the newcomer in the same step, which is what keeps two nodes' simultaneous
//! joins from missing each other. Layout (standalone Redis; scripts touch keys they compute):
//! - `rtcio:room:{room}`   hash peer -> "seq|node|{name,user}" (seq orders the snapshot by
//!   join; node is where the peer's session lives, so events for it go to that node only)
//! - `rtcio:media:{room}`  hash peer -> "mic,cam" (0/1)
//! - `rtcio:born:{room}`   when the room got its first member (unix ms), while it has members
//! - `rtcio:lock:{room}`   the room's password seal (an argon2id PHC string), while it has
//!   members; set by the join that fills the empty room, deleted by the leave that empties it
//! - `rtcio:guesses:{room}` password attempts counted in the current window (a right one is
//!   given back), expiring with the window; `rtcio:guesser:{len}:{room}:{user}` the same for
//!   one user id on the room (`len`, the room id's length, keeps the pair unambiguous)
//! - `rtcio:node:{id}:members` set of "room\npeer" this node's peers hold
//! - `rtcio:node:{id}:alive`   expiring key refreshed by the node's heartbeat
//! - `rtcio:node:{id}:heir`    the node a shut-down node left its sessions to, for the
//!   recovery window; `rtcio:node:{id}:draining` while it hands them over
//! - `rtcio:nodes` set of node ids; `rtcio:seq` join counter
//! - `rtcio:eio:{sid}` the Fly machine holding an Engine.IO session opened over polling
//!   (`fly`), expiring an hour after it was last asked for
//! - `rtcio:webhooks` list of webhook event bodies waiting to be sent, oldest first, pushed
//!   by the join, leave and reap scripts themselves (so its order is the order of the
//!   changes), trimmed to `WEBHOOK_QUEUE`; `rtcio:webhooks:dropped` counts those trimmed;
//!   `rtcio:webhooks:sender` the node holding the delivery lease (`webhooks`)
//!
//! - `rtcio:node:{id}:link` the address of the node's link listener (`cluster::links`),
//!   expiring with its heartbeat; `rtcio:link-secret` the secret links are authenticated with
//!
//! Events for peers on other nodes go over direct links to those nodes (`cluster::links`),
//! to the node Redis names for each peer at that instant; the relay script looks up a batch
//! of relays' targets at a time. Only the note that ends a session's move goes through
//! Redis, to the moving node's own inbox channel.
//!
//! A node that stops refreshing its heartbeat (killed, partitioned) is reaped by whichever
//! survivor notices first: one script removes all its entries and returns who was in which
//! room, so the survivor can announce the departures exactly once.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::relays::{Relay, RelayRouter};
use super::{
    Expect, JoinOutcome, Member, Recipient, RelayRoute, RoomSummary, RoomView, StoreError,
};
use crate::cluster::inbox;
use crate::cluster::links::{Frame, Links};
use crate::ids::{NodeId, PeerId};
use crate::limits::{GuessLimits, WindowLimit};
use crate::protocol::MediaState;
use crate::room_lock::RoomLock;

const PREFIX: &str = "rtcio:";

/// How long connecting at start may take in all (see [`RedisRooms::connect`]).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A node whose heartbeat is this old is presumed dead.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How long a node shutting down stays marked as such: longer than any drain.
const DRAINING_FOR: Duration = Duration::from_secs(60);
/// How often a node refreshes its heartbeat and looks for dead nodes.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Lua: the members of a room key as a flat list of peer, node.
macro_rules! placed_fn {
    () => {
        r#"
local function placed(roomkey)
  local out, flat = {}, redis.call('HGETALL', roomkey)
  for i = 1, #flat, 2 do
    table.insert(out, flat[i])
    table.insert(out, string.match(flat[i + 1], '^[^|]*|([^|]*)|') or '')
  end
  return out
end
"#
    };
}

/// Lua: `webhooks(list, dropped, cap, base, at)` returns a function recording one webhook
/// event (`kind`, room, and for a participant its peer id and room entry
/// "seq|node|{name,user}") onto the list, trimmed to `cap` (0: webhooks off, nothing recorded)
/// with the trimmed counted. Ids are `base-1`, `base-2`, … as `webhooks::Batch` numbers them.
macro_rules! webhooks_fn {
    () => {
        r#"
local function webhooks(list, dropped, cap, base, at)
  local n = 0
  cap, at = tonumber(cap), tonumber(at)
  return function(kind, room, sid, value)
    if cap <= 0 then return end
    n = n + 1
    local event = {id = base .. '-' .. n, event = kind, roomId = room, createdAt = at}
    if sid then
      local ok, who = pcall(cjson.decode, string.match(value, '^[^|]*|[^|]*|(.*)$') or '')
      if not ok or type(who) ~= 'table' then who = {} end
      event.participant = {id = sid, name = who.name, userId = who.user}
    end
    local length = redis.call('RPUSH', list, cjson.encode(event))
    if length > cap then
      redis.call('LTRIM', list, length - cap, -1)
      redis.call('INCRBY', dropped, length - cap)
    end
  end
end
"#
    };
}

/// The room as a joiner finds it: member count, membership and lock.
const PEEK: &str = r#"
local room, lock = KEYS[1], KEYS[2]
return {
  redis.call('HLEN', room),
  redis.call('HEXISTS', room, ARGV[1]),
  redis.call('GET', lock) or '',
}
"#;

/// Joins if the room's lock is what the joiner expected (`expect` is `empty`, `open` or
/// `locked` with the seal in ARGV[6]); the joiner of an empty room sets its seal (ARGV[7],
/// empty for an open room). ARGV[9] is the room's name; KEYS[6] its birth time. Webhooks:
/// KEYS[7..8], ARGV[10..12].
const JOIN: &str = concat!(
    webhooks_fn!(),
    r#"
local room, media, mine, seqkey, lock, born = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local sid, record, max, entry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local expect, expected, seal, node = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local room_id = ARGV[9]
local hook = webhooks(KEYS[7], KEYS[8], ARGV[10], ARGV[11], ARGV[12])
if redis.call('HEXISTS', room, sid) == 1 then return {'already', {}, {}} end
local count = redis.call('HLEN', room)
if count >= max then return {'full', {}, {}} end
if count == 0 then
  if expect ~= 'empty' then return {'changed', {}, {}} end
  if seal == '' then redis.call('DEL', lock) else redis.call('SET', lock, seal) end
  local now = redis.call('TIME')
  redis.call('SET', born, now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
else
  local current = redis.call('GET', lock) or ''
  if expect == 'empty' or (expect == 'open' and current ~= '')
    or (expect == 'locked' and current ~= expected) then
    return {'changed', {}, {}}
  end
end
local members = redis.call('HGETALL', room)
local states = redis.call('HGETALL', media)
local seq = redis.call('INCR', seqkey)
local value = seq .. '|' .. node .. '|' .. record
redis.call('HSET', room, sid, value)
redis.call('SADD', mine, entry)
if count == 0 then hook('room_started', room_id) end
hook('participant_joined', room_id, sid, value)
return {'joined', members, states}
"#
);

/// ARGV[3] is the room's name; KEYS[5] its birth time. Webhooks: KEYS[6..7], ARGV[4..6].
const LEAVE: &str = concat!(
    placed_fn!(),
    webhooks_fn!(),
    r#"
local room, media, mine, lock, born = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid, entry, room_id = ARGV[1], ARGV[2], ARGV[3]
local hook = webhooks(KEYS[6], KEYS[7], ARGV[4], ARGV[5], ARGV[6])
redis.call('SREM', mine, entry)
local value = redis.call('HGET', room, sid)
if not value then return {0, {}} end
redis.call('HDEL', room, sid)
redis.call('HDEL', media, sid)
local remaining = placed(room)
hook('participant_left', room_id, sid, value)
if #remaining == 0 then
  redis.call('DEL', lock, born)
  hook('room_finished', room_id)
end
return {1, remaining}
"#
);

const MEMBERS: &str = concat!(placed_fn!(), "return placed(KEYS[1])");

/// Counts a password attempt against the room (KEYS[1]) and the user on it (KEYS[2]), unless
/// `GuessLimits::room_wait`'s rule makes the user wait (the room's limit ARGV[1], the user's
/// ARGV[2]): then returns the milliseconds left. A count's first attempt opens its window
/// (ARGV[3] for the room's, ARGV[4] for the user's).
const TAKE_GUESS: &str = r#"
local room = tonumber(redis.call('GET', KEYS[1]) or '0')
local user = tonumber(redis.call('GET', KEYS[2]) or '0')
if user >= tonumber(ARGV[2]) then return math.max(redis.call('PTTL', KEYS[2]), 1) end
if user > 0 and room >= tonumber(ARGV[1]) then
  return math.max(math.min(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2])), 1)
end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[2 + i]) end
end
return 0
"#;

/// Takes back an attempt that was right, from the room's count and the user's; a count left
/// at none is deleted, so the next attempt opens a new window.
const FORGIVE_GUESS: &str = r#"
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 and redis.call('DECR', key) == 0 then
    redis.call('DEL', key)
  end
end
return 0
"#;

const SET_MEDIA: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

/// Removes a dead node's entries; returns a flat list of room, peer, remaining peers and their
/// nodes (`peer node peer node …`) per departure. Runs only if the node is still registered and its heartbeat is
/// gone, so two survivors cannot both announce the same departures. Webhooks: KEYS[4..5],
/// ARGV[3..5].
const REAP: &str = concat!(
    placed_fn!(),
    webhooks_fn!(),
    r#"
local nodes, mine, alive = KEYS[1], KEYS[2], KEYS[3]
local node, prefix = ARGV[1], ARGV[2]
local hook = webhooks(KEYS[4], KEYS[5], ARGV[3], ARGV[4], ARGV[5])
if redis.call('EXISTS', alive) == 1 then return {} end
if redis.call('SREM', nodes, node) == 0 then return {} end
local out = {}
for _, entry in ipairs(redis.call('SMEMBERS', mine)) do
  local cut = string.find(entry, '\n', 1, true)
  local room, sid = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
  local roomkey = prefix .. 'room:' .. room
  local value = redis.call('HGET', roomkey, sid)
  if value then
    redis.call('HDEL', roomkey, sid)
    redis.call('HDEL', prefix .. 'media:' .. room, sid)
    local remaining = placed(roomkey)
    hook('participant_left', room, sid, value)
    if #remaining == 0 then
      redis.call('DEL', prefix .. 'lock:' .. room, prefix .. 'born:' .. room)
      hook('room_finished', room)
    end
    table.insert(out, room)
    table.insert(out, sid)
    table.insert(out, table.concat(remaining, ' '))
  end
end
redis.call('DEL', mine, prefix .. 'node:' .. node .. ':link')
return out
"#
);

/// Points a peer's entries in its rooms (KEYS) that name this node (ARGV[7]) at another node
/// (ARGV[2]) and moves them from this node's set (ARGV[5]) to that node's (ARGV[6]), so they
/// are the new node's to clean up
/// should it die; then publishes the note ARGV[4] to this node's own inbox (ARGV[3]): when
/// this node reads it, every letter sent to it for the peer before the move has arrived.
const MOVE: &str = r#"
local peer, to, here = ARGV[1], ARGV[2], ARGV[7]
for _, room in ipairs(KEYS) do
  local value = redis.call('HGET', room, peer)
  if value then
    local seq, node, rest = string.match(value, '^([^|]*)|([^|]*)|(.*)$')
    if seq and node == here then
      redis.call('HSET', room, peer, seq .. '|' .. to .. '|' .. rest)
    end
  end
end
for i = 8, #ARGV do redis.call('SMOVE', ARGV[5], ARGV[6], ARGV[i]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
"#;

/// The nodes serving those of the peers ARGV (from ARGV[1] on) still in a room (KEYS[1]), at
/// this instant: a flat list of peer, node.
const POST: &str = r#"
local placed = {}
for i = 1, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    table.insert(placed, ARGV[i])
    table.insert(placed, string.match(value, '^[^|]*|([^|]*)|') or '')
  end
end
return placed
"#;

/// Follows a node's forwarding addresses (ARGV[1] the node, ARGV[2] the prefix) to a live node.
const HOLDER: &str = r#"
local node = ARGV[1]
for _ = 1, 8 do
  if redis.call('EXISTS', ARGV[2] .. 'node:' .. node .. ':alive') == 1 then return node end
  node = redis.call('GET', ARGV[2] .. 'node:' .. node .. ':heir')
  if not node then return false end
end
return false
"#;

/// Takes the webhook delivery lease (KEYS[1]) for node ARGV[1] if it is free, or renews it if
/// that node holds it, for ARGV[2] ms; 1 if the node holds it now.
const CLAIM_WEBHOOKS: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Removes the delivered event ARGV[2] from the head of the list (KEYS[1]), if node ARGV[1]
/// still holds the lease (KEYS[2]) and the event is still the head (a full list may have
/// trimmed it meanwhile).
const POP_WEBHOOK: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] then return 0 end
redis.call('LPOP', KEYS[1])
return 1
"#;

/// Gives the lease (KEYS[1]) up if node ARGV[1] holds it.
const RELEASE_WEBHOOKS: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

#[derive(Serialize, Deserialize)]
struct Record {
    name: String,
    user: String,
}

/// A member of a dead node, removed from a room, and who is left to tell.
pub struct Departure {
    pub room: String,
    pub peer: PeerId,
    pub remaining: Vec<Recipient>,
}

pub struct RedisRooms {
    conn: ConnectionManager,
    node: NodeId,
    /// Most webhook events the list holds; 0 while webhooks are off.
    webhooks: usize,
    peek: Script,
    join: Script,
    leave: Script,
    members: Script,
    take_guess: Script,
    forgive_guess: Script,
    set_media: Script,
    relays: Arc<RelayRouter>,
    links: Arc<Links>,
    /// Where this node's link listener is, advertised with every heartbeat.
    link_address: String,
    moves: Script,
    holder: Script,
    reap: Script,
}

/// How a node sends events to peers on other nodes: over its links (`cluster::links`), each
/// to the node serving it.
#[derive(Clone)]
pub struct Postbox {
    conn: ConnectionManager,
    here: NodeId,
    post: Script,
    links: Arc<Links>,
}

impl Postbox {
    /// Sends `body` to those of `peers` still in `room`, each at the node serving it now;
    /// returns those served by this node.
    pub async fn post_in_room(
        &self,
        room: &str,
        peers: &[&PeerId],
        body: Vec<u8>,
    ) -> redis::RedisResult<Vec<PeerId>> {
        let mut call = self.post.prepare_invoke();
        call.key(room_key(room));
        for peer in peers {
            call.arg(peer.as_str());
        }
        // A session moving meanwhile waits for this routing (see `cluster::links`).
        let _routing = self.links.routing().await;
        let flat: Vec<String> = call.invoke_async(&mut self.conn.clone()).await?;
        let mut here = Vec::new();
        let mut elsewhere: Vec<(NodeId, Vec<PeerId>)> = Vec::new();
        for pair in flat.chunks_exact(2) {
            let (Some(peer), Some(node)) = (PeerId::parse(&pair[0]), NodeId::parse(&pair[1]))
            else {
                continue;
            };
            if node == self.here {
                here.push(peer);
            } else if let Some((_, peers)) = elsewhere.iter_mut().find(|(n, _)| *n == node) {
                peers.push(peer);
            } else {
                elsewhere.push((node, vec![peer]));
            }
        }
        for (node, peers) in elsewhere {
            let peers: Vec<&PeerId> = peers.iter().collect();
            self.post(vec![(node, inbox::letter(&peers, &body))]);
        }
        Ok(here)
    }

    /// Sends each letter to its node, in order.
    pub fn post(&self, letters: Vec<(NodeId, Vec<u8>)>) {
        crate::metrics::get()
            .letters_sent
            .inc_by(letters.len() as u64);
        for (node, letter) in letters {
            self.links.send(&node, &Frame::Mail(letter));
        }
    }

    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }
}

/// (Cluster mode) the webhook list and its delivery lease, for the node sending webhooks.
#[derive(Clone)]
pub struct WebhookList {
    conn: ConnectionManager,
    node: NodeId,
    claim: Script,
    pop: Script,
    release: Script,
}

impl WebhookList {
    /// The oldest event waiting, if any.
    pub async fn head(&self) -> Result<Option<String>, StoreError> {
        redis::cmd("LINDEX")
            .arg(webhooks_key())
            .arg(0)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// Removes `body`, delivered, if it is still the head and this node still holds the lease.
    pub async fn pop(&self, body: &str) -> Result<(), StoreError> {
        self.pop
            .key(webhooks_key())
            .key(webhook_sender_key())
            .arg(self.node.as_str())
            .arg(body)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// Takes the delivery lease if it is free, or renews it if this node holds it, for `ttl`;
    /// whether this node holds it now.
    pub async fn claim(&self, ttl: Duration) -> Result<bool, StoreError> {
        self.claim
            .key(webhook_sender_key())
            .arg(self.node.as_str())
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    pub async fn release(&self) -> Result<(), StoreError> {
        self.release
            .key(webhook_sender_key())
            .arg(self.node.as_str())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// Events the list has dropped, full, since it was created.
    pub async fn dropped(&self) -> Result<u64, StoreError> {
        let count: Option<u64> = redis::cmd("GET")
            .arg(webhooks_dropped_key())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(count.unwrap_or(0))
    }
}

/// A call of `script` with a session's rooms as its keys.
fn keyed_by_rooms<'a>(script: &'a Script, rooms: &[Arc<str>]) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    for room in rooms {
        call.key(room_key(room));
    }
    call
}

pub(super) fn store_error(e: redis::RedisError) -> StoreError {
    crate::metrics::get().redis_errors.inc();
    StoreError(format!("redis: {e}"))
}

pub(super) fn room_key(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}

fn born_key(room: &str) -> String {
    format!("{PREFIX}born:{room}")
}

fn media_key(room: &str) -> String {
    format!("{PREFIX}media:{room}")
}

fn lock_key(room: &str) -> String {
    format!("{PREFIX}lock:{room}")
}

fn guesses_key(room: &str) -> String {
    format!("{PREFIX}guesses:{room}")
}

fn window_ms(limit: WindowLimit) -> u64 {
    limit.window.as_millis().max(1) as u64
}

fn guesser_key(room: &str, user: &str) -> String {
    format!("{PREFIX}guesser:{}:{room}:{user}", room.len())
}

fn members_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:members")
}

/// Where a node's link listener is (`cluster::links`), refreshed with its heartbeat.
pub fn link_key(node: &NodeId) -> String {
    format!("{PREFIX}node:{node}:link")
}

/// The secret every node's links are authenticated with; the first node makes it.
fn link_secret_key() -> String {
    format!("{PREFIX}link-secret")
}

fn alive_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:alive")
}

/// How long a record of which machine holds an Engine.IO session lives unasked for.
const ENGINE_PIN_SECONDS: u64 = 3600;

fn engine_key(sid: &str) -> String {
    format!("{PREFIX}eio:{sid}")
}

fn draining_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:draining")
}

fn heir_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:heir")
}

fn webhooks_key() -> String {
    format!("{PREFIX}webhooks")
}

fn webhooks_dropped_key() -> String {
    format!("{PREFIX}webhooks:dropped")
}

fn webhook_sender_key() -> String {
    format!("{PREFIX}webhooks:sender")
}

fn nodes_key() -> String {
    format!("{PREFIX}nodes")
}

fn entry(room: &str, peer: &PeerId) -> String {
    format!("{room}\n{peer}")
}

fn encode_media(state: MediaState) -> String {
    format!("{},{}", u8::from(state.mic), u8::from(state.cam))
}

fn decode_media(text: &str) -> Option<MediaState> {
    let (mic, cam) = text.split_once(',')?;
    Some(MediaState {
        mic: mic == "1",
        cam: cam == "1",
    })
}

/// Pairs a flat `HGETALL` reply.
fn pairs(flat: Vec<String>) -> impl Iterator<Item = (String, String)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
}

impl RedisRooms {
    /// Connects and registers this node, its links listening at `link_address`.
    pub async fn connect(
        client: redis::Client,
        link_address: String,
    ) -> Result<RedisRooms, StoreError> {
        // Fail fast while Redis is away: a join gets `unavailable` in well under a second
        // instead of waiting out redis-rs's default six reconnection attempts (about 6 s). The
        // heartbeat keeps trying every second, so the connection comes back with Redis.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        // At start a handshake slowed by a busy machine may time out: it is tried again until
        // START_TIMEOUT has passed, so that only a real error (a certificate that does not
        // verify, a wrong password) or a Redis that never answers stops the start.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let conn = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(conn) => break conn,
                Err(e) if e.is_timeout() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(cause = %e, "connecting to Redis timed out; trying again");
                }
                Err(e) => return Err(store_error(e)),
            }
        };
        let node = NodeId::random();
        let relays = Arc::new(RelayRouter::new(conn.clone()));
        let secret: String = redis::pipe()
            .cmd("SET")
            .arg(link_secret_key())
            .arg(crate::auth::random_hex(32))
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(link_secret_key())
            .query_async::<(String,)>(&mut conn.clone())
            .await
            .map_err(store_error)?
            .0;
        let links = Links::new(node.clone(), &secret, conn.clone()).map_err(StoreError)?;
        let rooms = RedisRooms {
            conn,
            node,
            webhooks: 0,
            peek: Script::new(PEEK),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            members: Script::new(MEMBERS),
            take_guess: Script::new(TAKE_GUESS),
            forgive_guess: Script::new(FORGIVE_GUESS),
            set_media: Script::new(SET_MEDIA),
            relays,
            links,
            link_address,
            moves: Script::new(MOVE),
            holder: Script::new(HOLDER),
            reap: Script::new(REAP),
        };
        rooms.heartbeat().await?;
        Ok(rooms)
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Makes the membership scripts record webhook events, at most `cap` waiting, and returns
    /// the list they go to.
    pub fn record_webhooks(&mut self, cap: usize) -> WebhookList {
        self.webhooks = cap;
        WebhookList {
            conn: self.conn.clone(),
            node: self.node.clone(),
            claim: Script::new(CLAIM_WEBHOOKS),
            pop: Script::new(POP_WEBHOOK),
            release: Script::new(RELEASE_WEBHOOKS),
        }
    }

    /// Appends the webhook keys and arguments every membership script takes last.
    fn with_webhooks(&self, call: &mut redis::ScriptInvocation<'_>) {
        let batch = (self.webhooks > 0).then(crate::webhooks::Batch::new);
        call.key(webhooks_key())
            .key(webhooks_dropped_key())
            .arg(self.webhooks)
            .arg(batch.as_ref().map_or("", |b| b.id_base()))
            .arg(batch.as_ref().map_or(0, |b| b.created_at()));
    }

    /// Posts letters to other nodes, in order, on the connection the scripts use.
    pub fn postbox(&self) -> Postbox {
        Postbox {
            conn: self.conn.clone(),
            here: self.node.clone(),
            post: Script::new(POST),
            links: Arc::clone(&self.links),
        }
    }

    /// Pairs a flat peer, node list into recipients (this node's own as `None`).
    fn placed(&self, flat: &[String]) -> Vec<Recipient> {
        flat.chunks_exact(2)
            .filter_map(|pair| {
                let peer = PeerId::parse(&pair[0])?;
                let node = NodeId::parse(&pair[1]).filter(|node| *node != self.node);
                Some(Recipient { peer, node })
            })
            .collect()
    }

    pub async fn peek(&self, room: &str, peer: &PeerId) -> Result<RoomView, StoreError> {
        let (members, is_member, lock): (usize, bool, String) = self
            .peek
            .key(room_key(room))
            .key(lock_key(room))
            .arg(peer.as_str())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(RoomView {
            members,
            is_member,
            lock: RoomLock::from_stored(&lock),
        })
    }

    pub async fn take_guess(
        &self,
        room: &str,
        user: &str,
        limits: &GuessLimits,
    ) -> Result<Option<Duration>, StoreError> {
        let wait_ms: u64 = self
            .take_guess
            .key(guesses_key(room))
            .key(guesser_key(room, user))
            .arg(limits.per_room.limit)
            .arg(limits.per_user.limit)
            .arg(window_ms(limits.per_room))
            .arg(window_ms(limits.per_user))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    pub async fn forgive_guess(&self, room: &str, user: &str) -> Result<(), StoreError> {
        self.forgive_guess
            .key(guesses_key(room))
            .key(guesser_key(room, user))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(store_error)
    }

    pub async fn join(
        &self,
        room: &str,
        member: Member,
        max: usize,
        expect: &Expect,
    ) -> Result<JoinOutcome, StoreError> {
        let (expect_kind, expected, seal) = match expect {
            Expect::Empty { seal } => ("empty", "", seal.as_ref().map_or("", RoomLock::as_stored)),
            Expect::Open => ("open", "", ""),
            Expect::Locked(lock) => ("locked", lock.as_stored(), ""),
        };
        let record = serde_json::to_string(&Record {
            name: member.name.to_string(),
            user: member.user_id.to_string(),
        })
        .map_err(|e| StoreError(e.to_string()))?;
        let mut call = self.join.prepare_invoke();
        call.key(room_key(room))
            .key(media_key(room))
            .key(members_key(self.node.as_str()))
            .key(format!("{PREFIX}seq"))
            .key(lock_key(room))
            .key(born_key(room))
            .arg(member.peer.as_str())
            .arg(record)
            .arg(max)
            .arg(entry(room, &member.peer))
            .arg(expect_kind)
            .arg(expected)
            .arg(seal)
            .arg(self.node.as_str())
            .arg(room);
        self.with_webhooks(&mut call);
        let (status, flat_members, flat_media): (String, Vec<String>, Vec<String>) = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match status.as_str() {
            "already" => return Ok(JoinOutcome::AlreadyMember),
            "full" => return Ok(JoinOutcome::Full),
            "changed" => return Ok(JoinOutcome::LockChanged),
            _ => {}
        }
        Ok(JoinOutcome::Joined(
            self.roster_of(pairs(flat_members), pairs(flat_media)),
        ))
    }

    /// A room's members in joining order, from its two hashes' fields (room, media).
    fn roster_of(
        &self,
        entries: impl Iterator<Item = (String, String)>,
        media: impl Iterator<Item = (String, String)>,
    ) -> Vec<Member> {
        let media: std::collections::HashMap<String, MediaState> = media
            .filter_map(|(sid, state)| Some((sid, decode_media(&state)?)))
            .collect();
        let mut members: Vec<(u64, Member)> = entries
            .filter_map(|(sid_text, value)| {
                let (seq, rest) = value.split_once('|')?;
                let (node, json) = rest.split_once('|')?;
                let record: Record = serde_json::from_str(json).ok()?;
                let member = Member {
                    peer: PeerId::parse(&sid_text)?,
                    name: record.name.into(),
                    user_id: record.user.into(),
                    media: media.get(&sid_text).copied(),
                    node: NodeId::parse(node).filter(|node| *node != self.node),
                };
                Some((seq.parse().ok()?, member))
            })
            .collect();
        members.sort_by_key(|(seq, _)| *seq);
        members.into_iter().map(|(_, m)| m).collect()
    }

    /// A room's members in joining order (none: no such room).
    pub async fn roster(&self, room: &str) -> Result<Vec<Member>, StoreError> {
        type Fields = Vec<(String, String)>;
        let (entries, media): (Fields, Fields) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(room_key(room))
            .cmd("HGETALL")
            .arg(media_key(room))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(self.roster_of(entries.into_iter(), media.into_iter()))
    }

    /// Every room with members, across the cluster (a scan: for the admin API, not hot paths).
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{PREFIX}room:*");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort_unstable();
        keys.dedup();
        let mut summaries = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(room) = key
                .strip_prefix(&format!("{PREFIX}room:"))
                .map(str::to_string)
            else {
                continue;
            };
            let (members, locked, born): (usize, bool, Option<u64>) = redis::pipe()
                .cmd("HLEN")
                .arg(&key)
                .cmd("EXISTS")
                .arg(lock_key(&room))
                .cmd("GET")
                .arg(born_key(&room))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if members > 0 {
                summaries.push(RoomSummary {
                    room,
                    members,
                    locked,
                    created_at_ms: born,
                });
            }
        }
        Ok(summaries)
    }

    /// The ids in the cluster's node set other than this node's, alive or not.
    async fn other_registered(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<Vec<String>, StoreError> {
        let mut nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(nodes_key())
            .query_async(conn)
            .await
            .map_err(store_error)?;
        nodes.retain(|n| n.as_str() != self.node.as_str());
        Ok(nodes)
    }

    /// The other nodes of the cluster whose heartbeat is alive.
    pub async fn other_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let mut conn = self.conn.clone();
        let mut alive = Vec::new();
        for node in &self.other_registered(&mut conn).await? {
            let up: bool = redis::cmd("EXISTS")
                .arg(alive_key(node))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if up && let Some(node) = NodeId::parse(node) {
                alive.push(node);
            }
        }
        Ok(alive)
    }

    pub async fn members(&self, room: &str) -> Result<Vec<Recipient>, StoreError> {
        let flat: Vec<String> = self
            .members
            .key(room_key(room))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(self.placed(&flat))
    }

    pub async fn leave(
        &self,
        room: &str,
        peer: &PeerId,
    ) -> Result<Option<Vec<Recipient>>, StoreError> {
        let mut call = self.leave.prepare_invoke();
        call.key(room_key(room))
            .key(media_key(room))
            .key(members_key(self.node.as_str()))
            .key(lock_key(room))
            .key(born_key(room))
            .arg(peer.as_str())
            .arg(entry(room, peer))
            .arg(room);
        self.with_webhooks(&mut call);
        let (was_member, remaining): (bool, Vec<String>) = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(was_member.then(|| self.placed(&remaining)))
    }

    pub async fn set_media(
        &self,
        room: &str,
        peer: &PeerId,
        state: MediaState,
    ) -> Result<bool, StoreError> {
        self.set_media
            .key(room_key(room))
            .key(media_key(room))
            .arg(peer.as_str())
            .arg(encode_media(state))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// Routes a relay of `data` from `sender`, in `rooms`, to `target`: to the node its
    /// relays went to before, else to the node Redis finds it at in one of those rooms. The
    /// receiving node checks the rooms again (see `cluster::inbox::read_frame`).
    pub async fn route_relay(
        &self,
        rooms: Vec<Arc<str>>,
        sender: &PeerId,
        target: &PeerId,
        data: Vec<u8>,
    ) -> Result<RelayRoute, StoreError> {
        if rooms.is_empty() {
            return Ok(RelayRoute::Unshared);
        }
        let _routing = self.links.routing().await;
        let node = match self.links.route(target) {
            Some(node) => node,
            None => {
                let relay = Relay {
                    rooms: rooms.clone(),
                    target: target.clone(),
                };
                match self.relays.route(relay).await? {
                    None => return Ok(RelayRoute::Unshared),
                    Some(node) if node == self.node => return Ok(RelayRoute::Here),
                    Some(node) => {
                        self.links.remember(target, &node);
                        node
                    }
                }
            }
        };
        let frame = Frame::Relay {
            sender: sender.clone(),
            target: target.clone(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            data,
        };
        self.links.send(&node, &frame);
        Ok(RelayRoute::Posted)
    }

    /// The live node holding the sessions `node` held: `node` itself while it lives, else the
    /// heir it left them to (following a few hand-offs of a rolling deploy).
    pub async fn holder(&self, node: &NodeId) -> Result<Option<NodeId>, StoreError> {
        let holder: Option<String> = self
            .holder
            .arg(node.as_str())
            .arg(PREFIX)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(holder.as_deref().and_then(NodeId::parse))
    }

    /// Another live node, not shutting down itself, to leave this one's sessions to, if there
    /// is one.
    pub async fn heir(&self) -> Result<Option<NodeId>, StoreError> {
        let mut conn = self.conn.clone();
        let nodes = self.other_registered(&mut conn).await?;
        // Marked first, so no node leaves its sessions to this one from now on.
        redis::cmd("SET")
            .arg(draining_key(self.node.as_str()))
            .arg("1")
            .arg("PX")
            .arg(DRAINING_FOR.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(store_error)?;
        for node in &nodes {
            let (alive, draining): (bool, bool) = redis::pipe()
                .cmd("EXISTS")
                .arg(alive_key(node))
                .cmd("EXISTS")
                .arg(draining_key(node))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if alive
                && !draining
                && let Some(node) = NodeId::parse(node)
            {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Tells whoever looks for this node's sessions, for as long as they stay recoverable,
    /// that `heir` has them.
    pub async fn leave_address(&self, heir: &NodeId, window: Duration) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(heir_key(self.node.as_str()))
            .arg(heir.as_str())
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// Points `peer`'s entries in `rooms` at node `to`, and makes them `to`'s; `note` then
    /// reaches this node's own inbox behind every letter sent here for the peer before the
    /// move.
    pub async fn move_session(
        &self,
        rooms: &[Arc<str>],
        peer: &PeerId,
        to: &NodeId,
        note: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut call = keyed_by_rooms(&self.moves, rooms);
        call.arg(peer.as_str())
            .arg(to.as_str())
            .arg(crate::cluster::inbox::channel(&self.node))
            .arg(note)
            .arg(members_key(self.node.as_str()))
            .arg(members_key(to.as_str()))
            .arg(self.node.as_str());
        for room in rooms {
            call.arg(entry(room, peer));
        }
        call.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// Records that the Fly machine `machine` holds Engine.IO session `sid`.
    pub async fn pin_engine_session(&self, sid: &str, machine: &str) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(engine_key(sid))
            .arg(machine)
            .arg("EX")
            .arg(ENGINE_PIN_SECONDS)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// The Fly machine holding Engine.IO session `sid`, if one recorded it; the record lives
    /// on while machines keep asking for it.
    pub async fn engine_session_machine(&self, sid: &str) -> Result<Option<String>, StoreError> {
        redis::cmd("GETEX")
            .arg(engine_key(sid))
            .arg("EX")
            .arg(ENGINE_PIN_SECONDS)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// One round trip to Redis.
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    /// Refreshes this node's heartbeat. Returns false if the heartbeat had lapsed, meaning the
    /// other nodes may already have announced this node's members as gone.
    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let sent = std::time::Instant::now();
        let (previous, _, secret): (Option<String>, i64, Option<Vec<u8>>) = redis::pipe()
            .cmd("SET")
            .arg(alive_key(self.node.as_str()))
            .arg("1")
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .arg("GET")
            .cmd("SADD")
            .arg(nodes_key())
            .arg(self.node.as_str())
            .cmd("SET")
            .arg(link_key(&self.node))
            .arg(&self.link_address)
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .ignore()
            // Should Redis have lost the link secret, the first node to beat puts its own
            // back, and every node uses whichever is there.
            .cmd("SET")
            .arg(link_secret_key())
            .arg(self.links.secret())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(link_secret_key())
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        if let Some(secret) = secret.and_then(|s| String::from_utf8(s).ok()) {
            self.links.keep_secret(&secret);
        }
        // A lapsed heartbeat allows sending again only once the clients are cut off
        // (`cluster::keep_node_alive`).
        self.links.beat(sent, previous.is_none());
        Ok(previous.is_some())
    }

    /// Finds nodes whose heartbeat lapsed and removes their members.
    pub async fn reap_dead_nodes(&self) -> Result<Vec<Departure>, StoreError> {
        let mut conn = self.conn.clone();
        let mut departures = Vec::new();
        for node in self.other_registered(&mut conn).await? {
            let node = node.as_str();
            let mut call = self.reap.prepare_invoke();
            call.key(nodes_key())
                .key(members_key(node))
                .key(alive_key(node))
                .arg(node)
                .arg(PREFIX);
            self.with_webhooks(&mut call);
            let flat: Vec<String> = call.invoke_async(&mut conn).await.map_err(store_error)?;
            if !flat.is_empty() {
                crate::metrics::get().reaped_nodes.inc();
                tracing::warn!(
                    node,
                    members = flat.len() / 3,
                    "reaped a node whose heartbeat stopped"
                );
            }
            for chunk in flat.chunks_exact(3) {
                let Some(peer) = PeerId::parse(&chunk[1]) else {
                    continue;
                };
                let remaining: Vec<String> = chunk[2]
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                departures.push(Departure {
                    room: chunk[0].clone(),
                    peer,
                    remaining: self.placed(&remaining),
                });
            }
        }
        Ok(departures)
    }

    /// Unregisters this node on a clean shutdown (after its sockets have left their rooms).
    pub async fn deregister(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("SREM")
            .arg(nodes_key())
            .arg(self.node.as_str())
            .cmd("DEL")
            .arg(alive_key(self.node.as_str()))
            .arg(members_key(self.node.as_str()))
            .arg(link_key(&self.node))
            .query_async::<()>(&mut conn)
            .await
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_round_trips() {
        for (mic, cam) in [(true, false), (false, true)] {
            let state = MediaState { mic, cam };
            assert_eq!(decode_media(&encode_media(state)), Some(state));
        }
        assert_eq!(decode_media("junk"), None);
    }

    #[test]
    fn flat_replies_pair_up() {
        let flat = vec!["a".to_string(), "1".into(), "b".into(), "2".into()];
        let got: Vec<_> = pairs(flat).collect();
        assert_eq!(
            got,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }
}
