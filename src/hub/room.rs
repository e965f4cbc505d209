//! One room's state, owned by its shard: members, presence per user, latest offset and a ring
//! of the most recent messages (each encoded at most once per codec).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::User;
use crate::conn::{ConnId, Outbox, Sent};
use crate::metrics::Metrics;
use crate::protocol::{Codec, Encoded, Frame, Message};

/// A connection that joined the room.
pub struct Member {
    pub user: User,
    pub outbox: Outbox,
}

/// What became of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Queued to this many members.
    To(u64),
    /// Its offset was delivered before: dropped.
    Repeat,
    /// The room's latest offset is not known yet (its first store read is in flight): kept
    /// until it is.
    Buffered,
    /// Offsets between the room's latest and this message are missing (a hole the cluster
    /// could not fill): the room moved past them and delivered it.
    Jumped { from: u64 },
}

/// A room's state.
pub struct Room {
    pub name: Arc<str>,
    /// The latest offset delivered to this room; `None` until the first store read says.
    pub last: Option<u64>,
    /// Connections that are members.
    pub members: HashMap<ConnId, Member>,
    /// Users present, each with the number of its member connections (always > 0).
    pub users: HashMap<Arc<str>, (User, usize)>,
    /// Messages `last - ring.len() + 1 ..= last`, contiguous.
    pub ring: VecDeque<Arc<Encoded>>,
    ring_capacity: usize,
    /// Deliveries that arrived before `last` was known, in order.
    pub buffered: Vec<Message>,
    /// Messages delivered to this room since it has been in memory (the dashboard's busiest
    /// rooms).
    pub delivered: u64,
}

impl Room {
    /// A room whose latest offset is not known yet.
    pub fn new(name: Arc<str>, ring_capacity: usize) -> Room {
        Room {
            name,
            last: None,
            members: HashMap::new(),
            users: HashMap::new(),
            ring: VecDeque::new(),
            ring_capacity,
            buffered: Vec::new(),
            delivered: 0,
        }
    }

    /// The broadcast path: encodes the `message` push at most once per codec, keeps it in the
    /// ring and queues the same bytes to every member. Its allocations do not depend on the
    /// number of members (`tests/alloc_broadcast.rs` holds it to that).
    pub fn deliver(&mut self, message: Message, metrics: &Metrics) -> Delivered {
        let Some(last) = self.last else {
            self.buffered.push(message);
            return Delivered::Buffered;
        };
        if message.offset <= last {
            return Delivered::Repeat;
        }
        let jumped = message.offset != last + 1;
        if jumped {
            // The ring must stay contiguous: start it again at this message.
            self.ring.clear();
            self.last = Some(message.offset - 1);
        }
        let latency = crate::protocol::now_ms().saturating_sub(message.ts);
        let encoded = Encoded::new(message);
        self.record(&encoded);
        let queued = self.broadcast(|codec| encoded.push(codec), None);
        self.delivered += 1;
        metrics.messages_delivered.inc_by(queued);
        Metrics::observe(&metrics.delivery_latency, Duration::from_millis(latency));
        if jumped {
            Delivered::Jumped { from: last }
        } else {
            Delivered::To(queued)
        }
    }

    /// Sets the latest offset once the first store read knows it, then delivers what arrived
    /// meanwhile.
    pub fn known(&mut self, last: u64, metrics: &Metrics) {
        if self.last.is_some() {
            return;
        }
        self.last = Some(last);
        for message in std::mem::take(&mut self.buffered) {
            self.deliver(message, metrics);
        }
    }

    /// Queues the frame `frame_for` gives for each member's codec to every member but
    /// `except`; returns how many got it.
    pub fn broadcast(
        &self,
        mut frame_for: impl FnMut(Codec) -> Frame,
        except: Option<ConnId>,
    ) -> u64 {
        let mut queued = 0;
        for (conn, member) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            // An overflow closes that member with 4008 (counted when its session ends).
            if member.outbox.send(frame_for(member.outbox.codec)) == Sent::Queued {
                queued += 1;
            }
        }
        queued
    }

    /// Adds a member; true when it is the user's first connection in the room.
    pub fn add_member(&mut self, conn: ConnId, member: Member) -> bool {
        let user = member.user.clone();
        if let Some(old) = self.members.insert(conn, member) {
            // A repeated join of the same connection: presence is unchanged.
            debug_assert_eq!(old.user.id, user.id);
            return false;
        }
        let entry = self.users.entry(user.id.clone()).or_insert((user, 0));
        entry.1 += 1;
        entry.1 == 1
    }

    /// Removes a member; returns its user when that was the user's last connection here.
    pub fn remove_member(&mut self, conn: ConnId) -> Option<User> {
        let member = self.members.remove(&conn)?;
        let entry = self.users.get_mut(&member.user.id)?;
        entry.1 -= 1;
        if entry.1 == 0 {
            return self.users.remove(&member.user.id).map(|(u, _)| u);
        }
        None
    }

    /// Records a delivered message (the next offset) in the ring.
    fn record(&mut self, encoded: &Arc<Encoded>) {
        self.last = Some(encoded.offset());
        if self.ring_capacity > 0 {
            if self.ring.len() == self.ring_capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(encoded.clone());
        }
    }

    /// True when the ring holds every message with offset > `after` (up to `last`).
    pub fn ring_covers_after(&self, after: u64) -> bool {
        let Some(last) = self.last else {
            return false;
        };
        after >= last || self.ring.front().is_some_and(|m| m.offset() <= after + 1)
    }

    /// The ring's messages with offset > `after`.
    pub fn ring_after(&self, after: u64) -> impl Iterator<Item = &Arc<Encoded>> {
        let skip = self.ring.iter().take_while(|m| m.offset() <= after).count();
        self.ring.iter().skip(skip)
    }

    /// Fills the ring from messages read from the store, if they end right where the ring
    /// starts (or at `last` when the ring is empty).
    pub fn seed_ring(&mut self, loaded: &[Arc<Encoded>]) {
        let Some(last) = self.last else { return };
        if self.ring_capacity == 0 || loaded.is_empty() {
            return;
        }
        let ring_start = self.ring.front().map_or(last + 1, |m| m.offset());
        let mut prefix: Vec<&Arc<Encoded>> =
            loaded.iter().filter(|m| m.offset() < ring_start).collect();
        if prefix.last().is_none_or(|m| m.offset() + 1 != ring_start) {
            return;
        }
        while let Some(m) = prefix.pop() {
            if self.ring.len() == self.ring_capacity
                || self
                    .ring
                    .front()
                    .is_some_and(|f| f.offset() != m.offset() + 1)
            {
                break;
            }
            self.ring.push_front(m.clone());
        }
    }

    /// Nobody is here: the shard may forget the room.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.buffered.is_empty()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::conn::Closer;
    use tokio_util::sync::CancellationToken;

    fn member(user: &str) -> Member {
        let closer = Closer::child_of(&CancellationToken::new());
        let (outbox, _rx) = Outbox::new(0, Codec::Json, 1 << 20, closer);
        Member {
            user: User {
                id: user.into(),
                name: user.into(),
            },
            outbox,
        }
    }

    /// A message of room `r` at `offset` (the hub's tests share it).
    pub(in crate::hub) fn msg(offset: u64) -> Message {
        Message {
            room: "r".into(),
            offset,
            user: User {
                id: "a".into(),
                name: "a".into(),
            },
            body: "x".into(),
            ts: 0,
        }
    }

    #[test]
    fn presence_is_per_user() {
        let mut room = Room::new("r".into(), 4);
        assert!(room.add_member(1, member("a")));
        assert!(!room.add_member(2, member("a")));
        assert!(room.add_member(3, member("b")));
        assert_eq!(room.users.len(), 2);
        assert_eq!(room.remove_member(1), None);
        assert_eq!(room.remove_member(2).map(|u| u.id), Some("a".into()));
        assert_eq!(room.remove_member(2), None);
        assert_eq!(room.users.len(), 1);
    }

    #[test]
    fn the_ring_keeps_the_latest_contiguous_messages() {
        let metrics = Metrics::new();
        let mut room = Room::new("r".into(), 3);
        assert_eq!(room.deliver(msg(1), &metrics), Delivered::Buffered);
        room.known(0, &metrics);
        assert_eq!(room.last, Some(1), "the buffered delivery was applied");
        for o in 2..=5 {
            assert_eq!(room.deliver(msg(o), &metrics), Delivered::To(0));
        }
        assert_eq!(room.deliver(msg(5), &metrics), Delivered::Repeat);
        let offsets: Vec<u64> = room.ring.iter().map(|m| m.offset()).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert!(room.ring_covers_after(2));
        assert!(!room.ring_covers_after(1));
        assert!(room.ring_covers_after(9));
        assert_eq!(
            room.ring_after(3).map(|m| m.offset()).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let older: Vec<_> = (1..=2).map(|o| Encoded::new(msg(o))).collect();
        room.seed_ring(&older);
        assert_eq!(room.ring.len(), 3, "the ring is full: nothing prepended");
        assert_eq!(
            room.deliver(msg(9), &metrics),
            Delivered::Jumped { from: 5 }
        );
        assert_eq!(
            room.ring.iter().map(|m| m.offset()).collect::<Vec<_>>(),
            vec![9]
        );
    }
}
