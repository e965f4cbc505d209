//! The dashboard's recent past: a sample of the figures it charts every [`EVERY`], the last
//! [`KEPT`] of them (5 minutes), taken by one task ([`run`]) off the message path, and the
//! series drawn from them ([`Trends`]).
//!
//! A sample holds counters and histogram counts, not rates: rates and percentiles are the
//! differences between samples, computed when a page asks (so a sample costs a few loads).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::latency::Snapshot;

/// How often the sampler samples.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 5 minutes at [`EVERY`].
pub const KEPT: usize = 150;
/// A latency percentile at a point is over this many intervals before it (10 s): over one
/// interval alone, a quiet room's few messages would make p99 jump with each of them.
const LATENCY_INTERVALS: usize = 5;

/// The figures at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// `nebula_messages_published`, `nebula_messages_delivered`: counters.
    pub published: u64,
    pub delivered: u64,
    /// Open sessions.
    pub connections: i64,
    /// This process's resident memory.
    pub resident_bytes: u64,
    /// The two latency histograms' counts.
    pub delivery: Snapshot,
    pub ack: Snapshot,
}

/// The last [`KEPT`] samples, oldest first.
///
/// Behind a mutex, as the exception to one owner per state: the sampler pushes every 2 s and
/// a dashboard request copies them out; both hold the lock for a copy and never across an
/// `.await`, and the message path never takes it.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds a sample, dropping the oldest past [`KEPT`].
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock");
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("history lock")
            .iter()
            .copied()
            .collect()
    }
}

/// Samples every [`EVERY`] (the first one at once) until `stop`.
pub async fn run(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    // After a stall (a suspended process), one sample and on: not a burst of catch-up ones.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => metrics.history.push(metrics.sample()),
        }
    }
}

/// One point of a series: how long before now, and the value (`None`: nothing to say then,
/// such as a percentile of no message; a chart leaves a gap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ago: Duration,
    pub value: Option<f64>,
}

/// What the dashboard charts, oldest point first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trends {
    /// Messages per second.
    pub published: Vec<Point>,
    pub delivered: Vec<Point>,
    pub connections: Vec<Point>,
    /// Bytes.
    pub resident_bytes: Vec<Point>,
    /// Seconds.
    pub delivery_p50: Vec<Point>,
    pub delivery_p99: Vec<Point>,
    pub ack_p50: Vec<Point>,
    pub ack_p99: Vec<Point>,
}

impl Trends {
    /// The series of `samples` (oldest first), ending at `now`: a reading taken at the
    /// request, which adds the current value to the gauges (a rate or a percentile over the
    /// moment since the last sample would be noise, so those end at the last sample).
    pub fn new(samples: &[Sample], now: &Sample) -> Trends {
        let ago = |s: &Sample| now.at.saturating_duration_since(s.at);
        let mut t = Trends::default();
        for s in samples.iter().chain(std::iter::once(now)) {
            t.connections.push(Point {
                ago: ago(s),
                value: Some(s.connections as f64),
            });
            t.resident_bytes.push(Point {
                ago: ago(s),
                value: Some(s.resident_bytes as f64),
            });
        }
        for (i, pair) in samples.windows(2).enumerate() {
            let (before, s) = (&pair[0], &pair[1]);
            let secs = s.at.saturating_duration_since(before.at).as_secs_f64();
            let rate = |later: u64, earlier: u64| {
                (secs > 0.0).then(|| later.saturating_sub(earlier) as f64 / secs)
            };
            let point = |value| Point { ago: ago(s), value };
            t.published.push(point(rate(s.published, before.published)));
            t.delivered.push(point(rate(s.delivered, before.delivered)));
            let from = &samples[(i + 1).saturating_sub(LATENCY_INTERVALS)];
            let delivery = s.delivery.since(&from.delivery);
            let ack = s.ack.since(&from.ack);
            t.delivery_p50.push(point(delivery.quantile(0.5)));
            t.delivery_p99.push(point(delivery.quantile(0.99)));
            t.ack_p50.push(point(ack.quantile(0.5)));
            t.ack_p99.push(point(ack.quantile(0.99)));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency::LatencyHistogram;

    fn sample(at: Instant, published: u64, delivery: &LatencyHistogram) -> Sample {
        Sample {
            at,
            published,
            delivered: published * 3,
            connections: 7,
            resident_bytes: 1 << 20,
            delivery: delivery.snapshot(),
            ack: Snapshot::default(),
        }
    }

    #[test]
    fn history_keeps_the_last_five_minutes() {
        let h = History::default();
        let start = Instant::now();
        let d = LatencyHistogram::default();
        for i in 0..KEPT as u64 + 10 {
            h.push(sample(start + EVERY * i as u32, i, &d));
        }
        let kept = h.samples();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].published, 10);
        assert_eq!(kept[KEPT - 1].published, KEPT as u64 + 9);
    }

    #[test]
    fn trends_are_rates_and_percentiles_between_samples() {
        let start = Instant::now();
        let d = LatencyHistogram::default();
        let s0 = sample(start, 0, &d);
        for _ in 0..10 {
            d.observe(Duration::from_millis(4));
        }
        let s1 = sample(start + Duration::from_secs(2), 10, &d);
        // Nothing observed in the next interval: the window still holds the 10 before.
        let s2 = sample(start + Duration::from_secs(4), 10, &d);
        let now = sample(start + Duration::from_secs(5), 10, &d);
        let t = Trends::new(&[s0, s1, s2], &now);
        assert_eq!(t.connections.len(), 4, "every sample and now");
        assert_eq!(t.connections[3].ago, Duration::ZERO);
        assert_eq!(t.published.len(), 2, "one per interval");
        assert_eq!(t.published[0].value, Some(5.0));
        assert_eq!(t.published[0].ago, Duration::from_secs(3));
        assert_eq!(t.delivered[0].value, Some(15.0));
        assert_eq!(t.published[1].value, Some(0.0));
        let p50 = t.delivery_p50[1].value.unwrap();
        assert!((0.002..=0.005).contains(&p50), "{p50}");
        assert_eq!(t.ack_p99[0].value, None, "no ack, no percentile");
    }

    #[test]
    fn a_percentile_forgets_what_left_its_window() {
        let start = Instant::now();
        let d = LatencyHistogram::default();
        d.observe(Duration::from_secs(1));
        let mut samples = vec![sample(start, 0, &d)];
        for i in 1..=LATENCY_INTERVALS as u32 + 1 {
            samples.push(sample(start + EVERY * i, 0, &d));
        }
        let t = Trends::new(&samples, &samples[samples.len() - 1]);
        assert!(t.delivery_p99.iter().all(|p| p.value.is_none()));
        d.observe(Duration::from_millis(1));
        samples.push(sample(start + EVERY * 7, 0, &d));
        let t = Trends::new(&samples, &samples[samples.len() - 1]);
        assert!(t.delivery_p99.last().unwrap().value.unwrap() <= 0.001);
    }
}
