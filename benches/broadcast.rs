//! The broadcast path (`Room::deliver`): encode once per codec, clone into every member's outbox.
//! `cargo bench --bench broadcast`

mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nebula::metrics::Metrics;

fn broadcast(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast");
    let metrics = Metrics::new();
    for members in [10usize, 100, 1000] {
        let (mut room, mut receivers, _shutdown) = support::room_of(members, 0);
        let mut offset = 0;
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                offset += 1;
                room.deliver(support::message(offset), &metrics);
                support::drain(&mut receivers);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
