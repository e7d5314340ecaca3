//! Code shared by the AWS connector binaries (`kinesis_source`, `kinesis_sink`, `s3_sink`,
//! `s3_source`):
//!
//! - [`client`]: SDK clients from the `endpoint_url` and `region` parameters plus the SDK's
//!   usual credential chain; error classification (throttled / transient / permanent) and a
//!   retry loop with back-off.
//! - [`checkpoint`]: atomic JSON checkpoint files (temp file + fsync + rename + fsync dir).
//! - [`kinesis`]: shard listing, sequence-number comparison, partition keys, PutRecords
//!   batch planning and per-record result handling; [`kinesis::reader`], the shard reader
//!   of `kinesis_source` (lineage, one GetRecords task per shard, ids, checkpoint).
//! - [`s3`]: object naming, prefix placeholders, record formats, streaming compression and
//!   decompression, record splitting with offsets; [`s3::writer`] (the objects of
//!   `s3_sink`), [`s3::reader`] (listing, reading and the checkpoint of `s3_source`) and
//!   [`s3::bucket`] (the bucket parameters both share).

pub mod checkpoint;
pub mod client;
pub mod kinesis;
pub mod s3;
