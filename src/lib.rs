//! Nebula: a durable, clustered real-time chat server.
//!
//! The modules follow the data path of a message, and each imports only the ones below it:
//!
//! ```text
//! server ─▶ session ─▶ hub ─▶ broker ─▶ store
//!    │         │        │       │         │
//!    └─────────┴────────┴───────┴─────────┴─▶ conn, protocol, auth, limits, metrics, config
//!
//! socket -> session reader -> broker.publish -> store (single node) | Redis (cluster)
//! broker events -> hub shard (owns the room) -> encode once -> each member's outbox
//!               -> session writer -> socket
//! ```
//!
//! - [`server`]: the composition root and shutdown, the HTTP routes, the WebSocket handshake.
//! - [`session`]: one per connection, a reader task and a writer task around its outbox.
//! - [`hub`]: N shards; each shard is a task that alone owns its rooms (members, presence, ring).
//! - [`broker`]: where publishes go and stored messages come from (`LocalBroker` on one node,
//!   `RedisBroker` in a cluster), reported to the hub through [`broker::BrokerEvents`].
//! - [`store`]: the durable room log in SQLite (WAL) with a batching writer.
//! - [`conn`]: a connection as others see it: its outbox (bounded in bytes) and its closer.
//! - [`protocol`]: the wire contract in JSON and Protobuf: requests, every reply and push.
//! - [`auth`]: the HMAC-signed session cookie, its revocation, and user names.
//! - [`limits`]: rate limits per user and per IP.
//! - [`metrics`]: Prometheus metrics from one table, never on the message path beyond an add.
//! - [`config`]: flags and `NEBULA_*` environment variables; [`datadir`]: the locked data dir.
//! - [`client`]: a small HTTP and WebSocket client kit for the load generator and the tests.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod conn;
pub mod datadir;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
mod web;

pub use config::Config;
pub use error::Error;
pub use server::{Nebula, RunningServer};
