//! Users of the compose test, who reach the replicas through the load balancer only: a client
//! on a chosen replica, each replica's history, and what the LB does with a replica that is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::sleep;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Client, login};

pub const ROOM: &str = "compose";
/// A room's messages: offset -> body.
pub type Log = BTreeMap<u64, String>;

/// A client logged in as `name` whose WebSocket, opened through the LB, is served by `node`:
/// the LB chooses, so it connects again (holding the misses, so that the LB moves on) until it
/// lands there. A replica that just became ready may need one more LB health check (1 s).
pub async fn client_on(lb: SocketAddr, name: &str, node: &str) -> Result<Client> {
    let cookie = login(lb, name).await?;
    let start = Instant::now();
    let mut misses = Vec::new();
    loop {
        let c = Client::connect(lb, &cookie).await?;
        if c.node == node {
            return Ok(c);
        }
        misses.push(c);
        if misses.len() == 6 {
            let seen: Vec<String> = misses.drain(..).map(|c| c.node).collect();
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "for 10 s, connections through the LB reached {seen:?}, never {node}"
            );
            sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One history per replica, each read by a client that the replica serves.
async fn histories(lb: SocketAddr, nodes: &[String]) -> Result<Vec<Log>> {
    let mut all = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = client_on(lb, &format!("reader{i}"), node).await?;
        c.join(ROOM).await?;
        let log = c
            .all_messages(ROOM)
            .await?
            .iter()
            .map(|m| {
                let offset = m["offset"].as_u64().context("offset")?;
                Ok((offset, m["body"].as_str().context("body")?.to_string()))
            })
            .collect::<Result<Log>>()?;
        all.push(log);
    }
    Ok(all)
}

/// Waits until the replicas' histories are one and the same log, numbered 1..=N without a hole,
/// holding every acknowledged message (none lost) and nothing else but, at most, messages whose
/// bodies are in `refused`. Returns that log.
pub async fn converge(
    lb: SocketAddr,
    nodes: &[String],
    acked: &Log,
    refused: &[String],
) -> Result<Log> {
    let start = Instant::now();
    loop {
        let logs = histories(lb, nodes).await?;
        let log = &logs[0];
        let whole = logs.iter().all(|l| l == log)
            && log.keys().copied().eq(1..=log.len() as u64)
            && acked.iter().all(|(o, b)| log.get(o) == Some(b))
            && log
                .iter()
                .all(|(o, b)| acked.contains_key(o) || refused.contains(b));
        if whole {
            return Ok(log.clone());
        }
        if start.elapsed() > Duration::from_secs(15) {
            for (node, log) in nodes.iter().zip(&logs) {
                let lost: Vec<_> = acked
                    .iter()
                    .filter(|(o, b)| log.get(o) != Some(b))
                    .collect();
                let other: Vec<_> = log.iter().filter(|(o, _)| !acked.contains_key(o)).collect();
                eprintln!(
                    "{node}: {} messages; acked, not there: {lost:?}; not acked: {other:?}",
                    log.len()
                );
            }
            bail!("the replicas' histories do not converge on what was acknowledged");
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// Publishes `body`, expects an ack and records it.
pub async fn publish_acked(c: &mut Client, body: &str, acked: &mut Log) -> Result<()> {
    let r = c.publish(ROOM, body).await?;
    ensure!(r["type"] == "ack", "publish {body:?} on {}: {r}", c.node);
    acked.insert(r["offset"].as_u64().context("offset")?, body.to_string());
    Ok(())
}

/// The `message` pushes a client receives until it holds every offset of `want`, in arrival
/// order.
pub async fn receive(c: &mut Client, want: &Log) -> Result<Vec<(u64, String)>> {
    let mut got = Vec::new();
    let mut missing: BTreeSet<u64> = want.keys().copied().collect();
    while !missing.is_empty() {
        let v = c
            .next_push()
            .await
            .with_context(|| format!("{} waiting for offsets {missing:?}", c.node))?;
        if v["type"] == "message" {
            let offset = v["offset"].as_u64().context("offset")?;
            missing.remove(&offset);
            got.push((offset, v["body"].as_str().unwrap_or_default().to_string()));
        }
    }
    Ok(got)
}

/// Waits (at most 10 s: a few failed health checks) until the LB sends new users anywhere but
/// to `node`: six new connections in a row, every one served elsewhere.
pub async fn lb_avoids(lb: SocketAddr, node: &str) -> Result<()> {
    let start = Instant::now();
    let cookie = login(lb, "newcomer").await?;
    let mut elsewhere = 0;
    while elsewhere < 6 {
        let c = Client::connect(lb, &cookie).await?;
        if c.node == node {
            elsewhere = 0;
            sleep(Duration::from_millis(200)).await;
        } else {
            elsewhere += 1;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the LB still sends new users to {node} after 10 s"
        );
    }
    Ok(())
}

/// Waits until every client sees exactly `names` in the room.
pub async fn presence_is(users: &mut [Client], names: &[String]) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for c in users.iter_mut() {
            let p = c.request(json!({"type": "presence", "room": ROOM})).await?;
            let mut seen: Vec<String> = p["members"]
                .as_array()
                .context("presence without members")?
                .iter()
                .map(|u| u["name"].as_str().unwrap_or_default().to_string())
                .collect();
            seen.sort();
            all &= seen == names;
        }
        if all {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "presence did not converge on {names:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most `limit`) until `c`'s connection is closed under it.
pub async fn closed_within(c: &mut Client, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, c.ws.next()).await {
            Err(_) => bail!("{}'s connection still open after {limit:?}", c.node),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ok(()),
            Ok(Some(Ok(_))) => {}
        }
    }
}
