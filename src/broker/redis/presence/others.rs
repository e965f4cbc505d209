//! Other nodes' presence, as this node knows it: applied from the presence log when a node's
//! versions follow, read again whole when they do not, and dropped when the node is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::streams::StreamId;

use crate::auth::User;
use crate::broker::redis::keys;
use crate::broker::{BrokerError, BrokerEvents, PresenceEvent};
use crate::metrics::Metrics;

/// A presence entry: (room, user id).
pub(super) type Key = (Arc<str>, Arc<str>);

/// What an entry of the presence log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogKind {
    Present,
    Absent,
    /// The node rewrote its whole hash: read it again.
    Resync,
    /// The node left the cluster.
    Gone,
}

/// An entry of the presence log.
#[derive(Debug, Clone)]
pub(in crate::broker::redis) struct LogEntry {
    node: Arc<str>,
    room: Arc<str>,
    user: User,
    kind: LogKind,
    version: u64,
}

impl LogEntry {
    pub(in crate::broker::redis) fn from_stream(entry: &StreamId) -> Option<LogEntry> {
        let node: Arc<str> = keys::field(entry, "node").into();
        let kind = match keys::field(entry, "p").as_str() {
            "1" => LogKind::Present,
            "0" => LogKind::Absent,
            "r" => LogKind::Resync,
            "g" => LogKind::Gone,
            _ => return None,
        };
        let f = keys::field(entry, "f");
        let (room, uid) = f.split_once('|').unwrap_or(("", ""));
        Some(LogEntry {
            node,
            room: room.into(),
            user: User {
                id: uid.into(),
                name: keys::field(entry, "n").into(),
            },
            kind,
            version: keys::field(entry, "v").parse().unwrap_or(0),
        })
    }
}

/// Another node, as this node last read it.
#[derive(Default)]
struct NodeView {
    version: u64,
    entries: HashMap<Key, Arc<str>>,
}

/// Every other node's presence, as this node last read it; changes are told to the hub.
pub(super) struct Others {
    me: Arc<str>,
    conn: ConnectionManager,
    events: Arc<dyn BrokerEvents>,
    metrics: Arc<Metrics>,
    views: HashMap<Arc<str>, NodeView>,
}

impl Others {
    pub(super) fn new(
        me: Arc<str>,
        conn: ConnectionManager,
        events: Arc<dyn BrokerEvents>,
        metrics: Arc<Metrics>,
    ) -> Others {
        Others {
            me,
            conn,
            events,
            metrics,
            views: HashMap::new(),
        }
    }

    /// Compares every other node's liveness and version with this node's view of it.
    pub(super) async fn sync(&mut self) -> Result<(), BrokerError> {
        let me = self.me.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::NODES)
            .query_async(&mut self.conn)
            .await?;
        let nodes: Vec<Arc<str>> = nodes
            .into_iter()
            .filter(|n| n.as_str() != &*me)
            .map(Arc::from)
            .collect();
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("EXISTS").arg(keys::liveness(n));
            pipe.cmd("GET").arg(keys::presence_version(n));
        }
        let answers: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
        let mut alive = HashSet::new();
        for (n, pair) in nodes.iter().zip(answers.chunks(2)) {
            let live: bool = redis::from_redis_value_ref(&pair[0])?;
            let version: Option<u64> = redis::from_redis_value_ref(&pair[1])?;
            if !live {
                let withdrawn: i64 = redis::Script::new(keys::WITHDRAW_SCRIPT)
                    .key(keys::liveness(n))
                    .key(keys::NODES)
                    .key(keys::presence(n))
                    .key(keys::presence_version(n))
                    .arg(&**n)
                    .invoke_async(&mut self.conn)
                    .await?;
                if withdrawn == 1 {
                    tracing::info!(node = %n, "node liveness expired; withdrew its presence");
                }
                continue;
            }
            alive.insert(n.clone());
            let known = self.views.get(n).map(|v| v.version);
            if known != Some(version.unwrap_or(0)) {
                self.resync(n).await?;
            }
        }
        let gone: Vec<Arc<str>> = self
            .views
            .keys()
            .filter(|n| !alive.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.forget(&n).await;
        }
        Ok(())
    }

    /// Reads a node's whole presence and tells the hub what differs from this node's view.
    async fn resync(&mut self, node: &Arc<str>) -> Result<(), BrokerError> {
        let (version, fields): (Option<String>, HashMap<String, String>) =
            redis::Script::new(keys::SNAPSHOT_SCRIPT)
                .key(keys::presence(node))
                .key(keys::presence_version(node))
                .invoke_async(&mut self.conn)
                .await?;
        self.metrics.presence_resyncs.inc();
        let entries: HashMap<Key, Arc<str>> = fields
            .into_iter()
            .filter_map(|(f, name)| {
                let (room, uid) = f.split_once('|')?;
                Some(((room.into(), uid.into()), name.into()))
            })
            .collect();
        let old = self.views.remove(node).unwrap_or_default();
        for (key, name) in &old.entries {
            if !entries.contains_key(key) {
                self.emit(node, key, name, false).await;
            }
        }
        for (key, name) in &entries {
            if !old.entries.contains_key(key) {
                self.emit(node, key, name, true).await;
            }
        }
        let version = version.and_then(|v| v.parse().ok()).unwrap_or(0);
        self.views
            .insert(node.clone(), NodeView { version, entries });
        Ok(())
    }

    /// A node left: each of its users leaves (for the hub: unless present elsewhere).
    async fn forget(&mut self, node: &Arc<str>) {
        if let Some(view) = self.views.remove(node) {
            for (key, name) in &view.entries {
                self.emit(node, key, name, false).await;
            }
        }
    }

    async fn emit(&self, node: &Arc<str>, (room, uid): &Key, name: &Arc<str>, present: bool) {
        let user = User {
            id: uid.clone(),
            name: name.clone(),
        };
        let (room, node) = (room.clone(), node.clone());
        let event = if present {
            PresenceEvent::Joined { room, node, user }
        } else {
            PresenceEvent::Left { room, node, user }
        };
        self.events.presence(event).await;
    }

    /// A change another node logged: applied when it follows this node's view of that node,
    /// else the node is read again.
    pub(super) async fn apply_log(&mut self, entry: LogEntry) {
        if entry.node == self.me {
            return;
        }
        let node = entry.node.clone();
        let follows = match entry.kind {
            LogKind::Gone => {
                self.forget(&node).await;
                return;
            }
            LogKind::Resync => false,
            LogKind::Present | LogKind::Absent => match self.views.get(&node) {
                Some(view) if entry.version <= view.version => return, // Already seen.
                Some(view) => entry.version == view.version + 1,
                None => false,
            },
        };
        if !follows {
            if let Err(e) = self.resync(&node).await {
                tracing::debug!(error = %e, "presence resync failed; the next heartbeat retries");
            }
            return;
        }
        let key = (entry.room.clone(), entry.user.id.clone());
        let present = entry.kind == LogKind::Present;
        let view = self.views.get_mut(&node).expect("checked above");
        view.version = entry.version;
        let changed = if present {
            view.entries
                .insert(key.clone(), entry.user.name.clone())
                .is_none()
        } else {
            view.entries.remove(&key).is_some()
        };
        if changed {
            self.emit(&node, &key, &entry.user.name, present).await;
        }
    }
}
