//! The broker: every publish goes through it and every stored message comes back from it, so a
//! single node and a cluster share one message path.
//!
//! - [`LocalBroker`] (single node): the store writer numbers and commits; after the commit the
//!   publish is reported stored and the message is handed to the hub.
//! - [`RedisBroker`] (cluster): Redis numbers; every node stores every message and hands it to
//!   its hub.
//!
//! The broker *reports* and the hub *speaks*: a publish's outcome goes to the caller's
//! [`PublishDone`] (which builds the ack or error frame), and deliveries and presence changes go
//! to [`BrokerEvents`] (implemented by the hub). The broker knows nothing of sessions or frames.

mod local;
mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;

pub use local::LocalBroker;
pub use redis::RedisBroker;

use crate::auth::User;
use crate::protocol::Message;

/// What can go wrong in a broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("an unexpected answer from redis: {0}")]
    Parse(#[from] ::redis::ParsingError),
    #[error("redis at {0} did not answer")]
    NoAnswer(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the redis subscription ended")]
    FeedEnded,
    #[error("the broker is closing")]
    Closing,
}

/// A publish from a member of the room.
#[derive(Debug, Clone)]
pub struct Publish {
    pub room: Arc<str>,
    pub user: User,
    pub body: Arc<str>,
    pub key: Option<Arc<str>>,
}

/// What became of a publish: the truth, never a guess (v1.1 "an answer is the truth").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored under this new offset.
    Stored { offset: u64 },
    /// The same key was stored before under this offset; nothing was stored again.
    Duplicate { offset: u64 },
    /// Not stored, and never will be.
    Unavailable,
}

/// Receives a publish's outcome, once.
pub type PublishDone = Box<dyn FnOnce(PublishOutcome) + Send>;

/// A change of a user's presence in a room through another node (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Joined {
        room: Arc<str>,
        node: Arc<str>,
        user: User,
    },
    Left {
        room: Arc<str>,
        node: Arc<str>,
        user: User,
    },
}

impl PresenceEvent {
    pub fn room(&self) -> &Arc<str> {
        match self {
            PresenceEvent::Joined { room, .. } | PresenceEvent::Left { room, .. } => room,
        }
    }
}

/// Where a broker hands what it learns: the hub. Both calls may wait (backpressure from a busy
/// shard) but never on a session.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A message stored in this node's log, in offset order per room.
    fn message(&self, message: Message) -> BoxFuture<'_, ()>;
    /// A presence change on another node.
    fn presence(&self, event: PresenceEvent) -> BoxFuture<'_, ()>;
}

/// A node's figures, as it publishes them every second (cluster mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFigures {
    pub node: String,
    /// Field name to value, as the node wrote them (`connections`, `rooms`, `published`,
    /// `delivered`, `ready`).
    pub figures: std::collections::BTreeMap<String, String>,
}

/// Whether a broker can serve: what `/readyz` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Connected to what it needs (always true for a single node).
    pub connected: bool,
    /// Holds what the cluster stored while it was away.
    pub caught_up: bool,
    /// Numbering publishes (false while it repairs Redis from its log).
    pub accepting: bool,
}

impl Health {
    pub const SINGLE_NODE: Health = Health {
        connected: true,
        caught_up: true,
        accepting: true,
    };

    pub fn ready(&self) -> bool {
        self.connected && self.caught_up && self.accepting
    }
}

/// A broker: takes publishes, reports their outcome, hands every stored message to the
/// [`BrokerEvents`].
pub trait Broker: Send + Sync + 'static {
    /// Takes a publish without waiting. Publishes handed over in one order are numbered in that
    /// order (v1.1 "order per connection"). `done` gets the outcome: `Stored` only once the
    /// message is durable in this node's log.
    fn publish(&self, publish: Publish, done: PublishDone);

    /// A user's first connection on this node joined `room` (`present`), or its last one left.
    /// A cluster broker shares it with the other nodes; a single node has nothing to do.
    fn presence(&self, _room: &Arc<str>, _user: &User, _present: bool) {}

    /// A user logged out here (its session generation is now `generation`): a cluster broker tells
    /// the other nodes.
    fn revoked(&self, _user: &Arc<str>, _gen: u64) {}

    /// Whether it can serve now.
    fn health(&self) -> Health;

    /// Every live node's figures, as each one last published them (cluster mode; a single
    /// node has none: the dashboard shows its own).
    fn nodes(&self) -> BoxFuture<'_, Vec<NodeFigures>> {
        Box::pin(async { Vec::new() })
    }

    /// Withdraws this node and stops the broker's tasks.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A broker shared by the sessions and the hub's shards.
pub type SharedBroker = Arc<dyn Broker>;
