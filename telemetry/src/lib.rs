//! Observability shared by the engine and every connector binary: `tracing` set-up that is
//! quiet by default, a tiny lock-free metrics registry, a periodic one-line stats report on
//! stderr and a Prometheus text endpoint (`--metrics-addr`).

mod prometheus;
mod registry;
mod stats;

pub use prometheus::serve_metrics;
pub use registry::{Counter, Gauge, Registry};
pub use stats::{spawn_stats_reporter, StatsSource};

/// Installs the global `tracing` subscriber: `warn` unless `RUST_LOG` says otherwise (the
/// AWS SDK's credential and region probing only at `error`: its misses are expected),
/// written to stderr so stdout stays free for data (`--to stdout`), with colours only when
/// stderr is a terminal (a log file or a pipe gets plain text).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
