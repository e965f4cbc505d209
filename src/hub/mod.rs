//! The hub: rooms sharded over N shard tasks by a stable hash of the room name.
//!
//! A shard alone owns its rooms (members, presence, latest offset, ring of recent messages);
//! requests reach it over a bounded channel and it answers straight into the sessions' outboxes,
//! so no lock guards room state and a shard never waits on a session.

mod presence;
mod room;
mod shard;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::auth::User;
use crate::broker::{Delivery, Publish, SharedBroker};
use crate::metrics::Metrics;
use crate::protocol::Message;
use crate::session::{ConnId, Outbox};
use crate::store::Store;

pub use room::{Delivered, JoinPlan, Member, PendingJoin, Room};
use shard::Shard;

/// Messages a shard's inbox can hold before senders wait.
const SHARD_QUEUE: usize = 8192;
/// Recent messages each room keeps in memory for joins and short reconnects.
pub const RING_CAPACITY: usize = 64;

/// A request for a shard.
pub enum ShardMsg {
    Join {
        member: Member,
        room: Arc<str>,
        since: Option<u64>,
        id: u64,
    },
    Leave {
        conn: ConnId,
        room: Arc<str>,
        id: Option<u64>,
        reply: Outbox,
    },
    Publish {
        conn: ConnId,
        publish: Publish,
    },
    Presence {
        conn: ConnId,
        room: Arc<str>,
        id: u64,
        reply: Outbox,
    },
    Deliver(Message),
    /// A user's presence in a room through another node changed.
    RemotePresence {
        room: Arc<str>,
        node: Arc<str>,
        user: User,
        present: bool,
    },
    /// A node is gone: its users leave every room.
    NodeGone {
        node: Arc<str>,
    },
    /// The whole remote presence of this shard's rooms, after (re)connecting to Redis.
    RemoteReset {
        entries: Vec<(Arc<str>, Arc<str>, User)>,
    },
    Loaded {
        room: Arc<str>,
        conn: ConnId,
        id: u64,
        result: Result<Vec<Message>, ()>,
    },
    Stop,
}

/// Settings the shards share.
#[derive(Debug, Clone)]
pub struct HubOptions {
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
    /// The channels of `n` shards. Brokers need the hub (for delivery) before shards need the
    /// broker (for publishes), so the two steps are apart.
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

    /// Spawns the shards on `tracker`.
    pub fn spawn_shards(
        &self,
        inboxes: ShardInboxes,
        options: HubOptions,
        broker: SharedBroker,
        store: Store,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
    ) {
        let n = self.shards.len();
        let mut known: Vec<HashMap<Arc<str>, u64>> = vec![HashMap::new(); n];
        for (room, last) in store.initial_offsets() {
            known[(stable_hash(room) % n as u64) as usize].insert(room.clone(), *last);
        }
        for (index, (rx, known)) in inboxes.0.into_iter().zip(known).enumerate() {
            let shard = Shard::new(
                index,
                rx,
                self.shards[index].clone(),
                known,
                options.clone(),
                broker.clone(),
                store.clone(),
                metrics.clone(),
                tracker.clone(),
            );
            tracker.spawn(shard.run());
        }
    }

    fn shard(&self, room: &str) -> &mpsc::Sender<ShardMsg> {
        &self.shards[(stable_hash(room) % self.shards.len() as u64) as usize]
    }

    /// Sends a request to the shard that owns `room`; waits while that shard is busy.
    pub async fn send(&self, room: &str, msg: ShardMsg) {
        if self.shard(room).send(msg).await.is_err() {
            tracing::debug!(room, "shard stopped; request dropped during shutdown");
        }
    }

    /// Joins `member` to `room`; the `joined` reply goes to its outbox.
    pub async fn join(&self, member: Member, room: Arc<str>, since: Option<u64>, id: u64) {
        let shard = self.shard(&room).clone();
        if shard
            .send(ShardMsg::Join {
                member,
                room,
                since,
                id,
            })
            .await
            .is_err()
        {
            tracing::debug!("shard stopped; join dropped during shutdown");
        }
    }

    /// Sends `msg` to every shard (made once per shard by `make`).
    pub async fn to_all(&self, make: impl Fn() -> ShardMsg) {
        for shard in self.shards.iter() {
            let _stopped = shard.send(make()).await;
        }
    }

    /// Sends remote-presence entries to the shards that own their rooms.
    pub async fn reset_remote(&self, entries: Vec<(Arc<str>, Arc<str>, User)>) {
        let n = self.shards.len();
        let mut parts: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for e in entries {
            parts[(stable_hash(&e.0) % n as u64) as usize].push(e);
        }
        for (shard, entries) in self.shards.iter().zip(parts) {
            let _stopped = shard.send(ShardMsg::RemoteReset { entries }).await;
        }
    }

    /// Stops every shard after it has handled what is queued.
    pub async fn stop(&self) {
        for shard in self.shards.iter() {
            let _stopped = shard.send(ShardMsg::Stop).await;
        }
    }
}

impl Delivery for Hub {
    fn deliver_blocking(&self, message: Message) {
        let shard = self.shard(&message.room).clone();
        if shard.blocking_send(ShardMsg::Deliver(message)).is_err() {
            tracing::debug!("shard stopped; delivery dropped during shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(super::stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
