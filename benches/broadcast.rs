//! The broadcast path (`Room::deliver`): encode once, clone into every member's outbox.
//! `cargo bench --bench broadcast`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nebula::auth::User;
use nebula::hub::{Member, Room};
use nebula::metrics::Metrics;
use nebula::protocol::Message;
use nebula::session::{Closer, Outbox};
use tokio_util::sync::CancellationToken;

fn broadcast(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast");
    for members in [10usize, 100, 1000] {
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
        let mut offset = 0;
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                offset += 1;
                let m = Message {
                    room: "bench".into(),
                    offset,
                    user: sender.clone(),
                    body: body.clone(),
                    ts: 0,
                };
                room.deliver(&m, &metrics);
                for rx in &mut receivers {
                    while rx.try_recv().is_ok() {}
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
