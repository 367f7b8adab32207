//! The Redis subscriber connection of a cluster node, carrying its inbox (see [`super::inbox`]).
//!
//! It sits on redis-rs's `ConnectionManager`, which reconnects by itself and resubscribes
//! every channel, so cross-node delivery comes back with Redis. Publishing goes through the
//! room-state connection instead, so a letter leaves in order with the scripts before it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

type Subscribers = Arc<RwLock<HashMap<String, mpsc::Sender<Vec<u8>>>>>;

#[derive(Clone)]
pub struct PubSub {
    conn: ConnectionManager,
    subscribers: Subscribers,
}

impl PubSub {
    /// Connects (RESP3 is required for pushed messages).
    pub async fn connect(client: redis::Client) -> redis::RedisResult<PubSub> {
        let subscribers: Subscribers = Arc::default();
        let sink = Arc::clone(&subscribers);
        let config = ConnectionManagerConfig::new()
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                route(push, &sink);
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(PubSub { conn, subscribers })
    }

    /// Subscribes to `channel`; its messages queue up to `depth` deep.
    pub async fn subscribe(
        &self,
        channel: String,
        depth: usize,
    ) -> redis::RedisResult<mpsc::Receiver<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(depth);
        self.subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.clone(), tx);
        self.conn.clone().subscribe(channel).await?;
        Ok(rx)
    }

    /// Round trip on the subscriber connection. Called on every heartbeat so a connection
    /// that died with Redis is rebuilt (and resubscribed) even when nothing is published.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async(&mut conn).await
    }
}

/// Hands a pushed message to the receiver subscribed to its channel.
fn route(push: PushInfo, subscribers: &Subscribers) {
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
    let subscribers = subscribers.read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = subscribers.get(&channel)
        && let Err(e) = tx.try_send(payload)
    {
        tracing::error!(channel, cause = %e, "cluster message dropped: this node is behind");
    }
}
