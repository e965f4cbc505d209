//! A room of N members with real outboxes, for the broadcast bench and the allocation test.

use nebula::auth::User;
use nebula::hub::{Member, Room};
use nebula::protocol::{Frame, Message};
use nebula::session::{Closer, Outbox};
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

/// A room of `members` members and the receiving ends of their outboxes.
pub fn room_of(members: usize) -> (Room, Vec<Receiver<Frame>>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut room = Room::new("bench".into(), 0, 64);
    let mut receivers = Vec::new();
    for conn in 0..members as u64 {
        let (outbox, rx) = Outbox::new(conn, 1024, Closer::child_of(&shutdown));
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
pub fn drain(receivers: &mut [Receiver<Frame>]) {
    for rx in receivers {
        while rx.try_recv().is_ok() {}
    }
}
