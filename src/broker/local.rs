//! The single-node broker: numbering and durability by the store writer, delivery after commit.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Broker, BrokerEvents, Health, Publish, PublishDone, PublishOutcome};
use crate::metrics::Metrics;
use crate::store::{Append, AppendOutcome, Store, WriteOp};

/// The single-node broker.
pub struct LocalBroker {
    store: Store,
    events: Arc<dyn BrokerEvents>,
    metrics: Arc<Metrics>,
    /// The runtime the store's completions hand deliveries to.
    runtime: tokio::runtime::Handle,
}

impl LocalBroker {
    /// A broker that stores through `store` and delivers to `events`.
    pub fn new(store: Store, events: Arc<dyn BrokerEvents>, metrics: Arc<Metrics>) -> LocalBroker {
        LocalBroker {
            store,
            events,
            metrics,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, p: Publish, done: PublishDone) {
        let events = self.events.clone();
        let metrics = self.metrics.clone();
        let runtime = self.runtime.clone();
        let append = Append {
            room: p.room,
            user: p.user,
            body: p.body,
            key: p.key,
            ts: crate::protocol::now_ms(),
            // Runs after the commit, in commit order (on the writer thread, or on the store's
            // completion thread for a large batch): the ack first, then the delivery (which
            // waits while the room's shard is busy).
            done: Box::new(move |outcome| match outcome {
                Ok(AppendOutcome::Stored(message)) => {
                    metrics.messages_published.inc();
                    done(PublishOutcome::Stored {
                        offset: message.offset,
                    });
                    runtime.block_on(events.message(message));
                }
                Ok(AppendOutcome::Duplicate { offset }) => {
                    done(PublishOutcome::Duplicate { offset })
                }
                Err(_) => done(PublishOutcome::Unavailable),
            }),
        };
        if let Err(refused) = self.store.try_write(WriteOp::Append(append))
            && let WriteOp::Append(a) = *refused.0
        {
            (a.done)(Err(crate::store::WriteFailure::Refused));
        }
    }

    fn health(&self) -> Health {
        Health::SINGLE_NODE
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
