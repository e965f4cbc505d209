//! Replies that would be too big for one frame are paged (v1.1): at most 1 MiB and `more:
//! true`, the rest through `history` with `after`; never a dropped connection.

mod common;

use anyhow::{Result, ensure};
use common::*;
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

async fn fill(c: &mut Client, room: &str, n: usize, body: &str) -> Result<()> {
    for chunk in 0..n.div_ceil(20) {
        let mut ids = Vec::new();
        for _ in 0..20.min(n - chunk * 20) {
            ids.push(
                c.send(json!({"type": "publish", "room": room, "body": body}))
                    .await?,
            );
        }
        for id in ids {
            let r = c.reply(id).await?;
            ensure!(r["type"] == "ack", "{r}");
        }
        c.backlog.clear();
    }
    Ok(())
}

fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// Reads `history` `after` pages until `more` is false; every page at most 1 MiB.
async fn page_after(c: &mut Client, room: &str, mut after: u64) -> Result<Vec<u64>> {
    let mut got = Vec::new();
    loop {
        let id = c
            .send(json!({"type": "history", "room": room, "after": after, "limit": 200}))
            .await?;
        let page = c.reply(id).await?;
        ensure!(page["type"] == "history", "{page}");
        let o = offsets(&page["messages"]);
        got.extend(&o);
        if page["more"] != true {
            return Ok(got);
        }
        ensure!(!o.is_empty(), "more without messages");
        after = *o.last().unwrap();
    }
}

/// The size of the frame that carried the reply with `id`, re-encoded: serde_json writes the
/// same bytes (compact, same order) as the server.
fn size(v: &Value) -> usize {
    v.to_string().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_replies_are_paged_and_the_connection_survives() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    let mut writer = Client::login(s.addr, "writer").await?;
    writer.join("plain").await?;
    writer.join("escapes").await?;
    fill(&mut writer, "plain", 250, &"x".repeat(4096)).await?;
    // 4,095 control characters: each escapes to six bytes in JSON (24 KiB a message).
    let heavy = format!("{}!", "\u{1}".repeat(4095));
    fill(&mut writer, "escapes", 200, &heavy).await?;

    let mut reader = Client::login(s.addr, "reader").await?;
    // A join with since after 250 missed messages of 4 KiB (1 MiB+ in all).
    let j = reader
        .request(json!({"type": "join", "room": "plain", "since": 0}))
        .await?;
    ensure!(
        j["type"] == "joined" && j["recovered"] == true && j["more"] == true,
        "{}",
        j["more"]
    );
    ensure!(size(&j) <= MIB, "joined is {} bytes", size(&j));
    let mut got = offsets(&j["messages"]);
    let rest = page_after(&mut reader, "plain", *got.last().unwrap()).await?;
    got.extend(rest);
    ensure!(
        got == (1..=250).collect::<Vec<_>>(),
        "every message once, in order"
    );

    // A plain join of a room whose last 50 messages are 24 KiB each.
    let j = reader.join("escapes").await?;
    ensure!(j["more"] == true && size(&j) <= MIB, "{} bytes", size(&j));
    let mut got = offsets(&j["messages"]);
    ensure!(
        got.first() == Some(&151),
        "a plain join starts at the latest 50: {:?}",
        got.first()
    );
    got.extend(page_after(&mut reader, "escapes", *got.last().unwrap()).await?);
    ensure!(got == (151..=200).collect::<Vec<_>>(), "{got:?}");

    // history limit 200 of escape-heavy bodies: the newest 200 below the end, paged.
    let h = reader
        .request(json!({"type": "history", "room": "escapes", "limit": 200}))
        .await?;
    ensure!(h["more"] == true && size(&h) <= MIB, "{} bytes", size(&h));
    let mut got = offsets(&h["messages"]);
    ensure!(got.first() == Some(&1));
    got.extend(page_after(&mut reader, "escapes", *got.last().unwrap()).await?);
    ensure!(got == (1..=200).collect::<Vec<_>>());

    // Still connected and served.
    ensure!(reader.request(json!({"type": "ping"})).await?["type"] == "pong");
    s.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_presence_reply_is_sent_whole() -> Result<()> {
    let mut s = TestServer::start(|_| {}).await;
    // 1,000 users whose names are 32 four-byte characters: a 170 KB member list in one frame.
    // (Every join tells every member before it: a bigger crowd costs the test, not the point.)
    let name = "🦀".repeat(32);
    let mut members = Vec::new();
    for i in 0..1000 {
        let cookie = login(s.addr, &name).await?;
        let ws = RawWs::connect(s.addr, &cookie).await?;
        members.push((i, ws));
    }
    for (i, ws) in &mut members {
        ws.text(&json!({"id": 1, "type": "join", "room": "crowd"}).to_string())
            .await?;
        let _ = i;
    }
    let mut asker = Client::login(s.addr, "asker").await?;
    asker.join("crowd").await?;
    let p = asker
        .request(json!({"type": "presence", "room": "crowd"}))
        .await?;
    ensure!(p["type"] == "presence", "{p}");
    let listed = p["members"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(listed == 1001, "{listed} members listed");
    println!("presence reply: {} bytes", size(&p));
    drop(members);
    s.shutdown().await;
    Ok(())
}
