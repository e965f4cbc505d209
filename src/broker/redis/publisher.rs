//! The publisher: takes queued publishes in batches and runs one script per batch, one batch at
//! a time, so a connection's publishes are numbered in the order it sent them.
//!
//! **An answer is the truth.** A batch carries a deadline in Redis's clock ([`DEADLINE`] after
//! it is sent); the script refuses to run past it. So:
//! - the script's own answer (`ok`, `expired`, `fenced`, `behind`) is certain;
//! - when the answer is lost (timeout, broken connection, a frozen Redis), the batch is
//!   *uncertain*: the publisher waits until Redis answers again, then asks whether the batch's
//!   marker exists (it ran: ack) or Redis's clock is past the deadline without it (it did not
//!   and never will: `unavailable`). The next batch waits for that, keeping the order.
//! - publishes that were never sent (queue full, Redis known down, repair running, or queued
//!   behind an uncertain batch) get `unavailable` at once: nothing later is numbered before
//!   the uncertain batch is resolved, so the order holds, and nobody waits on a partition.
//!
//! A stored message is acked once it is committed in this node's log, so it survives Redis
//! losing its data.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, keys};
use crate::broker::{Publish, PublishDone, PublishOutcome};
use crate::metrics::Metrics;
use crate::protocol::Message;
use crate::store::{Insert, Replicated, Store, WriteOp};

/// Publishes per script.
const MAX_BATCH: usize = 256;
/// Body bytes per script, about.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// How long a script may wait in Redis (in Redis's clock) before it refuses to run.
pub(super) const DEADLINE: Duration = Duration::from_secs(2);
/// How much longer the publisher waits for an answer before it treats the batch as uncertain.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// How often an uncertain batch is looked up.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

type Item = (Publish, PublishDone);

/// What identifies a batch sent to Redis, to find out later what became of it.
struct Sent {
    /// The key its script writes its results under.
    marker: String,
    /// Its deadline in Redis's clock (ms).
    deadline: i64,
    /// The epoch it was numbered under.
    epoch: String,
    /// The server time of its messages.
    ts: String,
}

pub(super) struct Publisher {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    store: Store,
    metrics: Arc<Metrics>,
    script: redis::Script,
    resolve: redis::Script,
    /// This run of the publisher (random per start; names its markers with `batches`).
    run: String,
    /// Batches sent so far (names their markers).
    batches: u64,
}

/// A script's answer: its status, Redis's clock, and what follows.
fn parse_answer(value: Value) -> Option<(String, i64, Option<String>)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let status = text(parts.first()?)?;
    let now = match parts.get(1)? {
        Value::Int(i) => *i,
        other => text(other)?.parse().ok()?,
    };
    Some((status, now, parts.get(2).and_then(text)))
}

fn unavailable(items: Vec<Item>, metrics: &Metrics) {
    for (_, done) in items {
        metrics.publishes_refused.inc();
        done(PublishOutcome::Unavailable);
    }
}

/// Awaits `fut`; meanwhile, whenever Redis is known unreachable, refuses what queues behind
/// (never sent: certainly not stored) rather than making it wait.
async fn refusing_meanwhile<T>(
    fut: impl std::future::Future<Output = T>,
    rx: &mut mpsc::Receiver<Item>,
    shared: &Shared,
    metrics: &Metrics,
) -> T {
    tokio::pin!(fut);
    let mut check = tokio::time::interval(RESOLVE_EVERY);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = check.tick() => {
                if !shared.connected.load(Ordering::Acquire) {
                    refuse_queued(rx, metrics);
                }
            }
        }
    }
}

/// Refuses every publish queued now (never sent: certainly not stored).
fn refuse_queued(rx: &mut mpsc::Receiver<Item>, metrics: &Metrics) {
    let mut queued = Vec::new();
    while let Ok(item) = rx.try_recv() {
        queued.push(item);
    }
    unavailable(queued, metrics);
}

impl Publisher {
    pub(super) fn new(
        conn: ConnectionManager,
        shared: Arc<Shared>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Publisher {
        Publisher {
            conn,
            shared,
            store,
            metrics,
            script: redis::Script::new(&keys::publish_script()),
            resolve: redis::Script::new(&keys::resolve_script()),
            run: format!("{:016x}", rand::random::<u64>()),
            batches: 0,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Item>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
            };
            let mut bytes = first.0.body.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(item) => {
                        bytes += item.0.body.len();
                        batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            self.publish(batch, &mut rx, &stop).await;
        }
        // Never sent: certainly not stored.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(item) = rx.try_recv() {
            rest.push(item);
        }
        unavailable(rest, &self.metrics);
    }

    async fn publish(
        &mut self,
        batch: Vec<Item>,
        rx: &mut mpsc::Receiver<Item>,
        stop: &CancellationToken,
    ) {
        let shared = &self.shared;
        let ready =
            shared.connected.load(Ordering::Acquire) && shared.accepting.load(Ordering::Acquire);
        let Some(epoch) = shared.epoch().filter(|_| ready) else {
            return unavailable(batch, &self.metrics);
        };
        self.batches += 1;
        let marker = keys::batch(&shared.node, &self.run, self.batches);
        let deadline = shared.redis_now_ms() + DEADLINE.as_millis() as i64;
        let ts = crate::protocol::now_ms().to_string();
        let mut call = self.script.prepare_invoke();
        call.key(keys::EPOCH).key(keys::FEED).key(&marker);
        call.arg(&epoch)
            .arg(deadline)
            .arg(batch.len())
            .arg(keys::STREAM_CAP)
            .arg(keys::FEED_CAP);
        for (p, _) in &batch {
            let idem = p
                .key
                .as_ref()
                .map_or(String::new(), |k| keys::idem(&p.room, &p.user.id, k));
            call.key(keys::seq(&p.room))
                .key(keys::log(&p.room))
                .key(idem);
            call.arg(&*p.room)
                .arg(shared.high_water(&p.room))
                .arg(&*p.user.id)
                .arg(&*p.user.name)
                .arg(&*p.body)
                .arg(&ts)
                .arg(p.key.as_deref().unwrap_or(""));
        }
        self.metrics.redis_publish_batches.inc();
        let invoke = tokio::time::timeout(
            DEADLINE + ANSWER_MARGIN,
            call.invoke_async::<Value>(&mut self.conn),
        );
        let answer = refusing_meanwhile(invoke, rx, shared, &self.metrics).await;
        let sent = Sent {
            marker,
            deadline,
            epoch,
            ts,
        };
        match answer.ok().and_then(Result::ok).and_then(parse_answer) {
            Some((status, now, rest)) => {
                self.shared.saw_redis_time(now);
                match (status.as_str(), rest) {
                    ("ok", Some(packed)) => self.stored(batch, &packed, &sent.ts).await,
                    ("fenced" | "behind", _) => {
                        tracing::warn!(%status, "redis refused a batch for its numbering; repairing");
                        self.shared.request_repair();
                        unavailable(batch, &self.metrics);
                    }
                    ("expired", _) => unavailable(batch, &self.metrics),
                    // An answer that says nothing certain counts as lost.
                    _ => self.uncertain(batch, sent, rx, stop).await,
                }
            }
            None => self.uncertain(batch, sent, rx, stop).await,
        }
    }

    /// The answer was lost: find out whether the batch ran before sending the next one.
    async fn uncertain(
        &mut self,
        batch: Vec<Item>,
        sent: Sent,
        rx: &mut mpsc::Receiver<Item>,
        stop: &CancellationToken,
    ) {
        let Sent {
            marker,
            deadline,
            epoch,
            ts,
        } = sent;
        let ts = ts.as_str();
        self.metrics.redis_uncertain_batches.inc();
        tracing::info!(%marker, publishes = batch.len(), "a publish batch's answer was lost; resolving it");
        loop {
            tokio::select! {
                // Shutting down: the sessions are closed, nobody waits for these answers.
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            }
            // Publishes queued meanwhile cannot be sent before this batch is resolved (they
            // would be numbered out of order): refused, and certainly not stored.
            refuse_queued(rx, &self.metrics);
            if !self.shared.connected.load(Ordering::Acquire) {
                continue; // Redis is unreachable: no point asking yet.
            }
            let mut call = self.resolve.prepare_invoke();
            call.key(&marker).key(keys::EPOCH).arg(deadline).arg(&epoch);
            let ask = tokio::time::timeout(DEADLINE, call.invoke_async::<Value>(&mut self.conn));
            let answer = refusing_meanwhile(ask, rx, &self.shared, &self.metrics).await;
            let Some((status, now, rest)) = answer.ok().and_then(Result::ok).and_then(parse_answer)
            else {
                continue; // Still no answer: keep the batch, and the ones behind it, waiting.
            };
            self.shared.saw_redis_time(now);
            match (status.as_str(), rest) {
                ("ok", Some(packed)) => return self.stored(batch, &packed, ts).await,
                ("never", _) => return unavailable(batch, &self.metrics),
                ("epoch", _) => {
                    let wanted: Vec<_> = batch
                        .iter()
                        .map(|(p, _)| (p.room.clone(), p.user.id.clone(), p.body.clone()))
                        .collect();
                    if let Some(found) = self.look_up(&wanted, ts, rx, stop).await {
                        return self.answer_from_logs(batch, found);
                    }
                    return; // Shutting down.
                }
                _ => {}
            }
        }
    }

    /// Redis lost its data since the batch was sent, its marker with it: the truth is in the
    /// nodes' logs. Waits until the cluster is repaired (this node numbers again, every live
    /// node says it adopted the new epoch, so every node's log is back in Redis and this node
    /// caught up), then looks each message up in this node's log. `None` when stopping.
    async fn look_up(
        &mut self,
        batch: &[(Arc<str>, Arc<str>, Arc<str>)],
        ts: &str,
        rx: &mut mpsc::Receiver<Item>,
        stop: &CancellationToken,
    ) -> Option<Vec<Option<u64>>> {
        let adopted = redis::Script::new(keys::ALL_ADOPTED_SCRIPT);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            }
            refuse_queued(rx, &self.metrics);
            let shared = &self.shared;
            let Some(epoch) = shared.epoch().filter(|_| {
                shared.connected.load(Ordering::Acquire) && shared.accepting.load(Ordering::Acquire)
            }) else {
                continue;
            };
            let all = tokio::time::timeout(
                DEADLINE,
                adopted
                    .key(keys::NODES)
                    .arg(&epoch)
                    .invoke_async::<i64>(&mut self.conn),
            )
            .await;
            if !matches!(all, Ok(Ok(1))) {
                continue;
            }
            // Every node has contributed its log and this node caught up: a message the
            // cluster stored is in this node's log now.
            let ts: u64 = ts.parse().unwrap_or(0);
            let mut found = Vec::with_capacity(batch.len());
            for (room, user, body) in batch {
                let look = self
                    .store
                    .find(room.clone(), user.clone(), ts, body.clone())
                    .await;
                match look {
                    Ok(offset) => found.push(offset),
                    Err(e) => {
                        tracing::warn!(error = %e, "looking up a publish in the log failed; retrying");
                        break;
                    }
                }
            }
            if found.len() == batch.len() {
                return Some(found);
            }
        }
    }

    /// Answers a batch from what the logs hold (Redis lost its record of it).
    fn answer_from_logs(&self, batch: Vec<Item>, found: Vec<Option<u64>>) {
        for ((p, done), offset) in batch.into_iter().zip(found) {
            match offset {
                Some(offset) => {
                    self.shared.raise(&p.room, offset);
                    self.metrics.messages_published.inc();
                    done(PublishOutcome::Stored { offset });
                }
                None => {
                    self.metrics.publishes_refused.inc();
                    done(PublishOutcome::Unavailable);
                }
            }
        }
    }

    /// The batch ran: store its new messages here, then ack each publish (in order).
    async fn stored(&mut self, batch: Vec<Item>, packed: &str, ts: &str) {
        let Some(results) = keys::parse_results(packed).filter(|r| r.len() == batch.len()) else {
            tracing::error!(packed, "unreadable publish results; answering unavailable");
            return unavailable(batch, &self.metrics);
        };
        let ts: u64 = ts.parse().unwrap_or(0);
        let mut messages = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for ((p, done), (new, offset)) in batch.into_iter().zip(results) {
            if new {
                self.shared.raise(&p.room, offset);
                messages.push(Replicated {
                    message: Message {
                        room: p.room,
                        offset,
                        user: p.user,
                        body: p.body,
                        ts,
                    },
                    key: p.key,
                });
                answers.push((done, PublishOutcome::Stored { offset }));
            } else {
                answers.push((done, PublishOutcome::Duplicate { offset }));
            }
        }
        let stored = messages.len() as u64;
        let metrics = self.metrics.clone();
        let ack = move |_committed: Result<(), crate::store::WriteFailure>| {
            metrics.messages_published.inc_by(stored);
            for (done, outcome) in answers {
                done(outcome);
            }
        };
        let insert = Insert {
            messages,
            done: Some(Box::new(ack)),
        };
        if let Err(refused) = self.store.write(WriteOp::Insert(insert)).await
            && let WriteOp::Insert(Insert {
                done: Some(ack), ..
            }) = *refused.0
        {
            // The store is closing: the messages are in the cluster, acked as stored.
            ack(Err(crate::store::WriteFailure::Refused));
        }
    }
}
