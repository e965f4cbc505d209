//! The cluster broker: Redis numbers every room's messages and carries them to every node;
//! every node stores every message in its own SQLite, so an ack survives Redis losing its data.
//!
//! - [`publisher`]: batches of publishes, one script each, one batch in flight at a time (so
//!   a connection's publishes are numbered in send order). A script refuses to run past the
//!   deadline the node gave it, so an `unavailable` is never stored later; an answer that was
//!   lost is looked up before the next batch goes. An ack leaves once the message is committed
//!   in this node's log.
//! - [`ingest`]: follows the cluster's feed (a Redis stream, read in bounded batches), stores
//!   each message here in offset order per room, filling gaps from the room's stream, and hands
//!   it to the hub. It also checks the numbering's epoch and runs [`repair`].
//! - [`repair`]: when Redis lost its data (the epoch is gone, or a room's numbering is behind
//!   this node's log), publishes are refused until Redis is re-seeded from the nodes' logs.
//! - [`presence`]: this node's presence in Redis (a mirror re-asserted whole after any doubt),
//!   liveness, other nodes' presence (versioned, resynced on any gap), and logouts.

mod ingest;
mod keys;
mod presence;
mod publisher;
mod repair;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError, BrokerEvents, Health, Publish, PublishDone, PublishOutcome};
use crate::auth::{Revocations, User};
use crate::config::redact_url;
use crate::metrics::Metrics;
use crate::store::Store;

/// Publishes waiting for Redis before new ones get `unavailable`.
const PUBLISH_QUEUE: usize = 10_000;
/// How long a command may take before the connection is considered lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// What the broker's tasks share. Atomics and two small maps behind std mutexes (held for a
/// lookup or an insert, never across an await).
pub(super) struct Shared {
    pub node: Arc<str>,
    /// The ingest follows the feed.
    pub connected: AtomicBool,
    /// The first catch-up is done.
    pub caught_up: AtomicBool,
    /// False while Redis must be repaired: publishes are refused.
    pub accepting: AtomicBool,
    /// The epoch this node numbers under (`None` until known).
    pub epoch: Mutex<Option<String>>,
    /// Set by the publisher when Redis refused a batch for its epoch or numbering.
    pub repair: Notify,
    /// The highest offset this node stored or had acked, per room: a publish script refuses
    /// to number below it.
    pub high_water: Mutex<HashMap<Arc<str>, u64>>,
    /// Redis's clock minus this node's monotonic clock, in ms, from the latest script answer.
    pub clock_offset: AtomicI64,
    pub started: std::time::Instant,
}

impl Shared {
    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().expect("epoch lock").clone()
    }

    pub fn set_epoch(&self, epoch: Option<String>) {
        *self.epoch.lock().expect("epoch lock") = epoch;
    }

    pub fn high_water(&self, room: &str) -> u64 {
        self.high_water
            .lock()
            .expect("high water lock")
            .get(room)
            .copied()
            .unwrap_or(0)
    }

    pub fn raise(&self, room: &Arc<str>, offset: u64) {
        let mut map = self.high_water.lock().expect("high water lock");
        let entry = map.entry(room.clone()).or_insert(0);
        *entry = (*entry).max(offset);
    }

    /// This node's monotonic clock in ms.
    pub fn local_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// Redis's clock now, estimated.
    pub fn redis_now_ms(&self) -> i64 {
        self.local_ms() + self.clock_offset.load(Ordering::Relaxed)
    }

    /// Records a Redis time seen in an answer that arrived now.
    pub fn saw_redis_time(&self, redis_ms: i64) {
        self.clock_offset
            .store(redis_ms - self.local_ms(), Ordering::Relaxed);
    }

    /// Refuses publishes until a repair is done, and wakes the ingest to run it.
    pub fn request_repair(&self) {
        self.accepting.store(false, Ordering::Release);
        self.repair.notify_one();
    }
}

/// The Redis broker.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publishes: mpsc::Sender<(Publish, PublishDone)>,
    presence: presence::Handle,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

/// A connection manager with the broker's timeouts.
async fn connect(
    client: &redis::Client,
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    tokio::time::timeout(
        COMMAND_TIMEOUT * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| BrokerError::NoAnswer(redact_url(url)))?
    .map_err(BrokerError::Redis)
}

impl RedisBroker {
    /// Connects to Redis (failing if it cannot, at start) and starts the broker's tasks on
    /// `tracker`. The receiver fires once this node holds everything the cluster stored while
    /// it was away (after the hub's shards run: the catch-up delivers through them).
    pub async fn start(
        url: &str,
        node: Arc<str>,
        store: Store,
        events: Arc<dyn BrokerEvents>,
        revocations: Arc<Revocations>,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> Result<(Arc<RedisBroker>, oneshot::Receiver<Result<(), BrokerError>>), BrokerError> {
        let client = redis::Client::open(url)?;
        // Three connections: commands, the publisher's scripts, and the ingest's blocking reads.
        let conn = connect(&client, url, COMMAND_TIMEOUT).await?;
        let publish_conn = connect(&client, url, COMMAND_TIMEOUT).await?;
        let feed_conn = connect(&client, url, ingest::BLOCK + COMMAND_TIMEOUT).await?;
        let shared = Arc::new(Shared {
            node: node.clone(),
            connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            accepting: AtomicBool::new(false),
            epoch: Mutex::new(store.meta(repair::EPOCH_META).await?),
            repair: Notify::new(),
            high_water: Mutex::new(store.room_maxima().await?.into_iter().collect()),
            clock_offset: AtomicI64::new(0),
            started: std::time::Instant::now(),
        });
        let stop = CancellationToken::new();
        let (publishes, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (plog_tx, plog_rx) = mpsc::channel(presence::LOG_QUEUE);
        let presence = presence::start(
            presence::Setup {
                conn: conn.clone(),
                shared: shared.clone(),
                events: events.clone(),
                revocations,
                store: store.clone(),
                metrics: metrics.clone(),
                log: plog_rx,
            },
            stop.clone(),
            tracker,
        )
        .await?;
        tracker.spawn(
            publisher::Publisher::new(publish_conn, shared.clone(), store.clone(), metrics.clone())
                .run(publish_rx, stop.clone()),
        );
        let (caught_up_tx, caught_up) = oneshot::channel();
        let ingest = ingest::Ingest::new(ingest::Setup {
            feed: feed_conn,
            conn,
            shared: shared.clone(),
            store,
            events,
            metrics: metrics.clone(),
            presence_log: plog_tx,
            caught_up: caught_up_tx,
        })
        .await?;
        tracker.spawn(ingest.run(stop.clone()));
        Ok((
            Arc::new(RedisBroker {
                shared,
                publishes,
                presence,
                stop,
                metrics,
            }),
            caught_up,
        ))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, publish: Publish, done: PublishDone) {
        if let Err(e) = self.publishes.try_send((publish, done)) {
            let (_, done) = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.metrics.publishes_refused.inc();
            // Never sent to Redis: certainly not stored.
            done(PublishOutcome::Unavailable);
        }
    }

    fn presence(&self, room: &Arc<str>, user: &User, present: bool) {
        self.presence.set(room, user, present);
    }

    fn revoked(&self, user: &Arc<str>, generation: u64) {
        self.presence.revoked(user, generation);
    }

    fn health(&self) -> Health {
        Health {
            connected: self.shared.connected.load(Ordering::Acquire),
            caught_up: self.shared.caught_up.load(Ordering::Acquire),
            accepting: self.shared.accepting.load(Ordering::Acquire),
        }
    }

    fn nodes(&self) -> BoxFuture<'_, Vec<super::NodeFigures>> {
        Box::pin(self.presence.figures())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            self.presence.withdraw().await;
        })
    }
}
