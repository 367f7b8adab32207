//! Cluster relays, routed in batches. Each relay must check that its two peers share a room
//! and reach the target's node in one atomic Redis step (so no relay slips past a leave), and
//! a busy node sends thousands a second: one script call per relay, and one pub/sub message
//! per letter, would cost a round trip and a wake-up each. So the relay that finds no batch in
//! flight goes at once, on its own, and those that come meanwhile wait and go together in the
//! next call, which publishes one bundle per target node. A quiet node pays nothing extra, a
//! busy one a round trip per batch.
//!
//! Lock story: one mutex over the waiting relays and whether a batch is in flight, held only
//! to push or take them, never across a round trip.

use std::sync::{Arc, Mutex, MutexGuard};

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use super::redis::{room_key, store_error};
use super::{RelayRoute, StoreError};
use crate::cluster::inbox::INBOX_PREFIX;
use crate::ids::{NodeId, PeerId};

/// Routes a batch of relays, in order. ARGV[1] is this node, ARGV[2] the inbox prefix, then
/// three per relay: how many rooms its sender is in (their keys come next in KEYS), the
/// target, and the letter's body. Each relay's route comes back: 0 if the target is in none
/// of those rooms, 1 if its session is on this node, else 2 and the letter is published to
/// the target's node. A node is sent one message per batch: a lone letter as it is, several
/// as a bundle (`cluster::inbox`), so a busy node wakes once for many letters.
const RELAY_BATCH: &str = r#"
local here, prefix = ARGV[1], ARGV[2]
local routes, bundles, order = {}, {}, {}
local key = 1
for arg = 3, #ARGV, 3 do
  local rooms, target = tonumber(ARGV[arg]), ARGV[arg + 1]
  local route = 0
  for i = key, key + rooms - 1 do
    local value = redis.call('HGET', KEYS[i], target)
    if value then
      local node = string.match(value, '^[^|]*|([^|]*)|') or ''
      if node == here then
        route = 1
      else
        if not bundles[node] then bundles[node] = {}; table.insert(order, node) end
        table.insert(bundles[node], target .. '\n' .. ARGV[arg + 2])
        route = 2
      end
      break
    end
  end
  table.insert(routes, route)
  key = key + rooms
end
for _, node in ipairs(order) do
  local letters, message = bundles[node], nil
  if #letters == 1 then
    message = letters[1]
  else
    local parts = {'*'}
    for _, letter in ipairs(letters) do
      table.insert(parts, #letter .. ':' .. letter)
    end
    message = table.concat(parts)
  end
  redis.call('PUBLISH', prefix .. node, message)
end
return routes
"#;

/// Most relays routed in one script call.
const BATCH_MOST: usize = 256;

/// One relay to route: the sender's rooms, the target, and the letter's body for its node.
pub struct Relay {
    pub rooms: Vec<Arc<str>>,
    pub target: PeerId,
    pub body: Vec<u8>,
}

/// A relay waiting for the next batch, and where its route is reported.
struct Waiting {
    relay: Relay,
    routed: oneshot::Sender<Result<RelayRoute, StoreError>>,
}

#[derive(Default)]
struct Queue {
    /// A batch is in flight; relays arriving now wait for the next.
    busy: bool,
    waiting: Vec<Waiting>,
}

pub struct RelayRouter {
    conn: ConnectionManager,
    here: NodeId,
    script: Script,
    queue: Mutex<Queue>,
}

impl RelayRouter {
    pub fn new(conn: ConnectionManager, here: NodeId) -> RelayRouter {
        RelayRouter {
            conn,
            here,
            script: Script::new(RELAY_BATCH),
            queue: Mutex::default(),
        }
    }

    /// Routes `relay`: at once if no batch is in flight, else in the next one. A relay's
    /// sender waits for its route before its next event, so each sender's relays keep their
    /// order.
    pub async fn route(self: &Arc<Self>, relay: Relay) -> Result<RelayRoute, StoreError> {
        let lead = {
            let mut queue = self.lock();
            if queue.busy {
                let (routed, route) = oneshot::channel();
                queue.waiting.push(Waiting { relay, routed });
                Err(route)
            } else {
                queue.busy = true;
                Ok(relay)
            }
        };
        let relay = match lead {
            Ok(relay) => relay,
            Err(route) => {
                return route
                    .await
                    .map_err(|_| StoreError("relay routing stopped".into()))?;
            }
        };
        // This relay leads: whatever queues meanwhile is routed after it, even if this
        // future is dropped half way.
        let _lead = Lead(Arc::clone(self));
        let mut routes = self.run(std::slice::from_ref(&relay)).await?;
        Ok(routes.pop().unwrap_or(RelayRoute::Unshared))
    }

    /// One script call for `batch`; its routes, in order.
    async fn run(&self, batch: &[Relay]) -> Result<Vec<RelayRoute>, StoreError> {
        let mut call = self.script.prepare_invoke();
        call.arg(self.here.as_str()).arg(INBOX_PREFIX);
        for relay in batch {
            for room in &relay.rooms {
                call.key(room_key(room));
            }
            call.arg(relay.rooms.len())
                .arg(relay.target.as_str())
                .arg(relay.body.as_slice());
        }
        let routes: Vec<u8> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        if routes.len() != batch.len() {
            return Err(StoreError("relay batch: not one route per relay".into()));
        }
        Ok(routes
            .into_iter()
            .map(|route| match route {
                0 => RelayRoute::Unshared,
                1 => RelayRoute::Here,
                _ => RelayRoute::Posted,
            })
            .collect())
    }

    /// The relays waiting now, at most a batch of them; none left ends the turn in flight.
    fn next_batch(&self) -> Vec<Waiting> {
        let mut queue = self.lock();
        let take = queue.waiting.len().min(BATCH_MOST);
        let batch: Vec<Waiting> = queue.waiting.drain(..take).collect();
        queue.busy = !batch.is_empty();
        batch
    }

    /// Routes the waiting relays, a batch per call, until none is left.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                return;
            }
            let (relays, routed): (Vec<Relay>, Vec<_>) =
                batch.into_iter().map(|w| (w.relay, w.routed)).unzip();
            match self.run(&relays).await {
                Ok(routes) => {
                    for (routed, route) in routed.into_iter().zip(routes) {
                        let _ = routed.send(Ok(route));
                    }
                }
                Err(e) => {
                    for routed in routed {
                        let _ = routed.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by the relay in flight on its own: when it is done (or dropped), the relays that
/// queued meanwhile are routed by a task of their own.
struct Lead(Arc<RelayRouter>);

impl Drop for Lead {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.busy = !queue.waiting.is_empty();
        if !queue.busy {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(Arc::clone(&self.0).drain())),
            // The runtime is going away: the next relay to lead starts the drain.
            Err(_) => queue.busy = false,
        }
    }
}
