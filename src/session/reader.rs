//! The session reader: decodes requests and handles them one at a time, in the order they
//! arrived, so that a connection's requests (its publishes above all) are handled in order and
//! each gets exactly one reply. It owns the connection's set of joined rooms, which changes
//! only on the hub's answer to a join.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::{BUDGET_PATIENCE, CLOSE_GRACE, SessionContext, Socket};
use crate::auth::User;
use crate::broker::{Publish, PublishOutcome};
use crate::conn::{Ending, Outbox};
use crate::hub::{JoinOutcome, JoinRequest, Member};
use crate::metrics::Metrics;
use crate::protocol::{
    self, CloseCode, Encoded, ErrorCode, MAX_REPLY_BYTES, MAX_ROOMS_PER_CONNECTION, Request,
};

pub(super) struct Reader {
    ctx: Arc<SessionContext>,
    user: User,
    outbox: Outbox,
    /// Rooms this connection is a member of: changed only by the hub's answer to a join and by
    /// a leave.
    rooms: HashSet<Arc<str>>,
}

impl Reader {
    pub(super) fn new(ctx: Arc<SessionContext>, user: User, outbox: Outbox) -> Reader {
        Reader {
            ctx,
            user,
            outbox,
            rooms: HashSet::new(),
        }
    }

    /// Reads until the session closes, leaves every room, then completes the close handshake.
    pub(super) async fn run(&mut self, mut stream: SplitStream<Socket>) {
        self.read_loop(&mut stream).await;
        // Boxed (as the other rare steps): an idle session's task holds only the read loop.
        Box::pin(self.leave_all()).await;
        let closer = self.outbox.closer();
        match closer.ending() {
            Ending::Gone => {}
            Ending::PeerClosed => {
                // Reading on flushes tungstenite's answer to the client's close, then ends.
                let _ = Box::pin(tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    async { while let Some(Ok(_)) = stream.next().await {} },
                ))
                .await;
            }
            Ending::Close(_) => {
                // The writer sends our close frame; wait a little for the client's reply so the
                // handshake completes, whatever else it sends meanwhile.
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(msg)) = stream.next().await {
                        if msg.is_close() {
                            break;
                        }
                    }
                }))
                .await;
            }
        }
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<Socket>) {
        let closed = self.outbox.closer().closed_owned();
        tokio::pin!(closed);
        let idle_limit = self.ctx.ping_interval * 3;
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut closed => return,
                next = tokio::time::timeout(idle_limit, stream.next()) => next,
            };
            let closer = self.outbox.closer();
            match next {
                Ok(Some(Ok(WsMessage::Text(text)))) => self.handle(text.as_bytes(), true).await,
                Ok(Some(Ok(WsMessage::Binary(data)))) => self.handle(&data, false).await,
                Ok(Some(Ok(WsMessage::Close(_)))) => {
                    closer.end(Ending::PeerClosed);
                    return;
                }
                Ok(Some(Ok(_))) => {} // Ping, pong: tungstenite answers pings itself.
                Ok(Some(Err(e))) => {
                    match violation(&e) {
                        Some(code) => {
                            self.ctx.metrics.protocol_closes.inc();
                            closer.close(code);
                        }
                        None => closer.end(Ending::Gone),
                    }
                    return;
                }
                Ok(None) => {
                    closer.end(Ending::Gone);
                    return;
                }
                Err(_silent) => {
                    tracing::debug!(conn = self.outbox.conn, "peer silent; closing it (4000)");
                    closer.close(CloseCode::Idle);
                    return;
                }
            }
        }
    }

    async fn leave_all(&mut self) {
        for room in std::mem::take(&mut self.rooms) {
            self.ctx
                .hub
                .leave(self.outbox.conn, room, None, self.outbox.clone())
                .await;
        }
    }

    fn reply(&self, frame: protocol::Frame) {
        self.outbox.send(frame);
    }

    fn error(&self, id: u64, code: ErrorCode, message: &str) {
        self.reply(self.outbox.codec.error(Some(id), code, message));
    }

    async fn handle(&mut self, frame: &[u8], text: bool) {
        let codec = self.outbox.codec;
        let (id, request) = match protocol::parse(codec, frame, text) {
            Ok(parsed) => parsed,
            Err(rejection) => {
                self.ctx.metrics.bad_frames.inc();
                self.reply(codec.error(rejection.id, rejection.code, rejection.message));
                return;
            }
        };
        match request {
            Request::Ping => self.reply(codec.pong(id)),
            Request::Join { room, since } => Box::pin(self.join(id, room, since)).await,
            Request::Leave { room } => {
                self.rooms.remove(&room);
                let (conn, outbox) = (self.outbox.conn, self.outbox.clone());
                Box::pin(self.ctx.hub.leave(conn, room, Some(id), outbox)).await;
            }
            Request::Publish { room, body, key } => self.publish(id, room, body, key),
            Request::History { room, page, limit } => {
                // Boxed, as the join: an idle session's state stays small (the read's future
                // lives only while it runs).
                Box::pin(self.history(id, room, page, limit)).await
            }
            Request::Presence { room } => {
                if !self.rooms.contains(&room) {
                    return self.error(id, ErrorCode::NotJoined, "join the room first");
                }
                let (conn, outbox) = (self.outbox.conn, self.outbox.clone());
                Box::pin(self.ctx.hub.presence(conn, room, id, outbox)).await;
            }
        }
    }

    async fn history(&mut self, id: u64, room: Arc<str>, page: protocol::Page, limit: usize) {
        let codec = self.outbox.codec;
        if !self.rooms.contains(&room) {
            return self.error(id, ErrorCode::NotJoined, "join the room first");
        }
        // Hold the reply's budget before reading: a client that asks and never reads gets
        // 4008 instead of making the server read for it.
        let Some(_budget) = self.outbox.reserve(MAX_REPLY_BYTES, BUDGET_PATIENCE).await else {
            return;
        };
        match self.ctx.store.read_page(room.clone(), page, limit).await {
            Ok(read) => {
                let messages: Vec<_> = read.messages.into_iter().map(Encoded::new).collect();
                let (frame, _held) = codec.history(id, &room, &messages, read.more);
                self.reply(frame);
            }
            Err(e) => {
                tracing::warn!(error = %e, "history read failed");
                self.error(id, ErrorCode::Unavailable, "history is unavailable");
            }
        }
    }

    async fn join(&mut self, id: u64, room: Arc<str>, since: Option<u64>) {
        if !self.rooms.contains(&room) && self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return self.error(
                id,
                ErrorCode::TooManyRooms,
                "a connection joins at most 100 rooms",
            );
        }
        let Some(reservation) = self.outbox.reserve(MAX_REPLY_BYTES, BUDGET_PATIENCE).await else {
            return;
        };
        let request = JoinRequest {
            member: Member {
                user: self.user.clone(),
                outbox: self.outbox.clone(),
            },
            room: room.clone(),
            since,
            id,
            reservation,
        };
        if self.ctx.hub.join(request).await == JoinOutcome::Joined {
            self.rooms.insert(room);
        }
    }

    fn publish(&self, id: u64, room: Arc<str>, body: Arc<str>, key: Option<Arc<str>>) {
        let metrics = &self.ctx.metrics;
        if !self.rooms.contains(&room) {
            metrics.publishes_refused.inc();
            return self.error(id, ErrorCode::NotJoined, "join the room first");
        }
        if !self.ctx.limits.allow_publish(&self.user.id) {
            metrics.publishes_refused.inc();
            return self.error(id, ErrorCode::RateLimited, "too many publishes; slow down");
        }
        let outbox = self.outbox.clone();
        let metrics = metrics.clone();
        let started = Instant::now();
        // Counted until answered: a shutdown sends the answers before its 1001.
        let answer = outbox.expect_answer();
        let reply_room = room.clone();
        let publish = Publish {
            room,
            user: self.user.clone(),
            body,
            key,
        };
        self.ctx.broker.publish(
            publish,
            Box::new(move |outcome| {
                let codec = outbox.codec;
                let frame = match outcome {
                    PublishOutcome::Stored { offset } | PublishOutcome::Duplicate { offset } => {
                        Metrics::observe(&metrics.ack_latency, started.elapsed());
                        codec.ack(id, &reply_room, offset)
                    }
                    PublishOutcome::Unavailable => {
                        metrics.publishes_refused.inc();
                        codec.error(
                            Some(id),
                            ErrorCode::Unavailable,
                            "the message was not stored; try again",
                        )
                    }
                };
                outbox.send(frame);
                drop(answer);
            }),
        );
    }
}

/// The close code for a WebSocket error that is the client's fault; `None` when the socket
/// just ended.
fn violation(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Utf8(_) => Some(CloseCode::InvalidUtf8),
        WsError::Capacity(_) => Some(CloseCode::TooBig),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        _ => None,
    }
}
