//! The application description: one TOML file that the engine and every connector read
//! (`--application-module FILE`), so both ends agree on names, addresses, cookie and credits.
//!
//! ```toml
//! name = "Celsius to Fahrenheit"
//! cookie = ""
//!
//! [source_connectors.celsius_feed]   # the engine listens; udp_source connects
//! port = 7100
//! max_credits = 1000
//! refill_credits = 500
//! in_flight_bytes = 16777216          # bound of unacknowledged data (the default, 16 MiB)
//!
//! [sink_connectors.fahrenheit_conversion]   # the sink listens; the engine connects
//! path = "/tmp/fahrenheit.sock"
//!
//! [[pipelines]]
//! source = "celsius_feed"
//! sinks = ["fahrenheit_conversion"]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Default credits granted to a data sender.
pub const DEFAULT_MAX_CREDITS: u32 = 8192;

/// Default bound of a connector's bytes in flight (`in_flight_bytes`): 16 MiB.
pub const DEFAULT_IN_FLIGHT_BYTES: u64 = 16 * 1024 * 1024;

/// Why an application file could not be used. Each message names the file and what to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read application file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped fields.
    #[error("invalid application file {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but is inconsistent.
    #[error("invalid application file {path}: {message}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Which way data flows through a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// External system -> engine; the engine listens.
    Source,
    /// Engine -> external system; the connector listens.
    Sink,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Source => "source",
            Direction::Sink => "sink",
        })
    }
}

/// Where a connector's protocol connection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP `host:port`.
    Tcp {
        /// Host name or address (default 127.0.0.1).
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `[source_connectors.NAME]` or `[sink_connectors.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Host of the protocol connection (default 127.0.0.1: never all interfaces unless asked).
    #[serde(default = "default_host")]
    pub host: String,
    /// TCP port of the protocol connection.
    pub port: Option<u16>,
    /// Unix-domain socket path, used instead of host/port when set.
    pub path: Option<PathBuf>,
    /// Credits granted to the data sender.
    #[serde(default = "default_max_credits")]
    pub max_credits: u32,
    /// Balance at or below which credits are refilled (default: half of `max_credits`).
    pub refill_credits: Option<u32>,
    /// Bound of this connector's data in flight, in bytes of MESSAGE frames (default 16 MiB).
    /// A source: what it sent and the engine has not acknowledged end to end (its replay
    /// copy); the source runtime sends no more while it holds this much, and the engine
    /// grants no credits while as much from this source is unacknowledged. A sink: the
    /// engine's buffer of outputs the sink has not acknowledged; the engine grants its
    /// sources no credits while the buffer holds this much.
    #[serde(default = "default_in_flight_bytes")]
    pub in_flight_bytes: u64,
    /// Connector-specific parameters (`--NAME-PARAM` on the command line wins over these).
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}

fn default_max_credits() -> u32 {
    DEFAULT_MAX_CREDITS
}

fn default_in_flight_bytes() -> u64 {
    DEFAULT_IN_FLIGHT_BYTES
}

impl ConnectorConfig {
    /// The protocol endpoint (Unix socket when `path` is set, else TCP).
    pub fn endpoint(&self) -> Option<Endpoint> {
        match (&self.path, self.port) {
            (Some(p), _) => Some(Endpoint::Unix(p.clone())),
            (None, Some(port)) => Some(Endpoint::Tcp {
                host: self.host.clone(),
                port,
            }),
            (None, None) => None,
        }
    }

    /// The refill mark, defaulting to half of `max_credits`.
    pub fn refill_mark(&self) -> u32 {
        self.refill_credits
            .unwrap_or(self.max_credits / 2)
            .min(self.max_credits)
    }

    /// A parameter's values: one for a scalar, one per element for an array (how a
    /// repeatable parameter such as `option = ["a=1", "b=2"]` is written in the file).
    pub fn param_values(&self, name: &str) -> Option<Vec<String>> {
        self.params.get(name).map(|v| match v {
            toml::Value::Array(items) => items.iter().map(render_param).collect(),
            other => vec![render_param(other)],
        })
    }

    /// The names in the `params` table, for checking them against what a connector knows.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(String::as_str)
    }
}

/// A TOML value as a parameter string (strings unquoted, others in TOML syntax).
fn render_param(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One `[[pipelines]]` entry: messages from `source` go, through the pipeline, to `sinks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Optional human-readable name.
    pub name: Option<String>,
    /// Name of a source connector.
    pub source: String,
    /// Names of sink connectors.
    #[serde(default)]
    pub sinks: Vec<String>,
}

/// The whole application description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Application name (sent as program_name by the engine).
    pub name: String,
    /// Shared secret checked in HELLO; empty means none.
    #[serde(default)]
    pub cookie: String,
    /// Name of this engine worker (instance_name in the engine's HELLO).
    #[serde(default = "default_worker")]
    pub worker_name: String,
    /// Maximum frame size in bytes (default 16 MiB).
    pub max_frame_bytes: Option<usize>,
    /// Whether keyed state belongs to the engine or to each source stream (default engine).
    #[serde(default)]
    pub state_scope: StateScope,
    /// Source connectors by name.
    #[serde(default)]
    pub source_connectors: BTreeMap<String, ConnectorConfig>,
    /// Sink connectors by name.
    #[serde(default)]
    pub sink_connectors: BTreeMap<String, ConnectorConfig>,
    /// Pass-through pipelines run by the `engine` binary.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// Where the file was read from (for messages).
    #[serde(skip)]
    pub file: PathBuf,
}

/// Who owns keyed state: `state_scope` in the application file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateScope {
    /// One state store for the whole engine: a key's state sees every stream's messages.
    /// Right for one engine; its checkpoint belongs to that engine.
    #[default]
    Engine,
    /// One state store per source stream (a Kafka partition, a Kinesis shard): the state of
    /// a stream travels with the stream through the checkpoint store when another engine
    /// takes the stream over (scale-out over the upstream's own consumer groups).
    Stream,
}

fn default_worker() -> String {
    "worker1".to_string()
}

impl Application {
    /// Reads and validates an application file.
    pub fn load(path: impl AsRef<Path>) -> Result<Application, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates application TOML; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Application, ConfigError> {
        let mut app: Application = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        app.file = path.to_path_buf();
        app.validate()?;
        Ok(app)
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            message,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (dir, map) in [
            ("source_connectors", &self.source_connectors),
            ("sink_connectors", &self.sink_connectors),
        ] {
            for (name, c) in map {
                for (key, value) in &c.params {
                    let scalar = |v: &toml::Value| {
                        !matches!(v, toml::Value::Table(_) | toml::Value::Array(_))
                    };
                    let ok = match value {
                        toml::Value::Array(items) => items.iter().all(scalar),
                        v => scalar(v),
                    };
                    if !ok {
                        return Err(self.invalid(format!(
                            "[{dir}.{name}.params] {key}: a parameter is a string, number or boolean, or a list of them for a repeatable one"
                        )));
                    }
                }
                if c.endpoint().is_none() {
                    return Err(self.invalid(format!(
                        "[{dir}.{name}] needs `port = N` (TCP) or `path = \"...\"` (Unix socket)"
                    )));
                }
                if c.max_credits == 0 {
                    return Err(
                        self.invalid(format!("[{dir}.{name}] max_credits must be at least 1"))
                    );
                }
                if c.in_flight_bytes == 0 {
                    return Err(self.invalid(format!(
                        "[{dir}.{name}] in_flight_bytes must be at least 1 (default {DEFAULT_IN_FLIGHT_BYTES})"
                    )));
                }
            }
        }
        for name in self.source_connectors.keys() {
            if self.sink_connectors.contains_key(name) {
                return Err(self.invalid(format!(
                    "connector name `{name}` is declared both as a source and as a sink; names must be unique"
                )));
            }
        }
        for (i, p) in self.pipelines.iter().enumerate() {
            if !self.source_connectors.contains_key(&p.source) {
                return Err(self.invalid(format!(
                    "pipeline {} reads from `{}`, which is not a declared source connector (declared: {})",
                    i + 1,
                    p.source,
                    names(&self.source_connectors)
                )));
            }
            for s in &p.sinks {
                if !self.sink_connectors.contains_key(s) {
                    return Err(self.invalid(format!(
                        "pipeline {} writes to `{s}`, which is not a declared sink connector (declared: {})",
                        i + 1,
                        names(&self.sink_connectors)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Finds a connector by name in either table.
    pub fn connector(&self, name: &str) -> Result<(Direction, &ConnectorConfig), ConfigError> {
        if let Some(c) = self.source_connectors.get(name) {
            return Ok((Direction::Source, c));
        }
        if let Some(c) = self.sink_connectors.get(name) {
            return Ok((Direction::Sink, c));
        }
        Err(self.invalid(format!(
            "unknown connector `{name}`; declared sources: {}; declared sinks: {}",
            names(&self.source_connectors),
            names(&self.sink_connectors)
        )))
    }

    /// The maximum frame size in force.
    pub fn max_frame(&self) -> usize {
        self.max_frame_bytes.unwrap_or(16 * 1024 * 1024)
    }
}

fn names(map: &BTreeMap<String, ConnectorConfig>) -> String {
    if map.is_empty() {
        "none".to_string()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "Celsius to Fahrenheit"
[source_connectors.celsius_feed]
port = 7100
max_credits = 1000
refill_credits = 500
[source_connectors.other]
port = 7101
[sink_connectors.out]
path = "/tmp/x.sock"
[sink_connectors.out.params]
topic = "t"
retries = 3
option = ["a=1", "b=2"]
[[pipelines]]
source = "celsius_feed"
sinks = ["out"]
"#;

    #[test]
    fn parses_defaults_and_params() {
        let app = Application::parse(GOOD, Path::new("a.toml")).unwrap();
        let (dir, c) = app.connector("celsius_feed").unwrap();
        assert_eq!(dir, Direction::Source);
        assert_eq!(
            c.endpoint(),
            Some(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 7100
            })
        );
        assert_eq!(c.refill_mark(), 500);
        assert_eq!(
            app.connector("other").unwrap().1.refill_mark(),
            DEFAULT_MAX_CREDITS / 2
        );
        let (dir, s) = app.connector("out").unwrap();
        assert_eq!(dir, Direction::Sink);
        assert_eq!(s.endpoint(), Some(Endpoint::Unix("/tmp/x.sock".into())));
        assert_eq!(s.param_values("topic"), Some(vec!["t".to_string()]));
        assert_eq!(s.param_values("retries"), Some(vec!["3".to_string()]));
        assert_eq!(
            s.param_values("option"),
            Some(vec!["a=1".to_string(), "b=2".to_string()])
        );
        assert_eq!(app.worker_name, "worker1");
        assert_eq!(app.state_scope, StateScope::Engine);
        let text = format!("state_scope = \"stream\"\n{GOOD}");
        let app = Application::parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(app.state_scope, StateScope::Stream);
        let text = format!("state_scope = \"pair\"\n{GOOD}");
        let e = Application::parse(&text, Path::new("a.toml")).unwrap_err();
        assert!(
            e.to_string().contains("expected `engine` or `stream`"),
            "{e}"
        );
    }

    #[test]
    fn in_flight_bytes_defaults_and_must_be_positive() {
        let app = Application::parse(GOOD, Path::new("a.toml")).unwrap();
        assert_eq!(
            app.connector("other").unwrap().1.in_flight_bytes,
            DEFAULT_IN_FLIGHT_BYTES
        );
        let text = "name = \"a\"\n[source_connectors.s]\nport = 1\nin_flight_bytes = 65536\n";
        let app = Application::parse(text, Path::new("a.toml")).unwrap();
        assert_eq!(app.connector("s").unwrap().1.in_flight_bytes, 65536);
        let text = "name = \"a\"\n[sink_connectors.s]\nport = 1\nin_flight_bytes = 0\n";
        let e = Application::parse(text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in_flight_bytes must be at least 1"), "{e}");
    }

    #[test]
    fn a_table_is_not_a_parameter_value() {
        let text = "name = \"a\"\n[source_connectors.s]\nport = 1\n[source_connectors.s.params]\noption = { a = 1 }\n";
        let e = Application::parse(text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("params] option"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Application::parse("name = 1", Path::new("a.toml")).unwrap_err();
        assert!(e.to_string().contains("a.toml"), "{e}");
        let e = Application::parse("name = \"x\"\nbogus = 1", Path::new("a.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Application::parse(
            "name = \"x\"\n[source_connectors.a]\nhost = \"h\"",
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs `port"), "{e}");
        let e = Application::parse(
            "name = \"x\"\n[source_connectors.a]\nport = 1\n[[pipelines]]\nsource = \"a\"\nsinks = [\"nope\"]",
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`nope`"), "{e}");
        let app = Application::parse(GOOD, Path::new("a.toml")).unwrap();
        let e = app.connector("missing").unwrap_err();
        assert!(e.to_string().contains("celsius_feed, other"), "{e}");
    }

    #[test]
    fn missing_file_is_reported() {
        let e = Application::load("/nonexistent/app.toml").unwrap_err();
        assert!(
            e.to_string().contains("cannot read application file"),
            "{e}"
        );
    }
}
