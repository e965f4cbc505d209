//! The allocation budget of one broadcast: constant in the room's size, at most 8, in a JSON
//! room and in a mixed room (JSON and Protobuf members: at most one encoding per codec).
//!
//! A counting global allocator wraps the system allocator for this test binary only. The
//! broadcast path is `Room::deliver`: encode the push once per codec, keep it in the ring,
//! queue the same bytes to every member's outbox.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use nebula::metrics::Metrics;

#[path = "../benches/support/mod.rs"]
#[allow(dead_code)]
mod support;

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
fn allocations_per_broadcast(members: usize, proto_every: usize, rounds: u64) -> f64 {
    let metrics = Metrics::new();
    let (mut room, mut receivers, _shutdown) = support::room_of(members, proto_every);
    let mut total = 0;
    for round in 0..(200 + rounds) {
        let m = support::message(round + 1);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        room.deliver(m, &metrics);
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        if round >= 200 {
            total += after - before;
        }
        assert_eq!(
            receivers
                .iter_mut()
                .map(|r| r.drain_queued())
                .sum::<usize>(),
            members,
            "every member got the message"
        );
    }
    total as f64 / rounds as f64
}

#[test]
fn alloc_per_broadcast_is_constant_in_room_size_and_at_most_8() {
    check(0, "JSON");
}

#[test]
fn alloc_per_broadcast_in_a_mixed_json_and_protobuf_room_is_constant_too() {
    check(3, "mixed");
}

fn check(proto_every: usize, kind: &str) {
    let rounds = 1000;
    let sizes = [10, 100, 1000];
    let per: Vec<f64> = sizes
        .iter()
        .map(|&n| allocations_per_broadcast(n, proto_every, rounds))
        .collect();
    for (n, a) in sizes.iter().zip(&per) {
        println!("{kind} room of {n:>4}: {a:.2} allocations per broadcast");
    }
    for a in &per {
        assert!(*a <= 8.0, "allocations per broadcast {per:?} exceed 8");
        assert_eq!(
            *a, per[0],
            "allocations per broadcast differ with the room size: {per:?}"
        );
    }
}
