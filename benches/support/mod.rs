//! A room of N members with real outboxes, for the broadcast bench and the allocation test.

use nebula::auth::User;
use nebula::conn::{Closer, Outbox, OutboxReceiver};
use nebula::hub::{Member, Room};
use nebula::metrics::Metrics;
use nebula::protocol::{Codec, Message};
use tokio_util::sync::CancellationToken;

/// A room of `members` members and the receiving ends of their outboxes; every
/// `proto_every`-th member (when not 0) speaks Protobuf, the others JSON.
pub fn room_of(
    members: usize,
    proto_every: usize,
) -> (Room, Vec<OutboxReceiver>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut room = Room::new("bench".into(), 64);
    room.known(0, &Metrics::new());
    let mut receivers = Vec::new();
    for conn in 0..members as u64 {
        let codec = if proto_every > 0 && (conn as usize).is_multiple_of(proto_every) {
            Codec::Proto
        } else {
            Codec::Json
        };
        let (outbox, rx) = Outbox::new(conn, codec, 64 << 20, Closer::child_of(&shutdown));
        let user = User {
            id: format!("u{conn}").into(),
            name: format!("user {conn}").into(),
        };
        room.add_member(conn, Member { user, outbox });
        receivers.push(rx);
    }
    (room, receivers, shutdown)
}

/// Message `offset` of the room, as the broker hands it to the hub.
pub fn message(offset: u64) -> Message {
    Message {
        room: "bench".into(),
        offset,
        user: User {
            id: "sender".into(),
            name: "Sender".into(),
        },
        body: "hello, this is a chat message of ordinary length".into(),
        ts: 1_764_300_000_000,
    }
}

/// Empties every outbox (what the session writers would do).
pub fn drain(receivers: &mut [OutboxReceiver]) {
    for rx in receivers {
        rx.drain_queued();
    }
}
