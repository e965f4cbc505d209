//! A session's outbox: the bounded queue of encoded frames its writer drains, and the switch that
//! closes the session with a close code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Frame, close};

/// Identifies one connection on this node.
pub type ConnId = u64;

/// Why and whether a session is closing. Shared by the session's tasks and every outbox clone.
#[derive(Debug)]
pub struct Closer {
    token: CancellationToken,
    /// 0 until a code is chosen; the first code wins.
    code: AtomicU16,
}

impl Closer {
    /// A closer that also fires when `parent` (the server's shutdown) is cancelled.
    pub fn child_of(parent: &CancellationToken) -> Arc<Closer> {
        Arc::new(Closer {
            token: parent.child_token(),
            code: AtomicU16::new(0),
        })
    }

    /// Closes the session with `code` (the first code given wins).
    pub fn close(&self, code: u16) {
        let _first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// Resolves when the session must close.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// True once the session is closing.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The close code: the one chosen, or 1001 when the server shuts down.
    pub fn code(&self) -> u16 {
        match self.code.load(Ordering::Acquire) {
            0 => close::SHUTDOWN,
            c => c,
        }
    }
}

/// The sending side of a session's queue. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn: ConnId,
    tx: mpsc::Sender<Frame>,
    closer: Arc<Closer>,
}

/// What happened to a frame given to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The queue was full: the session is now closing with 4008.
    Overflowed,
    /// The session is gone.
    Gone,
}

impl Outbox {
    /// A new outbox of `capacity` frames and the receiver its writer drains.
    pub fn new(
        conn: ConnId,
        capacity: usize,
        closer: Arc<Closer>,
    ) -> (Outbox, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbox { conn, tx, closer }, rx)
    }

    /// Queues a frame. A full queue closes the session with 4008 instead of waiting: a slow
    /// reader never slows the sender (a shard, the store writer) or anyone else.
    pub fn send(&self, frame: Frame) -> Sent {
        match self.tx.try_send(frame) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.closer.is_closed() {
                    Sent::Gone
                } else {
                    self.closer.close(close::SLOW_CONSUMER);
                    Sent::Overflowed
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Gone,
        }
    }

    /// The session's closer.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.closer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_4008_and_never_blocks() {
        let shutdown = CancellationToken::new();
        let closer = Closer::child_of(&shutdown);
        let (outbox, _rx) = Outbox::new(1, 2, closer.clone());
        let f = Frame::from("x");
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Overflowed);
        assert!(closer.is_closed());
        assert_eq!(closer.code(), close::SLOW_CONSUMER);
        assert_eq!(outbox.send(f), Sent::Gone);
    }

    #[test]
    fn shutdown_means_1001() {
        let shutdown = CancellationToken::new();
        let closer = Closer::child_of(&shutdown);
        shutdown.cancel();
        assert!(closer.is_closed());
        assert_eq!(closer.code(), close::SHUTDOWN);
    }
}
