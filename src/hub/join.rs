//! What a `joined` reply holds: from the room's ring when it has what the reply needs, else
//! from a store read plus the ring for what arrived meanwhile.
//!
//! A reply's messages are always a contiguous run starting right after `since` (or after the
//! room's latest offset minus 50); when it ends before the room's latest offset it says
//! `more: true` and the client reads the rest with `history` `after` (v1.1 "paged replies").

use std::sync::Arc;

use tokio::sync::oneshot;

use super::room::Room;
use super::{JoinOutcome, JoinRequest};
use crate::protocol::{DEFAULT_HISTORY, Encoded};
use crate::store::JoinRead;

/// A join waiting for a store read.
pub(super) struct PendingJoin {
    pub request: JoinRequest,
    pub outcome: oneshot::Sender<JoinOutcome>,
}

/// Where a join's messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// The ring has them all.
    Ring,
    /// The store must be read.
    Load,
}

/// The messages and flags of a `joined` reply.
pub(super) struct Assembled {
    pub messages: Vec<Arc<Encoded>>,
    /// The log has further messages the reply should have carried.
    pub more: bool,
    /// For a join with `since`.
    pub recovered: Option<bool>,
}

/// The offset after which a reply's messages start, and whether that is `since` itself (the
/// client misses nothing) or the recovery window cut it.
fn start(last: u64, since: Option<u64>, window: u64) -> (u64, bool) {
    match since {
        None => (last.saturating_sub(DEFAULT_HISTORY as u64), true),
        Some(k) if k >= last => (last, k == last),
        Some(k) => {
            let after = k.max(last.saturating_sub(window));
            (after, after == k)
        }
    }
}

/// Whether the ring can answer a join of a room whose latest offset is known.
pub(super) fn plan(room: &Room, since: Option<u64>, window: u64) -> Plan {
    let Some(last) = room.last else {
        return Plan::Load;
    };
    let (after, _) = start(last, since, window);
    if room.ring_covers_after(after) {
        Plan::Ring
    } else {
        Plan::Load
    }
}

/// A reply from the ring alone (`plan` said `Ring`).
pub(super) fn from_ring(room: &Room, since: Option<u64>, window: u64) -> Assembled {
    let last = room.last.unwrap_or(0);
    let (after, whole) = start(last, since, window);
    Assembled {
        messages: room.ring_after(after).cloned().collect(),
        more: false,
        recovered: since.map(|_| whole),
    }
}

/// A reply from a store read (`read`, whose messages are `loaded`) and the ring after it.
pub(super) fn from_read(
    room: &Room,
    since: Option<u64>,
    read: &JoinRead,
    mut messages: Vec<Arc<Encoded>>,
) -> Assembled {
    let mut more = read.more;
    if !more {
        if room.ring_covers_after(read.last) {
            messages.extend(room.ring_after(read.last).cloned());
        } else {
            // More arrived during the read than the ring keeps: the rest is in the store.
            more = true;
        }
    }
    if since.is_none() && messages.len() > DEFAULT_HISTORY {
        // A plain join carries the latest 50; the read ended a little earlier.
        messages.drain(..messages.len() - DEFAULT_HISTORY);
    }
    Assembled {
        messages,
        more,
        recovered: since.map(|_| read.recovered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::room::tests::msg;
    use crate::metrics::Metrics;

    fn room(last: u64, ring: u64) -> Room {
        let metrics = Metrics::new();
        let mut room = Room::new("r".into(), ring as usize);
        room.known(0, &metrics);
        for o in 1..=last {
            room.deliver(msg(o), &metrics);
        }
        room
    }

    fn offsets(a: &Assembled) -> Vec<u64> {
        a.messages.iter().map(|m| m.offset()).collect()
    }

    #[test]
    fn plans_and_ring_replies() {
        let r = room(10, 4);
        assert_eq!(plan(&r, Some(6), 100), Plan::Ring);
        assert_eq!(plan(&r, Some(5), 100), Plan::Load);
        assert_eq!(plan(&r, None, 100), Plan::Load);
        assert_eq!(plan(&r, Some(12), 100), Plan::Ring);
        let a = from_ring(&r, Some(7), 100);
        assert_eq!((offsets(&a), a.recovered), (vec![8, 9, 10], Some(true)));
        let a = from_ring(&r, Some(12), 100);
        assert_eq!((offsets(&a), a.recovered), (vec![], Some(false)));
        let a = from_ring(&r, Some(10), 100);
        assert_eq!(a.recovered, Some(true));
        // A window of 2 cuts the recovery: the latest 2, recovered false.
        let a = from_ring(&r, Some(1), 2);
        assert_eq!((offsets(&a), a.recovered), (vec![9, 10], Some(false)));
        let small = room(3, 64);
        assert_eq!(plan(&small, None, 100), Plan::Ring);
        assert_eq!(offsets(&from_ring(&small, None, 100)), vec![1, 2, 3]);
    }

    #[test]
    fn a_read_and_the_ring_meet_or_say_more() {
        let r = room(10, 4);
        let read = |last, from: u64, more| JoinRead {
            last,
            messages: (from..=last).map(msg).collect(),
            more,
            recovered: true,
        };
        let loaded = |read: &JoinRead| read.messages.iter().cloned().map(Encoded::new).collect();
        let rd = read(8, 3, false);
        let a = from_read(&r, Some(2), &rd, loaded(&rd));
        assert_eq!(offsets(&a), (3..=10).collect::<Vec<_>>());
        assert!(!a.more);
        let rd = read(5, 3, false);
        let a = from_read(&r, Some(2), &rd, loaded(&rd));
        assert_eq!(offsets(&a), vec![3, 4, 5], "the ring starts at 7: a gap");
        assert!(a.more);
        let rd = read(8, 3, true);
        let a = from_read(&r, Some(2), &rd, loaded(&rd));
        assert_eq!((offsets(&a).len(), a.more), (6, true));
    }
}
