//! Slow consumers and the graceful shutdown, in-process with real sockets.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_4008_and_slows_nobody() -> Result<()> {
    let mut s = TestServer::start(|c| c.outbox_bytes = 2 << 20).await;
    let mut slow = Client::login(s.addr, "slow").await?;
    let mut fast = Client::login(s.addr, "fast").await?;
    let mut sender = Client::login(s.addr, "sender").await?;
    slow.join("r").await?;
    fast.join("r").await?;
    sender.join("r").await?;
    // `slow` stops reading now. 4,000 frames of 4 KB overflow the socket buffers and its queue.
    let total: u64 = 4000;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            let v = fast.next_push().await?;
            if v["type"] == "message" {
                got += 1;
                assert_eq!(v["offset"], got);
            }
        }
        anyhow::Ok(fast)
    });
    let body = "x".repeat(4000);
    for _ in 0..total / 10 {
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(
                sender
                    .send(json!({"type": "publish", "room": "r", "body": body}))
                    .await?,
            );
        }
        for id in ids {
            assert_eq!(sender.reply(id).await?["type"], "ack");
        }
        sender.backlog.clear();
    }
    let mut fast = reader.await??;
    // The slow client resumes reading: what was already in flight, then the 4008 close.
    assert_eq!(slow.expect_close().await?, 4008);
    // Everyone else carries on.
    assert_eq!(fast.publish("r", "after").await?["type"], "ack");
    // Counted once its session has ended.
    eventually(
        Duration::from_secs(5),
        "one slow consumer counted",
        || async { Ok(metric(s.addr, "nebula_slow_consumers_total").await? == 1.0) },
    )
    .await?;
    s.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001_and_leaves_no_task() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = Client::login(s.addr, &format!("user{i}")).await?;
        c.join("lobby").await?;
        c.join(&format!("own{i}")).await?;
        clients.push(c);
    }
    clients[0].publish("lobby", "before shutdown").await?;
    // An idle plain HTTP keep-alive connection must not hold the shutdown either.
    let _idle = tokio::net::TcpStream::connect(s.addr).await?;
    let server = s.server.take().unwrap();
    assert!(server.alive_tasks() > 0);
    let shutdown = tokio::spawn(server.shutdown());
    for c in &mut clients {
        assert_eq!(c.expect_close().await?, 1001);
    }
    shutdown.await?.expect("clean shutdown");
    // Nothing of the server is left on the runtime. Tokio wakes a JoinHandle (and a task
    // tracker) when a task's future is done, a moment before it takes the task off its count:
    // the count must reach 0 within a few milliseconds, not at the very instant.
    let counted = Instant::now();
    let alive = loop {
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if alive == 0 || counted.elapsed() > Duration::from_millis(50) {
            break alive;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(alive, 0, "tasks still alive 50 ms after shutdown");
    // And the port is closed.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_sessions_drain() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let cookie = login(s.addr, "stay").await?;
    // A client that never reads keeps its session open for the close grace period, long
    // enough to look at the server while the shutdown is under way.
    let c = Client::connect(s.addr, &cookie).await?;
    let server = s.server.take().unwrap();
    let addr = s.addr;
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await?.status, 503);
    assert_eq!(http(addr, "GET", "/healthz", &[], "").await?.status, 200);
    // New sessions are refused while draining.
    match ws_connect(addr, Some(&cookie), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    shutdown.await?.expect("clean shutdown");
    drop(c);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}
