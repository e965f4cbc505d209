//! The operations the store writer takes, and a room's log as the writer tracks it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::WriteFailure;
use crate::auth::User;
use crate::protocol::Message;

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

pub(super) type KeyId = (Arc<str>, Arc<str>, Arc<str>);

/// One room as the writer sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct RoomLog {
    /// Every offset up to this is stored.
    pub(super) contiguous: u64,
    /// Stored offsets past `contiguous + 1` (replicated messages that arrived before a gap
    /// closed). Empty on a single node.
    pub(super) ahead: BTreeSet<u64>,
}

impl RoomLog {
    /// Records offset `o` as stored; true when the contiguous prefix moved.
    pub(super) fn stored(&mut self, o: u64) -> bool {
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
