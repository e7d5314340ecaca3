//! Typed connector parameters: a connector declares one `#[derive(clap::Parser)]` struct
//! (each field's doc comment is its help, `default_value` its default, `Vec<_>` makes it
//! repeatable, `Option<_>` optional, `bool` a true/false switch) and gets it filled from
//! `--NAME-PARAM`, the params table and `NAME_PARAM` environment variables.
//!
//! The struct's parameters are turned into the runtime's [`Param`] list (for `--help`,
//! `--check` and unknown-name errors); the resolved values are then parsed by clap, so types,
//! defaults and required parameters are declared once, in the struct.

use anyhow::{anyhow, bail, Result};
use clap::{ArgAction, CommandFactory, FromArgMatches};

use crate::args::{Param, Params};

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The parameters `P` declares, as the runtime's [`Param`] list. Every field must be a
/// `--long` option (`#[arg(long)]`).
pub(crate) fn params_of<P: CommandFactory>() -> Result<&'static [Param]> {
    let cmd = P::command();
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        if arg.get_long().is_none() {
            bail!("connector parameter `{id}` must be declared with #[arg(long)]");
        }
        let default = arg
            .get_default_values()
            .first()
            .map(|d| leak(d.to_string_lossy().into_owned()))
            .or_else(|| matches!(arg.get_action(), ArgAction::SetTrue).then_some("false"));
        out.push(Param {
            name: leak(id.to_string()),
            help: leak(
                arg.get_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default()
                    .trim_end_matches('.')
                    .to_string(),
            ),
            default,
            required: arg.is_required_set(),
            repeated: matches!(arg.get_action(), ArgAction::Append),
        });
    }
    Ok(Box::leak(out.into_boxed_slice()))
}

/// Parses the resolved string values into `P`; errors name `--CONNECTOR-PARAM`.
pub(crate) fn parse_params<P: CommandFactory + FromArgMatches>(params: &Params) -> Result<P> {
    let cmd = P::command().no_binary_name(true);
    let mut argv: Vec<String> = Vec::new();
    let mut longs: Vec<(String, String)> = Vec::new();
    for arg in cmd.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        longs.push((long.to_string(), id.to_string()));
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if params.flag(id)? {
                argv.push(format!("--{long}"));
            }
            continue;
        }
        let values = params.all(id);
        // A one-value parameter given twice (an argument list shared by several processes,
        // then one more): the last one wins, as on the command line of most tools.
        let values = match arg.get_action() {
            ArgAction::Append => values,
            _ => &values[values.len().saturating_sub(1)..],
        };
        for v in values {
            argv.push(format!("--{long}={v}"));
        }
    }
    let matches = cmd.try_get_matches_from(argv).map_err(|e| {
        let text = e.to_string();
        let mut line = text
            .lines()
            .next()
            .unwrap_or("bad parameters")
            .trim_start_matches("error: ")
            .to_string();
        longs.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
        for (long, id) in &longs {
            line = line.replace(
                &format!("--{long}"),
                &format!("--{}-{id}", params.connector()),
            );
        }
        anyhow!("{line}")
    })?;
    P::from_arg_matches(&matches).map_err(|e| anyhow!("{e}"))
}

/// A comma-separated list parameter (`--NAME-topics a,b,c`): trimmed, empty items dropped,
/// at least one item. Declare the field as `topics: CommaList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl std::str::FromStr for CommaList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if items.is_empty() {
            return Err("empty: give one or more, comma-separated".into());
        }
        Ok(CommaList(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test parameters.
    #[derive(clap::Parser, Debug)]
    struct P {
        /// The port.
        #[arg(long)]
        port: u16,
        /// The host
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Switch
        #[arg(long)]
        declare: bool,
        /// Repeatable
        #[arg(long)]
        option: Vec<String>,
        /// Optional
        #[arg(long)]
        group: Option<String>,
    }

    #[test]
    fn comma_lists_are_trimmed_and_never_empty() {
        let l: CommaList = " a, b,,c ".parse().unwrap();
        assert_eq!(l.0, vec!["a", "b", "c"]);
        assert!(" , ".parse::<CommaList>().is_err());
    }

    #[test]
    fn declared_once_and_listed() {
        let ps = params_of::<P>().unwrap();
        let port = ps.iter().find(|p| p.name == "port").unwrap();
        assert!(port.required);
        assert_eq!(port.help, "The port");
        let host = ps.iter().find(|p| p.name == "host").unwrap();
        assert_eq!(host.default, Some("127.0.0.1"));
        assert!(ps.iter().find(|p| p.name == "option").unwrap().repeated);
        assert_eq!(
            ps.iter().find(|p| p.name == "declare").unwrap().default,
            Some("false")
        );
    }

    #[test]
    fn values_are_typed_and_errors_name_the_connector_flag() {
        let ok = Params::from_pairs(
            "in",
            &[
                ("port", "7"),
                ("declare", "yes"),
                ("option", "a=1"),
                ("option", "b=2"),
            ],
        );
        let p: P = parse_params(&ok).unwrap();
        assert_eq!((p.port, p.host.as_str(), p.declare), (7, "127.0.0.1", true));
        assert_eq!(p.option, vec!["a=1", "b=2"]);
        assert_eq!(p.group, None);
        let twice = Params::from_pairs("in", &[("port", "7"), ("port", "8")]);
        assert_eq!(
            parse_params::<P>(&twice).unwrap().port,
            8,
            "the last one wins"
        );
        let bad = Params::from_pairs("in", &[("port", "x")]);
        let e = parse_params::<P>(&bad).unwrap_err().to_string();
        assert!(e.contains("--in-port"), "{e}");
    }
}
