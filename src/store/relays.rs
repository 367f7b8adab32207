//! Where cluster relays go, looked up in batches. The first relay a node sends to a remote
//! peer must find the node serving it, and check that the two peers share a room, in one
//! atomic Redis step; later ones go where the first went (`cluster::links`). When many
//! senders look up at once (a node starting, a room filling), one script call per lookup
//! would cost a round trip each. So the lookup that finds no batch in flight goes at once,
//! on its own, and those that come meanwhile wait and go together in the next call.
//!
//! Lock story: one mutex over the waiting lookups and whether a batch is in flight, held only
//! to push or take them, never across a round trip.

use std::sync::{Arc, Mutex, MutexGuard};

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use super::StoreError;
use super::redis::{room_key, store_error};
use crate::ids::{NodeId, PeerId};

/// Looks up a batch of relays, in order: two arguments per relay, how many rooms its sender
/// is in (their keys come next in KEYS) and the target. For each, the node named by the
/// target's entry in the first of those rooms that has one, or '' if none does.
const RELAY_BATCH: &str = r#"
local routes = {}
local key = 1
for arg = 1, #ARGV, 2 do
  local rooms, target = tonumber(ARGV[arg]), ARGV[arg + 1]
  local route = ''
  for i = key, key + rooms - 1 do
    local value = redis.call('HGET', KEYS[i], target)
    if value then
      route = string.match(value, '^[^|]*|([^|]*)|') or ''
      break
    end
  end
  table.insert(routes, route)
  key = key + rooms
end
return routes
"#;

/// Most relays routed in one script call.
const BATCH_MOST: usize = 256;

/// One relay to look up: the sender's rooms and the target.
pub struct Relay {
    pub rooms: Vec<Arc<str>>,
    pub target: PeerId,
}

/// The node serving a relay's target, if it is in one of the sender's rooms.
type Route = Option<NodeId>;

/// A relay waiting for the next batch, and where its route is reported.
struct Waiting {
    relay: Relay,
    routed: oneshot::Sender<Result<Route, StoreError>>,
}

#[derive(Default)]
struct Queue {
    /// A batch is in flight; relays arriving now wait for the next.
    busy: bool,
    waiting: Vec<Waiting>,
}

pub struct RelayRouter {
    conn: ConnectionManager,
    script: Script,
    queue: Mutex<Queue>,
}

impl RelayRouter {
    pub fn new(conn: ConnectionManager) -> RelayRouter {
        RelayRouter {
            conn,
            script: Script::new(RELAY_BATCH),
            queue: Mutex::default(),
        }
    }

    /// Routes `relay`: at once if no batch is in flight, else in the next one. A relay's
    /// sender waits for its route before its next event, so each sender's relays keep their
    /// order.
    pub async fn route(self: &Arc<Self>, relay: Relay) -> Result<Route, StoreError> {
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
        Ok(routes.pop().flatten())
    }

    /// One script call for `batch`; its routes, in order.
    async fn run(&self, batch: &[Relay]) -> Result<Vec<Route>, StoreError> {
        let mut call = self.script.prepare_invoke();
        for relay in batch {
            for room in &relay.rooms {
                call.key(room_key(room));
            }
            call.arg(relay.rooms.len()).arg(relay.target.as_str());
        }
        let routes: Vec<String> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        if routes.len() != batch.len() {
            return Err(StoreError("relay batch: not one route per relay".into()));
        }
        Ok(routes.iter().map(|route| NodeId::parse(route)).collect())
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
