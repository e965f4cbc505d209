//! Prometheus metrics, registered from one table ([`metrics!`]) so that none is declared and
//! forgotten. Every Nebula name starts with `nebula_`; the standard `process_*` families are
//! read from `/proc` at scrape time. The message path only does atomic adds and one histogram
//! observation per broadcast (not per recipient).
//!
//! The exposition is OpenMetrics text (`# EOF`, counters as `<name>_total`), served with the
//! OpenMetrics content type ([`CONTENT_TYPE`]).

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, in seconds: 0.25 ms to ~8 s.
fn latency() -> Histogram {
    Histogram::new([
        0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0,
    ])
}

/// Declares the `Metrics` struct and registers every field, from one list:
/// `field: Type = "name", "help", constructor;`.
macro_rules! metrics {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $name:literal, $help:literal, $make:expr; )*) => {
        /// The server's metrics.
        pub struct Metrics {
            registry: Registry,
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Metrics {
            /// Every metric, registered.
            pub fn new() -> Metrics {
                let mut registry = Registry::default();
                $( let $field: $ty = $make; registry.register($name, $help, $field.clone()); )*
                registry.register_collector(Box::new(ProcessCollector));
                Metrics { registry, $( $field, )* }
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
    delivery_latency: Histogram = "nebula_delivery_latency_seconds", "Time from publish (the message's timestamp) to its delivery to this node's members", latency();
    /// Publish request received to its ack queued.
    ack_latency: Histogram = "nebula_ack_latency_seconds", "Time from a publish request to its ack", latency();
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
    /// Cluster: how far behind the cluster's feed this node's ingest is, in seconds.
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
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }
}

/// The standard process metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// Linux reports CPU times and start times in USER_HZ, which is 100 on every mainstream build.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc/self` (zeros where unreadable).
    pub fn read() -> ProcessStats {
        let mut s = ProcessStats::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            s.cpu_seconds = (field(14).unwrap_or(0) + field(15).unwrap_or(0)) as f64 / USER_HZ;
            s.threads = field(20).unwrap_or(0);
            s.virtual_bytes = field(23).unwrap_or(0);
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                s.start_time_seconds = boot + start as f64 / USER_HZ;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            s.resident_bytes = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024);
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            s.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        s
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                s.threads as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
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
