//! A connection as the rest of the server sees it: its outbox (the queue of encoded frames its
//! writer drains, bounded in bytes) and its closer (the switch that closes it with a code).
//! A leaf module: the hub and the session both use it, it uses neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::protocol::{CloseCode, Codec, Frame};

/// Identifies one connection on this node.
pub type ConnId = u64;

/// What a queued frame costs beyond its payload (the queue slot, the `Bytes` header): counted
/// so that the budget bounds memory even for a flood of tiny frames.
pub const FRAME_OVERHEAD: usize = 64;

/// How a session ends: a close code sent to the client, or nothing to send because the client
/// closed first or the socket is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server closes with this code.
    Close(CloseCode),
    /// The client sent a close frame (tungstenite answers it).
    PeerClosed,
    /// The socket ended or failed: nothing can be sent.
    Gone,
}

const PEER_CLOSED: u16 = 1;
const GONE: u16 = 2;

/// Why and whether a session is closing. Shared by the session's tasks and every outbox clone.
#[derive(Debug)]
pub struct Closer {
    token: CancellationToken,
    /// 0 until an ending is chosen; the first one wins.
    ending: AtomicU16,
}

impl Closer {
    /// A closer that also fires when `parent` (the server's shutdown) is cancelled.
    pub fn child_of(parent: &CancellationToken) -> Closer {
        Closer {
            token: parent.child_token(),
            ending: AtomicU16::new(0),
        }
    }

    /// Closes the session (the first ending given wins).
    pub fn end(&self, ending: Ending) {
        let code = match ending {
            Ending::Close(c) => c.code(),
            Ending::PeerClosed => PEER_CLOSED,
            Ending::Gone => GONE,
        };
        let _first = self
            .ending
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// Closes the session with `code`.
    pub fn close(&self, code: CloseCode) {
        self.end(Ending::Close(code));
    }

    /// Resolves when the session must close.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// A future that resolves when the session must close, to pin once and poll in a loop.
    pub fn closed_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// True once the session is closing.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// How the session ends: the ending chosen, or close 1001 when the server shuts down.
    pub fn ending(&self) -> Ending {
        match self.ending.load(Ordering::Acquire) {
            0 => Ending::Close(CloseCode::Shutdown),
            PEER_CLOSED => Ending::PeerClosed,
            GONE => Ending::Gone,
            code => Ending::Close(CloseCode::from_code(code).unwrap_or(CloseCode::Protocol)),
        }
    }
}

/// A connection's shared state.
#[derive(Debug)]
struct Shared {
    closer: Closer,
    /// Bytes queued and not yet written, plus reservations; at most `budget`.
    queued: AtomicUsize,
    budget: usize,
    /// Signalled whenever `queued` goes down.
    drained: Notify,
    /// Requests handed on (publishes) whose answer is not queued yet: a shutdown waits for
    /// them before its close frame.
    unanswered: AtomicUsize,
}

/// The sending side of a connection's queue. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub conn: ConnId,
    /// The connection's codec: senders encode for it.
    pub codec: Codec,
    tx: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
}

/// The receiving side, drained by the session writer.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<Frame>,
    shared: Arc<Shared>,
}

/// What happened to a frame given to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The budget would overflow: the session is now closing with 4008.
    Overflowed,
    /// The session is gone or closing.
    Gone,
}

/// A request whose answer is expected: counted while it lives.
#[derive(Debug)]
pub struct Expected {
    shared: Arc<Shared>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.shared.unanswered.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Budget held for a reply that is being prepared (a store read): returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(self.bytes, Ordering::AcqRel);
        self.shared.drained.notify_waiters();
    }
}

impl Outbox {
    /// A new outbox with a budget of `budget` bytes, and the receiver its writer drains.
    pub fn new(
        conn: ConnId,
        codec: Codec,
        budget: usize,
        closer: Closer,
    ) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            closer,
            queued: AtomicUsize::new(0),
            budget,
            drained: Notify::new(),
            unanswered: AtomicUsize::new(0),
        });
        (
            Outbox {
                conn,
                codec,
                tx,
                shared: shared.clone(),
            },
            OutboxReceiver { rx, shared },
        )
    }

    /// Queues a frame. When the frames queued and not yet written would pass the budget, the
    /// session closes with 4008 instead: a slow reader never slows the sender (a shard, the
    /// store) or anyone else, and never costs more than its budget.
    pub fn send(&self, frame: Frame) -> Sent {
        let shared = &self.shared;
        // A session closing for a shutdown still takes its last answers (they go out before
        // its 1001); any other closing session takes nothing more.
        if shared.closer.is_closed() && shared.closer.ending() != Ending::Close(CloseCode::Shutdown)
        {
            return Sent::Gone;
        }
        let cost = frame.len() + FRAME_OVERHEAD;
        let before = shared.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > shared.budget {
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            shared.closer.close(CloseCode::SlowConsumer);
            return Sent::Overflowed;
        }
        if self.tx.send(frame).is_err() {
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Sent::Gone;
        }
        Sent::Queued
    }

    /// Holds `bytes` of the budget for a reply about to be read and encoded, waiting up to
    /// `patience` for the writer to drain enough. A client that does not read therefore gets
    /// 4008 before the server reads more for it than its budget. `None`: the session closes.
    pub async fn reserve(&self, bytes: usize, patience: Duration) -> Option<Reservation> {
        let shared = &self.shared;
        let bytes = bytes.min(shared.budget);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if shared.closer.is_closed() {
                return None;
            }
            let drained = shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let now = shared.queued.load(Ordering::Acquire);
            if now + bytes <= shared.budget
                && shared
                    .queued
                    .compare_exchange(now, now + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Some(Reservation {
                    shared: shared.clone(),
                    bytes,
                });
            }
            if now + bytes <= shared.budget {
                continue; // Lost a race with a sender: look again.
            }
            tokio::select! {
                _ = drained => {}
                _ = shared.closer.closed() => return None,
                _ = tokio::time::sleep_until(deadline) => {
                    shared.closer.close(CloseCode::SlowConsumer);
                    return None;
                }
            }
        }
    }

    /// Counts a request whose answer will come later (a publish); drop it once the answer is
    /// queued.
    pub fn expect_answer(&self) -> Expected {
        self.shared.unanswered.fetch_add(1, Ordering::AcqRel);
        Expected {
            shared: self.shared.clone(),
        }
    }

    /// The connection's closer.
    pub fn closer(&self) -> &Closer {
        &self.shared.closer
    }

    /// Bytes queued (and reserved) now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    /// Takes up to `limit` queued frames into `batch`; 0 once every sender is gone.
    pub async fn recv_many(&mut self, batch: &mut Vec<Frame>, limit: usize) -> usize {
        self.rx.recv_many(batch, limit).await
    }

    /// Gives back the budget of frames that were written (or dropped).
    pub fn written(&self, frames: usize, bytes: usize) {
        self.shared
            .queued
            .fetch_sub(bytes + frames * FRAME_OVERHEAD, Ordering::AcqRel);
        self.shared.drained.notify_waiters();
    }

    /// Takes whatever is queued now, as if it was written; returns how many frames (for
    /// benchmarks and tests that stand in for a writer).
    pub fn drain_queued(&mut self) -> usize {
        let (mut frames, mut bytes) = (0, 0);
        while let Ok(frame) = self.rx.try_recv() {
            frames += 1;
            bytes += frame.len();
        }
        self.written(frames, bytes);
        frames
    }

    /// Takes whatever is queued now into `batch` (a session closing for a shutdown sends it
    /// before its close frame); returns how many.
    pub fn take_queued(&mut self, batch: &mut Vec<Frame>) -> usize {
        let before = batch.len();
        while let Ok(frame) = self.rx.try_recv() {
            batch.push(frame);
        }
        batch.len() - before
    }

    /// Drops whatever is queued (a closing session sends nothing but its close frame).
    pub fn discard(&mut self) {
        self.rx.close();
        let mut frames = 0;
        let mut bytes = 0;
        while let Ok(frame) = self.rx.try_recv() {
            frames += 1;
            bytes += frame.len();
        }
        self.written(frames, bytes);
    }

    pub fn closer(&self) -> &Closer {
        &self.shared.closer
    }

    /// Requests whose answer is not queued yet.
    pub fn unanswered(&self) -> usize {
        self.shared.unanswered.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(budget: usize) -> (Outbox, OutboxReceiver, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (o, r) = Outbox::new(1, Codec::Json, budget, Closer::child_of(&shutdown));
        (o, r, shutdown)
    }

    #[test]
    fn overflow_closes_with_4008_and_never_blocks() {
        let (outbox, rx, _s) = outbox(3 * (1 + FRAME_OVERHEAD));
        let f = Frame::from("x");
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Overflowed);
        assert!(rx.closer().is_closed());
        assert_eq!(rx.closer().ending(), Ending::Close(CloseCode::SlowConsumer));
        assert_eq!(outbox.send(f), Sent::Gone);
    }

    #[test]
    fn written_frames_give_their_budget_back() {
        let (outbox, rx, _s) = outbox(2 * (1 + FRAME_OVERHEAD));
        let f = Frame::from("x");
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        assert_eq!(outbox.send(f.clone()), Sent::Queued);
        rx.written(2, 2);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.send(f), Sent::Queued);
    }

    #[tokio::test]
    async fn a_reservation_waits_for_the_writer_or_closes_with_4008() {
        let (outbox, rx, _s) = outbox(1000);
        let r = outbox.reserve(900, Duration::from_secs(1)).await.unwrap();
        assert_eq!(outbox.queued_bytes(), 900);
        drop(r);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.send(Frame::from("x")), Sent::Queued);
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.reserve(990, Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        rx.written(1, 1);
        assert!(
            waiting.await.unwrap(),
            "the reservation got the drained budget"
        );
        assert_eq!(outbox.send(Frame::from("x")), Sent::Queued);
        assert!(
            outbox
                .reserve(990, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(
            outbox.closer().ending(),
            Ending::Close(CloseCode::SlowConsumer)
        );
    }

    #[test]
    fn shutdown_means_1001() {
        let shutdown = CancellationToken::new();
        let closer = Closer::child_of(&shutdown);
        shutdown.cancel();
        assert!(closer.is_closed());
        assert_eq!(closer.ending(), Ending::Close(CloseCode::Shutdown));
    }
}
