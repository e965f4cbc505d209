//! The hub: rooms sharded over N shard tasks by a stable hash of the room name.
//!
//! A shard alone owns its rooms (members, presence, latest offset, ring of recent messages);
//! requests reach it over a bounded channel and it answers straight into the sessions' outboxes
//! (a join's outcome also comes back on a oneshot, so the session learns it), so no lock guards
//! room state and a shard never waits on a session. A room lives in memory only while it has
//! members or joins in flight; the store keeps its log.

mod join;
mod presence;
mod room;
mod shard;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::auth::User;
use crate::broker::{BrokerEvents, PresenceEvent, SharedBroker};
use crate::conn::{ConnId, Outbox, Reservation};
use crate::metrics::Metrics;
use crate::protocol::Message;
use crate::store::{JoinRead, Store, StoreError};

pub use room::{Member, Room};
use shard::Shard;

/// Messages a shard's inbox can hold before senders wait.
const SHARD_QUEUE: usize = 8192;
/// Recent messages each room keeps in memory for joins and short reconnects.
pub const RING_CAPACITY: usize = 64;

/// A join of one connection, with what its reply needs.
pub struct JoinRequest {
    pub member: Member,
    pub room: Arc<str>,
    pub since: Option<u64>,
    pub id: u64,
    /// Budget held for the reply until it is queued.
    pub reservation: Reservation,
}

/// What became of a join: the shard queued the `joined` reply (and the connection is a member)
/// or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    Refused,
}

/// A request for a shard.
pub(crate) enum ShardMsg {
    Join {
        request: JoinRequest,
        outcome: oneshot::Sender<JoinOutcome>,
    },
    Leave {
        conn: ConnId,
        room: Arc<str>,
        /// The `leave` request's id; `None` when the connection closed.
        id: Option<u64>,
        outbox: Outbox,
    },
    Presence {
        conn: ConnId,
        room: Arc<str>,
        id: u64,
        outbox: Outbox,
    },
    Deliver(Message),
    Remote(PresenceEvent),
    /// The shard's rooms, for the dashboard.
    Summary(oneshot::Sender<Vec<RoomSummary>>),
    /// A store read for a join came back.
    Loaded {
        room: Arc<str>,
        load: u64,
        result: Result<JoinRead, StoreError>,
    },
    Stop,
}

/// One room in memory, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub name: Arc<str>,
    /// Users present here (this node's members).
    pub users: usize,
    /// Connections that are members here.
    pub connections: usize,
    /// The room's latest offset.
    pub last: u64,
    /// Messages delivered to it since it has been in memory.
    pub delivered: u64,
}

/// What every shard shares.
#[derive(Clone)]
pub struct ShardContext {
    pub store: Store,
    pub broker: SharedBroker,
    pub metrics: Arc<Metrics>,
    /// Tracks the shards and their store reads.
    pub tracker: TaskTracker,
    /// How many missed messages a `since` join may bring before `recovered: false`.
    pub recovery_window: u64,
    pub ring_capacity: usize,
}

/// A cheap-to-clone handle on every shard.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<[mpsc::Sender<ShardMsg>]>,
}

/// The receiving ends of the shard channels, until the shards are spawned.
pub struct ShardInboxes(Vec<mpsc::Receiver<ShardMsg>>);

/// FNV-1a: a stable hash, so a room has the same shard on every start.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Hub {
    /// The channels of `n` shards. Brokers need the hub (for their events) before shards need
    /// the broker (for presence), so the two steps are apart.
    pub fn channels(n: usize) -> (Hub, ShardInboxes) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::channel(SHARD_QUEUE)).unzip();
        (
            Hub {
                shards: senders.into(),
            },
            ShardInboxes(receivers),
        )
    }

    /// Spawns the shards on `ctx.tracker`.
    pub fn spawn_shards(&self, inboxes: ShardInboxes, ctx: ShardContext) {
        for (index, rx) in inboxes.0.into_iter().enumerate() {
            let shard = Shard::new(index, rx, self.shards[index].clone(), ctx.clone());
            ctx.tracker.spawn(shard.run());
        }
    }

    fn shard(&self, room: &str) -> &mpsc::Sender<ShardMsg> {
        &self.shards[(stable_hash(room) % self.shards.len() as u64) as usize]
    }

    async fn send(&self, room: &str, msg: ShardMsg) {
        if self.shard(room).send(msg).await.is_err() {
            tracing::debug!(room, "shard stopped; request dropped during shutdown");
        }
    }

    /// Joins a connection to a room; resolves once its reply (`joined` or an error) is queued.
    /// `Refused` too when the hub is stopping.
    pub async fn join(&self, request: JoinRequest) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        let room = request.room.clone();
        self.send(
            &room,
            ShardMsg::Join {
                request,
                outcome: tx,
            },
        )
        .await;
        rx.await.unwrap_or(JoinOutcome::Refused)
    }

    /// Removes a connection from a room; with an `id`, the `left` reply goes to `outbox`.
    pub async fn leave(&self, conn: ConnId, room: Arc<str>, id: Option<u64>, outbox: Outbox) {
        let key = room.clone();
        self.send(
            &key,
            ShardMsg::Leave {
                conn,
                room,
                id,
                outbox,
            },
        )
        .await;
    }

    /// Asks for a room's members; the `presence` reply goes to `outbox`.
    pub async fn presence(&self, conn: ConnId, room: Arc<str>, id: u64, outbox: Outbox) {
        let key = room.clone();
        self.send(
            &key,
            ShardMsg::Presence {
                conn,
                room,
                id,
                outbox,
            },
        )
        .await;
    }

    /// The `n` rooms in memory with the most messages delivered, then the most users.
    pub async fn busiest(&self, n: usize) -> Vec<RoomSummary> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let (tx, rx) = oneshot::channel();
            if shard.send(ShardMsg::Summary(tx)).await.is_ok()
                && let Ok(rooms) = rx.await
            {
                all.extend(rooms);
            }
        }
        all.sort_by_key(|r| std::cmp::Reverse((r.delivered, r.users)));
        all.truncate(n);
        all
    }

    /// Stops every shard after it has handled what is queued.
    pub async fn stop(&self) {
        for shard in self.shards.iter() {
            let _stopped = shard.send(ShardMsg::Stop).await;
        }
    }
}

impl BrokerEvents for Hub {
    fn message(&self, message: Message) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let room = message.room.clone();
            self.send(&room, ShardMsg::Deliver(message)).await;
        })
    }

    fn presence(&self, event: PresenceEvent) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let room = event.room().clone();
            self.send(&room, ShardMsg::Remote(event)).await;
        })
    }
}

/// The members of a room as clients see them: local users, then users present only through
/// other nodes; each once.
pub(crate) fn listed_members<'a>(
    room: &'a Room,
    remote: Option<&'a presence::RemoteUsers>,
) -> impl Iterator<Item = &'a User> {
    let remote = remote
        .into_iter()
        .flat_map(presence::RemoteUsers::users)
        .filter(|u| !room.users.contains_key(&u.id));
    room.users.values().map(|(u, _)| u).chain(remote)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(super::stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
