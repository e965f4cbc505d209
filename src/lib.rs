//! Nebula: a durable, clustered real-time chat server.
//!
//! The modules follow the data path of a message:
//!
//! ```text
//! socket -> session (reader) -> hub shard (owns the room) -> broker -> store (SQLite room log)
//! broker delivery -> hub shard -> encode once -> each member's outbox -> session (writer) -> socket
//! ```
//!
//! - [`server`]: the hyper accept loop, the HTTP routes, the WebSocket upgrade and shutdown.
//! - [`auth`]: the HMAC-signed session cookie and user names.
//! - [`session`]: one per connection, a reader task and a writer task around a bounded outbox.
//! - [`protocol`]: the v1 wire contract: requests, replies, pushes, error and close codes.
//! - [`hub`]: N shards; each shard is a task that alone owns its rooms (members, presence, ring).
//! - [`broker`]: where publishes go and deliveries come from (`LocalBroker`; Redis in a cluster).
//! - [`store`]: the durable room log in SQLite (WAL) with a batching writer.
//! - [`limits`]: rate limits per user and per IP.
//! - [`metrics`]: Prometheus counters, never on the message path beyond an atomic add.
//! - [`config`]: flags and `NEBULA_*` environment variables.
//! - [`datadir`]: the locked data directory (0700) and the node's small files.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
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
