//! The library every connector binary is written against.
//!
//! A connector file only talks to its external system; everything about delivery lives here:
//! - [`connector`]: the two traits a connector implements, [`SourceConnector`] (read records
//!   into a [`Batch`], commit the tokens the engine acknowledged) and [`SinkConnector`] (write
//!   a batch, say per record written / retry / refused), and the drivers that run them.
//! - [`client`]: the source side of the protocol: the engine connection, credits, one
//!   [`ledger`] per stream (frames for replay, commit tokens), reconnect, replay, EOS; or
//!   standard output with `--to stdout`.
//! - [`sink`]: the sink server the engine connects to (or standard input with `--from stdin`).
//! - [`args`]: the seed's argument conventions (`--application-module`, `--connector NAME`,
//!   `--NAME-PARAM`, `[..connectors.NAME.params]`, `NAME_PARAM` environment variables), filled
//!   into the connector's `#[derive(clap::Parser)]` parameters struct.
//! - [`Backoff`] (the workspace's one retry policy, from `framing`), [`deadletter`], [`format`], [`metrics`], [`check`], [`transport`].
//!
//! Entry points: [`source()`] and [`sink()`]; `.run(start)` parses arguments, sets up
//! logging, metrics and signals, calls `start` with the typed parameters to open the external
//! system, drives the connector it returns and turns the result into an exit code with a
//! one-line reason.

pub mod args;
pub mod batch;
pub mod check;
pub mod client;
pub mod connector;
pub mod context;
pub mod deadletter;
pub mod format;
pub mod ledger;
pub mod metrics;
pub mod run;
pub mod sink;
pub mod transport;
mod typed;
pub use typed::CommaList;

pub use args::{ConnectorSpec, Param, Params};
pub use batch::Batch;
pub use check::Check;
pub use client::{OutputClosed, ShuttingDown, StreamHandle};
pub use connector::{Batching, Outcome, Outcomes, SinkConnector, SourceConnector};
pub use context::{Context, External};
pub use framing::Backoff;
pub use run::{sink, source, Connector};
pub use sink::{Sink, SinkMessage};

pub use telemetry::{Counter, FloatCounter, FloatGauge, Gauge, Histogram};

/// Nanoseconds since the Unix epoch: a start for message ids that must keep increasing
/// across restarts of a connector whose upstream has no ids of its own.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Everything a connector file usually needs, in one import.
pub mod prelude {
    pub use crate::{
        Backoff, Batch, Batching, Check, CommaList, Context, Counter, Gauge, Outcomes,
        SinkConnector, SinkMessage, SourceConnector, StreamHandle,
    };
    pub use anyhow::{anyhow, bail, Context as _, Result};
    pub use application::Direction;
    pub use bytes::Bytes;
    pub use clap::Parser;
    pub use framing::stream_id_for;
    pub use std::time::Duration;
}
