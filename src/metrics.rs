//! Prometheus metrics: what an operator graphs and alerts on (connections, rooms, events,
//! refusals, relays, latencies, recovery, rate limits, the cluster's Redis traffic).
//!
//! One process serves one server, so the metrics are one process-wide set, reachable from
//! every flow without threading a handle through them. Counters on the relay path are resolved
//! once at start (no label lookup per message); every label set is bounded: event names the
//! protocol knows (anything else is `other`), refusal codes, refusal reasons, event classes.
//! Gauges of current state (connections, sessions away, rooms, members) are read from the hub
//! when scraped rather than kept in step with every change.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::limits::EventClass;
use crate::protocol as p;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub connections_opened: IntCounter,
    connections_refused: IntCounterVec,
    /// Events received, one counter per event the protocol knows and one for the rest.
    events: [IntCounter; KNOWN_EVENTS.len() + 1],
    refusals: IntCounterVec,
    pub relayed: IntCounter,
    pub relayed_bytes: IntCounter,
    pub join_seconds: Histogram,
    pub relay_seconds: Histogram,
    pub sessions_resumed: IntCounter,
    pub sessions_expired: IntCounter,
    rate_limited: IntCounterVec,
    pub flood_disconnects: IntCounter,
    pub redis_seconds: Histogram,
    pub redis_errors: IntCounter,
    pub reaped_nodes: IntCounter,
    pub letters_sent: IntCounter,
    pub letters_received: IntCounter,
    pub webhooks_dropped: IntCounter,
    pub admin_actions: IntCounter,
    /// Sockets with events waiting behind their full outgoing queue (slow readers).
    pub backlogged_sockets: IntGauge,
    // Current state, set from the hub at each scrape.
    connections: IntGauge,
    sessions_away: IntGauge,
    rooms: IntGauge,
    members: IntGauge,
}

/// The events with a counter of their own.
const KNOWN_EVENTS: [&str; 8] = [
    p::JOIN_ROOM,
    p::CHECK_ROOM,
    p::LEAVE_ROOM,
    p::MEDIA_STATE,
    p::STOP_SCREEN_SHARE,
    p::CHAT_MESSAGE,
    p::RELAY,
    p::ASK_ICE,
];

/// What the hub reports at a scrape.
pub struct Current {
    pub connections: usize,
    pub sessions_away: usize,
    pub rooms: usize,
    pub members: usize,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Registers `metric`, whose name and help are constants of this module (so neither its
/// definition nor its registration can fail at run time; a unit test builds them all).
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric definitions are constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counters(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts))
}

/// Seconds, from 10 µs (a relay within one node) to 5 s (a join waiting on a slow Redis).
const LATENCY_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0, 5.0,
];

impl Metrics {
    // The names and label sets are constants: registering them cannot fail at run time.
    fn new() -> Metrics {
        let r = Registry::new();
        let events = counters(
            &r,
            "rtcio_events_received_total",
            "Events received from clients, by event name",
            "event",
        );
        Metrics {
            connections_opened: counter(
                &r,
                "rtcio_connections_opened_total",
                "Socket.IO connections admitted",
            ),
            connections_refused: counters(
                &r,
                "rtcio_connections_refused_total",
                "Socket.IO connections refused at CONNECT, by reason",
                "reason",
            ),
            events: std::array::from_fn(|i| {
                events.with_label_values(&[KNOWN_EVENTS.get(i).copied().unwrap_or("other")])
            }),
            refusals: counters(
                &r,
                "rtcio_refusals_total",
                "Events refused with error or join-error, by code",
                "code",
            ),
            relayed: counter(
                &r,
                "rtcio_relayed_messages_total",
                "#rtcio:message relays passed on to their target",
            ),
            relayed_bytes: counter(
                &r,
                "rtcio_relayed_bytes_total",
                "Bytes of the relays passed on, as sent to the target",
            ),
            join_seconds: histogram(
                &r,
                "rtcio_join_seconds",
                "From a join-room's arrival to the newcomer's join-ok (roster sent)",
                &LATENCY_BUCKETS,
            ),
            relay_seconds: histogram(
                &r,
                "rtcio_relay_seconds",
                "Handling of one #rtcio:message, from its turn to its hand-off",
                &LATENCY_BUCKETS,
            ),
            sessions_resumed: counter(
                &r,
                "rtcio_sessions_resumed_total",
                "Sessions taken up again with a resume credential",
            ),
            sessions_expired: counter(
                &r,
                "rtcio_sessions_expired_total",
                "Away sessions ended because their recovery window ran out",
            ),
            rate_limited: counters(
                &r,
                "rtcio_rate_limited_total",
                "Events dropped over their socket's rate, by class",
                "class",
            ),
            flood_disconnects: counter(
                &r,
                "rtcio_flood_disconnects_total",
                "Sockets disconnected for flooding over a rate",
            ),
            redis_seconds: histogram(
                &r,
                "rtcio_redis_round_trip_seconds",
                "Round trip of the cluster heartbeat to Redis",
                &LATENCY_BUCKETS,
            ),
            redis_errors: counter(
                &r,
                "rtcio_redis_errors_total",
                "Redis commands that failed (cluster mode)",
            ),
            reaped_nodes: counter(
                &r,
                "rtcio_reaped_nodes_total",
                "Dead nodes whose members this node removed",
            ),
            letters_sent: counter(
                &r,
                "rtcio_cluster_letters_sent_total",
                "Letters (relays, echoes) and notes sent to other nodes over the links",
            ),
            letters_received: counter(
                &r,
                "rtcio_cluster_letters_received_total",
                "Letters and notes this node read from the other nodes",
            ),
            webhooks_dropped: counter(
                &r,
                "rtcio_webhooks_dropped_total",
                "Webhook events dropped because the queue was full",
            ),
            admin_actions: counter(
                &r,
                "rtcio_admin_actions_total",
                "Admin API requests that changed something (kick, close)",
            ),
            backlogged_sockets: gauge(
                &r,
                "rtcio_backlogged_sockets",
                "Sockets with events waiting behind their full outgoing queue",
            ),
            connections: gauge(&r, "rtcio_connections", "Sessions held, connected or away"),
            sessions_away: gauge(
                &r,
                "rtcio_sessions_away",
                "Sessions whose connection dropped, kept for their recovery window",
            ),
            rooms: gauge(&r, "rtcio_rooms", "Rooms with members on this node"),
            members: gauge(
                &r,
                "rtcio_members",
                "Room memberships of this node's sessions",
            ),
            registry: r,
        }
    }

    /// The counter of events named `event`.
    pub fn event(&self, event: &str) -> &IntCounter {
        let index = KNOWN_EVENTS
            .iter()
            .position(|known| *known == event)
            .unwrap_or(KNOWN_EVENTS.len());
        &self.events[index]
    }

    pub fn refused(&self, code: &str) {
        self.refusals.with_label_values(&[code]).inc();
    }

    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    pub fn rate_limited(&self, class: EventClass) {
        let class = match class {
            EventClass::Relay => "relay",
            EventClass::Room => "room",
            EventClass::Echo => "echo",
        };
        self.rate_limited.with_label_values(&[class]).inc();
    }

    /// The text exposition of every metric, with the current state as `current` says.
    pub fn render(&self, current: Current) -> String {
        let gauge = |g: &IntGauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.connections, current.connections);
        gauge(&self.sessions_away, current.sessions_away);
        gauge(&self.rooms, current.rooms);
        gauge(&self.members, current.members);
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(cause = %e, "metrics could not be encoded");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Measures a span into a histogram when dropped, so every return path of a flow counts.
pub struct Timer {
    started: Instant,
    into: &'static Histogram,
}

impl Timer {
    pub fn start(into: &'static Histogram) -> Timer {
        Timer {
            started: Instant::now(),
            into,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.into.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_registers_and_renders() {
        let text = super::get().render(super::Current {
            connections: 3,
            sessions_away: 1,
            rooms: 2,
            members: 4,
        });
        assert!(text.contains("rtcio_connections 3"));
        assert!(text.contains("rtcio_events_received_total{event=\"other\"} 0"));
    }
}
