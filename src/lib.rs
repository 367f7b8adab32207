//! rtcio-signal: a WebRTC signaling server that speaks the rtc.io protocol over Socket.IO.
//!
//! - [`protocol`]: the wire contract (event names, payloads, validation).
//! - [`auth`]: JWT verification at connect time.
//! - [`rooms`]: room membership and its per-room ordering.
//! - [`session`]: per-socket state and in-order event handling.
//! - [`signaling`]: the socket handlers.
//! - [`server`]: HTTP routes, the listener and graceful shutdown.
//! - [`cluster`]: room state in Redis for several processes; [`pubsub`]: their transport.
//! - [`config`]: every setting.
//! - `heap_census` (feature `heap-census` only): live heap by allocation size, for the benchmarks.

pub mod auth;
pub mod cluster;
pub mod config;
#[cfg(feature = "heap-census")]
pub mod heap_census;
pub mod protocol;
pub mod pubsub;
pub mod rooms;
pub mod server;
pub mod session;
pub mod signaling;
