//! The single-node broker: numbering and durability by the store writer, delivery after commit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Broker, Delivery, Publish};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode};
use crate::store::{Append, AppendOutcome, Store, WriteOp};

/// The single-node broker.
pub struct LocalBroker {
    store: Store,
    delivery: Arc<dyn Delivery>,
    metrics: Arc<Metrics>,
}

impl LocalBroker {
    /// A broker that stores through `store` and delivers to `delivery`.
    pub fn new(store: Store, delivery: Arc<dyn Delivery>, metrics: Arc<Metrics>) -> LocalBroker {
        LocalBroker {
            store,
            delivery,
            metrics,
        }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, p: Publish) {
        let delivery = self.delivery.clone();
        let metrics = self.metrics.clone();
        let reply = p.reply.clone();
        let request_id = p.request_id;
        let room = p.room.clone();
        let append = Append {
            room: p.room,
            user: p.user,
            body: p.body,
            key: p.key,
            ts: now_ms(),
            done: Box::new(move |outcome| match outcome {
                Ok(AppendOutcome::Stored(message)) => {
                    metrics.messages_published.inc();
                    reply.send(protocol::ack(request_id, &message.room, message.offset));
                    delivery.deliver_blocking(message);
                }
                Ok(AppendOutcome::Duplicate { offset }) => {
                    reply.send(protocol::ack(request_id, &room, offset));
                }
                Err(()) => {
                    metrics.publishes_refused.inc();
                    reply.send(protocol::error(
                        Some(request_id),
                        ErrorCode::Unavailable,
                        "storage is unavailable",
                    ));
                }
            }),
        };
        if let Err(refused) = self.store.try_write(WriteOp::Append(append))
            && let WriteOp::Append(a) = *refused.0
        {
            (a.done)(Err(()));
        }
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
