//! The batching writer: one thread owns the write connection, numbers appended messages, and
//! commits whatever is queued in one transaction (group commit).
//!
//! Numbering lives here because only the writer knows what is committed: a batch that fails to
//! commit takes its offsets back, so offsets are never skipped and never reused. Replicated
//! messages (numbered by the cluster) are never dropped: a batch that fails keeps them and the
//! writer tries again, backing off, until they are committed (no silent hole).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, WriteFailure};
use crate::auth::User;
use crate::metrics::Metrics;
use crate::protocol::{IDEMPOTENCY_WINDOW_MS, Message};

/// Largest number of operations committed in one transaction.
const MAX_BATCH: usize = 4096;
/// Longest pause between two attempts to commit replicated messages.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Called once per append, after its transaction committed (`Ok`) or failed.
pub type AppendDone = Box<dyn FnOnce(Result<AppendOutcome, WriteFailure>) + Send>;
/// Called once per insert, after its messages are committed (`Err` only if the store closed
/// before it could commit them).
pub type InsertDone = Box<dyn FnOnce(Result<(), WriteFailure>) + Send>;

/// A new message to number and store (single node: the writer is the numbering authority).
pub struct Append {
    pub room: Arc<str>,
    pub user: User,
    pub body: Arc<str>,
    pub key: Option<Arc<str>>,
    pub ts: u64,
    pub done: AppendDone,
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under a new offset.
    Stored(Message),
    /// The same key was stored before, at this offset: nothing was stored again.
    Duplicate { offset: u64 },
}

/// A message numbered elsewhere (cluster: Redis numbers), with its idempotency key.
#[derive(Debug, Clone)]
pub struct Replicated {
    pub message: Message,
    pub key: Option<Arc<str>>,
}

/// Replicated messages to store; a repeat is ignored, a gap is allowed (the room's contiguous
/// prefix advances when it closes).
pub struct Insert {
    pub messages: Vec<Replicated>,
    pub done: Option<InsertDone>,
}

/// One operation for the writer.
pub enum WriteOp {
    Append(Append),
    Insert(Insert),
    /// Sets a value of the `meta` table.
    Meta {
        key: &'static str,
        value: String,
    },
    /// Logs out the sessions of `user` older than generation `generation`.
    Revoke {
        user: Arc<str>,
        generation: u64,
        at: u64,
    },
    /// Commit everything queued before this, then stop; the sender is dropped after the commit.
    Close(oneshot::Sender<()>),
}

type KeyId = (Arc<str>, Arc<str>, Arc<str>);

/// One room as the writer sees it.
#[derive(Debug, Clone, Default)]
struct RoomLog {
    /// Every offset up to this is stored.
    contiguous: u64,
    /// Stored offsets past `contiguous + 1` (replicated messages that arrived before a gap
    /// closed). Empty on a single node.
    ahead: BTreeSet<u64>,
}

impl RoomLog {
    /// Records offset `o` as stored; true when the contiguous prefix moved.
    fn stored(&mut self, o: u64) -> bool {
        if o <= self.contiguous {
            return false;
        }
        if o != self.contiguous + 1 {
            self.ahead.insert(o);
            return false;
        }
        self.contiguous = o;
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }
}

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

/// The completion thread: acks and deliveries run here, in commit order, so that the writer
/// thread does nothing but SQLite work.
pub(super) fn complete(rx: Receiver<Completed>) {
    for completed in rx {
        match completed {
            Completed::Batch(batch) => {
                for completion in batch {
                    match completion {
                        Completion::Append(done, outcome) => done(outcome),
                        Completion::Insert(done, outcome) => done(outcome),
                    }
                }
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
    conn: Connection,
    /// Set when the writer stops, to stop the checkpoint thread.
    stop_checkpoints: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Every room with messages.
    rooms: HashMap<Arc<str>, RoomLog>,
    /// Idempotency keys younger than the window: (room, user id, key) -> (offset, ts ms).
    keys: HashMap<KeyId, (u64, u64)>,
    last_prune: Instant,
}

/// What one batch changes, applied to the writer's state only once it is committed.
#[derive(Default)]
struct Changes {
    rooms: HashMap<Arc<str>, RoomLog>,
    keys: HashMap<KeyId, (u64, u64)>,
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
    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<WriteOp>,
        completions: SyncSender<Completed>,
    ) {
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
        if let Some(tx) = closing
            && completions.send(Completed::Closed(tx)).is_err()
        {
            tracing::warn!("the completion thread stopped before the store closed");
        }
    }

    /// Closing: refuses new writes, commits what was queued (a few attempts for replicated
    /// messages), and fails what still cannot be committed.
    fn finish(
        &mut self,
        mut rx: mpsc::Receiver<WriteOp>,
        mut batch: Vec<WriteOp>,
        closing: &mut Option<oneshot::Sender<()>>,
        completions: &SyncSender<Completed>,
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
        if !failed.is_empty() && completions.send(Completed::Batch(failed)).is_err() {
            tracing::warn!("the completion thread stopped; completions are lost");
        }
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
        completions: &SyncSender<Completed>,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut outcomes: Vec<Option<AppendOutcome>> = Vec::with_capacity(batch.len());
        let mut changes = Changes::default();
        let result = self.write(batch, &mut outcomes, &mut changes);
        let mut done = Vec::with_capacity(batch.len());
        let committed = match result {
            Ok(()) => {
                self.rooms.extend(changes.rooms);
                self.keys.extend(changes.keys);
                for (op, outcome) in batch.drain(..).zip(outcomes) {
                    match op {
                        WriteOp::Append(a) => done.push(Completion::Append(
                            a.done,
                            Ok(outcome.expect("every append has an outcome")),
                        )),
                        WriteOp::Insert(Insert { done: Some(d), .. }) => {
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
        if !done.is_empty() && completions.send(Completed::Batch(done)).is_err() {
            tracing::warn!("the completion thread stopped; acks are lost");
        }
        committed
    }

    fn write(
        &mut self,
        batch: &[WriteOp],
        outcomes: &mut Vec<Option<AppendOutcome>>,
        changes: &mut Changes,
    ) -> rusqlite::Result<()> {
        let rooms = &self.rooms;
        let log_of = |changes: &mut Changes, room: &Arc<str>| -> RoomLog {
            changes
                .rooms
                .get(room)
                .or_else(|| rooms.get(room))
                .cloned()
                .unwrap_or_default()
        };
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (room, offset, user_id, user_name, body, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut insert_key = tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (room, user_id, key, offset, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let cutoff = crate::protocol::now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
            for op in batch {
                match op {
                    WriteOp::Append(a) => {
                        let key_id = a
                            .key
                            .as_ref()
                            .map(|k| (a.room.clone(), a.user.id.clone(), k.clone()));
                        if let Some(id) = &key_id {
                            let seen = changes.keys.get(id).or_else(|| self.keys.get(id));
                            if let Some(&(offset, _)) = seen.filter(|(_, ts)| *ts >= cutoff) {
                                outcomes.push(Some(AppendOutcome::Duplicate { offset }));
                                continue;
                            }
                        }
                        let mut log = log_of(changes, &a.room);
                        let offset = log.contiguous + 1;
                        insert.execute(params![
                            &*a.room,
                            offset as i64,
                            &*a.user.id,
                            &*a.user.name,
                            &*a.body,
                            a.ts as i64
                        ])?;
                        if let (Some(id), Some(key)) = (key_id, &a.key) {
                            insert_key.execute(params![
                                &*a.room,
                                &*a.user.id,
                                &**key,
                                offset as i64,
                                a.ts as i64
                            ])?;
                            changes.keys.insert(id, (offset, a.ts));
                        }
                        log.stored(offset);
                        changes.rooms.insert(a.room.clone(), log);
                        outcomes.push(Some(AppendOutcome::Stored(Message {
                            room: a.room.clone(),
                            offset,
                            user: a.user.clone(),
                            body: a.body.clone(),
                            ts: a.ts,
                        })));
                    }
                    WriteOp::Insert(ins) => {
                        for Replicated { message: m, key } in &ins.messages {
                            insert.execute(params![
                                &*m.room,
                                m.offset as i64,
                                &*m.user.id,
                                &*m.user.name,
                                &*m.body,
                                m.ts as i64
                            ])?;
                            if let Some(key) = key {
                                insert_key.execute(params![
                                    &*m.room,
                                    &*m.user.id,
                                    &**key,
                                    m.offset as i64,
                                    m.ts as i64
                                ])?;
                            }
                            let mut log = log_of(changes, &m.room);
                            log.stored(m.offset);
                            changes.rooms.insert(m.room.clone(), log);
                        }
                        outcomes.push(None);
                    }
                    WriteOp::Meta { key, value } => {
                        tx.execute(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                            params![key, value],
                        )?;
                        outcomes.push(None);
                    }
                    WriteOp::Revoke {
                        user,
                        generation,
                        at,
                    } => {
                        tx.execute(
                            "INSERT INTO revocations (user_id, gen, at) VALUES (?1, ?2, ?3)
                             ON CONFLICT (user_id) DO UPDATE SET gen = max(gen, excluded.gen), at = excluded.at",
                            params![&**user, *generation as i64, *at as i64],
                        )?;
                        outcomes.push(None);
                    }
                    WriteOp::Close(_) => outcomes.push(None),
                }
            }
            let mut upsert_room = tx.prepare_cached(
                "INSERT INTO rooms (room, last_offset) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
            )?;
            for (room, log) in changes.rooms.iter() {
                upsert_room.execute(params![&**room, log.contiguous as i64])?;
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::RoomLog;

    #[test]
    fn the_contiguous_prefix_closes_over_gaps() {
        let mut log = RoomLog::default();
        assert!(log.stored(1));
        assert!(!log.stored(3));
        assert!(!log.stored(4));
        assert_eq!(log.contiguous, 1);
        assert!(log.stored(2));
        assert_eq!(log.contiguous, 4);
        assert!(log.ahead.is_empty());
        assert!(!log.stored(2), "a repeat changes nothing");
    }
}
