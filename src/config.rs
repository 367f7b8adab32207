//! Every setting the server reads, from flags or the environment, in one place, so the
//! README's settings table and the binary cannot drift apart.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::limits::{GuessLimits, WindowLimit};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rtcio-signal",
    version,
    about = "WebRTC signaling server speaking the rtc.io protocol over Socket.IO"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// TCP port to listen on (0 picks a free one; the chosen port is printed).
    #[arg(long, env = "PORT", default_value_t = 3001)]
    pub port: u16,

    /// Origins allowed by CORS, comma-separated, or `*` for any.
    #[arg(long, env = "ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds.
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 60_000)]
    pub ping_timeout_ms: u64,

    /// How long an Engine.IO connection may stay open without its Socket.IO CONNECT, in
    /// milliseconds. A real client sends it at once; a half-done handshake holds a session
    /// the connection caps do not count yet.
    #[arg(long, env = "CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// Largest event a client may send, in bytes. Larger events are refused with an
    /// `error` reply; frames over 16 times this close the connection.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub max_payload_bytes: usize,

    /// Most members one room may hold; the next joiner gets `join-error` `room-full`.
    #[arg(long, env = "MAX_PEERS_PER_ROOM", default_value_t = 50)]
    pub max_peers_per_room: usize,

    /// Most Socket.IO connections the server holds; one more is refused at connect. Keep it
    /// under the open-file limit, so the listener and `/health` keep working.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 18_000)]
    pub max_connections: usize,

    /// Most connections from one client address; one more is refused at connect.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,

    /// A request header a trusted proxy sets to the client's address (`Fly-Client-IP` on
    /// Fly.io); without it the address is the TCP peer's. Only set it behind such a proxy:
    /// clients could otherwise claim any address.
    #[arg(long, env = "TRUSTED_CLIENT_IP_HEADER")]
    pub trusted_client_ip_header: Option<String>,

    /// Relays (`#rtcio:message`) one socket may send per second, sustained, and in a burst
    /// above that. Over it: `error` `rate-limited` with `retryAfterMs`, the event dropped.
    /// Sized from a 6-peer call in Chromium (`benches/call-rates`): a newcomer sends 25 relays,
    /// at most 15 in a second; the defaults are 10 times the burst and 6.7 times the peak.
    #[arg(long, env = "RELAY_RATE", default_value_t = 100.0)]
    pub relay_rate: f64,
    #[arg(long, env = "RELAY_BURST", default_value_t = 250)]
    pub relay_burst: u32,

    /// `join-room`, `check-room` and `leave-room` per second and burst, per socket.
    #[arg(long, env = "ROOM_EVENT_RATE", default_value_t = 5.0)]
    pub room_event_rate: f64,
    #[arg(long, env = "ROOM_EVENT_BURST", default_value_t = 50)]
    pub room_event_burst: u32,

    /// `media-state`, `stopScreenShare`, `chat-message` (and unknown events) per second and
    /// burst, per socket.
    #[arg(long, env = "ECHO_RATE", default_value_t = 60.0)]
    pub echo_rate: f64,
    #[arg(long, env = "ECHO_BURST", default_value_t = 140)]
    pub echo_burst: u32,

    /// Bytes of relays and echoes one socket may send per second, sustained, and in a burst
    /// above that (each event costs its payload's size). Over it: `error` `rate-limited`, as
    /// for the event rates. A newcomer to a full room of 50 relays some 250 KB of offers; a
    /// flooder at this rate cannot fill a peer's [`Config::max_queued_bytes`] on its own.
    #[arg(long, env = "SEND_BYTES_RATE", default_value_t = 32_768.0)]
    pub send_bytes_rate: f64,
    #[arg(long, env = "SEND_BYTES_BURST", default_value_t = 1_048_576)]
    pub send_bytes_burst: u32,

    /// Most bytes of relays and echoes waiting to be written to one socket. socketioxide does
    /// not say how full its queue is, so what is counted is what the socket was given within
    /// the longest time a client that stops reading stays connected (`PING_INTERVAL_MS` +
    /// `PING_TIMEOUT_MS`): at most half of this at once, and half again over that time. An
    /// event that would go over it is dropped and its sender told to wait (`rate-limited`);
    /// the socket it floods stays. At least 4 times `MAX_PAYLOAD_BYTES`.
    #[arg(long, env = "MAX_QUEUED_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_queued_bytes: u32,

    /// A socket that keeps going over a rate this long (no pause of a second) is disconnected.
    #[arg(long, env = "FLOOD_DISCONNECT_MS", default_value_t = 10_000)]
    pub flood_disconnect_ms: u64,

    /// Most rooms one session may be in at once; one more gets `join-error` `too-many-rooms`.
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET", default_value_t = 16)]
    pub max_rooms_per_socket: usize,

    /// Wrong room passwords one socket may try per window; then `join-error` `rate-limited`.
    #[arg(
        long,
        env = "WRONG_PASSWORDS_PER_SOCKET",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub wrong_passwords_per_socket: u32,

    /// Wrong passwords one user (every socket of one token `sub`, on every node) may try on
    /// one room per window.
    #[arg(
        long,
        env = "WRONG_PASSWORDS_PER_USER",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub wrong_passwords_per_user: u32,

    /// Wrong passwords one room may be tried with per window, from all users together; past
    /// that, only users who have not guessed wrong there in the window may try, once.
    #[arg(
        long,
        env = "WRONG_PASSWORDS_PER_ROOM",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub wrong_passwords_per_room: u32,

    /// The window of the wrong-password limits, in milliseconds.
    #[arg(long, env = "WRONG_PASSWORD_WINDOW_MS", default_value_t = 60_000)]
    pub wrong_password_window_ms: u64,

    /// How long a session whose connection dropped stays recoverable, in milliseconds; its
    /// peers hear nothing meanwhile. 0 turns recovery off: every departure is announced at
    /// once. Cluster mode does not recover sessions yet.
    #[arg(long, env = "RECOVERY_WINDOW_MS", default_value_t = 30_000)]
    pub recovery_window_ms: u64,

    /// HS256 secret for verifying client tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) for verifying client tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, if set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Development mode: a random secret made at start and `GET /dev/token` to mint tokens.
    /// Never use it in production.
    #[arg(long, env = "DEV_MODE")]
    pub dev: bool,

    /// Directory served at `/` (the browser demo is `client-demo`).
    #[arg(long, env = "DEMO_DIR")]
    pub demo_dir: Option<PathBuf>,

    /// ICE servers handed to browsers by `GET /client-config`, as a JSON array of
    /// RTCIceServer objects.
    #[arg(long, env = "ICE_SERVERS", default_value = "[]")]
    pub ice_servers: String,

    /// Shared secret of a TURN server running coturn's REST API scheme (`use-auth-secret`,
    /// `static-auth-secret`). With `TURN_URLS`, authenticated clients get short-lived
    /// credentials for it from `GET /client-config` and `ask-ice`.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<Secret>,

    /// The TURN server's URLs, comma-separated (`turn:` or `turns:`).
    #[arg(long, env = "TURN_URLS")]
    pub turn_urls: Option<String>,

    /// How long a TURN credential is valid, in seconds.
    #[arg(
        long,
        env = "TURN_TTL_SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub turn_ttl_secs: u64,

    /// TURN credentials one user may be issued per minute, by the route and the event
    /// together (per node in cluster mode).
    #[arg(
        long,
        env = "TURN_CREDENTIALS_PER_MINUTE",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub turn_credentials_per_minute: u32,

    /// Redis URL for cluster mode; without it the server keeps all state in memory.
    /// `rediss://` connects over TLS; `redis[s]://user:password@host` logs in as an ACL user.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// A PEM file with the CA that signed a `rediss://` server's certificate (a private CA);
    /// without it the system's roots are used.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Cluster mode: where this node listens for direct links from the other nodes, which
    /// carry every event between them (port 0 picks a free one). Only the cluster's nodes
    /// should reach it: links are authenticated, not encrypted.
    #[arg(long, env = "CLUSTER_LINK_LISTEN", default_value = "127.0.0.1:0")]
    pub cluster_link_listen: std::net::SocketAddr,

    /// Cluster mode: the host (name or IP) the other nodes reach this node's link listener
    /// at. Without it, Fly's `FLY_PRIVATE_IP`; without that, the listening IP (loopback if it
    /// listens on every address, which only reaches nodes on the same host).
    #[arg(long, env = "CLUSTER_LINK_ADVERTISE")]
    pub cluster_link_advertise: Option<String>,

    /// This machine's private IPv6 address on Fly.io (Fly sets it): advertised for links.
    #[arg(long, env = "FLY_PRIVATE_IP")]
    pub fly_private_ip: Option<String>,

    /// This machine's id on Fly.io (Fly sets it). In cluster mode, requests for an Engine.IO
    /// session another machine holds are answered with `fly-replay` so Fly's proxy sends them
    /// there, which lets clients start on HTTP long-polling behind several machines.
    #[arg(long, env = "FLY_MACHINE_ID")]
    pub fly_machine_id: Option<String>,

    /// Where membership events (`room_started`, `room_finished`, `participant_joined`,
    /// `participant_left`) are POSTed as signed JSON; without it no webhooks are sent.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The key webhooks are signed with (HMAC-SHA256), at least 16 bytes; required with
    /// `WEBHOOK_URL`.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// Most webhook events waiting to be delivered; beyond it the oldest are dropped (and
    /// counted).
    #[arg(long, env = "WEBHOOK_QUEUE", default_value_t = 10_000)]
    pub webhook_queue: usize,

    /// How long one webhook delivery may take before it counts as failed, in milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// How long a shutdown may take before the process exits anyway, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// After SIGTERM, how long `/readyz` answers 503 before the drain begins, in milliseconds,
    /// so a load balancer stops sending new clients first. Clients stay connected meanwhile.
    #[arg(long, env = "DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,

    /// Bearer token of the admin API (`/admin/…`); without it the API is off.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// A separate address (`host:port`) for `GET /metrics`, so it need not face the internet;
    /// without it the metrics are on the main port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// A setting that must never reach a log: its `Debug` prints a placeholder.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Config {
    pub fn guess_limits(&self) -> GuessLimits {
        let window = Duration::from_millis(self.wrong_password_window_ms);
        GuessLimits {
            per_socket: WindowLimit {
                limit: self.wrong_passwords_per_socket,
                window,
            },
            per_user: WindowLimit {
                limit: self.wrong_passwords_per_user,
                window,
            },
            per_room: WindowLimit {
                limit: self.wrong_passwords_per_room,
                window,
            },
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
