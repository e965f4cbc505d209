//! A session: one WebSocket connection, as two tasks around its outbox. The reader decodes
//! requests and handles them one at a time, in order; the writer drains the outbox into the
//! socket, coalescing whatever is queued into one flush.
//!
//! Closing: any party ends a session through its [`Closer`]. The writer then drops what is
//! queued and sends the close frame with its code (1001 shutdown, 1002 protocol, 1007 invalid
//! UTF-8, 1008 session expired, 1009 too big, 4000 idle, 4008 slow consumer), waiting at most
//! [`CLOSE_GRACE`] for a client that does not read; the reader waits as long for the client's
//! close reply. A client's own close is answered at once. Whatever the client does, both tasks
//! and the socket are gone within a few seconds of a close.

mod reader;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use crate::auth::User;
use crate::broker::SharedBroker;
use crate::conn::{Closer, ConnId, Ending, Outbox};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::{CloseCode, Codec, MAX_FRAME_BYTES};
use crate::store::Store;

/// How long a closing session waits for a client to take the close frame and answer it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a session closing for a shutdown waits for the answers of its publishes in flight
/// (they are sent before its 1001).
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(2);
/// How long a request waits for the writer to drain before its reply fits the outbound budget;
/// past it the client is a slow consumer (4008).
pub const BUDGET_PATIENCE: Duration = Duration::from_secs(5);

/// The WebSocket settings: small buffers per connection, 64 KiB frames at most, and no cap on
/// the write buffer beyond the outbound budget (a reply of any size the server built is sent).
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What every session shares.
pub struct SessionContext {
    pub hub: Hub,
    pub broker: SharedBroker,
    pub store: Store,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub node_id: Arc<str>,
    /// Each connection's outbound budget in bytes (`--outbox-bytes`).
    pub outbox_bytes: usize,
    /// Interval of WebSocket pings (`--ping-interval`); a peer silent for three intervals is
    /// closed with 4000.
    pub ping_interval: Duration,
}

/// One connection's identity and settings.
pub struct SessionInfo {
    pub conn: ConnId,
    pub user: User,
    pub codec: Codec,
    /// Seconds since the epoch when its session cookie expires (then: close 1008).
    pub expires_at: u64,
}

/// Runs a session until the client leaves or the session is closed. The writer runs as a
/// second task on `tracker`; this returns after both have finished.
pub async fn run(
    socket: Socket,
    info: SessionInfo,
    closer: Closer,
    ctx: Arc<SessionContext>,
    tracker: &TaskTracker,
) {
    ctx.metrics.connections.inc();
    ctx.metrics.connections_accepted.inc();
    let (outbox, rx) = Outbox::new(info.conn, info.codec, ctx.outbox_bytes, closer);
    outbox.send(info.codec.welcome(&info.user, &ctx.node_id));
    let (sink, stream) = socket.split();
    let valid_for = Duration::from_secs(info.expires_at.saturating_sub(crate::auth::now_secs()));
    let expiry = tokio::time::Instant::now() + valid_for;
    let writer = tracker.spawn(writer::run(sink, rx, expiry, ctx.ping_interval));
    let closer_view = outbox.clone();
    let mut reader = reader::Reader::new(ctx.clone(), info.user, outbox);
    reader.run(stream).await;
    if let Err(e) = writer.await {
        tracing::warn!(error = %e, "session writer panicked");
    }
    if closer_view.closer().ending() == Ending::Close(CloseCode::SlowConsumer) {
        ctx.metrics.slow_consumers.inc();
    }
    ctx.metrics.connections.dec();
}

#[cfg(test)]
mod tests {
    use super::websocket_config;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    /// A reply of any size the server built goes out whole, the way the session writer sends
    /// (feed, then flush), over a real socket. With tungstenite's write buffer capped at 1 MiB,
    /// as it was, a 3 MiB frame failed and the connection died without a close frame.
    #[tokio::test]
    async fn a_frame_bigger_than_a_mib_is_written_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(64 << 20));
            let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, Some(config)).await;
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => text.len(),
                other => panic!("expected the big frame, got {other:?}"),
            }
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws =
            WebSocketStream::from_raw_socket(tcp, Role::Server, Some(websocket_config())).await;
        let big = "x".repeat(3 << 20);
        ws.feed(WsMessage::text(big)).await.unwrap();
        ws.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), 3 << 20);
    }
}
