//! The cluster rows of the fault matrix (docs/RELIABILITY.md), each on real processes: a real
//! `redis-server` and real `nebula` nodes, the fault injected with real signals, `FLUSHALL`, a
//! lost data dir, a locked store. Workers publish on a schedule throughout and record every
//! answer and every delivery; the checker then reads every node's history and counts what was
//! lost (acked, missing anywhere), unexpected (refused or never sent, yet stored), duplicated,
//! reordered, and holes. Every row must end with all of them at 0.
//!
//! `cargo nextest run --test faults` runs them all; `--no-capture` prints one line per row.

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use harness::*;
use serde_json::json;
use tokio::time::sleep;

/// `count` workers publishing every `interval` in `rooms`; worker k prefers node k % n and
/// falls back to the others in order.
async fn workers(
    nodes: &[SocketAddr],
    count: usize,
    rooms: &[&str],
    interval: Option<Duration>,
    tag: &str,
) -> Result<Vec<Worker>> {
    let mut all = Vec::new();
    for k in 0..count {
        let mut order: Vec<SocketAddr> = nodes.to_vec();
        order.rotate_left(k % nodes.len());
        all.push(
            Worker::start(WorkerSpec {
                name: format!("{tag}{k}"),
                nodes: order,
                rooms: rooms.iter().map(|r| r.to_string()).collect(),
                interval,
            })
            .await?,
        );
    }
    Ok(all)
}

/// Stops the workers, then checks what they sent and received against every node's history of
/// `names` (the nodes get 15 s to agree).
async fn judge(
    cl: &Cluster,
    workers: Vec<Worker>,
    names: &[&str],
) -> Result<(Vec<Report>, Verdict)> {
    let reports = finish(cl, workers).await?;
    let v = check(
        &cl.addrs(),
        &rooms(names),
        &reports,
        Duration::from_secs(15),
    )
    .await?;
    Ok((reports, v))
}

async fn finish(cl: &Cluster, workers: Vec<Worker>) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    for w in workers {
        match w.finish(Duration::from_secs(45)).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("{}", cl.log_tails());
                return Err(e);
            }
        }
    }
    Ok(reports)
}

fn rooms(names: &[&str]) -> Vec<String> {
    names.iter().map(|r| r.to_string()).collect()
}

const EVERY: Option<Duration> = Some(Duration::from_millis(50));

/// Waits until `addr`'s `/readyz` answers `status`; returns how long it took.
async fn ready_is(addr: SocketAddr, status: u16, within: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    eventually(within, &format!("{addr} /readyz {status}"), || async move {
        Ok(http(addr, "GET", "/readyz", &[], "")
            .await
            .is_ok_and(|r| r.status == status))
    })
    .await?;
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_under_load() -> Result<()> {
    let mut cl = Cluster::start(3).await?;
    let ws = workers(&cl.addrs(), 6, &["a", "b"], EVERY, "k").await?;
    sleep(Duration::from_secs(2)).await;
    cl.kill9(2)?;
    sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    cl.restart(2).await?;
    let back = t0.elapsed();
    sleep(Duration::from_secs(3)).await;
    let (_, v) = judge(&cl, ws, &["a", "b"]).await?;
    verdict(
        "kill -9 of a node",
        &v,
        &format!("; restarted node ready in {back:.1?}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_9_with_aof() -> Result<()> {
    let mut cl = Cluster::start(2).await?;
    let ws = workers(&cl.addrs(), 4, &["a"], EVERY, "r").await?;
    sleep(Duration::from_secs(2)).await;
    cl.redis.kill9();
    sleep(Duration::from_secs(3)).await;
    cl.redis.spawn()?;
    let recovery = ready_is(cl.addr(0), 200, Duration::from_secs(20)).await?;
    sleep(Duration::from_secs(3)).await;
    let (_, v) = judge(&cl, ws, &["a"]).await?;
    verdict(
        "Redis kill -9 (AOF always)",
        &v,
        &format!("; ready again {recovery:.1?} after the restart"),
    )
}

/// Redis loses everything while nodes publish: the nodes refuse, repair Redis from their
/// logs under a new epoch, and go on numbering after the highest acked offset.
async fn redis_loses_its_data(
    row: &str,
    lose: impl FnOnce(&mut RedisServer) -> Result<()>,
) -> Result<()> {
    let mut cl = Cluster::start(2).await?;
    let ws = workers(&cl.addrs(), 4, &["a", "b"], EVERY, "f").await?;
    sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    lose(&mut cl.redis)?;
    // Publishing comes back: some publish is acked again after the loss.
    sleep(Duration::from_secs(6)).await;
    let (_, v) = judge(&cl, ws, &["a", "b"]).await?;
    let repairs = metric(cl.addr(0), "nebula_redis_repairs_total").await?
        + metric(cl.addr(1), "nebula_redis_repairs_total").await?;
    ensure!(repairs >= 1.0, "{row}: no node repaired Redis");
    // After the repair, Redis numbers after every node's log: one history.
    let epoch = cl.redis.cli(&["GET", "nebula:epoch"])?;
    ensure!(
        !epoch.is_empty() && !epoch.starts_with("repairing"),
        "epoch {epoch:?}"
    );
    verdict(
        row,
        &v,
        &format!("; {repairs} repairs; {:.1?} of fault window", t0.elapsed()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall() -> Result<()> {
    redis_loses_its_data("Redis FLUSHALL", |r| {
        r.cli(&["FLUSHALL"])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_its_data() -> Result<()> {
    redis_loses_its_data("Redis restarted empty", |r| {
        r.kill_and_lose_data()?;
        std::thread::sleep(Duration::from_millis(500));
        r.spawn()
    })
    .await
}

/// Redis frozen for `secs`: readiness turns 503 and `nebula_redis_connected` 0 within seconds;
/// publishes answered meanwhile are the truth; everything recovers after the thaw.
async fn redis_frozen(secs: u64) -> Result<()> {
    let cl = Cluster::start(2).await?;
    let ws = workers(&cl.addrs(), 4, &["a"], EVERY, "s").await?;
    sleep(Duration::from_secs(2)).await;
    cl.redis.signal("STOP")?;
    let t0 = Instant::now();
    let noticed = ready_is(cl.addr(0), 503, Duration::from_secs(8)).await?;
    ensure!(metric(cl.addr(0), "nebula_redis_connected").await? == 0.0);
    sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed())).await;
    cl.redis.signal("CONT")?;
    let recovered = ready_is(cl.addr(0), 200, Duration::from_secs(20)).await?;
    ensure!(metric(cl.addr(0), "nebula_redis_connected").await? == 1.0);
    sleep(Duration::from_secs(3)).await;
    let (reports, v) = judge(&cl, ws, &["a"]).await?;
    let slowest = reports
        .iter()
        .map(|r| r.slowest_answer)
        .max()
        .unwrap_or_default();
    verdict(
        &format!("Redis SIGSTOP {secs} s"),
        &v,
        &format!(
            "; 503 after {noticed:.1?}, ready {recovered:.1?} after SIGCONT, slowest answer {slowest:.1?}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigstop_6_s() -> Result<()> {
    redis_frozen(6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigstop_30_s() -> Result<()> {
    redis_frozen(30).await
}

/// A restarted node numbers its batches from 1 again. The answer to its first batch, lost in a
/// frozen Redis, comes from that batch: never from the marker that batch 1 of the run before
/// the restart left in Redis (kept 10 minutes), which would ack a message never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_batch_after_a_restart_is_not_answered_from_the_run_before() -> Result<()> {
    let mut cl = Cluster::start(2).await?;
    let mut first = Client::login(cl.addr(0), "first").await?;
    first.join("m").await?;
    let ack = first.publish("m", "before the restart").await?;
    ensure!(ack["type"] == "ack" && ack["offset"] == 1, "{ack}");
    drop(first);
    cl.kill9(0)?;
    cl.restart(0).await?;
    let mut again = Client::login(cl.addr(0), "again").await?;
    again.join("m").await?;
    // Redis freezes with the restarted node's first batch in it; the script's deadline (2 s)
    // passes before the thaw, so the batch can never run.
    cl.redis.signal("STOP")?;
    let thaw = async {
        sleep(Duration::from_secs(5)).await;
        cl.redis.signal("CONT")
    };
    let (answer, thawed) = tokio::join!(again.publish("m", "while frozen"), thaw);
    thawed?;
    let answer = answer?;
    sleep(Duration::from_secs(2)).await;
    for i in 0..2 {
        let h = history(cl.addr(i), "m").await?;
        let frozen: Vec<u64> = h
            .iter()
            .filter(|(_, m)| m.body == "while frozen")
            .map(|(o, _)| *o)
            .collect();
        ensure!(
            h.get(&1).map(|m| m.body.as_str()) == Some("before the restart"),
            "node {i}: offset 1 is {:?}",
            h.get(&1).map(|m| &m.body)
        );
        if answer["type"] == "ack" {
            // An ack is the truth: its offset holds exactly this message.
            ensure!(
                frozen == vec![answer["offset"].as_u64().unwrap_or(0)],
                "node {i}: acked {answer} but the message is at {frozen:?}"
            );
        } else {
            ensure!(
                answer["type"] == "error" && answer["code"] == "unavailable",
                "{answer}"
            );
            ensure!(
                frozen.is_empty(),
                "node {i}: refused but stored at {frozen:?}"
            );
        }
    }
    println!("the restarted node's uncertain first batch was answered {answer}");
    Ok(())
}

/// The names in a room's presence, as `c`'s node sees it.
async fn members(c: &mut Client, room: &str) -> Result<Vec<String>> {
    let p = c.request(json!({"type": "presence", "room": room})).await?;
    Ok(p["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect())
}

/// A node frozen for `secs`: the others withdraw its users (past the 5 s liveness) and go on;
/// thawed, it re-announces them (member_joined everywhere within 10 s), catches up, and its
/// members get every message in order.
async fn node_frozen(secs: u64) -> Result<()> {
    let cl = Cluster::start(3).await?;
    // Workers bound to one node each, so the frozen node's workers stay on it.
    let mut ws = Vec::new();
    for (i, addr) in cl.addrs().into_iter().enumerate() {
        for k in 0..2 {
            ws.push(
                Worker::start(WorkerSpec {
                    name: format!("n{i}w{k}"),
                    nodes: vec![addr],
                    rooms: rooms(&["a"]),
                    interval: EVERY,
                })
                .await?,
            );
        }
    }
    let mut watcher = Client::login(cl.addr(0), "watcher").await?;
    watcher.join("a").await?;
    sleep(Duration::from_secs(2)).await;
    ensure!(
        members(&mut watcher, "a")
            .await?
            .iter()
            .any(|n| n == "n1w0")
    );
    cl.signal(1, "STOP")?;
    let t0 = Instant::now();
    // Past its liveness, the others withdraw the frozen node's users.
    let mut withdrawn = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        if withdrawn.is_none()
            && !members(&mut watcher, "a")
                .await?
                .iter()
                .any(|n| n == "n1w0")
        {
            withdrawn = Some(t0.elapsed());
        }
        sleep(Duration::from_millis(250)).await;
    }
    let withdrawn = withdrawn.context("the frozen node's users were never withdrawn")?;
    cl.signal(1, "CONT")?;
    let thawed = Instant::now();
    // Presence converges: its users come back within 10 s.
    let mut back = None;
    while thawed.elapsed() < Duration::from_secs(10) {
        if members(&mut watcher, "a")
            .await?
            .iter()
            .any(|n| n == "n1w0")
        {
            back = Some(thawed.elapsed());
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let back = back.context("the thawed node's users did not come back within 10 s")?;
    sleep(Duration::from_secs(3)).await;
    let reports = finish(&cl, ws).await?;
    drop(watcher);
    let v = check(
        &cl.addrs(),
        &rooms(&["a"]),
        &reports,
        Duration::from_secs(20),
    )
    .await?;
    verdict(
        &format!("node SIGSTOP {secs} s"),
        &v,
        &format!("; its users withdrawn after {withdrawn:.1?}, back {back:.1?} after SIGCONT"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sigstop_8_s() -> Result<()> {
    node_frozen(8).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sigstop_40_s() -> Result<()> {
    node_frozen(40).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_store_failing_for_3_s() -> Result<()> {
    let cl = Cluster::start(2).await?;
    let ws = workers(&cl.addrs(), 4, &["a"], EVERY, "d").await?;
    sleep(Duration::from_secs(2)).await;
    // Another process's exclusive lock on node 1's database: its commits fail meanwhile.
    let db = cl.nodes[1].dir.path().join("nebula.db");
    let lock = std::thread::spawn(move || -> Result<()> {
        let conn = rusqlite::Connection::open(db)?;
        conn.execute_batch("BEGIN EXCLUSIVE")?;
        std::thread::sleep(Duration::from_secs(3));
        conn.execute_batch("COMMIT")?;
        Ok(())
    });
    tokio::task::spawn_blocking(move || lock.join().expect("lock thread")).await??;
    sleep(Duration::from_secs(4)).await;
    let failures = metric(cl.addr(1), "nebula_store_commit_failures_total").await?;
    ensure!(failures >= 1.0, "the lock did not make a commit fail");
    let (_, v) = judge(&cl, ws, &["a"]).await?;
    // A since-join on the node that failed: recovered over the whole range, nothing missing.
    let mut late = Client::login(cl.addr(1), "late").await?;
    let j = late
        .request(json!({"type": "join", "room": "a", "since": 0}))
        .await?;
    ensure!(j["recovered"] == true, "{}", j["recovered"]);
    verdict(
        "a node's store locked for 3 s",
        &v,
        &format!("; {failures} failed commits, retried"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_nodes_under_load() -> Result<()> {
    let mut cl = Cluster::start(3).await?;
    let ws = workers(&cl.addrs(), 6, &["a", "b"], EVERY, "o").await?;
    sleep(Duration::from_secs(2)).await;
    let mut took = Vec::new();
    for i in 0..3 {
        let t0 = Instant::now();
        cl.terminate(i)?; // SIGTERM: drain, exit 0.
        cl.restart(i).await?;
        took.push(t0.elapsed());
        sleep(Duration::from_secs(1)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let (reports, v) = judge(&cl, ws, &["a", "b"]).await?;
    let reconnects: u64 = reports.iter().map(|r| r.reconnects).sum();
    verdict(
        "rolling restart of 3 nodes",
        &v,
        &format!("; {reconnects} reconnects with since; each node back in {took:.1?}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_2000_clients() -> Result<()> {
    let mut cl = Cluster::start(3).await?;
    let addrs = cl.addrs();
    // 2,000 readers on node 0 (falling back to 1, then 2), two publishers on nodes 1 and 2.
    let mut readers = Vec::new();
    for k in 0..2000 {
        let order = vec![addrs[0], addrs[1 + k % 2], addrs[2 - k % 2]];
        readers.push(
            Worker::start(WorkerSpec {
                name: format!("reader{k}"),
                nodes: order,
                rooms: rooms(&["storm"]),
                interval: None,
            })
            .await?,
        );
    }
    let publishers = workers(&addrs[1..], 2, &["storm"], EVERY, "p").await?;
    eventually(
        Duration::from_secs(30),
        "2,000 readers connected",
        || async { Ok(metric(addrs[0], "nebula_connections").await? >= 2000.0) },
    )
    .await?;
    sleep(Duration::from_secs(1)).await;
    // Node 0 dies: 2,000 clients reconnect to the other two at once and rejoin with since.
    cl.kill9(0)?;
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(20),
        "2,000 readers reconnected",
        || async {
            Ok(metric(addrs[1], "nebula_connections").await?
                + metric(addrs[2], "nebula_connections").await?
                >= 2002.0)
        },
    )
    .await?;
    let storm = t0.elapsed();
    sleep(Duration::from_secs(2)).await;
    let mut reports = finish(&cl, publishers).await?;
    for r in readers {
        reports.push(r.finish(Duration::from_secs(5)).await?);
    }
    let unrecovered: u64 = reports.iter().map(|r| r.unrecovered).sum();
    ensure!(unrecovered == 0, "{unrecovered} rejoins were not recovered");
    let v = check(
        &addrs[1..],
        &rooms(&["storm"]),
        &reports,
        Duration::from_secs(15),
    )
    .await?;
    verdict(
        "reconnect storm of 2,000 clients",
        &v,
        &format!("; all 2,000 back on the other nodes in {storm:.1?}"),
    )
}
