//! The library every connector binary is written against.
//!
//! A connector file stays short because everything generic lives here:
//! - [`args`]: the seed's argument conventions (`--application-module`, `--connector NAME`,
//!   `--NAME-PARAM`, `[..connectors.NAME.params]`, `NAME_PARAM` environment variables).
//! - [`source`]: the source client (`notify`, `write`, `flush`, `eos`, acknowledgements),
//!   with reconnect and replay of unacknowledged messages, or `--to stdout`.
//! - [`sink`]: the sink server (`read_batch`, `ack`), or `--from stdin`.
//! - [`acks`]: turning out-of-order confirmations into in-order acknowledgement points.
//! - [`backoff`], [`deadletter`], [`format`], [`metrics`], [`check`].
//!
//! Entry points: [`source()`] and [`sink()`] return a [`ConnectorBuilder`]; `.run(body)`
//! parses arguments, sets up logging, metrics and signals, connects, runs the body and turns
//! its result into an exit code with a one-line reason.

pub mod acks;
pub mod args;
pub mod backoff;
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
pub mod source;
pub mod transport;
mod typed;

pub use acks::InOrderAcks;
pub use args::{ConnectorSpec, Param, Params};
pub use backoff::Backoff;
pub use batch::Batch;
pub use check::Check;
pub use client::{OutputClosed, ShuttingDown, StreamHandle};
pub use connector::{Batching, Outcome, Outcomes, SinkConnector, SourceConnector};
pub use context::Context;
pub use run::{legacy_sink, legacy_source, sink, source, Connector, ConnectorBuilder};
pub use sink::{Sink, SinkMessage};
pub use source::{Acked, Acks, Source, Written, IDLE_FLUSH};

pub use telemetry::{Counter, Gauge};

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
        Acked, Acks, Backoff, Batch, Batching, Check, ConnectorSpec, Context, Counter, Gauge,
        InOrderAcks, Outcomes, Param, Params, Sink, SinkConnector, SinkMessage, Source,
        SourceConnector, StreamHandle, Written, IDLE_FLUSH,
    };
    pub use anyhow::{anyhow, bail, Context as _, Result};
    pub use application::Direction;
    pub use bytes::Bytes;
    pub use clap::Parser;
    pub use framing::stream_id_for;
    pub use std::time::Duration;
}
