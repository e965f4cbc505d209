//! The batching writer: one thread owns the write connection, numbers appended messages, and
//! commits whatever is queued in one transaction (group commit).
//!
//! Numbering lives here because only the writer knows what is committed: a batch that fails to
//! commit takes its offsets back, so offsets are never skipped and never reused. Replicated
//! messages (numbered by the cluster) are never dropped: a batch that fails keeps them and the
//! writer tries again, backing off, until they are committed (no silent hole).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::batch::{self, Changes};
use super::ops::{AppendDone, AppendOutcome, Insert, InsertDone, KeyId, RoomLog, WriteOp};
use super::{StoreError, WriteFailure};
use crate::metrics::Metrics;
use crate::protocol::IDEMPOTENCY_WINDOW_MS;

/// Largest number of operations committed in one transaction.
const MAX_BATCH: usize = 4096;
/// Longest pause between two attempts to commit replicated messages.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A completion to run after a commit.
pub(super) enum Completion {
    Append(AppendDone, Result<AppendOutcome, WriteFailure>),
    Insert(InsertDone, Result<(), WriteFailure>),
}

/// Work handed from the writer to the completion thread, in commit order.
pub(super) enum Completed {
    /// Completions of one committed (or failed) batch.
    Batch(Vec<Completion>),
    /// The writer stopped after its last commit; dropping the sender tells `Store::close`.
    Closed(oneshot::Sender<()>),
}

/// Most messages a commit's completions may ack or deliver for the writer to run them itself
/// (when the completion thread is idle).
const INLINE_MESSAGES: usize = 32;

/// Runs the completions of each commit, in commit order: on the writer thread when they concern
/// few messages and the completion thread has nothing left to run, else on the completion
/// thread.
///
/// Why both: at a low rate a commit holds a message or two, and handing them to another thread
/// put that thread's wake-up on every ack and delivery (on one node at 10,000 publishes/s from
/// 10 publishers, ack p99 4.4–200 ms with it, 3.0–11.3 ms without, docs/PERFORMANCE.md); at a high rate
/// the completion thread runs a large batch's acks and deliveries while the writer commits the
/// next one. Order holds because the writer runs a batch itself only once every batch handed
/// off before it has run.
pub(super) struct Completer {
    tx: SyncSender<Completed>,
    /// Batches handed to the completion thread and not yet run.
    queued: Arc<AtomicUsize>,
}

impl Completer {
    /// A completer and the completion thread's loop, to run on its own thread.
    pub(super) fn new() -> (Completer, impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let queued = Arc::new(AtomicUsize::new(0));
        let left = queued.clone();
        (Completer { tx, queued }, move || complete(rx, &left))
    }

    /// Runs `done`, which acks or delivers `messages` messages (inline or on the completion
    /// thread), after every earlier batch.
    fn run(&self, done: Vec<Completion>, messages: usize) {
        if done.is_empty() {
            return;
        }
        if messages <= INLINE_MESSAGES && self.queued.load(Ordering::Acquire) == 0 {
            run_all(done);
            return;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.tx.send(Completed::Batch(done)) {
            // The completion thread is gone (it never stops before the writer): run them here.
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if let Completed::Batch(done) = e.0 {
                run_all(done);
            }
        }
    }

    /// Tells `Store::close` once every completion has run.
    fn closed(&self, tx: oneshot::Sender<()>) {
        if self.tx.send(Completed::Closed(tx)).is_err() {
            tracing::warn!("the completion thread stopped before the store closed");
        }
    }
}

fn run_all(done: Vec<Completion>) {
    for completion in done {
        match completion {
            Completion::Append(done, outcome) => done(outcome),
            Completion::Insert(done, outcome) => done(outcome),
        }
    }
}

/// The completion thread: runs the batches the writer hands it, in commit order.
fn complete(rx: Receiver<Completed>, queued: &AtomicUsize) {
    for completed in rx {
        match completed {
            Completed::Batch(batch) => {
                run_all(batch);
                queued.fetch_sub(1, Ordering::AcqRel);
            }
            Completed::Closed(tx) => drop(tx),
        }
    }
}

/// Checkpoints the WAL from its own connection once a second, so that the writer never stalls
/// on the checkpoint's copy and fsync (the writer's connection has auto-checkpoints off).
/// Measured at 10,000 publishes/s: checkpoints every 100 ms gave an ack p99 of 31 ms, every
/// second 6 ms (docs/PERFORMANCE.md); each checkpoint's fsync briefly slows the WAL appends.
pub(super) fn checkpoint_loop(conn: Connection, stop: Arc<AtomicBool>) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        // Short naps, so that a shutdown does not wait for the next checkpoint.
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last = Instant::now();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Set when the writer stops, to stop the checkpoint thread.
    stop_checkpoints: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Every room with messages.
    pub(super) rooms: HashMap<Arc<str>, RoomLog>,
    /// Idempotency keys younger than the window: (room, user id, key) -> (offset, ts ms).
    pub(super) keys: HashMap<KeyId, (u64, u64)>,
    last_prune: Instant,
}

impl Writer {
    pub(super) fn load(
        conn: Connection,
        stop_checkpoints: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Writer, StoreError> {
        let mut rooms: HashMap<Arc<str>, RoomLog> = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT room, last_offset FROM rooms")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (room, last) = row?;
                let log = RoomLog {
                    contiguous: last as u64,
                    ahead: BTreeSet::new(),
                };
                rooms.insert(room.into(), log);
            }
            let mut ahead =
                conn.prepare("SELECT offset FROM messages WHERE room = ?1 AND offset > ?2")?;
            for (room, log) in rooms.iter_mut() {
                let rows = ahead.query_map(params![&**room, log.contiguous as i64], |r| {
                    r.get::<_, i64>(0)
                })?;
                for o in rows {
                    log.ahead.insert(o? as u64);
                }
            }
        }
        let mut keys = HashMap::new();
        {
            let cutoff = crate::protocol::now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS) as i64;
            let mut stmt = conn
                .prepare("SELECT room, user_id, key, offset, ts FROM idempotency WHERE ts >= ?1")?;
            let rows = stmt.query_map(params![cutoff], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (room, user, key, offset, ts) = row?;
                keys.insert(
                    (room.into(), user.into(), key.into()),
                    (offset as u64, ts as u64),
                );
            }
        }
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Writer {
            conn,
            stop_checkpoints,
            metrics,
            rooms,
            keys,
            last_prune: Instant::now(),
        })
    }

    /// The writer loop: runs on a blocking thread until `Close` or until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>, completions: Completer) {
        let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
        let mut backoff = Duration::ZERO;
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            if batch.is_empty() {
                // Nothing to retry: wait for work.
                match rx.blocking_recv() {
                    Some(op) => batch.push(op),
                    None => break,
                }
            } else {
                // Replicated messages wait for their retry; new work joins them.
                std::thread::sleep(backoff);
            }
            let mut senders_gone = false;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            }
            let committed = self.commit_batch(&mut batch, &mut closing, &completions);
            backoff = if committed {
                Duration::ZERO
            } else {
                (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF)
            };
            if closing.is_some() || (senders_gone && !committed) {
                self.finish(rx, batch, &mut closing, &completions);
                break;
            }
            if self.last_prune.elapsed() > Duration::from_secs(60) {
                self.prune();
            }
        }
        self.stop_checkpoints.store(true, Ordering::Release);
        if let Err(e) = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        if let Some(tx) = closing {
            completions.closed(tx);
        }
    }

    /// Closing: refuses new writes, commits what was queued (a few attempts for replicated
    /// messages), and fails what still cannot be committed.
    fn finish(
        &mut self,
        mut rx: mpsc::Receiver<WriteOp>,
        mut batch: Vec<WriteOp>,
        closing: &mut Option<oneshot::Sender<()>>,
        completions: &Completer,
    ) {
        rx.close();
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        for attempt in 0..3 {
            if batch.is_empty() {
                return;
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut part: Vec<WriteOp> = batch.drain(..batch.len().min(MAX_BATCH)).collect();
            self.commit_batch(&mut part, closing, completions);
            part.append(&mut batch);
            batch = part;
        }
        let mut failed = Vec::new();
        for op in batch {
            match op {
                WriteOp::Insert(Insert { messages, done }) => {
                    tracing::error!(
                        messages = messages.len(),
                        "store closed with replicated messages it could not commit; they are fetched again from the cluster on the next start"
                    );
                    if let Some(done) = done {
                        failed.push(Completion::Insert(done, Err(WriteFailure::Commit)));
                    }
                }
                WriteOp::Append(a) => {
                    failed.push(Completion::Append(a.done, Err(WriteFailure::Commit)))
                }
                _ => {}
            }
        }
        let n = failed.len();
        completions.run(failed, n);
    }

    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let cutoff = crate::protocol::now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
        self.keys.retain(|_, (_, ts)| *ts >= cutoff);
        if let Err(e) = self.conn.execute(
            "DELETE FROM idempotency WHERE ts < ?1",
            params![cutoff as i64],
        ) {
            tracing::warn!(error = %e, "pruning idempotency keys failed");
        }
    }

    /// Commits `batch`. On success it is emptied and its completions run; on failure appends
    /// fail (`unavailable` for their publishers) and what must not be dropped (replicated
    /// messages, meta, revocations) stays in `batch` for the next attempt. True when committed.
    fn commit_batch(
        &mut self,
        batch: &mut Vec<WriteOp>,
        closing: &mut Option<oneshot::Sender<()>>,
        completions: &Completer,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut outcomes: Vec<Option<AppendOutcome>> = Vec::with_capacity(batch.len());
        let mut changes = Changes::default();
        let result = batch::write(
            &mut self.conn,
            &self.rooms,
            &self.keys,
            batch,
            &mut outcomes,
            &mut changes,
        );
        let mut done = Vec::with_capacity(batch.len());
        // How many messages the completions ack or deliver (an insert's: all of its messages).
        let mut messages = 0;
        let committed = match result {
            Ok(()) => {
                self.rooms.extend(changes.rooms);
                self.keys.extend(changes.keys);
                for (op, outcome) in batch.drain(..).zip(outcomes) {
                    match op {
                        WriteOp::Append(a) => {
                            messages += 1;
                            done.push(Completion::Append(
                                a.done,
                                Ok(outcome.expect("every append has an outcome")),
                            ))
                        }
                        WriteOp::Insert(Insert {
                            messages: m,
                            done: Some(d),
                        }) => {
                            messages += m.len();
                            done.push(Completion::Insert(d, Ok(())))
                        }
                        WriteOp::Close(tx) => *closing = Some(tx),
                        _ => {}
                    }
                }
                true
            }
            Err(e) => {
                self.metrics.store_commit_failures.inc();
                tracing::warn!(error = %e, ops = batch.len(), "store commit failed; publishes get unavailable, replicated messages are retried");
                let mut kept = Vec::new();
                for op in batch.drain(..) {
                    match op {
                        WriteOp::Append(a) => {
                            messages += 1;
                            done.push(Completion::Append(a.done, Err(WriteFailure::Commit)))
                        }
                        WriteOp::Close(tx) => *closing = Some(tx),
                        keep => kept.push(keep),
                    }
                }
                *batch = kept;
                false
            }
        };
        completions.run(done, messages);
        committed
    }
}
