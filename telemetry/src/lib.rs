//! Observability shared by the engine and every connector binary: `tracing` set-up that is
//! quiet by default, a metrics registry on `prometheus-client` with batch-friendly latency
//! histograms, a periodic one-line stats report on stderr, and the operations endpoint
//! (`--metrics-addr`: `/metrics`, `/health`, `/ready`).

mod histogram;
mod http;
mod readiness;
mod registry;
mod stats;

pub use histogram::{short_duration, Histogram, Snapshot};
pub use http::serve_ops;
pub use readiness::Readiness;
pub use registry::{Counter, FloatCounter, FloatGauge, Gauge, Registry, CONTENT_TYPE};
pub use stats::{spawn_stats_reporter, StatsSource};

/// Installs the global `tracing` subscriber: `warn` unless `RUST_LOG` says otherwise (the
/// AWS SDK's credential and region probing only at `error`: its misses are expected;
/// [`NOTICE`]s at `info`),
/// written to stderr so stdout stays free for data (`--to stdout`), with colours only when
/// stderr is a terminal (a log file or a pipe gets plain text). `--log-format json` on the
/// command line (every binary accepts it) writes one JSON object per line instead, for log
/// shippers.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,aws_config=error,{NOTICE}=info"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if log_format_from_args().as_deref() == Some("json") {
        builder.json().with_ansi(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// The `tracing` target of the few notices an operator always wants to see (state restored,
/// running without checkpoints, shutting down): shown at `info` with the default filter,
/// as plain text or JSON like every other log line. `tracing::info!(target: NOTICE, ...)`.
pub const NOTICE: &str = "notice";

/// The values `--log-format` accepts.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];

/// The value of `--log-format` on this process's command line, if any (`--log-format json`
/// or `--log-format=json`); the binaries' own argument parsers validate it.
fn log_format_from_args() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--log-format" {
            return args.next();
        }
        if let Some(v) = a.strip_prefix("--log-format=") {
            return Some(v.to_string());
        }
    }
    None
}
