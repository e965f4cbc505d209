//! A session: one WebSocket connection. The reader decodes requests and hands them to the hub;
//! the writer drains the bounded outbox, coalescing whatever is queued into one flush.
//!
//! Closing: any party closes a session through its [`Closer`] with a close code (1001 shutdown,
//! 1009 frame too big, 4008 slow consumer). The writer then drops what is queued, sends the close
//! frame (waiting at most [`CLOSE_GRACE`] for a client that does not read), and the reader waits
//! as long for the client's close reply.

mod outbox;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

pub use outbox::{Closer, ConnId, Outbox, Sent};

use crate::auth::User;
use crate::broker::Publish;
use crate::hub::{Hub, Member, ShardMsg};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::{
    self, ErrorCode, Frame, MAX_FRAME_BYTES, MAX_ROOMS_PER_CONNECTION, Request, close,
};
use crate::store::Store;

/// How long a closing session waits for a client to take the close frame and answer it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Interval of WebSocket pings; a peer silent for three intervals is dropped.
const PING_INTERVAL: Duration = Duration::from_secs(25);

/// The WebSocket settings: small buffers per connection, 64 KiB frames at most.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What every session shares.
pub struct SessionContext {
    pub hub: Hub,
    pub store: Store,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub node_id: Arc<str>,
    pub outbox_capacity: usize,
}

/// Runs a session until the client leaves or the session is closed. The writer runs as a
/// second task on `tracker`; this returns after both have finished.
pub async fn run(
    socket: Socket,
    conn: ConnId,
    user: User,
    expires_at: u64,
    closer: Arc<Closer>,
    ctx: Arc<SessionContext>,
    tracker: &tokio_util::task::TaskTracker,
) {
    ctx.metrics.connections.inc();
    ctx.metrics.connections_accepted.inc();
    let (outbox, rx) = Outbox::new(conn, ctx.outbox_capacity, closer.clone());
    outbox.send(protocol::welcome(&user, &ctx.node_id));
    let (sink, stream) = socket.split();
    let valid_for = Duration::from_secs(expires_at.saturating_sub(crate::auth::now_secs()));
    let expiry = tokio::time::Instant::now() + valid_for;
    let writer = tracker.spawn(write_loop(sink, rx, closer.clone(), expiry));
    let mut reader = Reader {
        ctx: ctx.clone(),
        user,
        outbox,
        rooms: HashSet::new(),
    };
    reader.read_loop(stream).await;
    reader.leave_all().await;
    if let Err(e) = writer.await {
        tracing::warn!(error = %e, "session writer panicked");
    }
    ctx.metrics.connections.dec();
}

struct Reader {
    ctx: Arc<SessionContext>,
    user: User,
    outbox: Outbox,
    /// Rooms this connection joined; the reader alone changes it.
    rooms: HashSet<Arc<str>>,
}

impl Reader {
    async fn read_loop(&mut self, mut stream: SplitStream<Socket>) {
        let closer = self.outbox.closer().clone();
        let idle_limit = PING_INTERVAL * 3;
        loop {
            let next = tokio::select! {
                biased;
                _ = closer.closed() => break,
                next = tokio::time::timeout(idle_limit, stream.next()) => next,
            };
            match next {
                Ok(Some(Ok(WsMessage::Text(text)))) => self.handle(text.as_str()).await,
                Ok(Some(Ok(WsMessage::Binary(_)))) => {
                    self.ctx.metrics.bad_frames.inc();
                    self.outbox.send(protocol::error(
                        None,
                        ErrorCode::BadRequest,
                        "binary frames need subprotocol nebula.v1.proto",
                    ));
                }
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) => return,
                Ok(Some(Ok(_))) => {} // Ping, pong: tungstenite answers pings itself.
                Ok(Some(Err(WsError::Capacity(_)))) => {
                    self.ctx.metrics.bad_frames.inc();
                    closer.close(close::TOO_BIG);
                    return;
                }
                Ok(Some(Err(_))) => return,
                Err(_idle) => {
                    tracing::debug!(conn = self.outbox.conn, "peer silent; dropping it");
                    closer.close(close::SHUTDOWN);
                    return;
                }
            }
        }
        // Closing: wait a little for the client's close reply so the handshake completes.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }

    async fn leave_all(&mut self) {
        for room in self.rooms.drain() {
            let msg = ShardMsg::Leave {
                conn: self.outbox.conn,
                room: room.clone(),
                id: None,
                reply: self.outbox.clone(),
            };
            self.ctx.hub.send(&room, msg).await;
        }
    }

    fn reply_error(&self, id: u64, code: ErrorCode, message: &str) {
        self.outbox.send(protocol::error(Some(id), code, message));
    }

    async fn handle(&mut self, text: &str) {
        let (id, request) = match protocol::parse_request(text) {
            Ok(parsed) => parsed,
            Err(rejection) => {
                self.ctx.metrics.bad_frames.inc();
                self.outbox.send(protocol::error(
                    rejection.id,
                    rejection.code,
                    rejection.message,
                ));
                return;
            }
        };
        let conn = self.outbox.conn;
        match request {
            Request::Ping => {
                self.outbox.send(protocol::simple(id, "pong", None));
            }
            Request::Join { room, since } => {
                if !self.rooms.contains(&room) && self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    return self.reply_error(
                        id,
                        ErrorCode::TooManyRooms,
                        "a connection joins at most 100 rooms",
                    );
                }
                self.rooms.insert(room.clone());
                let member = Member {
                    user: self.user.clone(),
                    outbox: self.outbox.clone(),
                };
                self.ctx.hub.join(member, room, since, id).await;
            }
            Request::Leave { room } => {
                self.rooms.remove(&room);
                let msg = ShardMsg::Leave {
                    conn,
                    room: room.clone(),
                    id: Some(id),
                    reply: self.outbox.clone(),
                };
                self.ctx.hub.send(&room, msg).await;
            }
            Request::Publish { room, body, key } => {
                if !self.rooms.contains(&room) {
                    self.ctx.metrics.publishes_refused.inc();
                    return self.reply_error(id, ErrorCode::NotJoined, "join the room first");
                }
                if !self.ctx.limits.allow_publish(&self.user.id) {
                    self.ctx.metrics.publishes_refused.inc();
                    return self.reply_error(
                        id,
                        ErrorCode::RateLimited,
                        "too many publishes; slow down",
                    );
                }
                let publish = Publish {
                    room: room.clone(),
                    user: self.user.clone(),
                    body,
                    key,
                    request_id: id,
                    reply: self.outbox.clone(),
                };
                self.ctx
                    .hub
                    .send(&room, ShardMsg::Publish { conn, publish })
                    .await;
            }
            Request::History {
                room,
                before,
                limit,
            } => {
                if !self.rooms.contains(&room) {
                    return self.reply_error(id, ErrorCode::NotJoined, "join the room first");
                }
                match self
                    .ctx
                    .store
                    .read_before(room.clone(), before, limit)
                    .await
                {
                    Ok(messages) => {
                        let pushes: Vec<Frame> =
                            messages.iter().map(protocol::message_push).collect();
                        self.outbox
                            .send(protocol::history(id, &room, pushes.iter()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "history read failed");
                        self.reply_error(id, ErrorCode::Unavailable, "history is unavailable");
                    }
                }
            }
            Request::Presence { room } => {
                if !self.rooms.contains(&room) {
                    return self.reply_error(id, ErrorCode::NotJoined, "join the room first");
                }
                let msg = ShardMsg::Presence {
                    conn,
                    room: room.clone(),
                    id,
                    reply: self.outbox.clone(),
                };
                self.ctx.hub.send(&room, msg).await;
            }
        }
    }
}

/// Drains the outbox into the socket, one flush per batch of queued frames, until the session
/// closes; then sends the close frame.
async fn write_loop(
    mut sink: SplitSink<Socket, WsMessage>,
    mut rx: mpsc::Receiver<Frame>,
    closer: Arc<Closer>,
    expiry: tokio::time::Instant,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.reset();
    // The session cookie's lifetime also bounds the connection: then it closes with 1008.
    let expired = tokio::time::sleep_until(expiry);
    tokio::pin!(expired);
    // Grows to the largest burst seen, not more: an idle connection holds only a few slots.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = closer.closed() => break,
            _ = &mut expired => {
                closer.close(close::POLICY);
                break;
            }
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break;
                }
                let write = async {
                    for frame in batch.drain(..) {
                        sink.feed(WsMessage::Text(frame)).await?;
                    }
                    sink.flush().await
                };
                let result = tokio::select! {
                    biased;
                    _ = closer.closed() => break,
                    result = write => result,
                };
                if result.is_err() {
                    closer.close(close::SHUTDOWN);
                    return;
                }
            }
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    closer.close(close::SHUTDOWN);
                    return;
                }
            }
        }
    }
    // Whatever is still queued is dropped: a closing session sends nothing but its close frame.
    drop(rx);
    let code = closer.code();
    let reason = match code {
        close::SHUTDOWN => "shutdown",
        close::TOO_BIG => "frame too big",
        close::SLOW_CONSUMER => "slow consumer",
        close::POLICY => "invalid session",
        _ => "",
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await;
}
