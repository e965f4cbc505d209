//! The real binary: SIGTERM and SIGINT shut down cleanly; kill -9 loses nothing acknowledged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_keeps_history_and_exits_0() -> Result<()> {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir()?;
        let mut p = NebulaProcess::start(dir.path(), &[])?;
        let cookie = login(p.addr, "alice").await?;
        let mut a = Client::connect(p.addr, &cookie).await?;
        let mut b = Client::login(p.addr, "bob").await?;
        a.join("lobby").await?;
        b.join("lobby").await?;
        for i in 0..20 {
            assert_eq!(a.publish("lobby", &format!("m{i}")).await?["type"], "ack");
        }
        p.signal(signal)?;
        assert_eq!(a.expect_close().await?, 1001);
        assert_eq!(b.expect_close().await?, 1001);
        let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(15)))?;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal}: exit status {status:?}"
        );
        // The history, the cookie (the generated secret is kept) and the offsets survive.
        let p = NebulaProcess::start(dir.path(), &[])?;
        let mut a = Client::connect(p.addr, &cookie).await?;
        let j = a.join("lobby").await?;
        assert_eq!(j["offset"], 20);
        assert_eq!(j["messages"].as_array().unwrap().len(), 20);
        assert_eq!(a.publish("lobby", "after restart").await?["offset"], 21);
    }
    Ok(())
}

/// Publishes `keys` pipelined with idempotency keys; returns the acks seen (key -> offset).
/// Kills the process with SIGKILL once `kill_after` acks arrived (if given).
async fn publish_keys(
    p: &NebulaProcess,
    cookie: &str,
    keys: &[String],
    kill_after: Option<usize>,
) -> Result<BTreeMap<String, u64>> {
    let mut c = Client::connect(p.addr, cookie).await?;
    c.join("crash").await?;
    let (mut tx, mut rx) = c.ws.split();
    let ids: BTreeMap<u64, String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u64 + 1000, k.clone()))
        .collect();
    let sender = {
        let ids = ids.clone();
        tokio::spawn(async move {
            for (chunk, batch) in ids.iter().collect::<Vec<_>>().chunks(20).enumerate() {
                for (id, key) in batch {
                    let req = json!({"id": id, "type": "publish", "room": "crash", "body": format!("body-{key}"), "key": key});
                    if tx
                        .send(Message::Text(req.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if chunk % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut acked = BTreeMap::new();
    let pid = p.child.id();
    let mut killed = false;
    while acked.len() < keys.len() {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, rx.next()).await else {
            break;
        };
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str())?;
        if v["type"] == "ack" {
            let key = &ids[&v["id"].as_u64().unwrap()];
            acked.insert(key.clone(), v["offset"].as_u64().unwrap());
            if Some(acked.len()) == kill_after && !killed {
                std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()?;
                killed = true;
            }
        } else if v["type"] == "error" {
            anyhow::bail!("unexpected error {v}");
        }
    }
    sender.abort();
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acked_message_and_resends_store_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut p = NebulaProcess::start(dir.path(), &[])?;
    let cookie = login(p.addr, "writer").await?;
    let keys: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
    let acked = publish_keys(&p, &cookie, &keys, Some(1000)).await?;
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(5)))?;
    assert!(!status.success(), "the process was killed");
    assert!(
        acked.len() >= 1000 && acked.len() < keys.len(),
        "killed mid-burst: {} acks",
        acked.len()
    );

    let p = NebulaProcess::start(dir.path(), &[])?;
    let mut c = Client::connect(p.addr, &cookie).await?;
    let joined = c.join("crash").await?;
    let stored = c.all_messages("crash").await?;
    let last = joined["offset"].as_u64().unwrap();
    assert_eq!(stored.len() as u64, last, "offsets 1..=last are all there");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["offset"], i as u64 + 1, "contiguous offsets");
    }
    let by_offset: BTreeMap<u64, String> = stored
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (key, offset) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(&format!("body-{key}")),
            "acked {key} at {offset}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = by_offset.values().collect();
    assert_eq!(distinct.len(), by_offset.len(), "nothing stored twice");
    drop(c);

    // Resend everything with the same keys: acked ones get their first offset, nothing twice.
    let again = publish_keys(&p, &cookie, &keys, None).await?;
    assert_eq!(again.len(), keys.len());
    for (key, offset) in &acked {
        assert_eq!(again[key], *offset, "resent {key} keeps its first offset");
    }
    let mut c = Client::connect(p.addr, &cookie).await?;
    c.join("crash").await?;
    let stored = c.all_messages("crash").await?;
    assert_eq!(stored.len(), keys.len(), "each key stored exactly once");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["offset"], i as u64 + 1);
        let key = m["body"].as_str().unwrap().strip_prefix("body-").unwrap();
        assert_eq!(again[key], i as u64 + 1);
    }
    Ok(())
}
