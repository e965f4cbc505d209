//! Durable rooms in-process: recovery with `since`, history paging, the recovery window, and
//! a store that cannot write.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};

fn offsets(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

async fn fill(c: &mut Client, room: &str, n: usize) -> Result<()> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            c.send(json!({"type": "publish", "room": room, "body": format!("m{i}")}))
                .await?,
        );
    }
    for id in ids {
        assert_eq!(c.reply(id).await?["type"], "ack");
    }
    c.backlog.clear();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_returns_exactly_what_was_missed() -> Result<()> {
    let mut s = TestServer::start(|c| c.recovery_window = 120).await;
    let mut a = Client::login(s.addr, "alice").await?;
    let cookie_b = login(s.addr, "bob").await?;
    a.join("r").await?;
    let mut b = Client::connect(s.addr, &cookie_b).await?;
    b.join("r").await?;
    fill(&mut a, "r", 30).await?;
    // b reads up to 30, then drops; 70 more are published while it is away.
    let mut seen = 0;
    while seen < 30 {
        if b.next_push().await?["type"] == "message" {
            seen += 1;
        }
    }
    drop(b);
    fill(&mut a, "r", 70).await?;
    let mut b = Client::connect(s.addr, &cookie_b).await?;
    let j = b
        .request(json!({"type": "join", "room": "r", "since": 30}))
        .await?;
    assert_eq!(j["offset"], 100);
    assert_eq!(j["recovered"], true);
    assert_eq!(offsets(&j), range(31, 100), "from the ring and the store");
    // Live messages continue right after.
    a.publish("r", "live").await?;
    assert_eq!(b.next_of("message").await?["offset"], 101);

    let j = b
        .request(json!({"type": "join", "room": "r", "since": 90}))
        .await?;
    assert_eq!(
        (j["recovered"].clone(), offsets(&j)),
        (json!(true), range(91, 101))
    );
    let j = b
        .request(json!({"type": "join", "room": "r", "since": 101}))
        .await?;
    assert_eq!(
        (j["recovered"].clone(), offsets(&j)),
        (json!(true), Vec::<u64>::new())
    );
    let j = b
        .request(json!({"type": "join", "room": "r", "since": 500}))
        .await?;
    assert_eq!(
        (j["recovered"].clone(), offsets(&j)),
        (json!(false), Vec::<u64>::new())
    );
    let j = b
        .request(json!({"type": "join", "room": "r", "since": 0}))
        .await?;
    assert_eq!(
        (j["recovered"].clone(), offsets(&j)),
        (json!(true), range(1, 101))
    );

    // Beyond the recovery window (120): the latest window, recovered false.
    fill(&mut a, "r", 100).await?;
    let j = b
        .request(json!({"type": "join", "room": "r", "since": 10}))
        .await?;
    assert_eq!(j["recovered"], false);
    assert_eq!(offsets(&j), range(82, 201));
    s.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_oldest_first() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut a = Client::login(s.addr, "alice").await?;
    a.join("h").await?;
    fill(&mut a, "h", 250).await?;
    let latest = a.request(json!({"type": "history", "room": "h"})).await?;
    assert_eq!(latest["type"], "history");
    assert_eq!(latest["room"], "h");
    assert_eq!(offsets(&latest), range(201, 250));
    let page = a
        .request(json!({"type": "history", "room": "h", "before": 50, "limit": 20}))
        .await?;
    assert_eq!(offsets(&page), range(30, 49));
    let page = a
        .request(json!({"type": "history", "room": "h", "before": 5, "limit": 20}))
        .await?;
    assert_eq!(offsets(&page), range(1, 4));
    let page = a
        .request(json!({"type": "history", "room": "h", "before": 1}))
        .await?;
    assert_eq!(offsets(&page), Vec::<u64>::new());
    let capped = a
        .request(json!({"type": "history", "room": "h", "limit": 1000}))
        .await?;
    assert_eq!(offsets(&capped), range(51, 250));
    let m = &capped["messages"][0];
    assert_eq!(m["room"], "h");
    assert_eq!(m["user"], a.user);
    assert!(m["ts"].is_u64());
    s.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_recovery_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let start = |dir: &std::path::Path| {
        let dir = dir.to_path_buf();
        async move {
            let mut config = nebula::Config::for_data_dir(&dir);
            config.publish_rate = 0;
            config.connect_rate = 0;
            nebula::Nebula::start(config).await.expect("starts")
        }
    };
    let server = start(dir.path()).await;
    let cookie = login(server.local_addr(), "alice").await?;
    let mut a = Client::connect(server.local_addr(), &cookie).await?;
    a.join("keep").await?;
    fill(&mut a, "keep", 120).await?;
    drop(a);
    server.shutdown().await?;
    let server = start(dir.path()).await;
    let mut a = Client::connect(server.local_addr(), &cookie).await?;
    // The ring is empty after a restart: this join reads the store.
    let j = a.join("keep").await?;
    assert_eq!(j["offset"], 120);
    assert_eq!(offsets(&j), range(71, 120));
    let j = a
        .request(json!({"type": "join", "room": "keep", "since": 3}))
        .await?;
    assert_eq!(
        (j["recovered"].clone(), offsets(&j)),
        (json!(true), range(4, 120))
    );
    assert_eq!(a.publish("keep", "next").await?["offset"], 121);
    drop(a);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_gives_unavailable_and_recovers() -> Result<()> {
    let mut s = TestServer::start(|c| c.writer_queue = 8).await;
    let mut a = Client::login(s.addr, "alice").await?;
    let mut b = Client::login(s.addr, "bob").await?;
    a.join("d").await?;
    b.join("d").await?;
    assert_eq!(a.publish("d", "before").await?["offset"], 1);
    assert_eq!(a.next_of("message").await?["offset"], 1);
    assert_eq!(b.next_of("message").await?["offset"], 1);
    // Another process-level writer takes the database's write lock: SQLite cannot commit.
    let db = s.dir.path().join("nebula.db");
    let lock = rusqlite::Connection::open(&db)?;
    lock.execute_batch("BEGIN EXCLUSIVE")?;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            a.send(json!({"type": "publish", "room": "d", "body": format!("lost{i}")}))
                .await?,
        );
    }
    for id in ids {
        let r = a.reply(id).await?;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], "unavailable");
    }
    assert!(
        a.backlog.iter().all(|v| v["type"] != "message"),
        "a refused publish is not delivered"
    );
    // Reads keep working meanwhile.
    assert_eq!(
        offsets(&a.request(json!({"type": "history", "room": "d"})).await?),
        vec![1]
    );
    lock.execute_batch("ROLLBACK")?;
    drop(lock);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Writing works again by itself, with no gap in the offsets.
    assert_eq!(a.publish("d", "after").await?["offset"], 2);
    assert_eq!(b.next_of("message").await?["body"], "after");
    s.shutdown().await;
    Ok(())
}
