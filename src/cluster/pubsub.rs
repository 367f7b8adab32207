//! The Redis pub/sub transport under socketioxide's Redis adapter (cluster mode).
//!
//! socketioxide-redis ships a driver on a plain multiplexed connection, which stays broken
//! after Redis restarts. This one sits on redis-rs's `ConnectionManager`, which reconnects by
//! itself and resubscribes every channel, so cross-node delivery comes back with Redis.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushInfo, PushKind, Value};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct PubSub {
    conn: ConnectionManager,
    handlers: Handlers,
}

impl PubSub {
    /// Connects (RESP3 is required for pushed messages).
    pub async fn connect(client: redis::Client) -> redis::RedisResult<PubSub> {
        let handlers: Handlers = Arc::default();
        let sink = Arc::clone(&handlers);
        let config = ConnectionManagerConfig::new()
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                route(push, &sink);
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(PubSub { conn, handlers })
    }

    /// Round trip on the subscriber connection. Called on every heartbeat so a connection
    /// that died with Redis is rebuilt (and resubscribed) even when this node publishes
    /// nothing.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async(&mut conn).await
    }
}

/// Hands a pushed message to the stream subscribed to its channel.
fn route(push: PushInfo, handlers: &Handlers) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(channel), Ok(payload)) = (
        redis::from_redis_value::<String>(channel),
        redis::from_redis_value::<Vec<u8>>(payload),
    ) else {
        tracing::warn!("unreadable pub/sub message");
        return;
    };
    let handlers = handlers.read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = handlers.get(&channel)
        && let Err(e) = tx.try_send((channel, payload))
    {
        tracing::warn!(cause = %e, "cluster message dropped: subscriber is behind");
    }
}

#[derive(Debug)]
pub struct PubSubError(redis::RedisError);

impl std::fmt::Display for PubSubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PubSubError {}

/// Publishing retries this often when the connection was just lost: the manager reconnects
/// in the background and the message still goes out if Redis is back.
const PUBLISH_RETRIES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
];

impl Driver for PubSub {
    type Error = PubSubError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.conn.clone();
        let mut retries = PUBLISH_RETRIES.iter();
        loop {
            match conn.publish::<_, _, Value>(&chan, &val).await {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.is_connection_dropped()
                        || e.is_io_error()
                        || e.is_connection_refusal() =>
                {
                    match retries.next() {
                        Some(wait) => tokio::time::sleep(*wait).await,
                        None => return Err(PubSubError(e)),
                    }
                }
                Err(e) => return Err(PubSubError(e)),
            }
        }
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        let mut conn = self.conn.clone();
        conn.subscribe(chan).await.map_err(PubSubError)?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        let mut conn = self.conn.clone();
        conn.unsubscribe(chan).await.map_err(PubSubError)
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await
            .map_err(PubSubError)?;
        Ok(count)
    }
}
