//! The engine's counters, gauges and histograms, registered in the application's telemetry
//! registry, and the readiness its `/ready` endpoint reports.

use telemetry::{Counter, Gauge, Histogram, Readiness, Registry};

/// Every error kind the engine counts (`engine_errors_total{kind}`).
const ERROR_KINDS: &[&str] = &[
    "decode",
    "oversize_frame",
    "truncated_frame",
    "unknown_tag",
    "bad_field",
    "ended_mid_frame",
    "io",
    "no_hello",
    "bad_hello",
    "not_notified",
    "credits_overspent",
    "unexpected_frame",
    "peer_error",
    "output_too_large",
    "sink_handshake",
    "sink_disconnected",
    "takeover_failed",
];

/// Every metric the engine updates. Counters are bumped once per batch, not per message.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Registry,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub acked: Counter,
    pub duplicates: Counter,
    pub in_flight: Gauge,
    pub reconnects: Counter,
    pub connections: Counter,
    pub credits_granted: Counter,
    pub sink_credits: Gauge,
    pub checkpoints: Counter,
    pub checkpoint_duration: Histogram,
    pub checkpoint_failures: Counter,
    pub checkpoint_snapshot: Histogram,
    pub checkpoint_bytes: Gauge,
    /// MESSAGE in to every sink's acknowledgement, per source message.
    pub latency: Histogram,
    /// Stream scope: streams taken over (slice loaded and claimed).
    pub takeovers: Counter,
    /// Stream scope: NOTIFY in to NOTIFY_ACK of a take-over (load, restore, claim).
    pub takeover_duration: Histogram,
    /// Stream scope: slice writes refused because another engine owns the stream now.
    pub fenced: Counter,
    /// One part per sink connector: connected or why not.
    pub readiness: Readiness,
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        // Register every series of a family together: the Prometheus text lists a
        // family's samples under one HELP/TYPE header.
        for kind in ERROR_KINDS {
            r.counter("engine_errors_total", "Errors by kind.", &[("kind", kind)]);
        }
        let messages_in = r.counter("engine_messages_total", "Messages.", &[("direction", "in")]);
        let messages_out = r.counter(
            "engine_messages_total",
            "Messages.",
            &[("direction", "out")],
        );
        let bytes_in = r.counter(
            "engine_bytes_total",
            "Payload bytes.",
            &[("direction", "in")],
        );
        let bytes_out = r.counter(
            "engine_bytes_total",
            "Payload bytes.",
            &[("direction", "out")],
        );
        Metrics {
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            acked: r.counter(
                "engine_acked_total",
                "Source messages acknowledged end to end.",
                &[],
            ),
            duplicates: r.counter(
                "engine_duplicates_total",
                "Replayed source messages dropped by de-duplication.",
                &[],
            ),
            in_flight: r.gauge(
                "engine_in_flight",
                "Source messages processed but not yet acknowledged.",
                &[],
            ),
            reconnects: r.counter("engine_sink_reconnects_total", "Sink reconnections.", &[]),
            connections: r.counter(
                "engine_source_connections_total",
                "Source connections accepted.",
                &[],
            ),
            credits_granted: r.counter(
                "engine_credits_granted_total",
                "Credits granted to source connectors.",
                &[],
            ),
            sink_credits: r.gauge(
                "engine_sink_credits",
                "Credits the sinks currently grant the engine (sum).",
                &[],
            ),
            checkpoints: r.counter("engine_checkpoints_total", "Checkpoints written.", &[]),
            checkpoint_duration: r.histogram(
                "engine_checkpoint_duration_seconds",
                "Duration of checkpoints (snapshot + write + fsync).",
                &[],
            ),
            checkpoint_failures: r.counter(
                "engine_checkpoint_failures_total",
                "Checkpoints that could not be written.",
                &[],
            ),
            checkpoint_snapshot: r.histogram(
                "engine_checkpoint_snapshot_seconds",
                "Time checkpoints held the data path (serializing the state).",
                &[],
            ),
            checkpoint_bytes: r.gauge(
                "engine_checkpoint_bytes",
                "Size of the last snapshot file.",
                &[],
            ),
            latency: r.histogram(
                "engine_delivery_latency_seconds",
                "Time from a source MESSAGE in to every sink's acknowledgement of its outputs.",
                &[],
            ),
            takeovers: r.counter(
                "engine_stream_takeovers_total",
                "Source streams whose state this engine took over from the checkpoint store.",
                &[],
            ),
            takeover_duration: r.histogram(
                "engine_stream_takeover_seconds",
                "Time to take a stream over: load its slice, restore it, claim it.",
                &[],
            ),
            fenced: r.counter(
                "engine_stream_fenced_total",
                "Slice writes refused because another engine took the stream over.",
                &[],
            ),
            readiness: Readiness::default(),
            registry,
        }
    }

    /// Records a checkpoint written: its total time, the time it held the data path and
    /// its size.
    pub fn checkpoint_written(
        &self,
        total: std::time::Duration,
        snapshot: std::time::Duration,
        bytes: usize,
    ) {
        self.checkpoints.inc();
        self.checkpoint_duration.observe(total);
        self.checkpoint_snapshot.observe(snapshot);
        self.checkpoint_bytes.set(bytes as i64);
    }

    /// Counts one error of `kind` (protocol errors, decode errors, sink errors...).
    pub fn error(&self, kind: &str) {
        self.registry
            .counter("engine_errors_total", "Errors by kind.", &[("kind", kind)])
            .inc();
    }
}
