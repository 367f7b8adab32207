//! Cluster mode's moving parts: connecting to Redis at start, the node's heartbeat loop (which
//! also reaps nodes that died), the direct links between nodes ([`links`]), what a node
//! reads from them ([`inbox`]) and the subscriber connection for its Redis channel
//! ([`pubsub`]). Room state itself is in `store::redis`.

pub mod inbox;
pub mod links;
pub mod pubsub;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::SocketIo;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::server::StartError;
use crate::store::RedisRooms;
use crate::store::redis::HEARTBEAT_EVERY;
use pubsub::PubSub;

const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pub/sub transport needs RESP3; add it unless the URL says otherwise.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A cluster node's connections to Redis.
pub struct Connected {
    pub pubsub: PubSub,
    pub rooms: RedisRooms,
    /// Letters for this node's peers, from its inbox channel.
    pub inbox: mpsc::Receiver<Vec<u8>>,
}

/// The Redis client for `redis_url`; a `rediss://` one trusts `ca_file` (PEM) if given, else
/// the system's roots.
fn client(redis_url: &str, ca_file: Option<&Path>) -> Result<redis::Client, StartError> {
    let url = with_resp3(redis_url);
    if redis_url.starts_with("rediss://") {
        // Already installed (a second connect in one process) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let unusable = |e: &dyn std::fmt::Display| StartError(format!("REDIS_URL is not usable: {e}"));
    let Some(ca_file) = ca_file else {
        return redis::Client::open(url).map_err(|e| unusable(&e));
    };
    if !redis_url.starts_with("rediss://") {
        return Err(StartError(
            "REDIS_CA_FILE is set but REDIS_URL is not a rediss:// (TLS) URL".into(),
        ));
    }
    let root_cert = std::fs::read(ca_file).map_err(|e| {
        StartError(format!(
            "cannot read REDIS_CA_FILE {}: {e}",
            ca_file.display()
        ))
    })?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    redis::Client::build_with_tls(url, certificates).map_err(|e| unusable(&e))
}

/// Connects both Redis connections (the subscriber and room state), registers this node and
/// subscribes to its inbox, or says clearly why not within [`REDIS_CONNECT_TIMEOUT`] (a
/// certificate that does not verify says so).
pub async fn connect(
    redis_url: &str,
    ca_file: Option<&Path>,
    link_address: String,
) -> Result<Connected, StartError> {
    let client = client(redis_url, ca_file)?;
    let unreachable = |e: &dyn std::fmt::Display| unreachable(redis_url, e);
    let connect = async {
        // One plain round trip first, so a wrong address fails at once instead of after the
        // connection managers' reconnect back-off.
        let mut probe = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| unreachable(&e))?;
        redis::cmd("PING")
            .query_async::<()>(&mut probe)
            .await
            .map_err(|e| unreachable(&e))?;
        let pubsub = PubSub::connect(client.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let rooms = RedisRooms::connect(client, link_address)
            .await
            .map_err(|e| unreachable(&e))?;
        let inbox = pubsub
            .subscribe(inbox::channel(rooms.node()), inbox::INBOX_DEPTH)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok::<_, StartError>(Connected {
            pubsub,
            rooms,
            inbox,
        })
    };
    tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(&"no answer within 10 s"))?
}

/// A start failure that names the Redis URL without its password.
pub fn unreachable(redis_url: &str, cause: &dyn std::fmt::Display) -> StartError {
    StartError(format!(
        "cannot reach Redis at {}: {cause}",
        redact(redis_url)
    ))
}

/// Cluster mode: refresh this node's heartbeat, and announce the members of nodes that died.
pub async fn keep_node_alive(hub: Arc<Hub>, io: SocketIo, pubsub: PubSub) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = crate::metrics::Timer::start(&crate::metrics::get().redis_seconds);
        let alive = hub.heartbeat().await;
        drop(beat);
        match alive {
            Ok(true) => {}
            Ok(false) => {
                // The others may have announced our members as gone: make every client
                // reconnect and rejoin so the rooms agree again.
                tracing::error!(
                    "this node's heartbeat had lapsed; disconnecting its clients so they rejoin"
                );
                if let Err(e) = io.local().disconnect().await {
                    tracing::warn!(cause = %e, "disconnecting clients failed");
                }
                if let Some(postbox) = hub.rooms.postbox() {
                    postbox.links().resume();
                }
            }
            Err(e) => tracing::error!(cause = %e, "heartbeat failed; Redis unreachable"),
        }
        if let Err(e) = pubsub.ping().await {
            tracing::error!(cause = %e, "cluster pub/sub connection down");
        }
        hub.record_missed_leaves().await;
        if let Err(e) = hub.reap_dead_nodes().await {
            tracing::error!(cause = %e, "looking for dead nodes failed; Redis unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis URL in a log line or start error never shows its user and password.
    #[test]
    fn urls_in_messages_lose_their_credentials() {
        assert_eq!(
            redact("rediss://app:s3cret@redis.internal:6380/0"),
            "rediss://***@redis.internal:6380/0"
        );
        assert_eq!(
            redact("redis://:p@ss@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        // An `@` only before the scheme separates no credentials.
        assert_eq!(redact("odd@redis://host:6379"), "odd@redis://host:6379");
    }
}
