//! The broker: every publish goes through it and every delivery comes back from it, so a single
//! node and a cluster share one message path.
//!
//! - [`LocalBroker`] (single node): the store writer numbers and commits; after the commit the
//!   message is acked and handed to the hub.
//! - A Redis broker (cluster) numbers in Redis and delivers from its subscription.

mod local;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use thiserror::Error;

pub use local::LocalBroker;
pub use redis::RedisBroker;

use crate::auth::User;
use crate::protocol::Message;
use crate::session::Outbox;

/// What can go wrong in a broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("the broker is unavailable")]
    Unavailable,
}

/// A publish that the hub accepted (the sender is a member of the room).
pub struct Publish {
    pub room: Arc<str>,
    pub user: User,
    pub body: Arc<str>,
    pub key: Option<Arc<str>>,
    /// The request id of the `publish` frame, for its ack or error.
    pub request_id: u64,
    /// Where the ack or the error goes.
    pub reply: Outbox,
}

/// Where stored messages go to be delivered: the hub, in offset order per room.
pub trait Delivery: Send + Sync + 'static {
    /// Hands a stored message to its room's owner. May wait (backpressure) but never on a
    /// session: the owner only ever `try_send`s to sessions.
    fn deliver_blocking(&self, message: Message);
}

/// A broker: takes publishes, hands every stored message back to the [`Delivery`].
pub trait Broker: Send + Sync + 'static {
    /// Takes a publish without waiting. The ack (only once the message is durable) or an error
    /// goes to `publish.reply`; a stored message is delivered to every member through the hub.
    fn publish(&self, publish: Publish);

    /// A user's first connection on this node joined `room` (`present`), or its last one left.
    /// A cluster broker shares it with the other nodes; a single node has nothing to do.
    fn presence(&self, _room: &Arc<str>, _user: &User, _present: bool) {}

    /// Withdraws this node and stops the broker's tasks.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A broker shared by the hub's shards.
pub type SharedBroker = Arc<dyn Broker>;
