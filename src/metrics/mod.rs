//! Prometheus metrics, registered from one table ([`metrics!`]) so that none is declared and
//! forgotten. Every Nebula name starts with `nebula_`; the standard `process_*` families are
//! read from `/proc` at scrape time ([`process`]). The message path only does atomic adds,
//! a latency observation included ([`latency`]), and one observation per broadcast (not per
//! recipient).
//!
//! The exposition is OpenMetrics text (`# EOF`, counters as `<name>_total`), served with the
//! OpenMetrics content type ([`CONTENT_TYPE`]). The dashboard's charts come from [`history`]:
//! samples of these same figures, taken by a task every 2 s.

pub mod history;
pub mod latency;
pub mod process;

use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use history::{History, Sample, Trends};
use latency::LatencyHistogram;
pub use process::ProcessStats;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Declares the `Metrics` struct and registers every field, from one list:
/// `field: Type = "name", "help", constructor;`.
macro_rules! metrics {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $name:literal, $help:literal, $make:expr; )*) => {
        /// The server's metrics.
        pub struct Metrics {
            registry: Registry,
            /// The last minutes of samples, for the dashboard.
            pub history: History,
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Metrics {
            /// Every metric, registered.
            pub fn new() -> Metrics {
                let mut registry = Registry::default();
                $( let $field: $ty = $make; registry.register($name, $help, $field.clone()); )*
                registry.register_collector(Box::new(process::ProcessCollector));
                Metrics { registry, history: History::default(), $( $field, )* }
            }
        }
    };
}

metrics! {
    /// Open WebSocket sessions.
    connections: Gauge = "nebula_connections", "Open WebSocket sessions", Gauge::default();
    /// WebSocket sessions accepted since start.
    connections_accepted: Counter = "nebula_connections_accepted", "WebSocket sessions accepted", Counter::default();
    /// Rooms with members on this node.
    rooms: Gauge = "nebula_rooms", "Rooms with members on this node", Gauge::default();
    /// Publishes stored and acknowledged by this node.
    messages_published: Counter = "nebula_messages_published", "Publishes stored and acknowledged by this node", Counter::default();
    /// Message pushes queued to sessions.
    messages_delivered: Counter = "nebula_messages_delivered", "Message pushes queued to sessions", Counter::default();
    /// Publishes refused (rate limited, unavailable, not joined...).
    publishes_refused: Counter = "nebula_publishes_refused", "Publishes answered with an error", Counter::default();
    /// Connections closed because their outbound budget overflowed (close 4008).
    slow_consumers: Counter = "nebula_slow_consumers", "Sessions closed with 4008 (outbound budget overflowed)", Counter::default();
    /// HTTP requests refused with 429.
    rate_limited: Counter = "nebula_http_rate_limited", "HTTP requests refused with 429", Counter::default();
    /// Frames from clients that were malformed or refused.
    bad_frames: Counter = "nebula_bad_frames", "Malformed or refused client frames", Counter::default();
    /// Sessions closed for a WebSocket protocol violation (1002, 1007, 1009).
    protocol_closes: Counter = "nebula_protocol_closes", "Sessions closed for a WebSocket protocol violation (1002, 1007, 1009)", Counter::default();
    /// Tasks alive (sessions and server tasks), set at scrape time.
    tasks_alive: Gauge = "nebula_tasks_alive", "Tasks alive (sessions and server tasks)", Gauge::default();
    /// 1 while the node accepts connections (set at scrape time).
    ready: Gauge = "nebula_ready", "1 while the node accepts new connections", Gauge::default();
    /// Cluster mode: 1 while the node follows the cluster through Redis (set at scrape time).
    redis_connected: Gauge = "nebula_redis_connected", "1 while this node follows the cluster through Redis (cluster mode)", Gauge::default();
    /// Publish to delivery on this node (the message's server time to the moment its push is
    /// queued to the members here).
    delivery_latency: LatencyHistogram = "nebula_delivery_latency_seconds", "Time from publish (the message's timestamp) to its delivery to this node's members", LatencyHistogram::default();
    /// Publish request received to its ack queued.
    ack_latency: LatencyHistogram = "nebula_ack_latency_seconds", "Time from a publish request to its ack", LatencyHistogram::default();
    /// SQLite transactions that failed (their publishes got `unavailable`, replicated writes
    /// were retried).
    store_commit_failures: Counter = "nebula_store_commit_failures", "Store transactions that failed (retried for replicated messages)", Counter::default();
    /// Cluster: publish scripts sent to Redis (one per batch).
    redis_publish_batches: Counter = "nebula_redis_publish_batches", "Publish batches sent to Redis (one script each)", Counter::default();
    /// Cluster: publish batches whose outcome was unknown for a while (timeout, lost
    /// connection) and was resolved later.
    redis_uncertain_batches: Counter = "nebula_redis_uncertain_batches", "Publish batches whose outcome had to be resolved after a timeout or a lost connection", Counter::default();
    /// Cluster: times this node repaired Redis from its log (data loss or numbering behind).
    redis_repairs: Counter = "nebula_redis_repairs", "Repairs of Redis from this node's log after a data loss or a lagging numbering", Counter::default();
    /// Cluster: offsets this node could not get from the cluster (older than the stream).
    history_holes: Counter = "nebula_history_holes", "Offsets this node could not fetch from the cluster (older than the Redis stream)", Counter::default();
    /// Cluster: how far behind the cluster's feed this node's ingest is, in milliseconds.
    ingest_lag: Gauge = "nebula_ingest_lag_milliseconds", "How far this node's ingest is behind the cluster feed, in milliseconds", Gauge::default();
    /// Cluster: full presence resyncs with another node's entries in Redis.
    presence_resyncs: Counter = "nebula_presence_resyncs", "Full presence resyncs with another node's entries in Redis", Counter::default();
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// The exposition (OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Records a latency.
    pub fn observe(histogram: &LatencyHistogram, elapsed: Duration) {
        histogram.observe(elapsed);
    }

    /// The figures the dashboard charts, now.
    pub fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            published: self.messages_published.get(),
            delivered: self.messages_delivered.get(),
            connections: self.connections.get(),
            resident_bytes: process::resident_bytes(),
            delivery: self.delivery_latency.snapshot(),
            ack: self.ack_latency.snapshot(),
        }
    }

    /// The charted series of the last minutes, up to now.
    pub fn trends(&self) -> Trends {
        Trends::new(&self.history.samples(), &self.sample())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type() {
        let m = Metrics::new();
        m.messages_published.inc();
        Metrics::observe(&m.delivery_latency, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("# TYPE nebula_messages_published counter"));
        assert!(text.contains("nebula_messages_published_total 1"));
        assert!(text.contains("# TYPE nebula_delivery_latency_seconds histogram"));
        // The lock-free histogram encodes as a classic one: cumulative buckets, sum, count.
        assert!(text.contains("nebula_delivery_latency_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(text.contains("nebula_delivery_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("nebula_delivery_latency_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("nebula_delivery_latency_seconds_count 1\n"));
        assert!(text.contains("nebula_delivery_latency_seconds_sum 0.003\n"));
        assert!(text.contains("nebula_ack_latency_seconds_count 0\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
        assert!(text.contains("# TYPE process_cpu_seconds counter"));
        assert!(text.ends_with("# EOF\n"));
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap();
        assert!(rss.parse::<f64>().unwrap() > 1e6, "{rss}");
    }
}
