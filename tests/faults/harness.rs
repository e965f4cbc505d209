//! The fault suite's harness: a cluster of real `nebula` processes and a real `redis-server`,
//! workers that publish on a schedule and record every answer and every delivery, and a
//! checker in the Jepsen style: for every publish its answer, for every node its history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub const SECRET: &str = "fault-suite-secret-of-at-least-32-bytes";

/// One node: its address and data dir survive its restarts.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub process: Option<NebulaProcess>,
}

/// Redis and N nodes.
pub struct Cluster {
    pub redis: RedisServer,
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub async fn start(n: usize) -> Result<Cluster> {
        let redis = RedisServer::start()?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            nodes.push(Node {
                id: format!("node{i}"),
                addr,
                dir: tempfile::tempdir()?,
                process: None,
            });
        }
        let mut cluster = Cluster { redis, nodes };
        for i in 0..n {
            cluster.launch(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i, Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    fn launch(&mut self, i: usize) -> Result<()> {
        let url = self.redis.url();
        let node = &mut self.nodes[i];
        let listen = node.addr.to_string();
        let process = NebulaProcess::start(
            node.dir.path(),
            &[
                "--listen",
                &listen,
                "--redis",
                &url,
                "--secret",
                SECRET,
                "--node-id",
                &node.id,
            ],
        )?;
        node.process = Some(process);
        Ok(())
    }

    /// The last lines of every node's log, for a failure's message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.dir.path().join("nebula.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {} ({}) log tail:\n", n.id, n.addr));
            for l in &lines[lines.len().saturating_sub(25)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn process(&self, i: usize) -> Result<&NebulaProcess> {
        self.nodes[i].process.as_ref().context("node not running")
    }

    /// A real signal to node `i` (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, i: usize, name: &str) -> Result<()> {
        self.process(i)?.signal(name)
    }

    /// `kill -9` of node `i`, waiting until it is gone.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        self.signal(i, "KILL")?;
        let mut p = self.nodes[i].process.take().context("running")?;
        tokio::task::block_in_place(|| p.wait(Duration::from_secs(5)))?;
        Ok(())
    }

    /// SIGTERM of node `i`: it drains and must exit 0.
    pub fn terminate(&mut self, i: usize) -> Result<()> {
        self.signal(i, "TERM")?;
        let mut p = self.nodes[i].process.take().context("running")?;
        let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(15)))?;
        ensure!(status.success(), "node {i} exited with {status}");
        Ok(())
    }

    /// Starts node `i` again (same address, same data) and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.launch(i)?;
        self.wait_ready(i, Duration::from_secs(30)).await
    }

    pub async fn wait_ready(&self, i: usize, within: Duration) -> Result<()> {
        let addr = self.addr(i);
        eventually(within, &format!("node {i} ready"), || async move {
            Ok(http(addr, "GET", "/readyz", &[], "")
                .await
                .is_ok_and(|r| r.status == 200))
        })
        .await
    }
}

/// What a publish got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack(u64),
    Error(String),
    /// The connection ended first: stored or not, nobody was told.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub room: String,
    pub body: String,
    pub answer: Answer,
}

/// Everything a worker saw.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: Vec<Sent>,
    /// Per room, every offset this worker received (from `joined` replies and pushes), in the
    /// order received, over all its connections.
    pub streams: HashMap<String, Vec<u64>>,
    pub reconnects: u64,
    /// `since` joins answered `recovered: false`.
    pub unrecovered: u64,
    /// Publishes answered later than `slow` (seconds), counted for the report.
    pub slowest_answer: Duration,
}

/// A worker: one user, connected to the first node of its list that answers, joined to its
/// rooms, publishing every `interval` (round-robin over its rooms) without waiting for the
/// answers; it reconnects (next node) and rejoins with `since` when its connection ends.
pub struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<Report>>,
    /// Where the worker is, for the message when it does not finish.
    status: std::sync::Arc<std::sync::Mutex<String>>,
}

#[derive(Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub nodes: Vec<SocketAddr>,
    pub rooms: Vec<String>,
    /// `None`: reads only.
    pub interval: Option<Duration>,
}

impl Worker {
    pub async fn start(spec: WorkerSpec) -> Result<Worker> {
        let cookie = login(spec.nodes[0], &spec.name).await?;
        let stop = CancellationToken::new();
        let status = std::sync::Arc::new(std::sync::Mutex::new("starting".to_string()));
        let task = tokio::spawn(run_worker(spec, cookie, stop.clone(), status.clone()));
        Ok(Worker { stop, task, status })
    }

    /// Stops publishing, waits up to `grace` for outstanding answers, and reports.
    pub async fn finish(self, grace: Duration) -> Result<Report> {
        self.stop.cancel();
        let status = self.status.clone();
        tokio::time::timeout(grace + Duration::from_secs(15), self.task)
            .await
            .with_context(|| format!("worker did not finish: {}", status.lock().unwrap()))??
    }
}

async fn run_worker(
    spec: WorkerSpec,
    cookie: String,
    stop: CancellationToken,
    status: std::sync::Arc<std::sync::Mutex<String>>,
) -> Result<Report> {
    let say = |what: String| *status.lock().unwrap() = what;
    let mut report = Report::default();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seq = 0u64;
    let mut attempt = 0usize;
    let mut stopping_since: Option<Instant> = None;
    let grace = Duration::from_secs(45);
    'connection: loop {
        if stopping_since.is_some() {
            break;
        }
        let target = spec.nodes[attempt % spec.nodes.len()];
        attempt += 1;
        say(format!(
            "{}: connecting to {target} (attempt {attempt})",
            spec.name
        ));
        let mut ws = match tokio::time::timeout(
            Duration::from_secs(5),
            ws_connect(target, Some(&cookie), None),
        )
        .await
        {
            Ok(Ok(ws)) => ws,
            _ => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        if attempt > 1 {
            report.reconnects += 1;
        }
        // Join every room, from where this worker is.
        let mut next_id = 1u64;
        let mut joins: HashMap<u64, String> = HashMap::new();
        for room in &spec.rooms {
            let since = last.get(room).copied().unwrap_or(0);
            let req = json!({"id": next_id, "type": "join", "room": room, "since": since});
            joins.insert(next_id, room.clone());
            next_id += 1;
            if ws
                .send(Message::Text(req.to_string().into()))
                .await
                .is_err()
            {
                continue 'connection;
            }
        }
        say(format!("{}: joining on {target}", spec.name));
        // Publishes in flight on this connection: id -> index in report.sent.
        let mut pending: HashMap<u64, (usize, Instant)> = HashMap::new();
        let mut ticker = spec.interval.map(tokio::time::interval);
        let mut joined = HashSet::new();
        loop {
            // Checked on every turn: a timer re-armed each turn would never fire while frames
            // keep arriving from the other workers.
            if let Some(since) = stopping_since
                && (pending.is_empty() || since.elapsed() > grace)
            {
                break 'connection;
            }
            let tick = async {
                match ticker.as_mut() {
                    Some(t) if stopping_since.is_none() => {
                        t.tick().await;
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled(), if stopping_since.is_none() => {
                    stopping_since = Some(Instant::now());
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if stopping_since.is_some() => {
                    say(format!(
                        "{}: stopping on {target}, {} publishes unanswered, {} rooms joined",
                        spec.name, pending.len(), joined.len()
                    ));
                }
                _ = tick, if joined.len() == spec.rooms.len() => {
                    let room = &spec.rooms[seq as usize % spec.rooms.len()];
                    seq += 1;
                    let body = format!("{}#{seq}", spec.name);
                    let req = json!({"id": next_id, "type": "publish", "room": room, "body": body, "key": body});
                    report.sent.push(Sent { room: room.clone(), body, answer: Answer::Unknown });
                    pending.insert(next_id, (report.sent.len() - 1, Instant::now()));
                    next_id += 1;
                    if ws.send(Message::Text(req.to_string().into())).await.is_err() {
                        continue 'connection;
                    }
                }
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            // Whatever was in flight has no answer (Unknown).
                            if stopping_since.is_some() {
                                break 'connection;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue 'connection;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let v: Value = serde_json::from_str(text.as_str())?;
                    let id = v["id"].as_u64();
                    match v["type"].as_str() {
                        Some("joined") => {
                            let room = joins.remove(&id.unwrap_or(0)).context("a joined reply")?;
                            if v["recovered"] == false {
                                report.unrecovered += 1;
                            }
                            ensure!(v["more"] != true, "the fault suite keeps replies small");
                            let stream = report.streams.entry(room.clone()).or_default();
                            for m in v["messages"].as_array().cloned().unwrap_or_default() {
                                let o = m["offset"].as_u64().unwrap_or(0);
                                stream.push(o);
                                last.insert(room.clone(), o);
                            }
                            joined.insert(room);
                        }
                        Some("message") => {
                            let room = v["room"].as_str().unwrap_or("").to_string();
                            let o = v["offset"].as_u64().unwrap_or(0);
                            report.streams.entry(room.clone()).or_default().push(o);
                            last.insert(room, o);
                        }
                        Some("ack") | Some("error") => {
                            if let Some((i, at)) = id.and_then(|id| pending.remove(&id)) {
                                report.slowest_answer = report.slowest_answer.max(at.elapsed());
                                report.sent[i].answer = match v["type"].as_str() {
                                    Some("ack") => Answer::Ack(v["offset"].as_u64().unwrap_or(0)),
                                    _ => Answer::Error(v["code"].as_str().unwrap_or("?").to_string()),
                                };
                            } else if v["type"] == "error" && joins.remove(&id.unwrap_or(0)).is_some() {
                                // A join refused (the node is not ready): try again elsewhere.
                                continue 'connection;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(report)
}

/// One stored message as a node's history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub user: String,
    pub body: String,
}

/// A node's whole history of `room`, through `history` `after` pages.
pub async fn history(addr: SocketAddr, room: &str) -> Result<BTreeMap<u64, Stored>> {
    let mut c = Client::login(addr, "auditor").await?;
    c.join(room).await?;
    let mut all = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = c
            .request(json!({"type": "history", "room": room, "after": after, "limit": 200}))
            .await?;
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        for m in &msgs {
            let o = m["offset"].as_u64().context("offset")?;
            all.insert(
                o,
                Stored {
                    user: m["user"]["name"].as_str().unwrap_or("").to_string(),
                    body: m["body"].as_str().unwrap_or("").to_string(),
                },
            );
            after = o;
        }
        if page["more"] != true || msgs.is_empty() {
            return Ok(all);
        }
    }
}

/// The checker's findings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub acked: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Acked, and missing (or at another offset) on some node.
    pub lost: u64,
    /// Present, yet refused or never sent.
    pub unexpected: u64,
    /// Stored at more than one offset.
    pub duplicated: u64,
    /// Acked out of the order a connection sent them in, or received out of offset order.
    pub reordered: u64,
    /// Offsets missing from a node's log, or from what a member received.
    pub holes: u64,
    /// Nodes whose histories differ.
    pub diverged: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.holes == 0
            && self.diverged == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} refused {} unknown {} | lost {} unexpected {} duplicated {} reordered {} holes {} diverged {}",
            self.acked,
            self.refused,
            self.unknown,
            self.lost,
            self.unexpected,
            self.duplicated,
            self.reordered,
            self.holes,
            self.diverged
        )
    }
}

/// Checks every node's history of `rooms` against what the workers sent and received. Waits
/// (up to `settle`) for the nodes to agree before judging.
pub async fn check(
    nodes: &[SocketAddr],
    rooms: &[String],
    reports: &[Report],
    settle: Duration,
) -> Result<Verdict> {
    let mut v = Verdict::default();
    let sent: Vec<&Sent> = reports.iter().flat_map(|r| &r.sent).collect();
    for s in &sent {
        match s.answer {
            Answer::Ack(_) => v.acked += 1,
            Answer::Error(_) => v.refused += 1,
            Answer::Unknown => v.unknown += 1,
        }
    }
    let by_body: HashMap<(&str, &str), &Sent> = sent
        .iter()
        .map(|s| ((s.room.as_str(), s.body.as_str()), *s))
        .collect();
    for room in rooms {
        // The nodes agree within `settle` (each stores every message a few ms after the ack).
        let deadline = Instant::now() + settle;
        let histories = loop {
            let mut hs = Vec::new();
            for addr in nodes {
                hs.push(history(*addr, room).await?);
            }
            let acked_here = |h: &BTreeMap<u64, Stored>| {
                sent.iter()
                    .filter(|s| s.room == *room)
                    .all(|s| match s.answer {
                        Answer::Ack(o) => h.get(&o).is_some_and(|m| m.body == s.body),
                        _ => true,
                    })
            };
            if (hs.windows(2).all(|w| w[0] == w[1]) && hs.iter().all(acked_here))
                || Instant::now() > deadline
            {
                break hs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let reference = &histories[0];
        v.diverged += histories[1..].iter().filter(|h| *h != reference).count() as u64;
        for h in &histories {
            // Holes: offsets start at 1 and grow by 1.
            let max = h.keys().next_back().copied().unwrap_or(0);
            v.holes += max - h.len() as u64;
            // Lost: an acked message is at its offset on every node.
            for s in sent.iter().filter(|s| s.room == *room) {
                if let Answer::Ack(o) = s.answer
                    && h.get(&o).is_none_or(|m| m.body != s.body)
                {
                    v.lost += 1;
                }
            }
            // Unexpected and duplicated: every stored message was sent, not refused, once.
            let mut seen = HashSet::new();
            for m in h.values() {
                if !seen.insert(m.body.as_str()) {
                    v.duplicated += 1;
                }
                match by_body.get(&(room.as_str(), m.body.as_str())) {
                    None => v.unexpected += 1,
                    Some(s) if matches!(s.answer, Answer::Error(_)) => v.unexpected += 1,
                    Some(_) => {}
                }
            }
        }
        // Order per connection: a worker's acks in a room grow in the order it sent.
        for r in reports {
            let acks: Vec<u64> = r
                .sent
                .iter()
                .filter(|s| s.room == *room)
                .filter_map(|s| match s.answer {
                    Answer::Ack(o) => Some(o),
                    _ => None,
                })
                .collect();
            v.reordered += acks.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
            // What it received: every offset once, in order, with no hole (its rejoins ask
            // `since` the last offset it had).
            if r.unrecovered == 0
                && let Some(stream) = r.streams.get(room)
            {
                for w in stream.windows(2) {
                    if w[1] <= w[0] {
                        v.reordered += 1;
                    } else if w[1] != w[0] + 1 {
                        v.holes += w[1] - w[0] - 1;
                    }
                }
            }
        }
    }
    Ok(v)
}

/// Prints a row's outcome in one line and fails unless it is clean.
pub fn verdict(row: &str, v: &Verdict, extra: &str) -> Result<()> {
    println!("FAULT ROW {row}: {v}{extra}");
    if !v.clean() {
        bail!("{row}: {v}");
    }
    Ok(())
}
