//! The ingest: one task per node that follows the cluster's feed and stores every message in
//! this node's log, in offset order per room, then hands it to the hub.
//!
//! - The feed is a Redis stream read from a position (`XREAD BLOCK`, bounded batches): nothing
//!   published is missed while the node is connected, and a slow node is simply behind (its
//!   lag is a metric), never a growing buffer: the next read waits for the store.
//! - Each room's offsets must follow each other: a jump is filled from the room's stream
//!   first; what the stream no longer has is a hole, counted and logged, and a `since` join
//!   over it answers `recovered: false`.
//! - On every (re)connection: the epoch is checked (and Redis repaired if it lost data), then
//!   every room is caught up from its stream, before the node says it is ready.
//! - It also reads the presence log and hands its entries to the presence task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::presence::LogEntry;
use super::{Shared, keys, repair};
use crate::broker::{BrokerError, BrokerEvents};
use crate::metrics::Metrics;
use crate::protocol::Message;
use crate::store::{Insert, Replicated, Store, WriteOp};

/// How long one feed read waits for news.
pub(super) const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per feed read.
const READ_COUNT: usize = 256;
/// Entries per room-stream read (catch-up).
const RANGE_COUNT: usize = 1000;
/// Messages written to the store per insert.
const WRITE_BATCH: usize = 1000;
/// Failed (re)connections before a node that has never caught up reports why.
const START_ATTEMPTS: u32 = 5;

pub(super) struct Setup {
    pub feed: ConnectionManager,
    pub conn: ConnectionManager,
    pub shared: Arc<Shared>,
    pub store: Store,
    pub events: Arc<dyn BrokerEvents>,
    pub metrics: Arc<Metrics>,
    pub presence_log: mpsc::Sender<LogEntry>,
    pub caught_up: oneshot::Sender<Result<(), BrokerError>>,
}

pub(super) struct Ingest {
    feed: ConnectionManager,
    conn: ConnectionManager,
    shared: Arc<Shared>,
    store: Store,
    events: Arc<dyn BrokerEvents>,
    metrics: Arc<Metrics>,
    presence_log: mpsc::Sender<LogEntry>,
    /// Fired once, after the first catch-up (or with the reason it keeps failing).
    caught_up: Option<oneshot::Sender<Result<(), BrokerError>>>,
    /// The latest offset stored and handed to the hub, per room (contiguous but for holes).
    delivered: HashMap<Arc<str>, u64>,
    /// Messages accepted and not yet written.
    pending: Vec<Replicated>,
    /// Where this node is in the feed and in the presence log.
    feed_pos: Option<String>,
    plog_pos: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl Ingest {
    pub(super) async fn new(setup: Setup) -> Result<Ingest, BrokerError> {
        let delivered = setup.store.rooms_contiguous().await?.into_iter().collect();
        Ok(Ingest {
            feed: setup.feed,
            conn: setup.conn,
            shared: setup.shared,
            store: setup.store,
            events: setup.events,
            metrics: setup.metrics,
            presence_log: setup.presence_log,
            caught_up: Some(setup.caught_up),
            delivered,
            pending: Vec::new(),
            feed_pos: None,
            plog_pos: None,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0;
        while !stop.is_cancelled() {
            match self.session(&stop).await {
                Ok(()) => break,
                Err(e) => {
                    self.shared.connected.store(false, Ordering::Release);
                    failures += 1;
                    tracing::warn!(error = %e, "lost the cluster feed; reconnecting");
                    if failures >= START_ATTEMPTS
                        && let Some(tx) = self.caught_up.take()
                    {
                        let _starting = tx.send(Err(e));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.shared.connected.store(false, Ordering::Release);
    }

    /// One connection: check the numbering, catch up, then follow the feed until it breaks.
    async fn session(&mut self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let time: (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn).await?;
        self.shared.saw_redis_time(time.0 * 1000 + time.1 / 1000);
        if self.feed_pos.is_none() {
            // Start from the feed's end: what came before is read from the rooms' streams.
            self.feed_pos = Some(last_id(&mut self.conn, keys::FEED).await?);
            self.plog_pos = Some(last_id(&mut self.conn, keys::PLOG).await?);
        }
        repair::check(&mut self.conn, &self.shared, &self.store, &self.metrics).await?;
        self.catch_up_all().await?;
        self.shared.connected.store(true, Ordering::Release);
        self.shared.caught_up.store(true, Ordering::Release);
        if let Some(tx) = self.caught_up.take() {
            let _starting = tx.send(Ok(()));
        }
        tracing::info!(node = %self.shared.node, "following the cluster through redis");
        loop {
            let read = async {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(keys::FEED)
                    .arg(keys::PLOG)
                    .arg(self.feed_pos.as_deref().unwrap_or("0-0"))
                    .arg(self.plog_pos.as_deref().unwrap_or("0-0"))
                    .query_async::<Option<StreamReadReply>>(&mut self.feed)
                    .await
            };
            let reply = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = self.shared.repair.notified() => {
                    repair::check(&mut self.conn, &self.shared, &self.store, &self.metrics).await?;
                    self.catch_up_all().await?;
                    continue;
                }
                reply = read => reply?,
            };
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                if stream.key == keys::FEED {
                    self.feed(stream.ids).await?;
                } else {
                    self.presence(stream.ids).await;
                }
            }
        }
    }

    async fn feed(&mut self, entries: Vec<StreamId>) -> Result<(), BrokerError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        self.feed_pos = Some(last.id.clone());
        if let Some(ms) = keys::ms_of_id(&last.id) {
            let lag = (self.shared.redis_now_ms() - ms as i64).max(0);
            self.metrics.ingest_lag.set(lag);
        }
        for entry in &entries {
            match keys::from_feed_entry(entry) {
                Some((message, key)) => self.accept(message, key).await?,
                None => tracing::warn!(id = %entry.id, "unreadable feed entry"),
            }
        }
        self.flush().await
    }

    async fn presence(&mut self, entries: Vec<StreamId>) {
        if let Some(last) = entries.last() {
            self.plog_pos = Some(last.id.clone());
        }
        for entry in entries {
            if let Some(e) = LogEntry::from_stream(&entry)
                && self.presence_log.send(e).await.is_err()
            {
                return; // The presence task stopped: shutting down.
            }
        }
    }

    /// Takes a message of the cluster: the next offset of its room is written, a repeat is
    /// dropped, a jump is filled from the room's stream first.
    async fn accept(&mut self, message: Message, key: Option<Arc<str>>) -> Result<(), BrokerError> {
        let last = self.delivered.get(&message.room).copied().unwrap_or(0);
        if message.offset <= last {
            return Ok(());
        }
        if message.offset > last + 1 {
            self.fill(&message.room, last, message.offset - 1).await?;
        }
        self.take(message, key).await
    }

    async fn take(&mut self, message: Message, key: Option<Arc<str>>) -> Result<(), BrokerError> {
        self.delivered.insert(message.room.clone(), message.offset);
        self.shared.raise(&message.room, message.offset);
        self.pending.push(Replicated { message, key });
        if self.pending.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Reads `(after, until]` of a room's stream and takes it; what the stream no longer has
    /// is a hole: counted, logged, and skipped.
    async fn fill(&mut self, room: &Arc<str>, after: u64, until: u64) -> Result<(), BrokerError> {
        let mut from = after + 1;
        while from <= until {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(keys::log(room))
                .arg(format!("{from}-0"))
                .arg(format!("{until}-0"))
                .arg("COUNT")
                .arg(RANGE_COUNT)
                .query_async(&mut self.conn)
                .await?;
            if reply.ids.is_empty() {
                break;
            }
            for entry in &reply.ids {
                let Some((message, key)) = keys::from_room_entry(room, entry) else {
                    continue;
                };
                if message.offset < from {
                    continue;
                }
                if message.offset > from {
                    self.hole(room, from, message.offset - 1);
                }
                from = message.offset + 1;
                self.take(message, key).await?;
            }
        }
        if from <= until {
            self.hole(room, from, until);
            self.delivered.insert(room.clone(), until);
        }
        Ok(())
    }

    fn hole(&self, room: &Arc<str>, from: u64, to: u64) {
        self.metrics.history_holes.inc_by(to - from + 1);
        tracing::warn!(%room, from, to,
            "offsets missing from the cluster (older than the redis stream): this node's history has a hole there");
    }

    /// Writes what was accepted; once committed, hands it to the hub in order.
    async fn flush(&mut self) -> Result<(), BrokerError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(&mut self.pending);
        let deliveries: Vec<Message> = messages.iter().map(|r| r.message.clone()).collect();
        let events = self.events.clone();
        let runtime = self.runtime.clone();
        let insert = Insert {
            messages,
            // Runs after the commit, in commit order (on the writer thread, or on the store's
            // completion thread for a large batch).
            done: Some(Box::new(move |committed| {
                if committed.is_ok() {
                    runtime.block_on(async {
                        for message in deliveries {
                            events.message(message).await;
                        }
                    });
                }
            })),
        };
        self.store
            .write(WriteOp::Insert(insert))
            .await
            .map_err(|_| BrokerError::Closing)
    }

    /// Every room: read what the cluster stored that this node does not have yet.
    async fn catch_up_all(&mut self) -> Result<(), BrokerError> {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::ROOMS)
            .query_async(&mut self.conn)
            .await?;
        for chunk in rooms.chunks(500) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("GET").arg(keys::seq(room));
            }
            let seqs: Vec<Option<u64>> = pipe.query_async(&mut self.conn).await?;
            for (room, seq) in chunk.iter().zip(seqs) {
                let room: Arc<str> = room.as_str().into();
                let seq = seq.unwrap_or(0);
                let last = self.delivered.get(&room).copied().unwrap_or(0);
                if seq > last {
                    self.fill(&room, last, seq).await?;
                }
            }
        }
        self.flush().await
    }
}

/// The id of a stream's last entry, or `0-0` when it has none.
async fn last_id(conn: &mut ConnectionManager, stream: &str) -> Result<String, BrokerError> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
}
