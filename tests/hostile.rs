//! Hostile and unlucky clients against a real `nebula` process, over real sockets (raw frames
//! where a WebSocket library would refuse to send them). After each, the server's file
//! descriptors, tasks and connections are back to their baseline, and everyone else was
//! served meanwhile.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::*;
use serde_json::json;

/// The server's figures that must come back to their baseline.
async fn baseline(p: &NebulaProcess) -> Result<(usize, f64, f64)> {
    Ok((
        open_fds(p.pid()),
        metric(p.addr, "nebula_tasks_alive").await?,
        metric(p.addr, "nebula_connections").await?,
    ))
}

/// Waits until the server is back to `base` (fds within 2: the metrics request's own socket).
async fn back_to(p: &NebulaProcess, base: (usize, f64, f64), what: &str) -> Result<()> {
    eventually(Duration::from_secs(8), what, || async {
        let now = baseline(p).await?;
        Ok(now.0 <= base.0 + 2 && now.1 <= base.1 && now.2 <= base.2)
    })
    .await
}

fn server(dir: &std::path::Path) -> Result<NebulaProcess> {
    NebulaProcess::start(dir, &["--ping-interval", "1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_violation_gets_its_close_code_and_costs_nothing_lasting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = server(dir.path())?;
    let cookie = login(p.addr, "mallory").await?;
    // A bystander in a room, who must be served throughout.
    let mut bystander = Client::login(p.addr, "bystander").await?;
    bystander.join("calm").await?;
    let base = baseline(&p).await?;
    let ping_fragment = {
        let mut f = RawWs::frame(0x09, b"part"); // FIN=0: a fragmented ping.
        f[0] &= 0x7f;
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            RawWs::frame(0x81, b"{\"id\":1,\xff\xfe}"),
            1007,
        ),
        ("a reserved bit", RawWs::frame(0x81 | 0x40, b"{}"), 1002),
        ("a fragmented ping", ping_fragment, 1002),
        (
            "a control frame over 125 bytes",
            RawWs::frame(0x89, &[b'x'; 126]),
            1002,
        ),
        ("a reserved opcode", RawWs::frame(0x83, b"x"), 1002),
        (
            "a continuation without a start",
            RawWs::frame(0x80, b"x"),
            1002,
        ),
        (
            "a frame over 64 KiB",
            RawWs::frame(0x81, &vec![b'x'; 70 * 1024]),
            1009,
        ),
    ];
    for (what, frame, code) in cases {
        let mut raw = RawWs::connect(p.addr, &cookie).await?;
        raw.write(&frame).await?;
        let t0 = Instant::now();
        let (got, reason) = raw.expect_close().await?;
        ensure!(
            got == code,
            "{what}: close {got} {reason:?}, expected {code}"
        );
        // The server frees the connection within a few seconds whatever the client does
        // (this one never answers the close).
        raw.expect_eof(Duration::from_secs(5)).await?;
        ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            t0.elapsed()
        );
        let ack = bystander.publish("calm", what).await?;
        ensure!(ack["type"] == "ack", "{what}: the bystander got {ack}");
    }
    // A binary frame on the JSON subprotocol is a bad request, not a close.
    let mut raw = RawWs::connect(p.addr, &cookie).await?;
    raw.write(&RawWs::frame(0x82, b"\x08\x01")).await?;
    let reply = raw.next_frame().await?.text();
    ensure!(reply["code"] == "bad_request", "{reply}");
    raw.text(r#"{"id":2,"type":"ping"}"#).await?;
    ensure!(raw.next_frame().await?.text()["type"] == "pong");
    drop(raw);
    back_to(
        &p,
        base,
        "file descriptors, tasks and connections back to baseline",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_at_once_and_a_silent_peer_gets_4000() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = server(dir.path())?;
    let cookie = login(p.addr, "closer").await?;
    let base = baseline(&p).await?;
    // The client closes: the server answers within a second, then drops the socket.
    let mut raw = RawWs::connect(p.addr, &cookie).await?;
    let t0 = Instant::now();
    raw.write(&RawWs::frame(0x88, &1000u16.to_be_bytes()))
        .await?;
    let (code, _) = raw.expect_close().await?;
    ensure!(code == 1000, "the close is echoed: {code}");
    ensure!(
        t0.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        t0.elapsed()
    );
    raw.expect_eof(Duration::from_secs(3)).await?;
    // A peer that answers no ping (this raw client never pongs) is closed with 4000 idle
    // after three ping intervals, never with 1001 shutdown.
    let mut silent = RawWs::connect(p.addr, &cookie).await?;
    let t0 = Instant::now();
    let (code, reason) = silent.expect_close().await?;
    ensure!((code, reason.as_str()) == (4000, "idle"), "{code} {reason}");
    ensure!(
        t0.elapsed() >= Duration::from_secs(2),
        "closed too early: {:?}",
        t0.elapsed()
    );
    silent.expect_eof(Duration::from_secs(5)).await?;
    back_to(&p, base, "back to baseline after close and idle").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_released_at_once_after_a_reconnect_storm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = NebulaProcess::start(dir.path(), &[])?;
    let cookie = login(p.addr, "stormy").await?;
    let base = baseline(&p).await?;
    // 1,000 connections that join a room and vanish without a close frame, 100 at a time.
    for _ in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let mut raw = RawWs::connect(p.addr, &cookie).await?;
            raw.text(r#"{"id":1,"type":"join","room":"storm"}"#).await?;
            batch.push(raw);
        }
        for raw in &mut batch {
            ensure!(raw.next_frame().await?.text()["type"] == "joined");
        }
        drop(batch); // TCP closes; no WebSocket close.
    }
    // Released without waiting for a ping (the default interval is 25 s).
    back_to(&p, base, "1,000 dropped connections released").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_reply_even_when_joins_overlap() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut p = NebulaProcess::start(dir.path(), &[])?;
    let mut c = Client::login(p.addr, "writer").await?;
    c.join("busy").await?;
    for i in 0..80 {
        ensure!(c.publish("busy", &format!("m{i}")).await?["type"] == "ack");
    }
    drop(c);
    // After a restart the room is not in memory: a join must read the store.
    p.signal("TERM")?;
    tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)))?;
    let mut p = NebulaProcess::start(dir.path(), &["--listen", &p.addr.to_string()])?;
    let cookie = login(p.addr, "overlap").await?;
    let mut raw = RawWs::connect(p.addr, &cookie).await?;
    // Two joins of one room, a leave while they load, a join with since, a history and a
    // publish: all in one TCP write.
    let requests = [
        json!({"id": 1, "type": "join", "room": "busy"}),
        json!({"id": 2, "type": "join", "room": "busy"}),
        json!({"id": 3, "type": "leave", "room": "busy"}),
        json!({"id": 4, "type": "join", "room": "busy", "since": 10}),
        json!({"id": 5, "type": "history", "room": "busy", "after": 70}),
        json!({"id": 6, "type": "publish", "room": "busy", "body": "after all that"}),
        json!({"id": 7, "type": "presence", "room": "busy"}),
    ];
    let mut bytes = Vec::new();
    for r in &requests {
        bytes.extend(RawWs::frame(0x81, r.to_string().as_bytes()));
    }
    raw.write(&bytes).await?;
    let mut replies: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while replies.values().map(Vec::len).sum::<usize>() < requests.len()
        && Instant::now() < deadline
    {
        let f = raw.next_frame().await?.text();
        if let Some(id) = f["id"].as_u64() {
            replies
                .entry(id)
                .or_default()
                .push(f["type"].as_str().unwrap_or("").to_string());
        }
    }
    // A little longer: no second reply to anything.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(f) = raw.next_frame().await {
            if let Some(id) = f.text()["id"].as_u64() {
                replies
                    .entry(id)
                    .or_default()
                    .push(f.text()["type"].to_string());
            }
        }
    })
    .await;
    let expected = [
        (1, "joined"),
        (2, "joined"),
        (3, "left"),
        (4, "joined"),
        (5, "history"),
        (6, "ack"),
        (7, "presence"),
    ];
    for (id, kind) in expected {
        ensure!(
            replies.get(&id).map(Vec::as_slice) == Some(&[kind.to_string()][..]),
            "request {id}: replies {:?}",
            replies.get(&id)
        );
    }
    p.signal("TERM")?;
    tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_much_and_never_reads_costs_at_most_its_budget() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = NebulaProcess::start(dir.path(), &[])?;
    let mut writer = Client::login(p.addr, "filler").await?;
    writer.join("big").await?;
    let body = "y".repeat(4000);
    for _ in 0..20 {
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(
                writer
                    .send(json!({"type": "publish", "room": "big", "body": body}))
                    .await?,
            );
        }
        for id in ids {
            ensure!(writer.reply(id).await?["type"] == "ack");
        }
        writer.backlog.clear();
    }
    // Warm the store's caches with one read, then measure.
    ensure!(
        writer
            .request(json!({"type": "history", "room": "big", "limit": 200}))
            .await?["messages"]
            .as_array()
            .map(Vec::len)
            == Some(200)
    );
    let cookie = login(p.addr, "greedy").await?;
    let mut raw = RawWs::connect(p.addr, &cookie).await?;
    raw.text(r#"{"id":1,"type":"join","room":"big"}"#).await?;
    let _joined = raw.next_frame().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(p.pid());
    // 600 requests for 200 messages of 4 KB each (800 KB a reply), and never a read.
    let mut bytes = Vec::new();
    for id in 2..602 {
        let r = json!({"id": id, "type": "history", "room": "big", "limit": 200});
        bytes.extend(RawWs::frame(0x81, r.to_string().as_bytes()));
    }
    let pid = p.pid();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..200 {
            peak = peak.max(rss_bytes(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    // The server stops reading once it has nothing left to give; write what it takes.
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.write(&bytes)).await;
    let peak = sampler.await?;
    let growth = peak.saturating_sub(before);
    println!("RSS before {before} B, peak {peak} B: growth {growth} B");
    ensure!(
        growth <= 4 * 1024 * 1024 + 1024 * 1024 + 512 * 1024,
        "the greedy client cost {growth} bytes (budget 4 MiB + 1 MiB)"
    );
    // It was closed as a slow consumer (its close frame waits 3 s for a client that reads;
    // this one does not, so the socket just ends), and everyone else is served.
    ensure!(metric(p.addr, "nebula_slow_consumers_total").await? >= 1.0);
    raw.expect_eof(Duration::from_secs(10)).await?;
    ensure!(writer.publish("big", "still here").await?["type"] == "ack");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_nobody_is_in_are_forgotten() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = NebulaProcess::start(dir.path(), &[])?;
    let mut c = Client::login(p.addr, "wanderer").await?;
    // Warm up, then measure 20,000 join/leave pairs on names never seen again.
    for round in 0..2 {
        let before = rss_bytes(p.pid());
        for chunk in 0..100 {
            let mut ids = Vec::new();
            for i in 0..100 {
                let room = format!("r{round}-{chunk}-{i}-{}", rand_suffix());
                ids.push(c.send(json!({"type": "join", "room": room})).await?);
                ids.push(c.send(json!({"type": "leave", "room": room})).await?);
            }
            for id in ids {
                c.reply(id).await?;
            }
        }
        let after = rss_bytes(p.pid());
        println!("round {round}: RSS {before} -> {after}");
        if round == 1 {
            ensure!(
                after.saturating_sub(before) < 4 * 1024 * 1024,
                "20,000 forgotten rooms still cost {} bytes",
                after - before
            );
        }
    }
    ensure!(
        metric(p.addr, "nebula_rooms").await? == 0.0,
        "no room is kept"
    );
    Ok(())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
