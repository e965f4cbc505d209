//! A latency histogram the message path records into with atomic adds alone, and that both the
//! exposition and the dashboard read.
//!
//! prometheus-client's `Histogram` takes a mutex on every observation and keeps its buckets
//! private, so the dashboard could not compute percentiles from it. This one is an array of
//! atomic counters: an observation is two `fetch_add`s, a read is one load per bucket, and
//! Prometheus gets the same classic histogram (`_bucket`, `_sum`, `_count`) as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// The finite upper bounds of the buckets, in seconds: 0.25 ms to 8 s. A last, unbounded
/// bucket (`le="+Inf"`) follows them.
pub const BOUNDS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 8.0,
];
/// Buckets, the unbounded one included.
pub const BUCKETS: usize = BOUNDS.len() + 1;

/// [`BOUNDS`] in nanoseconds, so that an observation compares integers.
const BOUNDS_NANOS: [u64; BOUNDS.len()] = {
    let micros: [u64; BOUNDS.len()] = [
        250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 8_000_000,
    ];
    let mut nanos = [0; BOUNDS.len()];
    let mut i = 0;
    while i < micros.len() {
        nanos[i] = micros[i] * 1_000;
        i += 1;
    }
    nanos
};

/// A cheap-to-clone handle on one histogram (the registry holds a clone).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Observations per bucket (not cumulative).
    buckets: [AtomicU64; BUCKETS],
    /// The sum of every observation in nanoseconds: an integer, so adding is one atomic add
    /// (2^64 ns is 584 years of summed latency).
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Each counter is read on its own, without a lock: an observation that
    /// lands meanwhile may be in a bucket and not yet in the sum, which no reader can tell
    /// from one made a moment later. The count is the buckets' sum, so `_count` always equals
    /// the `+Inf` bucket, as Prometheus requires.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.inner.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.inner.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment, or the observations between two moments
/// ([`Snapshot::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Observations per bucket (not cumulative), the unbounded bucket last.
    pub buckets: [u64; BUCKETS],
    pub sum_nanos: u64,
}

impl Snapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The observations made after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    /// The `q` quantile (0 to 1) in seconds, estimated as Prometheus's `histogram_quantile`
    /// does: linear within the bucket where it falls, the first bucket starting at 0, and the
    /// highest finite bound when it falls in the unbounded bucket. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BOUNDS.get(i) else {
                    return Some(BOUNDS[BOUNDS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
                let within = (rank - below as f64) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(BOUNDS[BOUNDS.len() - 1])
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(s.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(s.sum_nanos as f64 / 1e9, s.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(250)); // on a bound: that bucket (le is inclusive)
        h.observe(Duration::from_micros(251));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[4], 1);
        assert_eq!(s.buckets[BUCKETS - 1], 1);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_nanos, 250_000 + 251_000 + 3_000_000 + 60_000_000_000);
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // 100 observations in the 2-5 ms bucket: the median is half-way through it.
        for _ in 0..100 {
            h.observe(Duration::from_millis(4));
        }
        let s = h.snapshot();
        assert!((s.quantile(0.5).unwrap() - 0.0035).abs() < 1e-9);
        assert!((s.quantile(0.99).unwrap() - (0.002 + 0.003 * 0.99)).abs() < 1e-9);
        // One very slow one: p99 stays in 2-5 ms, the maximum is the highest finite bound.
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert!(s.quantile(0.99).unwrap() <= 0.005);
        assert_eq!(s.quantile(1.0), Some(8.0));
        // Only what came after a snapshot.
        let later = h.snapshot();
        h.observe(Duration::from_micros(100));
        let d = h.snapshot().since(&later);
        assert_eq!(d.count(), 1);
        assert!(d.quantile(0.5).unwrap() <= 0.000_25);
    }
}
