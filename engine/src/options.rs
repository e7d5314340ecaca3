//! Command-line options shared by the `engine` binary and every application binary built
//! on the library (flatten [`EngineArgs`] into your own clap parser).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use application::Application;

use crate::error::EngineError;

/// Default bound of the per-sink buffer of unacknowledged outputs: the application file's
/// default `in_flight_bytes` (16 MiB), which a sink's table can change.
pub const DEFAULT_SINK_BUFFER_BYTES: usize = application::DEFAULT_IN_FLIGHT_BYTES as usize;
/// Default bound of source messages processed but not yet acknowledged.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 16 * 1024 * 1024;

/// The engine's command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// The application description (TOML) shared with the connectors.
    #[arg(long = "application-module", value_name = "FILE")]
    pub application_module: PathBuf,
    /// Directory for checkpoints; without it (or --checkpoint-store) the engine runs in
    /// memory.
    #[arg(long, value_name = "DIR", conflicts_with = "checkpoint_store")]
    pub resilience_dir: Option<PathBuf>,
    /// Where checkpoints go: a directory (as --resilience-dir), file://DIR, or
    /// s3://BUCKET/PREFIX[?endpoint_url=URL&region=R] (needs state_scope = "stream";
    /// credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile).
    #[arg(long, value_name = "URL")]
    pub checkpoint_store: Option<String>,
    /// Time between checkpoints (e.g. 1s, 500ms, 2).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub checkpoint_interval: Duration,
    /// State scoped per stream: how long taking a stream over waits for its previous owner
    /// to release it (write its final slice) before taking its last slice anyway.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub takeover_wait: Duration,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between stats lines on stderr (0 = off).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub stats_interval: u64,
    /// Maximum frame size in bytes (default: the application file's, else 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Number of keyed-state partitions (default: number of cores).
    #[arg(long, value_name = "N")]
    pub partitions: Option<usize>,
    /// Bound of each sink's buffer of unacknowledged outputs, in bytes, for every sink
    /// (default: each sink's `in_flight_bytes` in the application file, else 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub sink_buffer_bytes: Option<usize>,
    /// Validate the application file and try the sink addresses, then exit
    /// (0 only if every check passes).
    #[arg(long)]
    pub check: bool,
    /// Log lines as text (coloured only on a terminal) or as one JSON object per line.
    #[arg(long, default_value = "text", value_parser = telemetry::LOG_FORMATS, value_name = "text|json")]
    pub log_format: String,
}

impl EngineArgs {
    /// Loads the application file.
    pub fn load(&self) -> Result<Application, EngineError> {
        Ok(Application::load(&self.application_module)?)
    }

    /// The run options these arguments describe.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            resilience_dir: self.resilience_dir.clone(),
            checkpoint_store: self.checkpoint_store.clone(),
            checkpoint_interval: self.checkpoint_interval,
            takeover_wait: self.takeover_wait,
            metrics_addr: self.metrics_addr,
            stats_interval: Duration::from_secs(self.stats_interval),
            max_frame_bytes: self.max_frame_bytes,
            partitions: self.partitions.unwrap_or_else(default_partitions),
            sink_buffer_bytes: self.sink_buffer_bytes,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

fn default_partitions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `1s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 1s, 500ms, 2m)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// How the engine runs an application.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Checkpoint directory; `None` (and no `checkpoint_store`) = in memory.
    pub resilience_dir: Option<PathBuf>,
    /// Checkpoint store URL (a directory, `file://DIR`, `s3://BUCKET/PREFIX?...`); wins
    /// over `resilience_dir`.
    pub checkpoint_store: Option<String>,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Stream scope: how long a take-over waits for the previous owner's release.
    pub takeover_wait: Duration,
    /// Prometheus endpoint address.
    pub metrics_addr: Option<SocketAddr>,
    /// Interval of the stats line on stderr (zero = off).
    pub stats_interval: Duration,
    /// Maximum frame size (overrides the application file).
    pub max_frame_bytes: Option<usize>,
    /// Number of keyed-state partitions.
    pub partitions: usize,
    /// Bound of each sink's buffer of unacknowledged outputs, in bytes, for every sink;
    /// `None`: each sink's `in_flight_bytes` from the application file.
    pub sink_buffer_bytes: Option<usize>,
    /// Bound of source messages processed but not yet acknowledged.
    pub max_in_flight: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            resilience_dir: None,
            checkpoint_store: None,
            checkpoint_interval: Duration::from_secs(1),
            takeover_wait: Duration::from_secs(5),
            metrics_addr: None,
            stats_interval: Duration::from_secs(10),
            max_frame_bytes: None,
            partitions: default_partitions(),
            sink_buffer_bytes: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
