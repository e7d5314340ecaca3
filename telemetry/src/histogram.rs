//! A latency histogram cheap enough for the data path: one observation stands for a whole
//! batch (`observe_n`), buckets are plain atomics, and the fine internal buckets (ten per
//! decade) give the stats line usable p50/p99 while `/metrics` shows the usual 1-2.5-5
//! series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Steps within a decade of the internal buckets.
const STEPS: [f64; 10] = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0];
/// The steps also exposed as Prometheus buckets.
const EXPOSED_STEPS: [f64; 3] = [1.0, 2.5, 5.0];
/// Decades covered: 10 µs (1e-5 s) up to 80 s; anything slower counts as +Inf.
const DECADES: std::ops::RangeInclusive<i32> = -5..=1;

/// Upper bounds of the internal buckets in nanoseconds, and whether each is exposed.
fn bounds() -> &'static [(u64, bool)] {
    static BOUNDS: OnceLock<Vec<(u64, bool)>> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        DECADES
            .flat_map(|e| {
                STEPS.iter().map(move |m| {
                    let nanos = (m * 10f64.powi(e) * 1e9).round() as u64;
                    (nanos, EXPOSED_STEPS.contains(m))
                })
            })
            .collect()
    })
}

#[derive(Debug)]
struct Inner {
    /// One count per internal bucket, then the overflow (+Inf) bucket.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram of durations, exposed in seconds. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Inner>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Arc::new(Inner {
            buckets: (0..=bounds().len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl Histogram {
    /// Records `n` events that each took `took` (a batch observed once).
    pub fn observe_n(&self, took: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let at = bounds().partition_point(|(b, _)| *b < nanos);
        self.0.buckets[at].fetch_add(n, Ordering::Relaxed);
        self.0.count.fetch_add(n, Ordering::Relaxed);
        self.0
            .sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records one event.
    pub fn observe(&self, took: Duration) {
        self.observe_n(took, 1);
    }

    /// Events recorded so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// The counts as they stand, for quantiles over an interval.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .0
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Bucket counts of a [`Histogram`] at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    buckets: Vec<u64>,
}

impl Snapshot {
    /// What was recorded between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Events in the snapshot.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile (0.5 = median), interpolated within its bucket; `None` when empty.
    /// Events past the last bucket (80 s) are reported as 80 s.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let bounds = bounds();
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { bounds[i - 1].0 };
                let Some((upper, _)) = bounds.get(i) else {
                    return Some(Duration::from_nanos(lower));
                };
                let within = (rank - below as f64) / *n as f64;
                let nanos = lower as f64 + within * (upper - lower) as f64;
                return Some(Duration::from_nanos(nanos as u64));
            }
            below += n;
        }
        None
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.snapshot().buckets;
        let mut exposed = Vec::with_capacity(24);
        let mut pending = 0u64;
        for ((nanos, shown), n) in bounds().iter().zip(&counts) {
            pending += n;
            if *shown {
                exposed.push((*nanos as f64 / 1e9, pending));
                pending = 0;
            }
        }
        let count: u64 = counts.iter().sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &exposed, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Formats a duration for the stats line: `850us`, `12.3ms`, `1.50s`.
pub fn short_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0}us")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_batches_and_finds_quantiles_within_a_bucket() {
        let h = Histogram::default();
        h.observe_n(Duration::from_micros(900), 98);
        h.observe_n(Duration::from_millis(45), 2);
        assert_eq!(h.count(), 100);
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_micros(800) && p50 <= Duration::from_millis(1),
            "{p50:?}"
        );
        let p99 = s.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_millis(40) && p99 <= Duration::from_millis(50),
            "{p99:?}"
        );
    }

    #[test]
    fn an_interval_holds_only_what_came_after_the_earlier_snapshot() {
        let h = Histogram::default();
        h.observe_n(Duration::from_secs(2), 10);
        let before = h.snapshot();
        assert_eq!(before.since(&before).quantile(0.5), None);
        h.observe_n(Duration::from_micros(20), 3);
        let interval = h.snapshot().since(&before);
        assert_eq!(interval.count(), 3);
        assert!(interval.quantile(0.99).unwrap() <= Duration::from_micros(25));
    }

    #[test]
    fn slower_than_every_bucket_is_counted_and_reported_at_the_top() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(500));
        assert_eq!(h.snapshot().quantile(0.5), Some(Duration::from_secs(80)));
    }
}
