//! The seed's argument conventions.
//!
//! `--application-module FILE --connector NAME` select the connector; each connector
//! parameter is `--NAME-PARAM VALUE` on the command line, else `PARAM` in the
//! `[source_connectors.NAME.params]` (or sink) table, else the `NAME_PARAM` environment
//! variable, else the parameter's default. Arguments for other connectors are ignored so one
//! argument list can serve every process; an unknown `--NAME-*` is an error listing the valid
//! ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use application::{Application, ConnectorConfig, Direction};
use clap::{Arg, ArgAction, Command};

use crate::format::Format;

/// One connector parameter, declared by the connector file.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name after the `--NAME-` prefix, e.g. `topic`.
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// Value used when no source gives one.
    pub default: Option<&'static str>,
    /// Whether the connector cannot start without it.
    pub required: bool,
    /// Whether it may be given several times (e.g. `option key=value`).
    pub repeated: bool,
}

impl Param {
    /// A parameter that must be given.
    pub const fn required(name: &'static str, help: &'static str) -> Param {
        Param {
            name,
            help,
            default: None,
            required: true,
            repeated: false,
        }
    }
    /// A parameter with a default value.
    pub const fn with_default(
        name: &'static str,
        help: &'static str,
        default: &'static str,
    ) -> Param {
        Param {
            name,
            help,
            default: Some(default),
            required: false,
            repeated: false,
        }
    }
    /// A parameter that may be absent.
    pub const fn optional(name: &'static str, help: &'static str) -> Param {
        Param {
            name,
            help,
            default: None,
            required: false,
            repeated: false,
        }
    }
    /// A parameter that may be given any number of times.
    pub const fn repeated(name: &'static str, help: &'static str) -> Param {
        Param {
            name,
            help,
            default: None,
            required: false,
            repeated: true,
        }
    }
}

/// What a connector binary is: the Rust counterpart of the seed's
/// `SourceConnector(required_params=[...], optional_params=[...])`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectorSpec {
    /// Binary name, e.g. `udp_source` (sent as program_name in HELLO).
    pub program: &'static str,
    /// One paragraph for `--help`.
    pub about: &'static str,
    /// Source or sink.
    pub direction: Direction,
    /// The connector's own parameters.
    pub params: &'static [Param],
}

/// Resolved connector parameters.
#[derive(Debug, Clone, Default)]
pub struct Params {
    connector: String,
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Params {
    /// The parameter's value (the last one given), or its default.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// The connector name these parameters belong to (for messages naming `--NAME-PARAM`).
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Every value of a repeated parameter, in the order given.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A boolean parameter (`true/false`, `yes/no`, `1/0`, `on/off`); absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "true" | "yes" | "1" | "on" => Ok(true),
                "false" | "no" | "0" | "off" | "" => Ok(false),
                _ => bail!(
                    "invalid value {v:?} for --{}-{name}: expected true or false",
                    self.connector
                ),
            },
        }
    }

    /// Builds parameters directly (for tests and embedding).
    pub fn from_pairs(connector: &str, pairs: &[(&'static str, &str)]) -> Params {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            values.entry(k).or_default().push(v.to_string());
        }
        Params {
            connector: connector.to_string(),
            values,
        }
    }
}

/// Where a source sends its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The engine, over the connector protocol.
    Engine,
    /// Standard output, in `--format`.
    Stdout,
}

/// Where a sink reads its messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The engine, over the connector protocol.
    Engine,
    /// Standard input, in `--format`.
    Stdin,
}

/// Options every connector understands, besides its own parameters.
#[derive(Debug, Clone)]
pub struct CommonOptions {
    /// The application description, when given.
    pub app: Option<Application>,
    /// This connector's name.
    pub connector: String,
    /// This connector's table in the application file, when there is one.
    pub config: Option<ConnectorConfig>,
    /// Source only: engine or stdout.
    pub output: Output,
    /// Sink only: engine or stdin.
    pub input: Input,
    /// Record format for stdin/stdout.
    pub format: Format,
    /// Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between stats lines (0 = off).
    pub stats_interval: u64,
    /// Validate and exit.
    pub check: bool,
    /// Where permanently refused messages (sinks) and records the protocol cannot carry
    /// (sources) go.
    pub dead_letter: Option<PathBuf>,
    /// Largest accepted frame.
    pub max_frame: usize,
    /// Sources: how long to wait at shutdown, at the end of the input and when a stream ends
    /// for the engine to acknowledge what was sent (`--drain-timeout SECS`, default 30).
    pub drain_timeout: std::time::Duration,
}

/// Parses `argv` (without the program name) for `spec`. `Ok(None)` means help was printed.
pub fn parse(spec: &ConnectorSpec, argv: Vec<String>) -> Result<Option<(CommonOptions, Params)>> {
    let connector = find_value(&argv, "--connector");
    let name_for_help = connector.clone().unwrap_or_else(|| "NAME".to_string());
    let cmd = command(spec, &name_for_help);
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        let mut cmd = cmd;
        let help = format!("{}\n", cmd.render_long_help());
        // A closed stdout (`--help | head`) is not an error.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), help.as_bytes());
        return Ok(None);
    }
    let Some(connector) = connector else {
        bail!(
            "missing --connector NAME: which connector of the application this {} runs as (see --help)",
            spec.program
        );
    };
    let filtered = filter_args(spec, &connector, &argv)?;
    let matches = cmd
        .try_get_matches_from(std::iter::once(spec.program.to_string()).chain(filtered))
        .map_err(|e| {
            anyhow!(
                "{}",
                e.to_string()
                    .lines()
                    .next()
                    .unwrap_or("bad arguments")
                    .trim_start_matches("error: ")
            )
        })?;

    let output = match matches
        .try_get_one::<String>("to")
        .ok()
        .flatten()
        .map(String::as_str)
    {
        None | Some("engine") => Output::Engine,
        Some("stdout") => Output::Stdout,
        Some(o) => bail!("--to {o}: expected `engine` or `stdout`"),
    };
    let input = match matches
        .try_get_one::<String>("from")
        .ok()
        .flatten()
        .map(String::as_str)
    {
        None | Some("engine") => Input::Engine,
        Some("stdin") => Input::Stdin,
        Some(o) => bail!("--from {o}: expected `engine` or `stdin`"),
    };
    if spec.direction == Direction::Source && input != Input::Engine {
        bail!(
            "--from is for sink connectors; {} is a source (use --to stdout)",
            spec.program
        );
    }
    if spec.direction == Direction::Sink && output != Output::Engine {
        bail!(
            "--to is for source connectors; {} is a sink (use --from stdin)",
            spec.program
        );
    }
    let format: Format = matches
        .get_one::<String>("format")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or_default();
    let app = match matches.get_one::<String>("application-module") {
        Some(path) => Some(Application::load(path)?),
        None => None,
    };
    let config = match &app {
        Some(app) => {
            let (dir, c) = app.connector(&connector)?;
            if dir != spec.direction {
                bail!(
                    "connector `{connector}` is declared as a {dir} in {}, but {} is a {}",
                    app.file.display(),
                    spec.program,
                    spec.direction
                );
            }
            Some(c.clone())
        }
        None => None,
    };
    let stdio = output == Output::Stdout || input == Input::Stdin;
    let check = matches.get_flag("check");
    if config.is_none() && !stdio {
        bail!(
            "missing --application-module FILE: the engine address of `{connector}` comes from it (or use {})",
            if spec.direction == Direction::Source { "--to stdout" } else { "--from stdin" }
        );
    }
    let metrics_addr = matches
        .get_one::<String>("metrics-addr")
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|e| {
                anyhow!("--metrics-addr {s}: {e} (expected HOST:PORT, e.g. 127.0.0.1:9100)")
            })
        })
        .transpose()?;
    let stats_interval = matches
        .get_one::<String>("stats-interval")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| anyhow!("--stats-interval {s}: {e}"))
        })
        .transpose()?
        .unwrap_or(10);
    let drain_timeout = matches
        .try_get_one::<String>("drain-timeout")
        .ok()
        .flatten()
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(std::time::Duration::from_secs_f64)
                .ok_or_else(|| anyhow!("--drain-timeout {s}: expected seconds, e.g. 30"))
        })
        .transpose()?
        .unwrap_or(std::time::Duration::from_secs(30));
    let max_frame = matches
        .get_one::<String>("max-frame-bytes")
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| anyhow!("--max-frame-bytes {s}: {e}"))
        })
        .transpose()?
        .or(app.as_ref().map(|a| a.max_frame()))
        .unwrap_or(framing::DEFAULT_MAX_FRAME);

    if let (Some(c), Some(app)) = (&config, &app) {
        let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
        if let Some(unknown) = c.param_names().find(|n| !known.contains(n)) {
            bail!(
                "unknown parameter `{unknown}` in the params table of connector `{connector}` in {} ({} knows: {})",
                app.file.display(),
                spec.program,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        }
    }
    let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for p in spec.params {
        let cli: Vec<String> = matches
            .get_many::<String>(&param_arg_id(p.name))
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        let from_file = config.as_ref().and_then(|c| c.param_values(p.name));
        if let Some(v) = &from_file {
            if v.len() != 1 && !p.repeated {
                bail!(
                    "parameter `{}` of connector `{connector}` takes one value, not a list of {} (only repeatable parameters take lists)",
                    p.name,
                    v.len()
                );
            }
        }
        let env_name = format!("{}_{}", connector, p.name)
            .to_ascii_uppercase()
            .replace('-', "_");
        let from_env = std::env::var(&env_name).ok();
        let chosen = if !cli.is_empty() {
            cli
        } else if let Some(v) = from_file {
            v
        } else if let Some(v) = from_env {
            vec![v]
        } else if let Some(d) = p.default {
            vec![d.to_string()]
        } else {
            Vec::new()
        };
        if chosen.is_empty() && p.required && !check {
            bail!(
                "missing required parameter --{connector}-{} ({}); or set `{}` in the connector's params table, or {env_name}",
                p.name,
                p.help,
                p.name
            );
        }
        if !chosen.is_empty() {
            values.insert(p.name, chosen);
        }
    }
    let common = CommonOptions {
        app,
        connector: connector.clone(),
        config,
        output,
        input,
        format,
        metrics_addr,
        stats_interval,
        check,
        dead_letter: matches
            .try_get_one::<String>("dead-letter")
            .ok()
            .flatten()
            .map(PathBuf::from),
        max_frame,
        drain_timeout,
    };
    Ok(Some((common, Params { connector, values })))
}

const COMMON_WITH_VALUE: &[&str] = &[
    "--application-module",
    "--connector",
    "--to",
    "--from",
    "--format",
    "--metrics-addr",
    "--stats-interval",
    "--dead-letter",
    "--max-frame-bytes",
    "--drain-timeout",
    "--log-format",
];

fn find_value(argv: &[String], flag: &str) -> Option<String> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// The clap id of a connector parameter, distinct from the common options' ids so a
/// parameter may be called `format`, `check`, `to`, ... (`--NAME-format` vs `--format`).
fn param_arg_id(name: &str) -> String {
    format!("param:{name}")
}

/// Keeps common options and this connector's `--NAME-*` parameters; drops other
/// connectors' arguments; refuses unknown `--NAME-*` ones.
fn filter_args(spec: &ConnectorSpec, connector: &str, argv: &[String]) -> Result<Vec<String>> {
    let prefix = format!("--{connector}-");
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        let name = a.split('=').next().unwrap_or(a);
        let has_inline = a.contains('=');
        if COMMON_WITH_VALUE.contains(&name) || name == "--check" {
            out.push(a.clone());
            if !has_inline && name != "--check" {
                if let Some(v) = argv.get(i + 1) {
                    out.push(v.clone());
                    i += 1;
                }
            }
        } else if let Some(param) = name.strip_prefix(&prefix) {
            if !spec.params.iter().any(|p| p.name == param) {
                let valid: Vec<String> = spec
                    .params
                    .iter()
                    .map(|p| format!("--{connector}-{}", p.name))
                    .collect();
                bail!(
                    "unknown parameter {name} for {}; valid parameters: {}",
                    spec.program,
                    if valid.is_empty() {
                        "none".to_string()
                    } else {
                        valid.join(", ")
                    }
                );
            }
            out.push(a.clone());
            if !has_inline {
                match argv.get(i + 1) {
                    Some(v) => {
                        out.push(v.clone());
                        i += 1;
                    }
                    None => bail!("{name} needs a value"),
                }
            }
        } else if a.starts_with("--") {
            // Another connector's (or the engine's) argument: skip it and its value.
            if !has_inline && argv.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
                i += 1;
            }
        } else {
            bail!("unexpected argument {a:?} (parameters are passed as --{connector}-PARAM VALUE)");
        }
        i += 1;
    }
    Ok(out)
}

fn command(spec: &ConnectorSpec, connector: &str) -> Command {
    let mut cmd = Command::new(spec.program)
        .about(spec.about)
        .disable_help_flag(true)
        .arg(
            Arg::new("application-module")
                .long("application-module")
                .value_name("FILE")
                .help("Application description (TOML) shared with the engine"),
        )
        .arg(
            Arg::new("connector")
                .long("connector")
                .value_name("NAME")
                .help("Which connector of the application this process runs as"),
        )
        .arg(
            Arg::new("format")
                .long("format")
                .value_name("lines|frames|kv")
                .help("Record format with --to stdout / --from stdin (kv = key TAB value per line)"),
        )
        .arg(
            Arg::new("metrics-addr")
                .long("metrics-addr")
                .value_name("HOST:PORT")
                .help("Serve Prometheus metrics here"),
        )
        .arg(
            Arg::new("stats-interval")
                .long("stats-interval")
                .value_name("SECS")
                .help("Seconds between stats lines on stderr; 0 = off [default: 10]"),
        )
        .arg(
            Arg::new("max-frame-bytes")
                .long("max-frame-bytes")
                .value_name("N")
                .help("Largest protocol frame sent or accepted [default: the application module's max_frame_bytes, else 16777216]"),
        )
        .arg(
            Arg::new("log-format")
                .long("log-format")
                .value_name("text|json")
                .value_parser(telemetry::LOG_FORMATS)
                .help("Log lines as text (coloured only on a terminal) or as one JSON object per line [default: text]"),
        )
        .arg(
            Arg::new("check")
                .long("check")
                .action(ArgAction::SetTrue)
                .help("Validate the configuration, try the engine and the external system, print one line per check, exit 0 only if all pass"),
        );
    cmd = match spec.direction {
        Direction::Source => cmd
            .arg(
                Arg::new("to")
                    .long("to")
                    .value_name("engine|stdout")
                    .help("Send messages to the engine (default) or to standard output"),
            )
            .arg(
                Arg::new("drain-timeout")
                    .long("drain-timeout")
                    .allow_hyphen_values(true)
                    .value_name("SECS")
                    .help("At shutdown, at the end of the input and when a stream ends: how long to wait for the engine to acknowledge what was sent before committing [default: 30]"),
            )
            .arg(
                Arg::new("dead-letter")
                    .long("dead-letter")
                    .value_name("DIR")
                    .help("Write records the protocol cannot carry (key over 65535 bytes, frame over --max-frame-bytes) here and go on; without it such a record stops the source"),
            ),
        Direction::Sink => cmd
            .arg(
                Arg::new("from")
                    .long("from")
                    .value_name("engine|stdin")
                    .help("Read messages from the engine (default) or from standard input"),
            )
            .arg(
                Arg::new("dead-letter")
                    .long("dead-letter")
                    .value_name("DIR")
                    .help("Write messages the external system permanently refuses here and acknowledge them"),
            ),
    };
    for p in spec.params {
        let mut help = p.help.to_string();
        if let Some(d) = p.default {
            help.push_str(&format!(" [default: {d}]"));
        }
        if p.required {
            help.push_str(" [required]");
        }
        let env = format!("{}_{}", connector, p.name).to_ascii_uppercase();
        help.push_str(&format!(" [env: {env}]"));
        cmd = cmd.arg(
            Arg::new(param_arg_id(p.name))
                .long(format!("{connector}-{}", p.name))
                .value_name("VALUE")
                // `-5` is a (bad) value, reported as such, not an unknown option.
                .allow_hyphen_values(true)
                .action(ArgAction::Append)
                .help(help),
        );
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ConnectorSpec = ConnectorSpec {
        program: "t_source",
        about: "test",
        direction: Direction::Source,
        params: &[
            Param::required("host", "host"),
            Param::with_default("port", "port", "6789"),
            Param::repeated("option", "librdkafka option"),
        ],
    };

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_own_params_and_ignores_others() {
        let (common, params) = parse(
            &SPEC,
            argv("--connector feed --to stdout --feed-host 1.2.3.4 --other-port 9 --feed-option a=1 --feed-option=b=2 --engine-flag"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(common.output, Output::Stdout);
        assert_eq!(params.get("host"), Some("1.2.3.4"));
        assert_eq!(params.get("port"), Some("6789"));
        assert_eq!(
            params.all("option"),
            &["a=1".to_string(), "b=2".to_string()]
        );
        assert_eq!(params.get("port"), Some("6789"));
    }

    #[test]
    fn unknown_own_param_lists_valid_ones() {
        let e = parse(&SPEC, argv("--connector feed --to stdout --feed-hots x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--feed-hots"), "{e}");
        assert!(e.contains("--feed-host, --feed-port, --feed-option"), "{e}");
    }

    #[test]
    fn missing_required_and_connector_are_explained() {
        let e = parse(&SPEC, argv("--to stdout")).unwrap_err().to_string();
        assert!(e.contains("--connector"), "{e}");
        let e = parse(&SPEC, argv("--connector feed --to stdout"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--feed-host"), "{e}");
        let e = parse(&SPEC, argv("--connector feed --feed-host x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--application-module"), "{e}");
    }

    #[test]
    fn file_and_env_fill_in_under_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(
            &path,
            "name = \"a\"\n[source_connectors.feedx]\nport = 7100\n[source_connectors.feedx.params]\nhost = \"filehost\"\n",
        )
        .unwrap();
        std::env::set_var("FEEDX_PORT", "1234");
        let (common, params) = parse(
            &SPEC,
            argv(&format!(
                "--application-module {} --connector feedx",
                path.display()
            )),
        )
        .unwrap()
        .unwrap();
        assert!(common.config.is_some());
        assert_eq!(params.get("host"), Some("filehost"));
        assert_eq!(params.get("port"), Some("1234"));
        let (_, params) = parse(
            &SPEC,
            argv(&format!(
                "--application-module {} --connector feedx --feedx-host cli",
                path.display()
            )),
        )
        .unwrap()
        .unwrap();
        assert_eq!(params.get("host"), Some("cli"));
        let e = parse(
            &SPEC,
            argv(&format!(
                "--application-module {} --connector nope",
                path.display()
            )),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown connector `nope`"), "{e}");
    }

    #[test]
    fn the_params_table_takes_lists_for_repeatable_params_and_refuses_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        let write = |params: &str| {
            std::fs::write(
                &path,
                format!("name = \"a\"\n[source_connectors.lists]\nport = 7100\n[source_connectors.lists.params]\n{params}\n"),
            )
            .unwrap()
        };
        let args = argv(&format!(
            "--application-module {} --connector lists",
            path.display()
        ));
        write("host = \"h\"\noption = [\"a=1\", \"b=2\"]");
        let (_, params) = parse(&SPEC, args.clone()).unwrap().unwrap();
        assert_eq!(
            params.all("option"),
            &["a=1".to_string(), "b=2".to_string()]
        );
        write("host = [\"a\", \"b\"]");
        let e = parse(&SPEC, args.clone()).unwrap_err().to_string();
        assert!(e.contains("takes one value"), "{e}");
        write("host = \"h\"\nhots = \"typo\"");
        let e = parse(&SPEC, args).unwrap_err().to_string();
        assert!(
            e.contains("unknown parameter `hots`") && e.contains("host, port, option"),
            "{e}"
        );
    }

    #[test]
    fn a_param_may_share_a_name_with_a_common_option() {
        const S: ConnectorSpec = ConnectorSpec {
            program: "t_sink",
            about: "test",
            direction: Direction::Sink,
            params: &[Param::with_default("format", "object format", "lines")],
        };
        let (common, params) = parse(
            &S,
            argv("--connector out --from stdin --format frames --out-format raw"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(common.format, Format::Frames);
        assert_eq!(params.get("format"), Some("raw"));
    }

    #[test]
    fn flags() {
        let p = Params::from_pairs("c", &[("a", "yes"), ("b", "x, y,,z"), ("n", "abc")]);
        assert!(p.flag("a").unwrap());
        assert!(!p.flag("missing").unwrap());
        assert!(p.flag("n").unwrap_err().to_string().contains("--c-n"));
    }
}
