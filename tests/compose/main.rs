//! The docker-compose topology for real: the images built as on a machine without a registry
//! (scripts/build-images.sh, with this build's binary), three replicas of the one `nebula`
//! service behind HAProxy, Redis and Prometheus. Every chat check goes through the load
//! balancer, the only door users have; Docker kills, cuts and restarts replicas underneath.
//! It needs a Docker daemon, a compose tool and, the first time, debootstrap (and root): when
//! one is missing it fails and says which.

#[path = "../common/mod.rs"]
mod common;
mod docker;
mod lb;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Client, http, login, ws_connect};
use docker::{Project, docker, exit_status, node_id_of, wait_ready};
use futures_util::StreamExt;
use lb::*;
use serde_json::Value;
use tokio::time::sleep;

/// What the steps share. `replicas` (container ids), `nodes` (their node ids) and `users` (one
/// client served by each) are in the same order.
struct Cluster {
    project: Project,
    lb: SocketAddr,
    replicas: Vec<String>,
    nodes: Vec<String>,
    users: Vec<Client>,
    /// Every acknowledged publish.
    acked: Log,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_the_lb_survive_a_kill_a_partition_and_a_stop() -> Result<()> {
    let tool = docker::prerequisites()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    docker::build_images(root)?;
    let mut cluster = up(Project::new(tool, root)).await?;
    chat(&mut cluster).await?;
    prometheus_scrapes_every_replica(&cluster).await?;
    kill_and_restart(&mut cluster).await?;
    partition(&mut cluster).await?;
    stop(cluster).await
}

/// `up`, until every replica is ready; then three node ids through the LB, each kept in its
/// replica's own data dir, and the page's WebSocket (Origin = the LB's address) accepted.
async fn up(project: Project) -> Result<Cluster> {
    let lb = project.lb();
    let start = Instant::now();
    project.compose(&[
        "up",
        "-d",
        "--scale",
        "nebula=3",
        "nebula",
        "lb",
        "prometheus",
    ])?;
    let returned = start.elapsed();
    let replicas = project.replicas()?;
    ensure!(replicas.len() == 3, "3 replicas expected, got {replicas:?}");
    wait_ready(&replicas, Duration::from_secs(60)).await?;
    let ready = start.elapsed();

    // Three node ids in `welcome` through the LB (whose health checks run every second).
    let cookie = login(lb, "scout").await?;
    let mut seen = BTreeSet::new();
    let mut held = Vec::new();
    let mut connections = 0;
    while seen.len() < 3 {
        let c = Client::connect(lb, &cookie).await?;
        connections += 1;
        seen.insert(c.node.clone());
        held.push(c);
        if held.len() == 6 {
            ensure!(
                start.elapsed() < ready + Duration::from_secs(10),
                "10 s after the replicas were ready, the LB reaches only {seen:?}"
            );
            held.clear();
            sleep(Duration::from_millis(250)).await;
        }
    }
    println!(
        "up -> all 3 replicas ready: {ready:.1?} (`up -d` returned after {returned:.1?}; \
         all 3 served through the LB after {:.1?}, {connections} connections)",
        start.elapsed()
    );
    drop(held);
    let nodes = replicas
        .iter()
        .map(|r| node_id_of(r))
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        nodes.iter().cloned().collect::<BTreeSet<_>>() == seen,
        "node ids in the data dirs {nodes:?} differ from those in welcome {seen:?}"
    );
    // The replica compares Origin with Host, which the LB passes unchanged.
    let mut page = ws_connect(lb, Some(&cookie), Some(&format!("http://{lb}"))).await?;
    let welcome = page.next().await.context("no welcome")??;
    ensure!(welcome.to_text()?.contains("\"welcome\""), "{welcome:?}");
    let foreign = ws_connect(lb, Some(&cookie), Some("http://elsewhere.example")).await;
    ensure!(
        foreign.is_err(),
        "a foreign Origin was accepted through the LB"
    );

    Ok(Cluster {
        project,
        lb,
        replicas,
        nodes,
        users: Vec::new(),
        acked: Log::new(),
    })
}

/// Users on the three replicas chat in one room: each sees every message, in one offset order.
async fn chat(cl: &mut Cluster) -> Result<()> {
    for (i, node) in cl.nodes.iter().enumerate() {
        let mut c = client_on(cl.lb, &format!("user{i}"), node).await?;
        c.join(ROOM).await?;
        cl.users.push(c);
    }
    for round in 0..10 {
        for (i, c) in cl.users.iter_mut().enumerate() {
            publish_acked(c, &format!("u{i}-{round}"), &mut cl.acked).await?;
        }
    }
    let want: Vec<_> = cl.acked.clone().into_iter().collect();
    for c in &mut cl.users {
        let got = receive(c, &cl.acked).await?;
        ensure!(got == want, "{} saw {got:?}, not the acked order", c.node);
    }
    Ok(())
}

/// Prometheus finds the replicas through DNS and scrapes all three.
async fn prometheus_scrapes_every_replica(cl: &Cluster) -> Result<()> {
    let start = Instant::now();
    loop {
        let targets: Vec<Value> =
            match http(cl.project.prometheus(), "GET", "/api/v1/targets", &[], "").await {
                Ok(r) => r.json()["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                Err(_) => Vec::new(), // not listening yet
            };
        let nebula: Vec<&Value> = targets
            .iter()
            .filter(|t| t["labels"]["job"] == "nebula")
            .collect();
        let up: BTreeSet<&str> = nebula
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str())
            .collect();
        if nebula.len() == 3 && up.len() == 3 {
            println!(
                "Prometheus scrapes 3 nebula targets {up:?} after {:.1?}",
                start.elapsed()
            );
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus targets after 60 s: {nebula:?}"
        );
        sleep(Duration::from_millis(500)).await;
    }
}

/// `docker kill` of one replica: the LB closes its users' connections and sends new ones
/// elsewhere, the others hear that its user left and keep serving; `docker start`: it comes
/// back with its node id and catches up, one history everywhere.
async fn kill_and_restart(cl: &mut Cluster) -> Result<()> {
    let names: Vec<String> = (0..3).map(|i| format!("user{i}")).collect();
    presence_is(&mut cl.users, &names).await?;
    let victim = cl.replicas[2].clone();
    let killed = Instant::now();
    docker(&["kill", &victim])?;
    let mut gone = cl.users.pop().context("three users")?;
    closed_within(&mut gone, Duration::from_secs(20)).await?;
    println!(
        "the killed replica's client was closed by the LB {:.1?} after the kill",
        killed.elapsed()
    );
    for c in cl.users.iter_mut() {
        let left = tokio::time::timeout(Duration::from_secs(15), c.next_of("member_left"))
            .await
            .context("no member_left within 15 s")??;
        ensure!(left["user"]["name"] == "user2", "{left}");
    }
    let took = killed.elapsed();
    ensure!(took < Duration::from_secs(15), "member_left took {took:?}");
    println!(
        "member_left of the killed replica's user reached the others {took:.1?} after the kill"
    );
    lb_avoids(cl.lb, &cl.nodes[2]).await?;
    for i in 0..10 {
        publish_acked(
            &mut cl.users[i % 2],
            &format!("while-killed-{i}"),
            &mut cl.acked,
        )
        .await?;
    }

    docker(&["start", &victim])?;
    wait_ready(&cl.replicas, Duration::from_secs(60)).await?;
    ensure!(
        node_id_of(&victim)? == cl.nodes[2],
        "the restarted replica changed its node id"
    );
    let log = converge(cl.lb, &cl.nodes, &cl.acked, &[]).await?;
    ensure!(log == cl.acked, "stored but never acked: {log:?}");
    println!(
        "the restarted replica is ready and caught up {:.1?} after the kill",
        killed.elapsed()
    );
    let mut back = client_on(cl.lb, "user2", &cl.nodes[2]).await?;
    back.join(ROOM).await?;
    cl.users.push(back);
    Ok(())
}

/// One replica cut from Redis (`docker network disconnect` of the back network): its client,
/// connected before the cut, gets `unavailable`; the LB sends new users elsewhere; the others
/// ack as before. Connected again: it acks again, its client gets what it missed, and every
/// replica holds every acknowledged message.
async fn partition(cl: &mut Cluster) -> Result<()> {
    let back = cl.project.network("back")?;
    let cut = cl.replicas[1].clone();
    docker(&["network", "disconnect", &back, &cut])?;
    let cut_at = Instant::now();
    let mut attempt = 0;
    let mut next_body = || {
        attempt += 1;
        format!("from-the-cut-{attempt}")
    };
    let mut refused = Vec::new();
    // A publish sent right at the cut: its script may or may not have reached Redis, so its
    // answer waits until the replica reaches Redis again, and then it must be the truth.
    let at_cut = cl.users[1]
        .send(serde_json::json!({"type": "publish", "room": ROOM, "body": "at-the-cut"}))
        .await?;
    // The replica notices within seconds (its /readyz turns 503, the LB sends new users
    // elsewhere); from then on its publishes get `unavailable` at once.
    lb_avoids(cl.lb, &cl.nodes[1]).await?;
    let body = next_body();
    let t0 = Instant::now();
    let r = cl.users[1].publish(ROOM, &body).await?;
    ensure!(
        r["code"] == "unavailable",
        "publish on the cut replica: {r}"
    );
    ensure!(
        t0.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        t0.elapsed()
    );
    refused.push(body);
    println!(
        "the cut replica answers `unavailable` at once, {:.1?} after the cut",
        cut_at.elapsed()
    );
    let mut during = Log::new();
    for i in 0..10 {
        publish_acked(
            &mut cl.users[if i % 2 == 0 { 0 } else { 2 }],
            &format!("during-the-cut-{i}"),
            &mut during,
        )
        .await?;
        if i % 4 == 0 {
            let body = next_body();
            let r = cl.users[1].publish(ROOM, &body).await?;
            ensure!(r["code"] == "unavailable", "the cut replica: {r}");
            refused.push(body);
        }
    }
    cl.acked.extend(during.clone());
    // Its /readyz says 503.
    lb_avoids(cl.lb, &cl.nodes[1]).await?;

    docker(&["network", "connect", &back, &cut])?;
    let healed = Instant::now();
    loop {
        let r = cl.users[1].publish(ROOM, "after-the-cut").await?;
        if r["type"] == "ack" {
            cl.acked.insert(
                r["offset"].as_u64().context("offset")?,
                "after-the-cut".into(),
            );
            break;
        }
        ensure!(r["code"] == "unavailable", "{r}");
        ensure!(
            healed.elapsed() < Duration::from_secs(15),
            "the reconnected replica still refuses"
        );
        sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the reconnected replica acks again {:.1?} after the reconnect",
        healed.elapsed()
    );
    // The publish sent at the cut has its answer now.
    let r = cl.users[1].reply(at_cut).await?;
    match r["type"].as_str() {
        Some("ack") => {
            cl.acked
                .insert(r["offset"].as_u64().context("offset")?, "at-the-cut".into());
        }
        _ if r["code"] == "unavailable" => refused.push("at-the-cut".into()),
        _ => bail!("the publish sent at the cut: {r}"),
    }
    println!("the publish sent at the cut was answered {}", r["type"]);
    receive(&mut cl.users[1], &during).await?;
    wait_ready(&cl.replicas, Duration::from_secs(30)).await?;
    let log = converge(cl.lb, &cl.nodes, &cl.acked, &refused).await?;
    // v1.1 "an answer is the truth": a publish answered with an error is never stored, not
    // even after the network is back (the script refuses to run past its deadline).
    let stored = log.values().filter(|b| refused.contains(b)).count();
    ensure!(
        stored == 0,
        "{stored} of {} publishes answered `unavailable` on the cut replica were stored later",
        refused.len()
    );
    println!(
        "{} acknowledged messages on all 3 replicas in one order; {stored} of {} refused ones stored",
        cl.acked.len(),
        refused.len()
    );
    Ok(())
}

/// `stop`: every replica drains (its users get 1001 through the LB) and exits 0; `down -v`
/// leaves nothing behind.
async fn stop(mut cl: Cluster) -> Result<()> {
    let start = Instant::now();
    cl.project.compose(&["stop"])?;
    println!("compose stop took {:.1?}", start.elapsed());
    for c in &mut cl.users {
        let code = c.expect_close().await?;
        ensure!(
            code == 1001,
            "{} closed with {code} at the stop, not 1001",
            c.node
        );
    }
    for r in &cl.replicas {
        let status = exit_status(r)?;
        ensure!(status == "exited 0", "replica {r} after the stop: {status}");
    }
    let volumes = cl.project.volumes()?;
    cl.project.compose(&["down", "-v", "--remove-orphans"])?;
    let left = cl.project.leftovers(&volumes)?;
    ensure!(left.is_empty(), "left after down -v: {left}");
    cl.project.passed = true;
    Ok(())
}
