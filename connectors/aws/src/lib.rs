//! Code shared by the AWS connector binaries (`kinesis_source`, `kinesis_sink`, `s3_sink`,
//! `s3_source`):
//!
//! - [`client`]: SDK clients from the `endpoint_url` and `region` parameters plus the SDK's
//!   usual credential chain; error classification (throttled / transient / permanent) and a
//!   retry loop with back-off.
//! - [`checkpoint`]: atomic JSON checkpoint files (temp file + fsync + rename + fsync dir).
//! - [`kinesis`]: shard listing, sequence-number comparison, partition keys, PutRecords
//!   batch planning and per-record result handling.
//! - [`s3`]: object naming, prefix placeholders, record formats, streaming compression and
//!   decompression, record splitting with offsets.
//! - [`acks`]: in-order acknowledgement of [`connector_runtime::SinkMessage`]s completed out
//!   of order (built on [`connector_runtime::InOrderAcks`]).

pub mod acks;
pub mod checkpoint;
pub mod client;
pub mod kinesis;
pub mod s3;
