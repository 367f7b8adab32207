//! rtcio-signal: a WebRTC signaling server that speaks the rtc.io protocol over Socket.IO.
//!
//! - [`protocol`]: the wire contract (event names, payloads in and out, validation).
//! - [`auth`]: JWT verification at connect time; [`room_lock`]: room passwords, hashed.
//! - [`transport`]: socketioxide glue: admitting a connection, dispatching its events.
//! - [`session`]: a peer's session (outlives its sockets), its kept events, in-order handling.
//! - [`ids`]: peer ids and resume credentials.
//! - [`hub`]: the rooms' behaviour, one flow per file (join, leave, echo, relay).
//! - [`delivery`]: the one path every emit to a peer takes.
//! - [`store`]: room state, in memory or in Redis; [`turns`]: the order of changes in a room.
//! - [`cluster`]: connecting to Redis, node heartbeats and reaping, the pub/sub transport.
//! - [`limits`]: caps and rates (connections, events, wrong passwords).
//! - [`metrics`]: the Prometheus metrics.
//! - [`turn`]: the ICE servers clients are handed, with short-lived TURN credentials.
//! - [`http`]: the HTTP routes; [`server`]: assembly and shutdown; [`config`]: every setting.
//! - [`webhooks`]: signed POSTs of rooms starting and finishing and participants joining and
//!   leaving, once each and in order per room, in memory or across a cluster.
//! - `heap_census` (feature `heap-census` only): live heap by allocation size, for the benchmarks.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod fly;
#[cfg(test)]
mod fuzz;
#[cfg(feature = "heap-census")]
pub mod heap_census;
pub mod http;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod room_lock;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;
pub mod turn;
pub mod turns;
pub mod webhooks;
