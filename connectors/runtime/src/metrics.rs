//! The standard metric set of a connector, registered once and shared by the runtime and the
//! connector file, with the readiness its `/ready` endpoint reports.

use application::Direction;
use telemetry::{Counter, Gauge, Histogram, Readiness, Registry, StatsSource};

/// Error kinds counted by the runtime (`connector_errors_total{kind=...}`): `refused` (a
/// message the external system permanently refused, see `Context::dead_letter`),
/// `engine_connection` (the connection to the engine was lost), `protocol` (an engine
/// connection to a sink broke the protocol), `decode` (a record on standard input could not
/// be read). Connectors add their own kinds with [`ConnectorMetrics::error`].
pub const ERROR_KINDS: &[&str] = &["refused", "engine_connection", "protocol", "decode"];

/// Counters and gauges every connector exposes on `--metrics-addr` and in its stats line.
#[derive(Debug, Clone)]
pub struct ConnectorMetrics {
    /// The registry behind them (add connector-specific series here).
    pub registry: Registry,
    /// Messages received from upstream (source) or from the engine (sink).
    pub messages_in: Counter,
    /// Bytes of payload received.
    pub bytes_in: Counter,
    /// Messages sent to the engine (source) or written to the external system (sink).
    pub messages_out: Counter,
    /// Bytes of payload sent/written.
    pub bytes_out: Counter,
    /// Messages acknowledged end to end.
    pub acked: Counter,
    /// Messages sent and not yet acknowledged.
    pub in_flight: Gauge,
    /// Credits currently available to send with (sources) or granted (sinks).
    pub credits: Gauge,
    /// Reconnects to the engine or the external system.
    pub reconnects: Counter,
    /// Upstream lag where the system reports it (-1 = unknown).
    pub lag: Gauge,
    /// Messages written to the dead-letter directory.
    pub dead_letters: Counter,
    /// Sources: seconds from a record read upstream to the engine's acknowledgement
    /// (`connector_delivery_latency_seconds`). Sinks: seconds the external write took
    /// (`connector_write_latency_seconds`). One observation per record.
    pub latency: Histogram,
    /// What `/ready` reports: the engine link and the external system.
    pub readiness: Readiness,
}

impl ConnectorMetrics {
    /// Registers the standard set for `program`/`connector`, a source or a sink.
    pub fn new(program: &str, connector: &str, direction: Direction) -> Self {
        let registry = Registry::with_labels(&[("program", program), ("connector", connector)]);
        let latency = match direction {
            Direction::Source => registry.histogram(
                "connector_delivery_latency_seconds",
                "Time from a record read upstream to the engine's acknowledgement of it.",
                &[],
            ),
            Direction::Sink => registry.histogram(
                "connector_write_latency_seconds",
                "Time the external system took to confirm a write, per record written.",
                &[],
            ),
        };
        let messages_in = registry.counter(
            "connector_messages_total",
            "Messages moved, by direction.",
            &[("direction", "in")],
        );
        let messages_out = registry.counter(
            "connector_messages_total",
            "Messages moved, by direction.",
            &[("direction", "out")],
        );
        let bytes_in = registry.counter(
            "connector_bytes_total",
            "Payload bytes moved, by direction.",
            &[("direction", "in")],
        );
        let bytes_out = registry.counter(
            "connector_bytes_total",
            "Payload bytes moved, by direction.",
            &[("direction", "out")],
        );
        let lag = registry.gauge(
            "connector_upstream_lag",
            "Messages behind the head of the upstream system (-1 = unknown).",
            &[],
        );
        lag.set(-1);
        // The error kinds the runtime itself counts, shown at 0 from the start so that
        // dashboards and alerts see the series before the first error.
        for kind in ERROR_KINDS {
            registry.counter(
                "connector_errors_total",
                "Errors, by kind.",
                &[("kind", kind)],
            );
        }
        ConnectorMetrics {
            acked: registry.counter(
                "connector_acked_total",
                "Messages acknowledged end to end.",
                &[],
            ),
            in_flight: registry.gauge(
                "connector_in_flight",
                "Messages sent and not yet acknowledged.",
                &[],
            ),
            credits: registry.gauge(
                "connector_credits_available",
                "Protocol credits available.",
                &[],
            ),
            reconnects: registry.counter(
                "connector_reconnects_total",
                "Reconnects to the engine or the external system.",
                &[],
            ),
            dead_letters: registry.counter(
                "connector_dead_letters_total",
                "Messages written to the dead-letter directory.",
                &[],
            ),
            registry,
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            lag,
            latency,
            readiness: Readiness::default(),
        }
    }

    /// Counts an error of `kind` (e.g. `decode`, `write`, `protocol`).
    pub fn error(&self, kind: &str) {
        self.registry
            .counter(
                "connector_errors_total",
                "Errors, by kind.",
                &[("kind", kind)],
            )
            .inc();
    }

    /// What the stats line reports: what left the connector, i.e. messages sent to the engine
    /// (sources) or written to the external system (sinks), and the latency's p50/p99.
    pub fn stats_source(&self, label: String) -> StatsSource {
        StatsSource {
            label,
            messages: self.messages_out.clone(),
            bytes: self.bytes_out.clone(),
            acked: self.acked.clone(),
            in_flight: self.in_flight.clone(),
            lag: self.lag.clone(),
            latency: self.latency.clone(),
        }
    }
}
