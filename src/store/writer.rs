//! The batching writer: one thread owns the write connection, numbers appended messages, and
//! commits whatever is queued in one transaction (group commit).
//!
//! Numbering lives here because only the writer knows what is committed: a batch that fails to
//! commit takes its offsets back, so offsets are never skipped and never reused.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::auth::User;
use crate::protocol::{IDEMPOTENCY_WINDOW_MS, Message};

/// Largest number of operations committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Called once per append, after its transaction committed (`Ok`) or failed (`Err`).
pub type Completion = Box<dyn FnOnce(Result<AppendOutcome, ()>) + Send>;

/// A new message to number and store.
pub struct Append {
    pub room: Arc<str>,
    pub user: User,
    pub body: Arc<str>,
    pub key: Option<Arc<str>>,
    pub ts: u64,
    pub done: Completion,
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under a new offset.
    Stored(Message),
    /// The same key was stored before, at this offset: nothing was stored again.
    Duplicate { offset: u64 },
}

/// One operation for the writer.
pub enum WriteOp {
    /// Number and store (single node: the writer is the numbering authority).
    Append(Append),
    /// Store a message numbered elsewhere (cluster: Redis numbers); a repeat is ignored.
    Insert(Message),
    /// Commit everything queued before this, then stop; the sender is dropped after the commit.
    Close(oneshot::Sender<()>),
}

type KeyId = (Arc<str>, Arc<str>, Arc<str>);

/// Work handed from the writer to the completion thread, in commit order.
pub(super) enum Completed {
    /// Completions of one committed (or failed) batch.
    Batch(Vec<(Completion, Result<AppendOutcome, ()>)>),
    /// The writer stopped after its last commit; dropping the sender tells `Store::close`.
    Closed(oneshot::Sender<()>),
}

/// The completion thread: acks and deliveries run here, in commit order, so that the writer
/// thread does nothing but SQLite work.
pub(super) fn complete(rx: Receiver<Completed>) {
    for completed in rx {
        match completed {
            Completed::Batch(batch) => {
                for (done, outcome) in batch {
                    done(outcome);
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
    /// Latest committed offset of every room.
    offsets: HashMap<Arc<str>, u64>,
    /// Idempotency keys younger than the window: (room, user id, key) -> (offset, ts ms).
    keys: HashMap<KeyId, (u64, u64)>,
    last_prune: Instant,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    pub(super) fn load(
        conn: Connection,
        offsets: HashMap<Arc<str>, u64>,
        stop_checkpoints: Arc<AtomicBool>,
    ) -> Result<Writer, StoreError> {
        let mut keys = HashMap::new();
        {
            let cutoff = now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS) as i64;
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
            offsets,
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
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut closing: Option<oneshot::Sender<()>> = None;
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch, &mut closing, &completions);
            if closing.is_some() {
                // Refuse new writes, then commit what was queued before the refusal.
                rx.close();
                while let Ok(op) = rx.try_recv() {
                    batch.push(op);
                    if batch.len() == MAX_BATCH {
                        self.commit_batch(&mut batch, &mut closing, &completions);
                    }
                }
                self.commit_batch(&mut batch, &mut closing, &completions);
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

    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let cutoff = now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
        self.keys.retain(|_, (_, ts)| *ts >= cutoff);
        if let Err(e) = self.conn.execute(
            "DELETE FROM idempotency WHERE ts < ?1",
            params![cutoff as i64],
        ) {
            tracing::warn!(error = %e, "pruning idempotency keys failed");
        }
    }

    fn commit_batch(
        &mut self,
        batch: &mut Vec<WriteOp>,
        closing: &mut Option<oneshot::Sender<()>>,
        completions: &SyncSender<Completed>,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut outcomes: Vec<Option<AppendOutcome>> = Vec::with_capacity(batch.len());
        let mut new_offsets: HashMap<Arc<str>, u64> = HashMap::new();
        let mut new_keys: HashMap<KeyId, (u64, u64)> = HashMap::new();
        let result = self.write(batch, &mut outcomes, &mut new_offsets, &mut new_keys);
        let mut done = Vec::with_capacity(batch.len());
        match result {
            Ok(()) => {
                self.offsets.extend(new_offsets);
                self.keys.extend(new_keys);
                for (op, outcome) in batch.drain(..).zip(outcomes) {
                    match op {
                        WriteOp::Append(a) => {
                            done.push((a.done, Ok(outcome.expect("every append has an outcome"))))
                        }
                        WriteOp::Insert(_) => {}
                        WriteOp::Close(tx) => *closing = Some(tx),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = batch.len(), "store commit failed; publishes get unavailable");
                for op in batch.drain(..) {
                    match op {
                        WriteOp::Append(a) => done.push((a.done, Err(()))),
                        WriteOp::Insert(m) => {
                            tracing::warn!(room = %m.room, offset = m.offset, "replicated message not stored")
                        }
                        WriteOp::Close(tx) => *closing = Some(tx),
                    }
                }
            }
        }
        if !done.is_empty() && completions.send(Completed::Batch(done)).is_err() {
            tracing::warn!("the completion thread stopped; acks are lost");
        }
    }

    fn write(
        &mut self,
        batch: &[WriteOp],
        outcomes: &mut Vec<Option<AppendOutcome>>,
        new_offsets: &mut HashMap<Arc<str>, u64>,
        new_keys: &mut HashMap<KeyId, (u64, u64)>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (room, offset, user_id, user_name, body, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut insert_key = tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (room, user_id, key, offset, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let cutoff = now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
            for op in batch {
                match op {
                    WriteOp::Append(a) => {
                        let key_id = a
                            .key
                            .as_ref()
                            .map(|k| (a.room.clone(), a.user.id.clone(), k.clone()));
                        if let Some(id) = &key_id {
                            let seen = new_keys.get(id).or_else(|| self.keys.get(id));
                            if let Some(&(offset, _)) = seen.filter(|(_, ts)| *ts >= cutoff) {
                                outcomes.push(Some(AppendOutcome::Duplicate { offset }));
                                continue;
                            }
                        }
                        let last = new_offsets
                            .get(&a.room)
                            .or_else(|| self.offsets.get(&a.room))
                            .copied()
                            .unwrap_or(0);
                        let offset = last + 1;
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
                            new_keys.insert(id, (offset, a.ts));
                        }
                        new_offsets.insert(a.room.clone(), offset);
                        outcomes.push(Some(AppendOutcome::Stored(Message {
                            room: a.room.clone(),
                            offset,
                            user: a.user.clone(),
                            body: a.body.clone(),
                            ts: a.ts,
                        })));
                    }
                    WriteOp::Insert(m) => {
                        insert.execute(params![
                            &*m.room,
                            m.offset as i64,
                            &*m.user.id,
                            &*m.user.name,
                            &*m.body,
                            m.ts as i64
                        ])?;
                        let last = new_offsets
                            .get(&m.room)
                            .or_else(|| self.offsets.get(&m.room))
                            .copied()
                            .unwrap_or(0);
                        if m.offset > last {
                            new_offsets.insert(m.room.clone(), m.offset);
                        }
                        outcomes.push(None);
                    }
                    WriteOp::Close(_) => outcomes.push(None),
                }
            }
            let mut upsert_room = tx.prepare_cached(
                "INSERT INTO rooms (room, last_offset) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
            )?;
            for (room, last) in new_offsets.iter() {
                upsert_room.execute(params![&**room, *last as i64])?;
            }
        }
        tx.commit()
    }
}
