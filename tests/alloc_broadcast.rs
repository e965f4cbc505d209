//! The allocation budget of one broadcast: constant in the room's size, at most 8.
//!
//! A counting global allocator wraps the system allocator for this test binary only. The
//! broadcast path is `Room::deliver`: encode the push once, keep it in the ring, queue the same
//! bytes to every member's outbox.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use nebula::auth::User;
use nebula::hub::{Delivered, Member, Room};
use nebula::metrics::Metrics;
use nebula::protocol::Message;
use nebula::session::{Closer, Outbox};
use tokio_util::sync::CancellationToken;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only counts. This is the
// one unsafe block of the project, in a test binary, because a global allocator must be one.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Average allocations per broadcast in a room of `members`, over `rounds` broadcasts (after a
/// warm-up that fills the ring and the queues' blocks).
fn allocations_per_broadcast(members: usize, rounds: u64) -> f64 {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
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
    let sender = User {
        id: "sender".into(),
        name: "Sender".into(),
    };
    let body: std::sync::Arc<str> = "hello, this is a chat message of ordinary length".into();
    let message = |offset| Message {
        room: "bench".into(),
        offset,
        user: sender.clone(),
        body: body.clone(),
        ts: 1_764_300_000_000,
    };
    let mut offset = 0;
    let mut total = 0;
    for round in 0..(200 + rounds) {
        offset += 1;
        let m = message(offset);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let delivered = room.deliver(&m, &metrics);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(delivered, Delivered::To(members as u64));
        if round >= 200 {
            total += after - before;
        }
        drop(m);
        for rx in &mut receivers {
            while rx.try_recv().is_ok() {}
        }
    }
    total as f64 / rounds as f64
}

#[test]
fn alloc_per_broadcast_is_constant_in_room_size_and_at_most_8() {
    let rounds = 1000;
    let sizes = [10, 100, 1000];
    let per: Vec<f64> = sizes
        .iter()
        .map(|&n| allocations_per_broadcast(n, rounds))
        .collect();
    for (n, a) in sizes.iter().zip(&per) {
        println!("room of {n:>4}: {a:.2} allocations per broadcast");
    }
    for a in &per {
        assert!(*a <= 8.0, "allocations per broadcast {per:?} exceed 8");
        assert_eq!(
            *a, per[0],
            "allocations per broadcast differ with the room size: {per:?}"
        );
    }
}
