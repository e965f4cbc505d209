//! Presence in the cluster, and other things nodes tell each other every second: liveness,
//! logouts, figures for the dashboard.
//!
//! - **This node's presence** is a mirror (room, user) kept here and written to Redis as a hash
//!   `nebula:presence:<node>` with a version `nebula:pver:<node>`; each change also goes to the
//!   presence log. A change is never dropped: the mirror holds the truth and the changes not
//!   yet written are a set; after any doubt (a failed write, a Redis outage, finding itself
//!   withdrawn by the others after a freeze) the node rewrites its whole hash.
//! - **Liveness**: a key per node refreshed every second, 5 s lifetime. A node whose key
//!   expired is withdrawn by the others (atomically with the check), who tell their members it
//!   left. A node that finds it was withdrawn announces itself again (`member_joined`).
//! - **Other nodes' presence**: each node keeps every other node's entries and version; the
//!   presence log brings changes at once, the heartbeat compares versions and resyncs a node
//!   whose version does not follow, so views converge within seconds of any recovery.

mod others;

pub(super) use others::LogEntry;
use others::{Key, Others};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{COMMAND_TIMEOUT, Shared, keys};
use crate::auth::{Revocations, User};
use crate::broker::{BrokerError, BrokerEvents};
use crate::metrics::Metrics;
use crate::store::{Store, WriteOp};

/// Presence log entries the ingest may hand over before it waits.
pub(in crate::broker::redis) const LOG_QUEUE: usize = 10_000;
/// How often a node refreshes its liveness and compares the others' versions.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node's liveness lifetime: a node silent this long is withdrawn.
const LIVENESS_TTL: Duration = Duration::from_secs(5);
/// Changes per presence script.
const CHANGES_PER_SCRIPT: usize = 500;

/// This node's presence: the truth, and what is not yet written to Redis.
#[derive(Default)]
struct Mirror {
    entries: HashMap<Key, User>,
    /// Changed entries not yet written, with the user (for a leave, the mirror no longer has it).
    dirty: HashMap<Key, User>,
    /// Rewrite the whole hash at the next chance (after a failure or a withdrawal).
    rewrite: bool,
    /// Logouts not yet shared.
    revoked: Vec<(Arc<str>, u64)>,
}

/// The broker's handle on the presence task. Cheap calls: they update the mirror and wake
/// the task.
pub(super) struct Handle {
    mirror: Arc<Mutex<Mirror>>,
    wake: Arc<Notify>,
    conn: ConnectionManager,
    node: Arc<str>,
}

impl Handle {
    pub(super) fn set(&self, room: &Arc<str>, user: &User, present: bool) {
        let key = (room.clone(), user.id.clone());
        {
            let mut mirror = self.mirror.lock().expect("presence mirror lock");
            if present {
                mirror.entries.insert(key.clone(), user.clone());
            } else {
                mirror.entries.remove(&key);
            }
            mirror.dirty.insert(key, user.clone());
        }
        self.wake.notify_one();
    }

    pub(super) fn revoked(&self, user: &Arc<str>, generation: u64) {
        self.mirror
            .lock()
            .expect("presence mirror lock")
            .revoked
            .push((user.clone(), generation));
        self.wake.notify_one();
    }

    /// Every live node's figures (the dashboard); empty when Redis does not answer.
    pub(super) async fn figures(&self) -> Vec<crate::broker::NodeFigures> {
        let mut conn = self.conn.clone();
        let read = async {
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(keys::NODES)
                .query_async(&mut conn)
                .await?;
            let mut pipe = redis::pipe();
            for n in &nodes {
                pipe.cmd("HGETALL").arg(keys::stats(n));
            }
            let all: Vec<std::collections::BTreeMap<String, String>> =
                pipe.query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(
                nodes
                    .into_iter()
                    .zip(all)
                    .filter(|(_, f)| !f.is_empty())
                    .map(|(node, figures)| crate::broker::NodeFigures { node, figures })
                    .collect::<Vec<_>>(),
            )
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, read).await {
            Ok(Ok(mut figures)) => {
                figures.sort_by(|a, b| a.node.cmp(&b.node));
                figures
            }
            _ => Vec::new(),
        }
    }

    /// Removes this node from the cluster's presence (graceful shutdown): the others tell
    /// their members at once.
    pub(super) async fn withdraw(&self) {
        let node = &*self.node;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(keys::liveness(node)).ignore();
        pipe.cmd("SREM").arg(keys::NODES).arg(node).ignore();
        pipe.cmd("DEL").arg(keys::presence(node)).ignore();
        pipe.cmd("INCR").arg(keys::presence_version(node)).ignore();
        pipe.cmd("DEL").arg(keys::stats(node)).ignore();
        log_entry(&mut pipe, node, "", "", "g", 0);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => tracing::info!(node, "presence withdrawn"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not withdraw presence"),
            Err(_) => tracing::warn!("withdrawing presence timed out"),
        }
        self.mirror
            .lock()
            .expect("presence mirror lock")
            .entries
            .clear();
    }
}

fn log_entry(pipe: &mut redis::Pipeline, node: &str, field: &str, name: &str, kind: &str, v: u64) {
    pipe.cmd("XADD")
        .arg(keys::PLOG)
        .arg("MAXLEN")
        .arg("~")
        .arg(keys::PLOG_CAP)
        .arg("*")
        .arg("node")
        .arg(node)
        .arg("f")
        .arg(field)
        .arg("n")
        .arg(name)
        .arg("p")
        .arg(kind)
        .arg("v")
        .arg(v)
        .ignore();
}

pub(super) struct Setup {
    pub conn: ConnectionManager,
    pub shared: Arc<Shared>,
    pub events: Arc<dyn BrokerEvents>,
    pub revocations: Arc<Revocations>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub log: mpsc::Receiver<LogEntry>,
}

struct Task {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    revocations: Arc<Revocations>,
    store: Store,
    metrics: Arc<Metrics>,
    mirror: Arc<Mutex<Mirror>>,
    others: Others,
    revoked_version: Option<u64>,
    presence_script: redis::Script,
}

/// Starts the presence task. This node's entries from an earlier life are dropped first.
pub(super) async fn start(
    setup: Setup,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Handle, BrokerError> {
    let node = setup.shared.node.clone();
    let mut conn = setup.conn.clone();
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(keys::presence(&node)).ignore();
    pipe.cmd("INCR").arg(keys::presence_version(&node)).ignore();
    log_entry(&mut pipe, &node, "", "", "r", 0);
    pipe.query_async::<()>(&mut conn).await?;
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let wake = Arc::new(Notify::new());
    let others = Others::new(
        setup.shared.node.clone(),
        setup.conn.clone(),
        setup.events.clone(),
        setup.metrics.clone(),
    );
    let task = Task {
        conn: setup.conn.clone(),
        shared: setup.shared,
        revocations: setup.revocations,
        store: setup.store,
        metrics: setup.metrics,
        mirror: mirror.clone(),
        others,
        revoked_version: None,
        presence_script: redis::Script::new(keys::PRESENCE_SCRIPT),
    };
    tracker.spawn(task.run(setup.log, wake.clone(), stop));
    Ok(Handle {
        mirror,
        wake,
        conn: setup.conn,
        node,
    })
}

impl Task {
    async fn run(
        mut self,
        mut log: mpsc::Receiver<LogEntry>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                entry = log.recv() => match entry {
                    Some(entry) => self.others.apply_log(entry).await,
                    None => return,
                },
                _ = wake.notified() => self.flush().await,
                _ = beat.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        tracing::debug!(error = %e, "heartbeat failed; presence is rewritten when redis is back");
                        self.mirror.lock().expect("presence mirror lock").rewrite = true;
                    }
                }
            }
        }
    }

    /// Writes this node's pending presence changes and logouts; on failure, the whole hash is
    /// rewritten later and the logouts are kept.
    async fn flush(&mut self) {
        let (dirty, revoked, rewrite) = {
            let mut mirror = self.mirror.lock().expect("presence mirror lock");
            (
                std::mem::take(&mut mirror.dirty),
                std::mem::take(&mut mirror.revoked),
                mirror.rewrite,
            )
        };
        if !revoked.is_empty()
            && let Err(e) = self.share_revoked(&revoked).await
        {
            tracing::debug!(error = %e, "logouts not shared yet");
            self.mirror
                .lock()
                .expect("presence mirror lock")
                .revoked
                .extend(revoked);
        }
        if rewrite {
            // A rewrite writes the whole mirror, these changes included.
            return;
        }
        if dirty.is_empty() {
            return;
        }
        let node = self.shared.node.clone();
        let changes: Vec<(Key, User, bool)> = {
            let mirror = self.mirror.lock().expect("presence mirror lock");
            dirty
                .into_iter()
                .map(|(key, user)| {
                    let present = mirror.entries.contains_key(&key);
                    (key, user, present)
                })
                .collect()
        };
        for chunk in changes.chunks(CHANGES_PER_SCRIPT) {
            let mut call = self.presence_script.prepare_invoke();
            call.key(keys::presence(&node))
                .key(keys::presence_version(&node))
                .key(keys::PLOG);
            call.arg(&*node).arg(keys::PLOG_CAP);
            for ((room, uid), user, present) in chunk {
                call.arg(keys::presence_field(room, uid))
                    .arg(&*user.name)
                    .arg(if *present { "1" } else { "0" });
            }
            let written =
                tokio::time::timeout(COMMAND_TIMEOUT, call.invoke_async::<u64>(&mut self.conn))
                    .await;
            if !matches!(written, Ok(Ok(_))) {
                tracing::debug!(
                    "presence change not written; the whole presence is rewritten when redis answers"
                );
                self.mirror.lock().expect("presence mirror lock").rewrite = true;
                return;
            }
        }
    }

    async fn share_revoked(&mut self, revoked: &[(Arc<str>, u64)]) -> Result<(), BrokerError> {
        let script = redis::Script::new(keys::REVOKE_SCRIPT);
        for (user, generation) in revoked {
            let _: u64 = script
                .key(keys::REVOKED)
                .key(keys::REVOKED_VER)
                .arg(&**user)
                .arg(*generation)
                .invoke_async(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    /// Replaces this node's hash with the whole mirror, and tells the others to read it.
    async fn rewrite(&mut self) -> Result<(), BrokerError> {
        let node = self.shared.node.clone();
        let entries: Vec<(String, Arc<str>)> = {
            let mut mirror = self.mirror.lock().expect("presence mirror lock");
            mirror.dirty.clear();
            mirror
                .entries
                .iter()
                .map(|((room, uid), user)| (keys::presence_field(room, uid), user.name.clone()))
                .collect()
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(keys::presence(&node)).ignore();
        for chunk in entries.chunks(CHANGES_PER_SCRIPT) {
            let mut hset = redis::cmd("HSET");
            hset.arg(keys::presence(&node));
            for (field, name) in chunk {
                hset.arg(field).arg(&**name);
            }
            pipe.add_command(hset).ignore();
        }
        pipe.cmd("INCR").arg(keys::presence_version(&node)).ignore();
        log_entry(&mut pipe, &node, "", "", "r", 0);
        pipe.query_async::<()>(&mut self.conn).await?;
        self.mirror.lock().expect("presence mirror lock").rewrite = false;
        tracing::info!(entries = entries.len(), "presence re-asserted in redis");
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), BrokerError> {
        let node = self.shared.node.clone();
        let added: i64 = redis::Script::new(keys::HEARTBEAT_SCRIPT)
            .key(keys::liveness(&node))
            .key(keys::NODES)
            .arg(&*node)
            .arg(LIVENESS_TTL.as_millis() as u64)
            .arg(self.shared.epoch().unwrap_or_default())
            .invoke_async(&mut self.conn)
            .await?;
        let must_rewrite = {
            let mut mirror = self.mirror.lock().expect("presence mirror lock");
            if added == 1 && !mirror.entries.is_empty() {
                // New, or withdrawn by the others while frozen or cut off: announce again.
                mirror.rewrite = true;
            }
            mirror.rewrite
        };
        if must_rewrite {
            self.rewrite().await?;
        }
        self.others.sync().await?;
        self.sync_revocations().await?;
        self.publish_stats().await
    }

    /// Applies logouts made on other nodes.
    async fn sync_revocations(&mut self) -> Result<(), BrokerError> {
        let version: Option<u64> = redis::cmd("GET")
            .arg(keys::REVOKED_VER)
            .query_async(&mut self.conn)
            .await?;
        if version == self.revoked_version {
            return Ok(());
        }
        let all: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(keys::REVOKED)
            .query_async(&mut self.conn)
            .await?;
        for (user, generation) in all {
            let user: Arc<str> = user.into();
            if self.revocations.apply(user.clone(), generation) {
                let op = WriteOp::Revoke {
                    user,
                    generation,
                    at: crate::auth::now_secs(),
                };
                if self.store.write(op).await.is_err() {
                    return Err(BrokerError::Closing);
                }
            }
        }
        self.revoked_version = version;
        Ok(())
    }

    /// This node's figures, for every node's dashboard.
    async fn publish_stats(&mut self) -> Result<(), BrokerError> {
        let m = &self.metrics;
        let node = &*self.shared.node;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(keys::stats(node))
            .arg("connections")
            .arg(m.connections.get())
            .arg("rooms")
            .arg(m.rooms.get())
            .arg("published")
            .arg(m.messages_published.get())
            .arg("delivered")
            .arg(m.messages_delivered.get())
            .arg("ready")
            .arg(i64::from(self.shared.accepting.load(Ordering::Acquire)))
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(keys::stats(node))
            .arg(LIVENESS_TTL.as_millis() as u64)
            .ignore();
        pipe.query_async::<()>(&mut self.conn).await?;
        Ok(())
    }
}
