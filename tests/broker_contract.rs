//! The broker contract: one function, run against the single-node broker (`LocalBroker`) and
//! the cluster broker (`RedisBroker`, two nodes and a real redis-server). Whatever the broker,
//! clients see the same numbering, delivery, idempotency and presence.

mod common;

use std::net::SocketAddr;

use anyhow::Result;
use common::*;
use serde_json::json;

/// `a` and `b` are the addresses members connect to (the same node for the local broker,
/// two nodes for Redis).
async fn contract(a: SocketAddr, b: SocketAddr) -> Result<()> {
    let mut p = Client::login(a, "publisher").await?;
    let mut q = Client::login(b, "reader").await?;
    p.join("contract").await?;
    q.join("contract").await?;
    assert_eq!(p.next_of("member_joined").await?["user"]["name"], "reader");

    // Numbering: 1, 2, 3... and every member gets every message once, in order.
    let mut acks = Vec::new();
    for i in 0..20 {
        let ack = p.publish("contract", &format!("m{i}")).await?;
        assert_eq!(ack["type"], "ack", "{ack}");
        acks.push(ack["offset"].as_u64().unwrap());
    }
    assert_eq!(acks, (1..=20).collect::<Vec<_>>());
    for c in [&mut p, &mut q] {
        for want in 1..=20u64 {
            let m = c.next_of("message").await?;
            assert_eq!(m["offset"], want);
            assert_eq!(m["body"], format!("m{}", want - 1));
        }
    }

    // Idempotency: the same key from the same user is stored and delivered once.
    let first = p
        .request(json!({"type": "publish", "room": "contract", "body": "once", "key": "k"}))
        .await?;
    let again = p
        .request(json!({"type": "publish", "room": "contract", "body": "once", "key": "k"}))
        .await?;
    assert_eq!(first["offset"], 21);
    assert_eq!(again["offset"], 21);
    let next = p.publish("contract", "after").await?;
    assert_eq!(next["offset"], 22);
    assert_eq!(q.next_of("message").await?["offset"], 21);
    assert_eq!(
        q.next_of("message").await?["offset"],
        22,
        "the repeat was not delivered"
    );

    // Presence: the other side leaving is announced.
    q.request(json!({"type": "leave", "room": "contract"}))
        .await?;
    assert_eq!(p.next_of("member_left").await?["user"]["name"], "reader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_broker_meets_the_contract() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    contract(s.addr, s.addr).await?;
    s.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_meets_the_contract() -> Result<()> {
    let redis = RedisServer::start()?;
    let start = |id: &'static str| {
        let url = redis.url();
        TestServer::start(move |c| {
            c.redis_url = Some(url);
            c.secret = Some("contract-secret-of-at-least-32-bytes".into());
            c.node_id = Some(id.into());
        })
    };
    let mut n1 = start("c1").await;
    let mut n2 = start("c2").await;
    contract(n1.addr, n2.addr).await?;
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}
