//! s3_sink: writes the messages from the engine to S3 objects.
//!
//! Batch mode (default): messages are appended, in `format` (raw / lines / frames) and
//! `compression` (none / gzip / zstd), to one object per output stream and prefix. An object
//! is closed when it holds `batch_bytes` (before compression), when it is `batch_ms` old, or
//! when it holds as many messages as the engine may have unacknowledged (the sink's
//! `max_credits`): the runtime hands over batches of that shape, and each `write` stores its
//! objects before it returns. An object is named `<prefix><UTC time>-<stream>-<first id>-<last
//! id>.<format>[.gz|.zst]`, the time taken when its final write starts; the final writes into
//! one prefix run one after the other, so within a prefix an object that appears later always
//! sorts after the ones before it, across engine and sink restarts (what a polling s3_source
//! needs); a replayed batch is written again under a later name. `prefix` may contain `{date}`
//! and `{hour}` (UTC, from the message's event time, else the clock), `{connector}` and `{key}`
//! (the MESSAGE key, percent-encoded, see `s3::key_segment`). An object whose compressed size
//! passes 8 MiB is streamed as a multipart upload under `<prefix dir>_tmp/`, then copied to its
//! final name. See `aws_connectors::s3::writer`.
//!
//! `per_message=true` keeps the seed's behaviour: the MESSAGE key is the object key (after
//! `prefix`), the payload its body; a leading `_` or `.` of a key segment, and a trailing
//! `/`, are percent-encoded so that s3_source does not skip the object.
//!
//! Guarantee: at-least-once. A message is acknowledged to the engine only once its object is
//! stored (PUT, or CompleteMultipartUpload and copy). A payload the format cannot carry, or
//! a key S3 cannot take, is refused (dead-lettered with `--dead-letter DIR`, else the sink
//! stops).

use std::process::ExitCode;

use aws_connectors::s3::bucket::BucketArgs;
use aws_connectors::s3::writer::{self, ObjectSettings, ObjectWriter};
use aws_connectors::s3::{Compression, PrefixTemplate, RecordFormat};
use connector_runtime::prelude::*;

/// Writes the messages from the engine to S3: one object per batch (or per message with per_message=true).
#[derive(Parser)]
#[command(name = "s3_sink")]
struct Params {
    #[command(flatten)]
    s3: BucketArgs,
    /// Object key prefix; placeholders {date} {hour} {connector} {key}
    #[arg(long, default_value = "{connector}/{date}/{hour}/")]
    prefix: String,
    /// Close a batch at this many bytes (before compression)
    #[arg(long, default_value_t = 64 << 20)]
    batch_bytes: usize,
    /// Close a batch this long after its first message
    #[arg(long, default_value_t = 60_000)]
    batch_ms: u64,
    /// none, gzip or zstd
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// raw (payloads concatenated), lines (one per line) or frames (u32 length + bytes)
    #[arg(long, default_value = "lines")]
    format: RecordFormat,
    /// true: one object per message, key -> object key, payload -> body
    #[arg(long)]
    per_message: bool,
    /// Uploads running at the same time
    #[arg(long, default_value_t = 4)]
    max_in_flight: usize,
}

struct S3Sink {
    objects: ObjectWriter,
    per_message: bool,
    batching: Batching,
}

impl SinkConnector for S3Sink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        // Returns once every object of the batch is stored: the runtime then acknowledges it.
        match self.per_message {
            true => self.objects.put_each(batch, outcomes).await,
            false => self.objects.write_objects(batch, outcomes).await,
        }
    }

    fn batching(&self) -> Batching {
        self.batching
    }
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|ctx, p: Params| async move { p.s3.check(&ctx).await })
        .run(|ctx, p: Params| async move {
            let prefix =
                PrefixTemplate::new(&p.prefix).map_err(|e| anyhow!("--{}-{e}", ctx.connector))?;
            let client = p.s3.connect(&ctx, "write to").await?;
            // One runtime batch is one object window (per message: as many as are ready).
            let window = match p.per_message {
                true => Duration::ZERO,
                false => Duration::from_millis(p.batch_ms),
            };
            let settings = ObjectSettings {
                prefix,
                batch_bytes: p.batch_bytes,
                format: p.format,
                compression: p.compression,
                max_in_flight: p.max_in_flight,
            };
            Ok(S3Sink {
                batching: writer::batching(&ctx, window),
                objects: ObjectWriter::new(ctx, client, &p.s3.bucket, settings),
                per_message: p.per_message,
            })
        })
}
