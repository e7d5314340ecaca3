//! A minimal metrics registry: named counters and gauges backed by atomics, cheap enough to
//! bump on the data path, rendered as Prometheus text on demand.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count (messages, bytes, errors, ...).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (in flight, credits, lag).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Entry {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
    metric: Metric,
}

/// The set of metrics one process exposes. Cloning shares the same registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<Vec<Entry>>>,
    common_labels: Arc<Vec<(String, String)>>,
}

impl Registry {
    /// A registry whose every series carries `labels` (e.g. `connector="celsius_feed"`).
    pub fn with_labels(labels: &[(&str, &str)]) -> Self {
        Registry {
            entries: Arc::default(),
            common_labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    fn register(&self, name: &str, help: &str, labels: &[(&str, &str)], metric: Metric) -> Metric {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(e) = entries
            .iter()
            .find(|e| e.name == name && e.labels == labels)
        {
            return e.metric.clone();
        }
        entries.push(Entry {
            name: name.to_string(),
            help: help.to_string(),
            labels,
            metric: metric.clone(),
        });
        metric
    }

    /// Returns the counter `name{labels}`, creating it on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(name, help, labels, Metric::Counter(Counter::default())) {
            Metric::Counter(c) => c,
            Metric::Gauge(_) => Counter::default(),
        }
    }

    /// Returns the gauge `name{labels}`, creating it on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, labels, Metric::Gauge(Gauge::default())) {
            Metric::Gauge(g) => g,
            Metric::Counter(_) => Gauge::default(),
        }
    }

    /// Renders every series in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last_name = "";
        for e in entries.iter() {
            let (kind, value) = match &e.metric {
                Metric::Counter(c) => ("counter", c.get().to_string()),
                Metric::Gauge(g) => ("gauge", g.get().to_string()),
            };
            if e.name != last_name {
                let _ = writeln!(out, "# HELP {} {}", e.name, e.help);
                let _ = writeln!(out, "# TYPE {} {}", e.name, kind);
            }
            last_name = &e.name;
            let labels: Vec<String> = self
                .common_labels
                .iter()
                .chain(e.labels.iter())
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", e.name, value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", e.name, labels.join(","), value);
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        let r = Registry::with_labels(&[("connector", "feed")]);
        let c = r.counter("messages_total", "Messages.", &[("direction", "in")]);
        c.add(3);
        let same = r.counter("messages_total", "Messages.", &[("direction", "in")]);
        same.inc();
        r.gauge("in_flight", "In flight.", &[]).set(-2);
        let text = r.render();
        assert!(text.contains("# TYPE messages_total counter"), "{text}");
        assert!(
            text.contains("messages_total{connector=\"feed\",direction=\"in\"} 4"),
            "{text}"
        );
        assert!(text.contains("in_flight{connector=\"feed\"} -2"), "{text}");
    }
}
