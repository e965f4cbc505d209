//! The durable room log: every room is a log numbered 1, 2, 3... in SQLite (WAL).
//!
//! One writer thread owns the write connection ([`writer`]); it takes whatever is queued, commits
//! it in one transaction, and only then completes each operation (so an `ack` leaves after its
//! commit). Reads use a small pool of separate read connections and never block the writer
//! (WAL readers see the last committed state).

mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, params};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::auth::User;
use crate::config::Fsync;
use crate::protocol::Message;

pub use writer::{Append, AppendOutcome, Completion, WriteOp};

/// What can go wrong in the store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("a read task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A write the writer did not take (queue full, or the writer stopped): handed back so that
/// its completion can still run. Boxed: refusals are rare, and the op is large.
pub struct Refused(pub Box<WriteOp>);

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refused(..)")
    }
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Operations the writer may hold queued.
    pub queue: usize,
}

/// A cheap-to-clone handle on the room log.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Idle read connections. A std mutex: it is held only to push or pop, never over an await.
    readers: Mutex<Vec<Connection>>,
    writes: mpsc::Sender<WriteOp>,
    tracker: TaskTracker,
    /// Latest offset of every room at open time (the writer keeps the live numbers).
    initial_offsets: HashMap<Arc<str>, u64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    offset INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    body TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    last_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room, user_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_ts ON idempotency (ts);
";

fn open_connection(path: &Path, fsync: Fsync, write: bool) -> Result<Connection, StoreError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    if write {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match fsync {
            Fsync::Normal => "NORMAL",
            Fsync::Always => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
    }
    Ok(conn)
}

fn row_to_message(room: &Arc<str>, row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        room: room.clone(),
        offset: row.get::<_, i64>(0)? as u64,
        user: User {
            id: row.get::<_, String>(1)?.into(),
            name: row.get::<_, String>(2)?.into(),
        },
        body: row.get::<_, String>(3)?.into(),
        ts: row.get::<_, i64>(4)? as u64,
    })
}

impl Store {
    /// Opens (or creates) the room log in `options.dir` and starts its writer on `tracker`.
    pub fn open(options: StoreOptions, tracker: &TaskTracker) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&options.dir)?;
        let path = options.dir.join("nebula.db");
        let conn = open_connection(&path, options.fsync, true)?;
        conn.execute_batch(SCHEMA)?;
        let mut initial_offsets = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT room, last_offset FROM rooms")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (room, last) = row?;
                initial_offsets.insert(Arc::<str>::from(room), last as u64);
            }
        }
        let stop_checkpoints = Arc::new(AtomicBool::new(false));
        let checkpointer = open_connection(&path, options.fsync, true)?;
        let state = writer::Writer::load(conn, initial_offsets.clone(), stop_checkpoints.clone())?;
        let (writes, rx) = mpsc::channel(options.queue.max(1));
        let (completions, completed) = std::sync::mpsc::sync_channel(64);
        tracker.spawn_blocking(move || state.run(rx, completions));
        tracker.spawn_blocking(move || writer::complete(completed));
        tracker.spawn_blocking(move || writer::checkpoint_loop(checkpointer, stop_checkpoints));
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                readers: Mutex::new(Vec::new()),
                writes,
                tracker: tracker.clone(),
                initial_offsets,
            }),
        })
    }

    /// Latest offset of every room when the store was opened.
    pub fn initial_offsets(&self) -> &HashMap<Arc<str>, u64> {
        &self.inner.initial_offsets
    }

    /// Queues a write without waiting; `Refused` (the op handed back) when the queue is full or
    /// the writer gone.
    pub fn try_write(&self, op: WriteOp) -> Result<(), Refused> {
        self.inner.writes.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op) => {
                Refused(Box::new(op))
            }
        })
    }

    /// Queues a write, waiting while the queue is full (backpressure for replicated inserts,
    /// which must not be dropped); `Refused` only when the writer has stopped.
    pub async fn write(&self, op: WriteOp) -> Result<(), Refused> {
        self.inner
            .writes
            .send(op)
            .await
            .map_err(|e| Refused(Box::new(e.0)))
    }

    /// Asks the writer to commit what it holds and stop; resolves when it has.
    pub async fn close(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.writes.send(WriteOp::Close(tx)).await.is_ok() {
            // The writer drops the sender only after its last commit.
            let _closed = rx.await;
        }
    }

    /// Runs `f` on a pooled read connection in a tracked blocking task.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner
            .tracker
            .spawn_blocking(move || {
                let pooled = inner.readers.lock().expect("reader pool lock").pop();
                let conn = match pooled {
                    Some(c) => c,
                    None => open_connection(&inner.path, Fsync::Normal, false)?,
                };
                let result = f(&conn);
                let mut pool = inner.readers.lock().expect("reader pool lock");
                if pool.len() < 8 {
                    pool.push(conn);
                }
                result
            })
            .await?
    }

    /// Up to `limit` messages with offset > `after`, oldest first.
    pub async fn read_after(
        &self,
        room: Arc<str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT offset, user_id, user_name, body, ts FROM messages
                 WHERE room = ?1 AND offset > ?2 ORDER BY offset ASC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![&*room, after as i64, limit as i64], |r| {
                row_to_message(&room, r)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Up to `limit` messages with offset < `before` (`None`: the latest), oldest first.
    pub async fn read_before(
        &self,
        room: Arc<str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT offset, user_id, user_name, body, ts FROM messages
                 WHERE room = ?1 AND offset < ?2 ORDER BY offset DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![&*room, before, limit as i64], |r| {
                row_to_message(&room, r)
            })?;
            let mut messages = rows.collect::<Result<Vec<_>, _>>()?;
            messages.reverse();
            Ok(messages)
        })
        .await
    }

    /// The latest stored offset of a room (0 when empty), as a reader sees it now.
    pub async fn latest_offset(&self, room: Arc<str>) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT last_offset FROM rooms WHERE room = ?1")?;
            let mut rows = stmt.query(params![&*room])?;
            Ok(match rows.next()? {
                Some(r) => r.get::<_, i64>(0)? as u64,
                None => 0,
            })
        })
        .await
    }
}
