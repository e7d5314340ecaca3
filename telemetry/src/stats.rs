//! The periodic one-line stats report on stderr (`--stats-interval`, 0 = off).

use std::time::{Duration, Instant};

use crate::histogram::{short_duration, Histogram};
use crate::registry::{Counter, Gauge};

/// What the stats line reports: message and byte counters, in-flight and lag gauges, and
/// the latency whose p50/p99 over the interval it prints.
#[derive(Debug, Clone)]
pub struct StatsSource {
    /// Label at the start of the line (program and connector name).
    pub label: String,
    /// Messages moved (in for a source connector's upstream, out for a sink...).
    pub messages: Counter,
    /// Bytes moved.
    pub bytes: Counter,
    /// Messages acknowledged end to end.
    pub acked: Counter,
    /// Messages sent but not yet acknowledged.
    pub in_flight: Gauge,
    /// Upstream lag where the system reports it (-1 when unknown).
    pub lag: Gauge,
    /// The latency reported as `p50=`/`p99=` (delivery for sources and the engine, the
    /// external write for sinks).
    pub latency: Histogram,
}

/// Spawns a task printing one line per `interval`: totals, rates since the last line,
/// in-flight, lag and the latency's p50/p99 over the interval. Does nothing when
/// `interval` is zero.
pub fn spawn_stats_reporter(source: StatsSource, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut last = (Instant::now(), source.messages.get(), source.bytes.get());
        let mut last_latency = source.latency.snapshot();
        loop {
            tick.tick().await;
            let now = Instant::now();
            let (m, b) = (source.messages.get(), source.bytes.get());
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
            let rate = (m - last.1) as f64 / secs;
            let mbps = (b - last.2) as f64 / secs / 1e6;
            let lag = match source.lag.get() {
                l if l < 0 => "n/a".to_string(),
                l => l.to_string(),
            };
            let latency = source.latency.snapshot();
            let interval = latency.since(&last_latency);
            let quantile = |q| {
                interval
                    .quantile(q)
                    .map_or_else(|| "n/a".to_string(), short_duration)
            };
            eprintln!(
                "stats {}: messages={} bytes={} rate={:.0}/s {:.2}MB/s acked={} in_flight={} lag={} p50={} p99={}",
                source.label,
                m,
                b,
                rate,
                mbps,
                source.acked.get(),
                source.in_flight.get(),
                lag,
                quantile(0.5),
                quantile(0.99),
            );
            last = (now, m, b);
            last_latency = latency;
        }
    });
}
