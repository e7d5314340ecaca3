//! The periodic one-line stats report on stderr (`--stats-interval`, 0 = off).

use std::time::{Duration, Instant};

use crate::registry::{Counter, Gauge};

/// What the stats line reports: message and byte counters, plus in-flight and lag gauges.
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
}

/// Spawns a task printing one line per `interval`: totals, rates since the last line,
/// in-flight and lag. Does nothing when `interval` is zero.
pub fn spawn_stats_reporter(source: StatsSource, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut last = (Instant::now(), source.messages.get(), source.bytes.get());
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
            eprintln!(
                "stats {}: messages={} bytes={} rate={:.0}/s {:.2}MB/s acked={} in_flight={} lag={}",
                source.label,
                m,
                b,
                rate,
                mbps,
                source.acked.get(),
                source.in_flight.get(),
                lag
            );
            last = (now, m, b);
        }
    });
}
