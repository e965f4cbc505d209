//! The durable room log: every room is a log numbered 1, 2, 3... in SQLite (WAL).
//!
//! One writer thread owns the write connection ([`writer`]); it takes whatever is queued, commits
//! it in one transaction, and only then completes each operation (so an `ack` leaves after its
//! commit). Reads use a small pool of separate read connections and never block the writer
//! (WAL readers see the last committed state).
//!
//! Per room the store knows its *contiguous prefix*: the highest offset up to which every
//! message is stored (`rooms.last_offset`). Reads never go past it, so a reader never sees a
//! hole that a replicated write is about to fill; catch-up starts after it.

mod batch;
mod ops;
mod reads;
mod writer;

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::auth::User;
use crate::config::Fsync;
use crate::metrics::Metrics;
use crate::protocol::Message;

pub use ops::{Append, AppendDone, AppendOutcome, Insert, InsertDone, Replicated, WriteOp};
pub use reads::{JoinRead, PageRead};

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

/// Why a write was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteFailure {
    /// The writer's queue was full, or the writer has stopped: nothing was tried.
    #[error("the store's queue is full or the store is closed")]
    Refused,
    /// The transaction failed (disk full, I/O error, a lock held by another process).
    #[error("the store could not commit")]
    Commit,
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
-- last_offset: the contiguous prefix (every offset up to it is in messages).
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- A user's sessions issued before generation `generation` are logged out.
CREATE TABLE IF NOT EXISTS revocations (
    user_id TEXT PRIMARY KEY,
    gen INTEGER NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The page size of a new database. Each commit writes every page it touched to the WAL, and a
/// message is a few hundred bytes: with SQLite's default of 4 KiB, one message committed alone
/// (a quiet room, a publish acked at once) wrote about 12 KiB.
const PAGE_SIZE: u32 = 1024;

fn open_connection(path: &Path, fsync: Fsync, write: bool) -> Result<Connection, StoreError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    if write {
        // Only a new (empty) database takes it; an existing one keeps its page size.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match fsync {
            Fsync::Normal => "NORMAL",
            Fsync::Always => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
    }
    Ok(conn)
}

/// Creates the database file readable by the server's user alone (0600); SQLite gives its WAL
/// and shared-memory files the same mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
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
    pub fn open(
        options: StoreOptions,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&options.dir)?;
        let path = options.dir.join("nebula.db");
        create_private(&path)?;
        let conn = open_connection(&path, options.fsync, true)?;
        conn.execute_batch(SCHEMA)?;
        let stop_checkpoints = Arc::new(AtomicBool::new(false));
        let checkpointer = open_connection(&path, options.fsync, true)?;
        let state = writer::Writer::load(conn, stop_checkpoints.clone(), metrics)?;
        let (writes, rx) = mpsc::channel(options.queue.max(1));
        let (completions, complete) = writer::Completer::new();
        tracker.spawn_blocking(move || state.run(rx, completions));
        tracker.spawn_blocking(complete);
        tracker.spawn_blocking(move || writer::checkpoint_loop(checkpointer, stop_checkpoints));
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                readers: Mutex::new(Vec::new()),
                writes,
                tracker: tracker.clone(),
            }),
        })
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

    /// A value of the `meta` table (the cluster epoch, ...).
    pub async fn meta(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
            let mut rows = stmt.query([key])?;
            Ok(match rows.next()? {
                Some(r) => Some(r.get::<_, String>(0)?),
                None => None,
            })
        })
        .await
    }

    /// Every revoked session generation, by user id.
    pub async fn revocations(&self) -> Result<HashMap<Arc<str>, u64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT user_id, gen FROM revocations")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?.into(), r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }
}
