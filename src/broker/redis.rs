//! The cluster broker: Redis numbers every room's messages and carries them to every node.
//!
//! - **Publish**: one Lua script per message, atomically: check the idempotency key, `INCR` the
//!   room's offset, `XADD` to the room's capped stream (entry id = offset), `PUBLISH` on the
//!   room's channel. The ack leaves when the script returned: the message is in Redis (run it
//!   with AOF `appendfsync always` for the guarantee to hold across a Redis restart).
//! - **Ingest**: one task per node subscribes to every room's channel (a pattern), and for each
//!   message stores it in this node's SQLite and hands it to the hub, in offset order per room.
//!   A gap in the offsets, a (re)connection or a start reads what is missing from the streams.
//! - **Presence**: a hash `nebula:presence` of `node|room|user -> name`, events on channel
//!   `nebula:presence`, and a liveness key per node refreshed every second (TTL 5 s); a node whose
//!   key expired is removed by the others, which send `member_left` for its users.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError, Publish};
use crate::auth::User;
use crate::hub::{Hub, ShardMsg};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Message};
use crate::store::{Store, WriteOp};

/// Entries kept in each room's Redis stream (the catch-up log of a node that was away).
pub const STREAM_CAP: u64 = 100_000;
/// How often a node refreshes its liveness key, and the key's lifetime.
const HEARTBEAT: Duration = Duration::from_secs(1);
const LIVENESS_TTL: Duration = Duration::from_secs(5);
/// Publishes waiting for Redis before new ones get `unavailable`.
const PUBLISH_QUEUE: usize = 10_000;
/// Scripts in flight at once.
const PUBLISH_CONCURRENCY: usize = 256;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

const PUBLISH_SCRIPT: &str = r#"
if KEYS[3] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {0, tonumber(prev)} end
end
local offset = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], offset .. '-0', 'u', ARGV[2], 'n', ARGV[3], 'b', ARGV[4], 't', ARGV[5])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], offset, 'PX', 600000) end
if redis.call('SADD', 'nebula:rooms', ARGV[1]) == 1 then end
redis.call('PUBLISH', 'nebula:msg:' .. ARGV[1],
  cjson.encode({r = ARGV[1], o = offset, u = ARGV[2], n = ARGV[3], b = ARGV[4], t = ARGV[5]}))
return {1, offset}
"#;

fn seq_key(room: &str) -> String {
    format!("nebula:{{{room}}}:seq")
}
fn stream_key(room: &str) -> String {
    format!("nebula:{{{room}}}:log")
}
fn idem_key(room: &str, user: &str, key: &str) -> String {
    format!("nebula:{{{room}}}:idem:{user}:{key}")
}
fn liveness_key(node: &str) -> String {
    format!("nebula:node:{node}")
}
const PRESENCE_HASH: &str = "nebula:presence";
const PRESENCE_CHANNEL: &str = "nebula:presence";
const NODES_SET: &str = "nebula:nodes";

/// A message as the script publishes it.
#[derive(Deserialize)]
struct Wire {
    r: String,
    o: u64,
    u: String,
    n: String,
    b: String,
    t: String,
}

/// A presence event between nodes.
#[derive(Serialize, Deserialize)]
struct PresenceEvent {
    /// "join", "leave", or "gone" (the node left: all its users leave).
    k: String,
    node: String,
    #[serde(default)]
    room: String,
    #[serde(default)]
    user: Option<User>,
}

/// This node's present (room, user id) pairs. A std mutex: the presence task and `close` take
/// it briefly, never across an await.
type LocalPresence = std::sync::Mutex<HashMap<(Arc<str>, Arc<str>), User>>;

enum PresenceChange {
    Set {
        room: Arc<str>,
        user: User,
        present: bool,
    },
}

/// The Redis broker.
pub struct RedisBroker {
    node: Arc<str>,
    publishes: mpsc::Sender<Publish>,
    presence: mpsc::Sender<PresenceChange>,
    conn: ConnectionManager,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// This node's present (room, user) pairs, to withdraw on close and re-assert on reconnect.
    local: Arc<LocalPresence>,
}

fn redis_err(e: redis::RedisError) -> BrokerError {
    // Some Redis errors display as an empty string; the debug form always says what happened.
    let text = e.to_string();
    BrokerError::Redis(if text.trim().is_empty() {
        format!("{e:?}")
    } else {
        text
    })
}

impl RedisBroker {
    /// Connects to Redis (failing if it cannot, at start) and starts the broker's tasks. The
    /// receiver fires once this node has read everything it missed (after the hub's shards
    /// run: the catch-up delivers through them).
    pub async fn start(
        url: &str,
        node: Arc<str>,
        store: Store,
        hub: Hub,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> Result<(Arc<RedisBroker>, tokio::sync::oneshot::Receiver<()>), BrokerError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| BrokerError::Redis(format!("no answer from {url}")))?
        .map_err(redis_err)?;
        let (publishes, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (presence, presence_rx) = mpsc::channel(PUBLISH_QUEUE);
        let stop = CancellationToken::new();
        let local = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let broker = Arc::new(RedisBroker {
            node: node.clone(),
            publishes,
            presence,
            conn: conn.clone(),
            stop: stop.clone(),
            metrics: metrics.clone(),
            local: local.clone(),
        });
        // Our own entries from a previous life of this node id are stale: withdraw them.
        withdraw_node(&mut conn.clone(), &node)
            .await
            .map_err(redis_err)?;
        let connected = Arc::new(AtomicBool::new(false));
        let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
        tracker.spawn(publisher(
            publish_rx,
            conn.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        tracker.spawn(presence_loop(
            presence_rx,
            conn.clone(),
            node.clone(),
            stop.clone(),
            local,
        ));
        let ingest = Ingest {
            client,
            conn,
            node,
            store: store.clone(),
            hub,
            last: store.initial_offsets().clone(),
            metrics,
            connected,
            caught_up: Some(caught_up_tx),
        };
        tracker.spawn(ingest.run(stop));
        Ok((broker, caught_up))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, p: Publish) {
        if let Err(e) = self.publishes.try_send(p) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.metrics.publishes_refused.inc();
            p.reply.send(protocol::error(
                Some(p.request_id),
                ErrorCode::Unavailable,
                "the cluster is unavailable",
            ));
        }
    }

    fn presence(&self, room: &Arc<str>, user: &User, present: bool) {
        let change = PresenceChange::Set {
            room: room.clone(),
            user: user.clone(),
            present,
        };
        if self.presence.try_send(change).is_err() {
            tracing::warn!(%room, "presence change dropped: queue full");
        }
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.stop.cancel();
            let mut conn = self.conn.clone();
            match tokio::time::timeout(COMMAND_TIMEOUT, withdraw_node(&mut conn, &self.node)).await
            {
                Ok(Ok(())) => tracing::info!(node = %self.node, "presence withdrawn"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not withdraw presence"),
                Err(_) => tracing::warn!("withdrawing presence timed out"),
            }
            if let Ok(mut local) = self.local.lock() {
                local.clear();
            }
        })
    }
}

/// Removes a node's presence entries and liveness, and tells the others it is gone.
async fn withdraw_node(conn: &mut ConnectionManager, node: &str) -> redis::RedisResult<()> {
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(PRESENCE_HASH)
        .query_async(conn)
        .await?;
    let prefix = format!("{node}|");
    let mine: Vec<&String> = fields.iter().filter(|f| f.starts_with(&prefix)).collect();
    let mut pipe = redis::pipe();
    if !mine.is_empty() {
        pipe.cmd("HDEL").arg(PRESENCE_HASH).arg(&mine).ignore();
    }
    pipe.cmd("DEL").arg(liveness_key(node)).ignore();
    pipe.cmd("SREM").arg(NODES_SET).arg(node).ignore();
    let event = PresenceEvent {
        k: "gone".into(),
        node: node.into(),
        room: String::new(),
        user: None,
    };
    pipe.cmd("PUBLISH")
        .arg(PRESENCE_CHANNEL)
        .arg(serde_json::to_string(&event).expect("encodes"))
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// Runs publish scripts, many in flight, and answers each publish.
async fn publisher(
    rx: mpsc::Receiver<Publish>,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let script = Arc::new(redis::Script::new(PUBLISH_SCRIPT));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    stream
        .take_until(stop.cancelled_owned())
        .map(|p| {
            let mut conn = conn.clone();
            let script = script.clone();
            let metrics = metrics.clone();
            async move {
                let ts = super::local::now_ms().to_string();
                let idem = p
                    .key
                    .as_ref()
                    .map_or(String::new(), |k| idem_key(&p.room, &p.user.id, k));
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(seq_key(&p.room))
                    .key(stream_key(&p.room))
                    .key(idem)
                    .arg(&*p.room)
                    .arg(&*p.user.id)
                    .arg(&*p.user.name)
                    .arg(&*p.body)
                    .arg(ts)
                    .arg(STREAM_CAP);
                let result = tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    invocation.invoke_async::<(i64, i64)>(&mut conn),
                )
                .await;
                match result {
                    Ok(Ok((stored, offset))) => {
                        if stored == 1 {
                            metrics.messages_published.inc();
                        }
                        p.reply
                            .send(protocol::ack(p.request_id, &p.room, offset as u64));
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "publish script failed");
                        metrics.publishes_refused.inc();
                        p.reply.send(protocol::error(
                            Some(p.request_id),
                            ErrorCode::Unavailable,
                            "the cluster is unavailable",
                        ));
                    }
                    Err(_) => {
                        metrics.publishes_refused.inc();
                        p.reply.send(protocol::error(
                            Some(p.request_id),
                            ErrorCode::Unavailable,
                            "the cluster is unavailable",
                        ));
                    }
                }
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .for_each(|()| async {})
        .await;
}

fn presence_field(node: &str, room: &str, user_id: &str) -> String {
    format!("{node}|{room}|{user_id}")
}

/// Shares this node's presence changes, refreshes its liveness, and removes dead nodes.
async fn presence_loop(
    mut rx: mpsc::Receiver<PresenceChange>,
    conn: ConnectionManager,
    node: Arc<str>,
    stop: CancellationToken,
    local: Arc<LocalPresence>,
) {
    let mut conn = conn;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut was_down = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            change = rx.recv() => {
                let Some(PresenceChange::Set { room, user, present }) = change else { return };
                {
                    let mut local = local.lock().expect("presence lock");
                    if present {
                        local.insert((room.clone(), user.id.clone()), user.clone());
                    } else {
                        local.remove(&(room.clone(), user.id.clone()));
                    }
                }
                let field = presence_field(&node, &room, &user.id);
                let mut pipe = redis::pipe();
                if present {
                    pipe.cmd("HSET").arg(PRESENCE_HASH).arg(&field).arg(&*user.name).ignore();
                } else {
                    pipe.cmd("HDEL").arg(PRESENCE_HASH).arg(&field).ignore();
                }
                let event = PresenceEvent {
                    k: if present { "join" } else { "leave" }.into(),
                    node: node.to_string(),
                    room: room.to_string(),
                    user: Some(user),
                };
                pipe.cmd("PUBLISH").arg(PRESENCE_CHANNEL).arg(serde_json::to_string(&event).expect("encodes")).ignore();
                if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                    tracing::debug!(error = %e, "presence change not shared; re-asserted on reconnect");
                    was_down = true;
                }
            }
            _ = beat.tick() => {
                match heartbeat(&mut conn, &node, &local, was_down).await {
                    Ok(()) => was_down = false,
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat failed");
                        was_down = true;
                    }
                }
            }
        }
    }
}

/// Refreshes this node's liveness (and, after an outage, its presence entries), and withdraws
/// nodes whose liveness expired.
async fn heartbeat(
    conn: &mut ConnectionManager,
    node: &str,
    local: &LocalPresence,
    reassert: bool,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(liveness_key(node))
        .arg(1)
        .arg("PX")
        .arg(LIVENESS_TTL.as_millis() as u64)
        .ignore();
    pipe.cmd("SADD").arg(NODES_SET).arg(node).ignore();
    if reassert {
        let entries: Vec<(String, String)> = local
            .lock()
            .expect("presence lock")
            .iter()
            .map(|((room, uid), user)| (presence_field(node, room, uid), user.name.to_string()))
            .collect();
        for (field, name) in entries {
            pipe.cmd("HSET")
                .arg(PRESENCE_HASH)
                .arg(field)
                .arg(name)
                .ignore();
        }
    }
    pipe.query_async::<()>(conn).await?;
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(NODES_SET)
        .query_async(conn)
        .await?;
    for other in nodes.iter().filter(|n| n.as_str() != node) {
        let alive: bool = redis::cmd("EXISTS")
            .arg(liveness_key(other))
            .query_async(conn)
            .await?;
        if !alive {
            // Only the node whose SREM removed it does the withdrawal, once.
            let removed: i64 = redis::cmd("SREM")
                .arg(NODES_SET)
                .arg(other)
                .query_async(conn)
                .await?;
            if removed == 1 {
                tracing::info!(node = %other, "node liveness expired; withdrawing its presence");
                withdraw_node(conn, other).await?;
            }
        }
    }
    Ok(())
}

/// Receives every message and presence event of the cluster, in order per room.
struct Ingest {
    client: redis::Client,
    conn: ConnectionManager,
    node: Arc<str>,
    store: Store,
    hub: Hub,
    /// Latest offset stored and delivered on this node, per room.
    last: HashMap<Arc<str>, u64>,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
    /// Fired once, after the first catch-up: the node is in step with the cluster.
    caught_up: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Ingest {
    async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.session(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    self.connected.store(false, Ordering::Release);
                    self.metrics.redis_connected.set(0);
                    tracing::warn!(error = %e, "redis subscription lost; reconnecting");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One subscription: subscribe, catch up, then follow the live feed until it breaks.
    async fn session(&mut self, stop: &CancellationToken) -> Result<(), BrokerError> {
        let mut pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Unavailable)?
            .map_err(redis_err)?;
        pubsub.psubscribe("nebula:msg:*").await.map_err(redis_err)?;
        pubsub
            .subscribe(PRESENCE_CHANNEL)
            .await
            .map_err(redis_err)?;
        let (mut sink, mut messages) = pubsub.split();
        // Live messages now queue up in the subscription; fill everything missed before them.
        self.catch_up_all().await?;
        self.resync_presence().await?;
        self.connected.store(true, Ordering::Release);
        self.metrics.redis_connected.set(1);
        if let Some(tx) = self.caught_up.take() {
            let _ = tx.send(());
        }
        tracing::info!(node = %self.node, "following the cluster through redis");
        let mut ping = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                msg = messages.next() => {
                    let Some(msg) = msg else { return Err(BrokerError::Unavailable) };
                    let payload: String = msg.get_payload().map_err(redis_err)?;
                    if msg.get_channel_name() == PRESENCE_CHANNEL {
                        self.presence_event(&payload).await;
                    } else {
                        self.live(&payload).await?;
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| BrokerError::Unavailable)?
                        .map_err(redis_err)?;
                }
            }
        }
    }

    async fn live(&mut self, payload: &str) -> Result<(), BrokerError> {
        let Ok(w) = serde_json::from_str::<Wire>(payload) else {
            tracing::warn!("undecodable message on a nebula channel");
            return Ok(());
        };
        let room: Arc<str> = w.r.as_str().into();
        let last = self.last.get(&room).copied().unwrap_or(0);
        if w.o <= last {
            return Ok(());
        }
        if w.o > last + 1 {
            self.catch_up(&room, w.o - 1).await?;
        }
        let message = Message {
            room,
            offset: w.o,
            user: User {
                id: w.u.into(),
                name: w.n.into(),
            },
            body: w.b.into(),
            ts: w.t.parse().unwrap_or(0),
        };
        self.ingest(message).await;
        Ok(())
    }

    /// Stores a message on this node and delivers it, if it is the room's next offset.
    async fn ingest(&mut self, message: Message) {
        let last = self.last.entry(message.room.clone()).or_insert(0);
        if message.offset <= *last {
            return;
        }
        if message.offset != *last + 1 {
            tracing::warn!(room = %message.room, last = *last, offset = message.offset,
                "offsets missing from the redis stream (trimmed): this node's history has a hole");
        }
        *last = message.offset;
        let room = message.room.clone();
        if self
            .store
            .write(WriteOp::Insert(message.clone()))
            .await
            .is_err()
        {
            tracing::warn!(%room, "store stopped; message delivered but not stored");
        }
        self.hub.send(&room, ShardMsg::Deliver(message)).await;
    }

    /// Reads the room's stream from after our last offset up to `until` (inclusive).
    async fn catch_up(&mut self, room: &Arc<str>, until: u64) -> Result<(), BrokerError> {
        loop {
            let from = self.last.get(room).copied().unwrap_or(0) + 1;
            if from > until {
                return Ok(());
            }
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream_key(room))
                .arg(format!("{from}-0"))
                .arg(format!("{until}-0"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await
                .map_err(redis_err)?;
            if reply.ids.is_empty() {
                tracing::warn!(%room, from, until, "catch-up found nothing in the stream");
                return Ok(());
            }
            for entry in reply.ids {
                let offset: u64 = entry
                    .id
                    .split('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                let get = |k: &str| entry.get::<String>(k).unwrap_or_default();
                let message = Message {
                    room: room.clone(),
                    offset,
                    user: User {
                        id: get("u").into(),
                        name: get("n").into(),
                    },
                    body: get("b").into(),
                    ts: get("t").parse().unwrap_or(0),
                };
                self.ingest(message).await;
            }
        }
    }

    /// Every room: read what was published while this node was away.
    async fn catch_up_all(&mut self) -> Result<(), BrokerError> {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg("nebula:rooms")
            .query_async(&mut self.conn)
            .await
            .map_err(redis_err)?;
        for chunk in rooms.chunks(500) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("GET").arg(seq_key(room));
            }
            let seqs: Vec<Option<u64>> =
                pipe.query_async(&mut self.conn).await.map_err(redis_err)?;
            for (room, seq) in chunk.iter().zip(seqs) {
                let room: Arc<str> = room.as_str().into();
                let seq = seq.unwrap_or(0);
                if seq > self.last.get(&room).copied().unwrap_or(0) {
                    self.catch_up(&room, seq).await?;
                }
            }
        }
        Ok(())
    }

    /// Loads the presence of every live node but this one, replacing what the shards hold.
    async fn resync_presence(&mut self) -> Result<(), BrokerError> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(PRESENCE_HASH)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_err)?;
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut entries = Vec::new();
        for (field, name) in all {
            let mut parts = field.splitn(3, '|');
            let (Some(node), Some(room), Some(uid)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if node == &*self.node {
                continue;
            }
            if !alive.contains_key(node) {
                let live: bool = redis::cmd("EXISTS")
                    .arg(liveness_key(node))
                    .query_async(&mut self.conn)
                    .await
                    .map_err(redis_err)?;
                alive.insert(node.to_string(), live);
            }
            if alive[node] {
                entries.push((
                    Arc::<str>::from(room),
                    Arc::<str>::from(node),
                    User {
                        id: uid.into(),
                        name: name.into(),
                    },
                ));
            }
        }
        self.hub.reset_remote(entries).await;
        Ok(())
    }

    async fn presence_event(&mut self, payload: &str) {
        let Ok(e) = serde_json::from_str::<PresenceEvent>(payload) else {
            return;
        };
        if e.node == *self.node {
            return;
        }
        let node: Arc<str> = e.node.into();
        match (e.k.as_str(), e.user) {
            ("gone", _) => {
                let node = node.clone();
                self.hub
                    .to_all(|| ShardMsg::NodeGone { node: node.clone() })
                    .await;
            }
            (kind @ ("join" | "leave"), Some(user)) => {
                let room: Arc<str> = e.room.into();
                let msg = ShardMsg::RemotePresence {
                    room: room.clone(),
                    node,
                    user,
                    present: kind == "join",
                };
                self.hub.send(&room, msg).await;
            }
            _ => {}
        }
    }
}
