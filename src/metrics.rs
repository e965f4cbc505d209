//! Prometheus metrics. Every name starts with `nebula_`. The message path only does atomic adds
//! (one per broadcast, not one per recipient).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The server's counters and gauges.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// WebSocket sessions accepted since start.
    pub connections_accepted: Counter,
    /// Rooms with members on this node.
    pub rooms: Gauge,
    /// Publishes stored and acknowledged.
    pub messages_published: Counter,
    /// Message pushes queued to sessions.
    pub messages_delivered: Counter,
    /// Publishes refused (rate limited, unavailable, not joined...).
    pub publishes_refused: Counter,
    /// Connections closed because their outbox overflowed (close 4008).
    pub slow_consumers: Counter,
    /// HTTP requests refused with 429.
    pub rate_limited: Counter,
    /// Frames from clients that were malformed or refused.
    pub bad_frames: Counter,
    /// Tasks alive (sessions and server tasks), read at scrape time.
    pub tasks_alive: Gauge,
    /// 1 while the node accepts connections.
    pub ready: Gauge,
    /// Cluster mode: 1 while the node follows the cluster through Redis.
    pub redis_connected: Gauge,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut m = Metrics::default();
        let r = &mut m.registry;
        r.register(
            "nebula_connections",
            "Open WebSocket sessions",
            m.connections.clone(),
        );
        r.register(
            "nebula_connections_accepted",
            "WebSocket sessions accepted",
            m.connections_accepted.clone(),
        );
        r.register(
            "nebula_rooms",
            "Rooms with members on this node",
            m.rooms.clone(),
        );
        r.register(
            "nebula_messages_published",
            "Publishes stored and acknowledged",
            m.messages_published.clone(),
        );
        r.register(
            "nebula_messages_delivered",
            "Message pushes queued to sessions",
            m.messages_delivered.clone(),
        );
        r.register(
            "nebula_publishes_refused",
            "Publishes refused with an error",
            m.publishes_refused.clone(),
        );
        r.register(
            "nebula_slow_consumers",
            "Sessions closed with 4008",
            m.slow_consumers.clone(),
        );
        r.register(
            "nebula_http_rate_limited",
            "HTTP requests refused with 429",
            m.rate_limited.clone(),
        );
        r.register(
            "nebula_bad_frames",
            "Malformed or refused client frames",
            m.bad_frames.clone(),
        );
        r.register("nebula_tasks_alive", "Tasks alive", m.tasks_alive.clone());
        r.register(
            "nebula_ready",
            "1 while accepting connections",
            m.ready.clone(),
        );
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
