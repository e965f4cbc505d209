//! One room's state, owned by its shard: members, presence per user, latest offset and a ring
//! of the most recent messages (encoded pushes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::auth::User;
use crate::metrics::Metrics;
use crate::protocol::{self, Frame, Message};
use crate::session::{ConnId, Outbox, Sent};

/// A connection that joined the room.
pub struct Member {
    pub user: User,
    pub outbox: Outbox,
}

/// A join whose reply waits for a store read.
pub struct PendingJoin {
    pub member: Member,
    pub id: u64,
    pub since: Option<u64>,
    /// Store reads done so far (a read is repeated when it did not meet the ring).
    pub attempts: u8,
}

/// What a join reply should hold, decided from what the room has in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPlan {
    /// The ring has every message the reply needs.
    FromRing,
    /// The store must be read: messages with offset > `after`, at most `limit`.
    Load { after: u64, limit: usize },
}

/// What became of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Queued to this many members.
    To(u64),
    /// Its offset was delivered before: dropped.
    Repeat,
    /// Offsets between `last` and this message are missing: nothing was delivered.
    Gap { last: u64 },
}

/// A room's state.
pub struct Room {
    pub name: Arc<str>,
    /// The latest offset delivered to this room (0: empty room).
    pub last: u64,
    /// Connections that are members.
    pub members: HashMap<ConnId, Member>,
    /// Joins waiting for a store read; they become members when it completes.
    pub pending: HashMap<ConnId, PendingJoin>,
    /// Users present, each with the number of its member connections (always > 0).
    pub users: HashMap<Arc<str>, (User, usize)>,
    /// Encoded pushes of offsets `last - ring.len() + 1 ..= last`, contiguous.
    pub ring: VecDeque<(u64, Frame)>,
    ring_capacity: usize,
}

impl Room {
    pub fn new(name: Arc<str>, last: u64, ring_capacity: usize) -> Room {
        Room {
            name,
            last,
            members: HashMap::new(),
            pending: HashMap::new(),
            users: HashMap::new(),
            ring: VecDeque::new(),
            ring_capacity,
        }
    }

    /// The broadcast path: encodes the `message` push once, keeps it in the ring and queues the
    /// same bytes to every member. Its allocations do not depend on the number of members
    /// (`tests/alloc_broadcast.rs` holds it to that).
    pub fn deliver(&mut self, message: &Message, metrics: &Metrics) -> Delivered {
        if message.offset <= self.last {
            return Delivered::Repeat;
        }
        if message.offset != self.last + 1 {
            return Delivered::Gap { last: self.last };
        }
        let push = protocol::message_push(message);
        self.record(message.offset, &push);
        let queued = self.broadcast(&push, None, metrics);
        metrics.messages_delivered.inc_by(queued);
        Delivered::To(queued)
    }

    /// Queues `frame` to every member but `except`; returns how many got it.
    pub fn broadcast(&self, frame: &Frame, except: Option<ConnId>, metrics: &Metrics) -> u64 {
        let mut queued = 0;
        for (conn, member) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            match member.outbox.send(frame.clone()) {
                Sent::Queued => queued += 1,
                Sent::Overflowed => {
                    metrics.slow_consumers.inc();
                }
                Sent::Gone => {}
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

    /// Records a delivered message; false when it is not the next offset (a repeat or a gap).
    /// The ring is fed while the room exists, that is while it has members or pending joins.
    pub fn record(&mut self, offset: u64, push: &Frame) -> bool {
        if offset != self.last + 1 {
            return false;
        }
        self.last = offset;
        if self.ring_capacity > 0 {
            if self.ring.len() == self.ring_capacity {
                self.ring.pop_front();
            }
            self.ring.push_back((offset, push.clone()));
        }
        true
    }

    /// True when the ring holds the latest `count` messages.
    pub fn ring_covers(&self, count: u64) -> bool {
        count == 0
            || (self.ring.back().is_some_and(|(o, _)| *o == self.last)
                && self.ring.len() as u64 >= count)
    }

    /// What a join needs: `since` as in the request, `window` the recovery window.
    pub fn plan_join(&self, since: Option<u64>, window: u64, default_count: usize) -> JoinPlan {
        match since {
            None => {
                let want = self.last.min(default_count as u64);
                if self.ring_covers(want) {
                    JoinPlan::FromRing
                } else {
                    JoinPlan::Load {
                        after: self.last - want,
                        limit: default_count,
                    }
                }
            }
            Some(k) if k >= self.last => JoinPlan::FromRing,
            Some(k) => {
                let after = k.max(self.last.saturating_sub(window));
                if self.ring_covers(self.last - after) {
                    JoinPlan::FromRing
                } else {
                    JoinPlan::Load {
                        after,
                        limit: (self.last - after) as usize,
                    }
                }
            }
        }
    }

    /// The ring's pushes with offset > `after`.
    pub fn ring_after(&self, after: u64) -> impl Iterator<Item = &(u64, Frame)> {
        let skip = self.ring.iter().take_while(|(o, _)| *o <= after).count();
        self.ring.iter().skip(skip)
    }

    /// Fills the ring from loaded pushes, if they end right where the ring starts (or at last).
    pub fn seed_ring(&mut self, loaded: &[(u64, Frame)]) {
        if self.ring_capacity == 0 || loaded.is_empty() {
            return;
        }
        let ring_start = self.ring.front().map_or(self.last + 1, |(o, _)| *o);
        let mut prefix: Vec<&(u64, Frame)> =
            loaded.iter().filter(|(o, _)| *o < ring_start).collect();
        if prefix.last().is_none_or(|(o, _)| *o + 1 != ring_start) {
            return;
        }
        while let Some(item) = prefix.pop() {
            if self.ring.len() == self.ring_capacity {
                break;
            }
            if self.ring.front().is_some_and(|(o, _)| *o != item.0 + 1) {
                break;
            }
            self.ring.push_front(item.clone());
        }
    }

    /// For a join with `since`: the `recovered` flag, and the offset after which the reply's
    /// messages start (the latest `window` messages when more were missed).
    pub fn recovery(&self, since: u64, window: u64) -> (bool, u64) {
        if since > self.last {
            return (false, self.last);
        }
        if self.last - since > window {
            return (false, self.last - window);
        }
        (true, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Closer;
    use tokio_util::sync::CancellationToken;

    fn member(user: &str) -> Member {
        let closer = Closer::child_of(&CancellationToken::new());
        let (outbox, _rx) = Outbox::new(0, 16, closer);
        Member {
            user: User {
                id: user.into(),
                name: user.into(),
            },
            outbox,
        }
    }

    #[test]
    fn presence_is_per_user() {
        let mut room = Room::new("r".into(), 0, 4);
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
    fn ring_keeps_the_latest_contiguous_messages() {
        let mut room = Room::new("r".into(), 0, 3);
        room.add_member(1, member("a"));
        for o in 1..=5 {
            assert!(room.record(o, &Frame::from(format!("{o}"))));
        }
        assert!(!room.record(5, &Frame::from("dup")));
        assert!(!room.record(7, &Frame::from("gap")));
        assert_eq!(
            room.ring.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(room.plan_join(Some(2), 100, 50), JoinPlan::FromRing);
        assert_eq!(
            room.plan_join(Some(1), 100, 50),
            JoinPlan::Load { after: 1, limit: 4 }
        );
        assert_eq!(room.plan_join(Some(9), 100, 50), JoinPlan::FromRing);
        assert_eq!(room.plan_join(None, 100, 2), JoinPlan::FromRing);
        assert_eq!(
            room.plan_join(None, 100, 50),
            JoinPlan::Load {
                after: 0,
                limit: 50
            }
        );
        assert_eq!(room.plan_join(Some(0), 2, 50), JoinPlan::FromRing);
        assert_eq!(
            room.ring_after(3).map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![4, 5]
        );
    }

    #[test]
    fn recovery_flags() {
        let room = Room::new("r".into(), 10, 3);
        assert_eq!(room.recovery(10, 5), (true, 10));
        assert_eq!(room.recovery(7, 5), (true, 7));
        assert_eq!(room.recovery(2, 5), (false, 5));
        assert_eq!(room.recovery(11, 5), (false, 10));
    }
}
