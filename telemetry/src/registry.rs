//! The metrics registry of one process, on the `prometheus-client` crate: counters, gauges
//! and latency histograms created by name on first use (cheap handles to bump on the data
//! path), every series carrying the process's common labels, rendered in the Prometheus
//! text format for `/metrics`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;

use crate::histogram::Histogram;

/// A series' own labels, beside the registry's common ones.
type Labels = Vec<(String, String)>;

/// A monotonically increasing count (messages, bytes, errors, ...).
#[derive(Debug, Clone, Default)]
pub struct Counter(PromCounter<u64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value that goes up and down (in flight, credits, lag).
#[derive(Debug, Clone, Default)]
pub struct Gauge(PromGauge<i64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.inc_by(n);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A count in a unit with fractions, such as seconds spent disconnected.
#[derive(Debug, Clone, Default)]
pub struct FloatCounter(PromCounter<f64, AtomicU64>);

impl FloatCounter {
    /// Adds `v` (not negative).
    pub fn add(&self, v: f64) {
        self.0.inc_by(v);
    }
    /// Current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// A value with fractions that goes up and down, such as seconds behind the newest record.
#[derive(Debug, Clone, Default)]
pub struct FloatGauge(PromGauge<f64, AtomicU64>);

impl FloatGauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.set(v);
    }
    /// Current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// One metric family: every series of one name, whatever their labels.
#[derive(Debug, Clone)]
enum FamilyOf {
    Counter(Family<Labels, PromCounter<u64>>),
    FloatCounter(Family<Labels, PromCounter<f64, AtomicU64>>),
    Gauge(Family<Labels, PromGauge<i64>>),
    FloatGauge(Family<Labels, PromGauge<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram>),
}

#[derive(Debug)]
struct Inner {
    registry: prometheus_client::registry::Registry,
    families: HashMap<String, FamilyOf>,
}

/// The set of metrics one process exposes. Cloning shares the same registry.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_labels(&[])
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    /// A registry whose every series carries `labels` (e.g. `connector="celsius_feed"`).
    pub fn with_labels(labels: &[(&str, &str)]) -> Self {
        let common = owned(labels)
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)));
        Registry {
            inner: Arc::new(Mutex::new(Inner {
                registry: prometheus_client::registry::Registry::with_labels(common),
                families: HashMap::new(),
            })),
        }
    }

    /// The family `name`, registered with `make` on first use. A name registered before as
    /// another kind of metric yields `None` (a programming error the caller tolerates by
    /// handing out an unregistered metric).
    fn family<T>(
        &self,
        name: &str,
        help: &str,
        make: impl FnOnce() -> FamilyOf,
        pick: impl FnOnce(&FamilyOf) -> Option<T>,
    ) -> Option<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inner.families.get(name) {
            return pick(f);
        }
        let family = make();
        let help = help.trim_end_matches('.');
        match &family {
            // The text format appends `_total` to a counter's name itself.
            FamilyOf::Counter(f) => {
                let base = name.strip_suffix("_total").unwrap_or(name);
                inner.registry.register(base, help, f.clone());
            }
            FamilyOf::FloatCounter(f) => {
                let base = name.strip_suffix("_total").unwrap_or(name);
                inner.registry.register(base, help, f.clone());
            }
            FamilyOf::Gauge(f) => inner.registry.register(name, help, f.clone()),
            FamilyOf::FloatGauge(f) => inner.registry.register(name, help, f.clone()),
            FamilyOf::Histogram(f) => inner.registry.register(name, help, f.clone()),
        }
        let picked = pick(&family);
        inner.families.insert(name.to_string(), family);
        picked
    }

    /// Returns the counter `name{labels}` (`name` ends in `_total`), creating it on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let labels = owned(labels);
        self.family(
            name,
            help,
            || FamilyOf::Counter(Family::default()),
            |f| match f {
                FamilyOf::Counter(f) => Some(Counter(f.get_or_create_owned(&labels))),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Returns the fractional counter `name{labels}` (e.g. `..._seconds_total`), creating it
    /// on first use.
    pub fn float_counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatCounter {
        let labels = owned(labels);
        self.family(
            name,
            help,
            || FamilyOf::FloatCounter(Family::default()),
            |f| match f {
                FamilyOf::FloatCounter(f) => Some(FloatCounter(f.get_or_create_owned(&labels))),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Returns the fractional gauge `name{labels}` (e.g. `..._seconds`), creating it on
    /// first use.
    pub fn float_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatGauge {
        let labels = owned(labels);
        self.family(
            name,
            help,
            || FamilyOf::FloatGauge(Family::default()),
            |f| match f {
                FamilyOf::FloatGauge(f) => Some(FloatGauge(f.get_or_create_owned(&labels))),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Returns the gauge `name{labels}`, creating it on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let labels = owned(labels);
        self.family(
            name,
            help,
            || FamilyOf::Gauge(Family::default()),
            |f| match f {
                FamilyOf::Gauge(f) => Some(Gauge(f.get_or_create_owned(&labels))),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Returns the latency histogram `name{labels}` (`name` ends in `_seconds`), creating it
    /// on first use.
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Histogram {
        let labels = owned(labels);
        self.family(
            name,
            help,
            || FamilyOf::Histogram(Family::default()),
            |f| match f {
                FamilyOf::Histogram(f) => Some(f.get_or_create_owned(&labels)),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Renders every series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &inner.registry);
        out
    }
}

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_with_labels() {
        let r = Registry::with_labels(&[("connector", "feed")]);
        let c = r.counter("messages_total", "Messages.", &[("direction", "in")]);
        c.add(3);
        let same = r.counter("messages_total", "Messages.", &[("direction", "in")]);
        same.inc();
        r.counter("messages_total", "Messages.", &[("direction", "out")]);
        r.gauge("in_flight", "In flight.", &[]).set(-2);
        r.float_counter("down_seconds_total", "Down.", &[])
            .add(1.25);
        r.float_gauge("behind_seconds", "Behind.", &[]).set(0.5);
        r.histogram("latency_seconds", "Latency.", &[])
            .observe_n(std::time::Duration::from_millis(3), 5);
        let text = r.render();
        assert_eq!(
            text.matches("# TYPE messages_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("messages_total{connector=\"feed\",direction=\"in\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("messages_total{connector=\"feed\",direction=\"out\"} 0"),
            "{text}"
        );
        assert!(text.contains("in_flight{connector=\"feed\"} -2"), "{text}");
        assert!(
            text.contains("down_seconds_total{connector=\"feed\"} 1.25"),
            "{text}"
        );
        assert!(
            text.contains("behind_seconds{connector=\"feed\"} 0.5"),
            "{text}"
        );
        assert!(text.contains("# TYPE latency_seconds histogram"), "{text}");
        assert!(
            text.contains("latency_seconds_count{connector=\"feed\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.005\",connector=\"feed\"} 5")
                || text.contains("latency_seconds_bucket{connector=\"feed\",le=\"0.005\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn a_name_reused_for_another_kind_gets_a_detached_metric() {
        let r = Registry::default();
        r.counter("x_total", "X.", &[]).inc();
        let g = r.gauge("x_total", "X.", &[]);
        g.set(7);
        assert!(r.render().contains("x_total 1"));
    }
}
