//! The cluster: three nodes and a real redis-server, started by the tests on free ports.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use serde_json::json;

const SECRET: &str = "cluster-test-secret-of-32-bytes-at-least";

async fn node(redis: &RedisServer, id: &str) -> TestServer {
    let url = redis.url();
    let id = id.to_string();
    TestServer::start(move |c| {
        c.redis_url = Some(url);
        c.secret = Some(SECRET.into());
        c.node_id = Some(id);
    })
    .await
}

fn node_process(
    redis: &RedisServer,
    dir: &std::path::Path,
    id: &str,
    extra: &[&str],
) -> Result<NebulaProcess> {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--secret", SECRET, "--node-id", id];
    args.extend_from_slice(extra);
    NebulaProcess::start(dir, &args)
}

/// Every message of a room: (offset, body), oldest first.
async fn history(c: &mut Client, room: &str) -> Result<Vec<(u64, String)>> {
    let all = c.all_messages(room).await?;
    Ok(all
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect())
}

async fn member_names(c: &mut Client, room: &str) -> Result<Vec<String>> {
    let p = c.request(json!({"type": "presence", "room": room})).await?;
    let mut names: Vec<String> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_on_three_nodes_see_every_message_once_in_one_order() -> Result<()> {
    let redis = RedisServer::start()?;
    let mut nodes = vec![
        node(&redis, "n1").await,
        node(&redis, "n2").await,
        node(&redis, "n3").await,
    ];
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = Client::login(n.addr, &format!("user{i}")).await?;
        c.join("shared").await?;
        clients.push(c);
    }
    // A cookie from one node is valid on another (same secret).
    let cookie = login(nodes[0].addr, "roamer").await?;
    assert!(Client::connect(nodes[2].addr, &cookie).await.is_ok());

    let per_user = 50;
    for round in 0..per_user {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(json!({"type": "publish", "room": "shared", "body": format!("u{i}-{round}")}))
                .await?;
        }
    }
    let total = per_user * clients.len();
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < total {
            let v = c.next_push().await?;
            if v["type"] == "message" {
                seen.push((
                    v["offset"].as_u64().unwrap(),
                    v["body"].as_str().unwrap().to_string(),
                ));
            } else if v["type"] == "error" {
                anyhow::bail!("unexpected error {v}");
            }
        }
        let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=total as u64).collect::<Vec<_>>(),
            "every offset once, in order"
        );
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
    // One history: every node serves the same messages at the same offsets.
    for c in &mut clients {
        assert_eq!(history(c, "shared").await?, orders[0]);
    }
    for n in &mut nodes {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_converges_and_a_killed_node_s_users_leave_within_the_bound() -> Result<()> {
    let redis = RedisServer::start()?;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        procs.push(node_process(&redis, d.path(), &format!("p{i}"), &[])?);
    }
    let mut clients = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let mut c = Client::login(p.addr, &format!("member{i}")).await?;
        c.join("lobby").await?;
        clients.push(c);
    }
    let everyone = vec!["member0".to_string(), "member1".into(), "member2".into()];
    for c in &mut clients {
        let start = Instant::now();
        while member_names(c, "lobby").await? != everyone {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "presence did not converge"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // member2's node dies without a word.
    let killed = Instant::now();
    procs[2].signal("KILL")?;
    for c in clients.iter_mut().take(2) {
        let left =
            tokio::time::timeout(Duration::from_secs(15), c.next_of("member_left")).await??;
        assert_eq!(left["user"]["name"], "member2");
    }
    let took = killed.elapsed();
    println!("member_left after a kill -9 reached both other nodes in {took:?}");
    assert!(took < Duration::from_secs(15));
    assert_eq!(
        member_names(&mut clients[0], "lobby").await?,
        everyone[..2].to_vec()
    );
    // A graceful shutdown withdraws at once.
    let stopped = Instant::now();
    procs[1].signal("TERM")?;
    let left =
        tokio::time::timeout(Duration::from_secs(5), clients[0].next_of("member_left")).await??;
    assert_eq!(left["user"]["name"], "member1");
    assert!(stopped.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_catches_up_and_every_node_has_the_same_history() -> Result<()> {
    let redis = RedisServer::start()?;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        procs.push(node_process(&redis, d.path(), &format!("k{i}"), &[])?);
    }
    let cookie = login(procs[0].addr, "talker").await?;
    let cookie_c = login(procs[2].addr, "away").await?;
    let mut a = Client::connect(procs[0].addr, &cookie).await?;
    let mut b = Client::connect(procs[1].addr, &cookie).await?;
    let mut c = Client::connect(procs[2].addr, &cookie_c).await?;
    for x in [&mut a, &mut b, &mut c] {
        x.join("log").await?;
    }
    for i in 0..30 {
        assert_eq!(
            a.publish("log", &format!("before-{i}")).await?["type"],
            "ack"
        );
    }
    let mut seen = 0;
    while seen < 30 {
        if c.next_push().await?["type"] == "message" {
            seen += 1;
        }
    }
    // Node 2 dies; the others keep publishing.
    procs[2].signal("KILL")?;
    tokio::task::block_in_place(|| procs[2].wait(Duration::from_secs(5)))?;
    drop(c);
    let mut acked = BTreeMap::new();
    for i in 0..100 {
        let (who, x) = if i % 2 == 0 {
            ("a", &mut a)
        } else {
            ("b", &mut b)
        };
        let r = x.publish("log", &format!("during-{who}-{i}")).await?;
        assert_eq!(r["type"], "ack", "{r}");
        acked.insert(r["offset"].as_u64().unwrap(), format!("during-{who}-{i}"));
    }
    procs[2] = node_process(&redis, dirs[2].path(), "k2", &[])?;
    let mut c = Client::connect(procs[2].addr, &cookie_c).await?;
    let j = c
        .request(json!({"type": "join", "room": "log", "since": 30}))
        .await?;
    assert_eq!(j["recovered"], true);
    assert_eq!(j["offset"], 130);
    let got: BTreeMap<u64, String> = j["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, acked, "exactly what was missed");
    let reference = history(&mut a, "log").await?;
    assert_eq!(reference.len(), 130);
    assert_eq!(history(&mut b, "log").await?, reference);
    assert_eq!(history(&mut c, "log").await?, reference);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_acknowledged() -> Result<()> {
    let mut redis = RedisServer::start()?;
    let mut n1 = node(&redis, "r1").await;
    let mut n2 = node(&redis, "r2").await;
    let mut a = Client::login(n1.addr, "alpha").await?;
    let mut b = Client::login(n2.addr, "beta").await?;
    a.join("r").await?;
    b.join("r").await?;
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let r = a.publish("r", &format!("pre-{i}")).await?;
        acked.insert(r["offset"].as_u64().unwrap(), format!("pre-{i}"));
    }
    redis.kill9();
    // Meanwhile: publishes get `unavailable` (no ack), reads keep working.
    let r = a.publish("r", "while down").await?;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert_eq!(
        b.request(json!({"type": "history", "room": "r"})).await?["messages"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    // Readiness tells a load balancer to send new users elsewhere.
    let ready = http(n1.addr, "GET", "/readyz", &[], "").await?;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("unreachable"), "{}", ready.body);
    redis.spawn()?;
    // The nodes reconnect by themselves.
    let start = Instant::now();
    while a.publish("r", "after").await?["type"] != "ack" {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "publishing did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = loop {
        let r = b.publish("r", "after-b").await?;
        if r["type"] == "ack" {
            break r["offset"].as_u64().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "publishing did not come back on the second node: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for c in [&mut a, &mut b] {
        // An ack means the message is in Redis; each node stores it within milliseconds.
        let start = Instant::now();
        let mut h: BTreeMap<u64, String> = history(c, "r").await?.into_iter().collect();
        while h.len() < last as usize && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            h = history(c, "r").await?.into_iter().collect();
        }
        for (o, body) in &acked {
            assert_eq!(h.get(o), Some(body), "acked message {o} kept");
        }
        assert_eq!(
            h.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "contiguous"
        );
        assert!(
            !h.values().any(|b| b == "while down"),
            "a refused publish was not stored"
        );
    }
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_recognised_on_another_node() -> Result<()> {
    let redis = RedisServer::start()?;
    let mut n1 = node(&redis, "i1").await;
    let mut n2 = node(&redis, "i2").await;
    let cookie = login(n1.addr, "retrier").await?;
    let mut a = Client::connect(n1.addr, &cookie).await?;
    a.join("idem").await?;
    let first = a
        .request(json!({"type": "publish", "room": "idem", "body": "once", "key": "k-1"}))
        .await?;
    drop(a);
    let mut b = Client::connect(n2.addr, &cookie).await?;
    b.join("idem").await?;
    let again = b
        .request(json!({"type": "publish", "room": "idem", "body": "once", "key": "k-1"}))
        .await?;
    assert_eq!(again["type"], "ack");
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(history(&mut b, "idem").await?.len(), 1);
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}

#[test]
fn cluster_mode_without_a_secret_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nebula"))
        .args(["--redis", "redis://127.0.0.1:1/", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("NEBULA_SECRET")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NEBULA_SECRET"), "{stderr}");
    Ok(())
}
