//! The session writer: drains the outbox into the socket, one flush per batch of queued frames,
//! pings the peer, closes the session when its cookie expires, and sends the close frame.

use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::{CLOSE_GRACE, DRAIN_PATIENCE, Socket};
use crate::conn::{Ending, OutboxReceiver};
use crate::protocol::CloseCode;

/// Frames taken from the outbox per write.
const BATCH: usize = 256;

pub(super) async fn run(
    mut sink: SplitSink<Socket, WsMessage>,
    mut rx: OutboxReceiver,
    expiry: tokio::time::Instant,
    ping_interval: std::time::Duration,
) {
    let closed = rx.closer().closed_owned();
    tokio::pin!(closed);
    let mut ping = tokio::time::interval(ping_interval);
    ping.reset();
    // The session cookie's lifetime also bounds the connection: then it closes with 1008.
    let expired = tokio::time::sleep_until(expiry);
    tokio::pin!(expired);
    // Grows to the largest burst seen, not more: an idle connection holds only a few slots.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = &mut expired => {
                rx.closer().close(CloseCode::Policy);
                break;
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let bytes: usize = batch.iter().map(|f| f.len()).sum();
                let write = async {
                    for frame in batch.drain(..) {
                        sink.feed(frame.into_ws()).await?;
                    }
                    sink.flush().await
                };
                let result = tokio::select! {
                    biased;
                    _ = &mut closed => None,
                    result = write => Some(result),
                };
                batch.clear();
                rx.written(n, bytes);
                match result {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(_)) => {
                        rx.closer().end(Ending::Gone);
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    rx.closer().end(Ending::Gone);
                    break;
                }
            }
        }
    }
    // A shutdown first waits (briefly) for the answers of publishes in flight and sends what
    // is queued; any other close drops it and sends nothing but its close frame.
    if rx.closer().ending() == Ending::Close(CloseCode::Shutdown) {
        let patience = tokio::time::Instant::now() + DRAIN_PATIENCE;
        while rx.unanswered() > 0 && tokio::time::Instant::now() < patience {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let n = rx.take_queued(&mut batch);
        let bytes: usize = batch.iter().map(|f| f.len()).sum();
        let flush = async {
            for frame in batch.drain(..) {
                sink.feed(frame.into_ws()).await?;
            }
            sink.flush().await
        };
        if !matches!(tokio::time::timeout(CLOSE_GRACE, flush).await, Ok(Ok(()))) {
            rx.closer().end(Ending::Gone);
        }
        rx.written(n, bytes);
    }
    rx.discard();
    match rx.closer().ending() {
        Ending::Close(code) => {
            let frame = CloseFrame {
                code: WsCloseCode::from(code.code()),
                reason: code.reason().into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await;
        }
        Ending::PeerClosed => {
            // tungstenite queued its answer to the client's close; push it out.
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
        }
        Ending::Gone => {}
    }
}
