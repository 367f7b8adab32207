//! Assembly: builds the pieces for the chosen mode (in memory, or a cluster node on Redis)
//! once, serves them, and shuts down in order: stop accepting, disconnect every client, and
//! (cluster mode) deregister the node once its sockets have left their rooms; in memory mode
//! the webhook events those departures made are flushed within what is left of the grace
//! period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use socketioxide::adapter::LocalAdapter;
use socketioxide::{SocketIo, SocketIoBuilder};
use tokio::net::TcpListener;

use crate::auth::Verifier;
use crate::cluster;
use crate::config::Config;
use crate::http::Http;
use crate::hub::{Hub, Limits};
use crate::limits::{EventRates, Rate};
use crate::session::outbox::KeepLimits;
use crate::store::{MemoryRooms, RoomStore};
use crate::turn::IceServers;
use crate::webhooks::{self, LocalQueue, Webhooks};

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<crate::auth::KeyError> for StartError {
    fn from(e: crate::auth::KeyError) -> Self {
        StartError(e.to_string())
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError(e.to_string())
    }
}

/// Frames over this multiple of the event cap close the connection instead of getting an
/// `error` reply, so a client cannot make the server buffer arbitrarily large frames.
const FRAME_LIMIT_FACTOR: usize = 16;

/// Runs the server until `shutdown` resolves, then disconnects every client and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if (config.max_queued_bytes as usize) < config.max_payload_bytes.saturating_mul(4) {
        return Err(StartError(
            "MAX_QUEUED_BYTES must be at least 4 times MAX_PAYLOAD_BYTES".into(),
        ));
    }
    let verifier = Arc::new(Verifier::from_config(&config)?);
    let ice = Arc::new(IceServers::from_config(&config)?);
    let listener = TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot listen on {}:{}: {e}",
                config.host, config.port
            ))
        })?;
    let limits = limits(&config);
    let hooks = webhooks::Settings::from_config(&config)?;
    let grace = config.shutdown_grace();

    let Some(redis_url) = config.redis_url.clone() else {
        let (layer, io) = socket_io_builder(&config).build_layer();
        let (rooms, sender) = match hooks {
            Some(hooks) => {
                let queue = Arc::new(LocalQueue::new(hooks.queue));
                let sender = Webhooks::start(hooks, webhooks::Queue::Local(Arc::clone(&queue)));
                (MemoryRooms::with_webhooks(queue), Some(sender))
            }
            None => (MemoryRooms::default(), None),
        };
        let hub = Hub::new(
            io.clone(),
            RoomStore::Memory(rooms),
            Arc::clone(&verifier),
            Arc::clone(&ice),
            limits,
        );
        hub.attach();
        let http = Http {
            hub: Arc::clone(&hub),
            verifier,
            ice,
        };
        // When the shutdown began: the webhook flush gets what is left of the grace period.
        let signalled = Arc::new(std::sync::OnceLock::new());
        let shutdown = {
            let signalled = Arc::clone(&signalled);
            async move {
                shutdown.await;
                let _ = signalled.set(tokio::time::Instant::now());
            }
        };
        serve(config, listener, layer, io, http, shutdown).await?;
        if let Some(sender) = sender {
            // The departures' events are recorded as the sessions end, after serving stops;
            // sessions away after a drop would otherwise never leave.
            let began = signalled
                .get()
                .copied()
                .unwrap_or_else(tokio::time::Instant::now);
            let deadline = began + grace;
            hub.end_all(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
            sender.flush(deadline).await;
        }
        return Ok(());
    };

    let advertise = config
        .cluster_link_advertise
        .as_deref()
        .or(config.fly_private_ip.as_deref());
    let (link_listener, link_address) = cluster::links::bind(config.cluster_link_listen, advertise)
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot listen for cluster links on {}: {e}",
                config.cluster_link_listen
            ))
        })?;
    let cluster::Connected {
        pubsub,
        mut rooms,
        inbox,
    } = cluster::connect(
        &redis_url,
        config.redis_ca_file.as_deref(),
        link_address.clone(),
    )
    .await?;
    tracing::info!(address = %link_address, "listening for links from other nodes");
    let links = Arc::clone(rooms.postbox().links());
    tracing::info!(node = %rooms.node(), "cluster mode: room state in Redis");
    // In cluster mode the waiting events stay in Redis for whichever node sends next.
    let sender = hooks.map(|hooks| {
        let list = rooms.record_webhooks(hooks.queue);
        Webhooks::start(hooks, webhooks::Queue::Redis(list))
    });
    let (layer, io) = socket_io_builder(&config).build_layer();
    let hub = Hub::new(
        io.clone(),
        RoomStore::Redis(Box::new(rooms)),
        Arc::clone(&verifier),
        Arc::clone(&ice),
        limits,
    );
    hub.attach();
    tokio::spawn(cluster::inbox::read_inbox(Arc::downgrade(&hub), inbox));
    tokio::spawn(Arc::clone(&links).serve(link_listener, Arc::downgrade(&hub)));

    let heartbeat = tokio::spawn(cluster::keep_node_alive(
        Arc::clone(&hub),
        io.clone(),
        pubsub,
    ));
    let http = Http {
        hub: Arc::clone(&hub),
        verifier,
        ice,
    };
    let stopped = serve(config, listener, layer, io, http, shutdown).await?;
    // The heartbeat runs until this node's sockets have left their rooms (or their sessions
    // have gone to an heir); if they don't in time, the node's entries stay and the survivors
    // reap them once the heartbeat lapses.
    // With nobody to take the sessions over, they end here (those away after the clients
    // were cut off too): their departures are recorded and announced before the node goes.
    let drained = match stopped {
        Stopped::HandedOff => true,
        Stopped::Closed => hub.end_all(grace).await,
    };
    // What is still on its way to other nodes (handed sessions, departures) gets there first.
    links.flush().await;
    heartbeat.abort();
    if drained && let Err(e) = hub.deregister_node().await {
        tracing::warn!(cause = %e, "could not deregister this node; survivors will reap it");
    }
    if let Some(sender) = sender {
        sender.release().await;
    }
    Ok(())
}

/// Packets one socket may have waiting to be written. socketioxide's default (128) overflows
/// when a busy server fans a storm of joins out; the queue allocates in blocks of 32 as it
/// fills, so a deep limit costs an idle socket nothing.
const SOCKET_QUEUE_PACKETS: usize = 4096;

/// WebSocket read chunk. Signaling frames are mostly a few hundred bytes; a 3 KB SDP takes
/// three reads, and every idle connection keeps 3 KiB less than with the 4 KiB default.
const WS_READ_CHUNK: usize = 1024;

fn socket_io_builder(config: &Config) -> SocketIoBuilder<LocalAdapter> {
    let frame_limit = config.max_payload_bytes.saturating_mul(FRAME_LIMIT_FACTOR);
    SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .connect_timeout(std::time::Duration::from_millis(config.connect_timeout_ms))
        .max_buffer_size(SOCKET_QUEUE_PACKETS)
        .max_payload(frame_limit as u64)
        .ws_read_buffer_size(WS_READ_CHUNK)
        .ws_max_message_size(frame_limit)
        .ws_max_frame_size(frame_limit)
}

/// Most events, and bytes of them, one session keeps for replay.
const KEPT_EVENTS: usize = 256;
const KEPT_BYTES: usize = 256 * 1024;

fn limits(config: &Config) -> Limits {
    Limits {
        max_payload_bytes: config.max_payload_bytes,
        max_peers_per_room: config.max_peers_per_room,
        max_rooms_per_session: config.max_rooms_per_socket,
        max_connections: config.max_connections,
        max_connections_per_address: config.max_connections_per_address,
        rates: EventRates {
            relay: Rate {
                per_second: config.relay_rate,
                burst: config.relay_burst,
            },
            room: Rate {
                per_second: config.room_event_rate,
                burst: config.room_event_burst,
            },
            echo: Rate {
                per_second: config.echo_rate,
                burst: config.echo_burst,
            },
            bytes: Rate {
                per_second: config.send_bytes_rate,
                burst: config.send_bytes_burst,
            },
            flood_for: Duration::from_millis(config.flood_disconnect_ms),
        },
        guesses: config.guess_limits(),
        recovery_window: (config.recovery_window_ms > 0)
            .then(|| Duration::from_millis(config.recovery_window_ms)),
        queue_budget: queue_budget(config),
        keep: KeepLimits {
            events: KEPT_EVENTS,
            bytes: KEPT_BYTES,
            // A client notices a dead connection once a ping is this late.
            age: config.ping_interval() + config.ping_timeout(),
        },
    }
}

/// Half of `MAX_QUEUED_BYTES` at once and half again over the longest a client that stops
/// reading stays connected (its next ping goes unanswered), so what may still wait for it never
/// exceeds the whole.
fn queue_budget(config: &Config) -> Rate {
    let unread_for = config.ping_interval() + config.ping_timeout();
    let half = config.max_queued_bytes / 2;
    Rate {
        per_second: f64::from(half) / unread_for.as_secs_f64().max(0.001),
        burst: half,
    }
}

/// How serving ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stopped {
    /// Clients were disconnected: their departures are announced.
    Closed,
    /// (Cluster mode) every session went to another node; the clients' connections end with
    /// this process, and they reconnect and take their sessions up there.
    HandedOff,
}

async fn serve(
    config: Config,
    listener: TcpListener,
    layer: socketioxide::layer::SocketIoLayer,
    io: SocketIo,
    http: Http,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Stopped, StartError> {
    let hub = Arc::clone(&http.hub);
    if http.verifier.is_dev() {
        tracing::warn!(
            "DEV MODE: tokens are signed with a random secret made at start and anyone can \
             get one from GET /dev/token. Do not expose this server to the internet."
        );
        eprintln!("*** rtcio-signal is running in DEV MODE: GET /dev/token hands out tokens ***");
    }

    let app = crate::http::router(&config, http, layer)?;

    let addr = listener.local_addr()?;
    // Tests and scripts wait for this exact line.
    println!("rtcio-signal listening on http://{addr}");
    tracing::info!(%addr, "listening");

    let grace = config.shutdown_grace();
    // What the shutdown did, for whichever of the server's end and the grace timer comes first.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(None::<Stopped>);
    let close_io = io.clone();
    // Signaling messages are small and latency-bound: Nagle plus delayed ACKs would hold
    // them back for tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "TCP_NODELAY not set");
        }
    });
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(serve_metrics(addr, Arc::clone(&hub)).await?),
        None => None,
    };
    let drain_delay = Duration::from_millis(config.drain_delay_ms);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        // Unready first, so the balancer stops sending newcomers while clients still connect.
        hub.stop_wanting_clients();
        if !drain_delay.is_zero() {
            tracing::info!(
                ?drain_delay,
                "shutting down: /readyz says unready; draining next"
            );
            tokio::time::sleep(drain_delay).await;
        }
        if hub.hand_off(grace).await {
            let _ = stopping_tx.send(Some(Stopped::HandedOff));
            return;
        }
        tracing::info!("shutting down: disconnecting clients");
        let _ = stopping_tx.send(Some(Stopped::Closed));
        // Clients get a clean disconnect, so peers on other nodes hear about it.
        if tokio::time::timeout(grace, close_io.close()).await.is_err() {
            tracing::warn!("clients did not all disconnect within the grace period");
        }
    });
    let server = std::pin::pin!(server.into_future());
    let mut stopping = stopping_rx.clone();
    let stopped = tokio::select! {
        result = server => {
            result?;
            stopping_rx.borrow().clone().unwrap_or(Stopped::Closed)
        }
        stopped = async {
            let _ = stopping.wait_for(Option::is_some).await;
            if *stopping.borrow() == Some(Stopped::HandedOff) {
                // The sessions are elsewhere: the connections end with this process.
                return Stopped::HandedOff;
            }
            tokio::time::sleep(grace * 2).await;
            tracing::warn!("shutdown grace period over; exiting with connections open");
            Stopped::Closed
        } => stopped,
    };
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    tracing::info!(?stopped, "stopped");
    Ok(stopped)
}

/// Serves `/metrics` alone on `addr` until aborted.
async fn serve_metrics(
    addr: SocketAddr,
    hub: Arc<Hub>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen on METRICS_ADDR {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    println!("rtcio-signal metrics on http://{bound}/metrics");
    let app = crate::http::metrics_router(hub);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(cause = %e, "the metrics listener failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(flags: &[&str]) -> Config {
        let args = std::iter::once("rtcio-signal").chain(flags.iter().copied());
        Config::try_parse_from(args).expect("valid flags")
    }

    /// `RECOVERY_WINDOW_MS=0` turns session recovery off; any other value keeps a dropped
    /// session that long.
    #[test]
    fn a_recovery_window_of_zero_turns_recovery_off() {
        let off = config(&["--recovery-window-ms", "0"]);
        assert_eq!(limits(&off).recovery_window, None);
        let short = config(&["--recovery-window-ms", "1"]);
        assert_eq!(
            limits(&short).recovery_window,
            Some(Duration::from_millis(1))
        );
    }

    /// Half of `MAX_QUEUED_BYTES` may be given at once, and the other half over the time a
    /// client that stops reading stays connected.
    #[test]
    fn the_queue_budget_spreads_half_the_cap_over_a_silent_clients_last_ping() {
        let budget = queue_budget(&config(&[
            "--max-queued-bytes",
            "1000000",
            "--ping-interval-ms",
            "20000",
            "--ping-timeout-ms",
            "30000",
        ]));
        assert_eq!(budget.burst, 500_000);
        assert!((budget.per_second - 10_000.0).abs() < 1e-6, "{budget:?}");
    }
}
