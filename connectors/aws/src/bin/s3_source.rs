//! s3_source: reads the objects under an S3 bucket/prefix in key order and sends their
//! records to the engine.
//!
//! Every object is one stream (`s3://<bucket>/<key>`), decompressed and split by extension or
//! `format`; a record's message id is the byte offset just after it in the (decompressed)
//! object, so the engine's resume point is an offset in the object. An object's stream ends
//! once all its records were acknowledged. Hidden keys (a segment starting with `_` or `.`,
//! such as s3_sink's `_tmp/`) are skipped. See `aws_connectors::s3::reader`.
//!
//! The checkpoint (`checkpoint_dir`) holds the last key before which everything was
//! acknowledged, plus the acknowledged offset of each object in flight. With `poll_ms` > 0
//! the source keeps listing for new keys (which must sort after the ones already read, as
//! s3_sink's names do); with 0 it exits once every object was read and acknowledged.
//!
//! Guarantee: at-least-once.

use std::process::ExitCode;

use aws_connectors::s3::bucket::BucketArgs;
use aws_connectors::s3::reader::{Listed, Lister, ObjectReader, Position, Progress};
use aws_connectors::s3::reader::{ReadSettings, Store, MAX_OPEN_OBJECTS};
use aws_connectors::s3::SourceFormat;
use connector_runtime::prelude::*;

/// Reads the objects under an S3 bucket/prefix in key order and sends their records to the engine.
#[derive(Parser)]
#[command(name = "s3_source")]
struct Params {
    #[command(flatten)]
    s3: BucketArgs,
    /// Only keys starting with this
    #[arg(long, default_value = "")]
    prefix: String,
    /// auto (by extension), lines, frames or raw
    #[arg(long, default_value = "auto")]
    format: SourceFormat,
    /// Record size for the raw format
    #[arg(long, default_value_t = 1 << 20)]
    chunk_bytes: usize,
    /// Directory for the checkpoint (without it a restart reads everything again)
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// List again for new objects this often; 0 = exit when done
    #[arg(long, default_value_t = 0)]
    poll_ms: u64,
    /// MESSAGE key: none, or object (the object key)
    #[arg(long, default_value = "none")]
    key: String,
    /// Longest time between checkpoint writes
    #[arg(long, default_value_t = 1000)]
    checkpoint_ms: u64,
}

struct S3Source {
    store: Store,
    list: Lister,
    progress: Progress,
    settings: ReadSettings,
    /// Announced with `Batch::open`, waiting for the engine's resume point.
    opening: Option<(Listed, Option<u64>)>,
    reading: Option<ObjectReader>,
}

impl SourceConnector for S3Source {
    type Token = Position;

    async fn read(&mut self, out: &mut Batch<Position>) -> Result<()> {
        // Objects acknowledged to their end: EOS.
        for stream in self.progress.take_finished() {
            out.end(stream);
        }
        self.progress.save_if_due()?;
        if let Some(object) = &mut self.reading {
            if object.read_some(&self.store, out).await? {
                self.progress
                    .all_written(object.stream(), object.written())?;
                self.reading = None;
            }
            return Ok(());
        }
        let mut until = None;
        if self.progress.unfinished() < MAX_OPEN_OBJECTS {
            if let Some(object) = self.list.next(&self.store, &self.progress).await? {
                let saved = self.progress.saved_offset(&object.key);
                out.open(&self.store.stream_name(&object.key), saved);
                self.opening = Some((object, saved));
                return Ok(());
            }
            if self.list.next_poll().is_none() && self.progress.unfinished() == 0 {
                out.finish(); // everything read and acknowledged
                return Ok(());
            }
            until = self.list.next_poll();
        }
        // Wait for acknowledgements (the runtime interrupts this to commit them), the next
        // listing, or the checkpoint's next write.
        self.progress.idle(until).await;
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        if let Some((object, saved)) = self.opening.take() {
            let skip = saved.unwrap_or(0).max(stream.resume.unwrap_or(0));
            self.progress.begin(&object.key, stream.id, skip);
            let reader = ObjectReader::new(&object, stream.id, skip, &self.settings);
            self.reading = Some(reader);
        }
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<Position>) -> Result<()> {
        self.progress.commit(&tokens)
    }

    async fn close(&mut self) -> Result<()> {
        self.progress.save()
    }
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move { p.s3.check(&ctx).await })
        .run(|ctx, p: Params| async move {
            let key_is_object = match p.key.as_str() {
                "none" => false,
                "object" => true,
                other => bail!("--{}-key {other:?}: expected none or object", ctx.connector),
            };
            if p.chunk_bytes == 0 {
                bail!(
                    "--{}-chunk_bytes 0: the raw format needs records of at least 1 byte",
                    ctx.connector
                );
            }
            let client = p.s3.connect(&ctx, "read").await?;
            let bucket = p.s3.bucket;
            let dir = p.checkpoint_dir.as_deref();
            let every = Duration::from_millis(p.checkpoint_ms);
            let progress = Progress::open(dir, &ctx.connector, &bucket, &p.prefix, every)?;
            let poll = Duration::from_millis(p.poll_ms);
            Ok(S3Source {
                list: Lister::new(&p.prefix, progress.after(), poll),
                progress,
                settings: ReadSettings {
                    format: p.format,
                    chunk: p.chunk_bytes,
                    key_is_object,
                    max_frame: ctx.options.max_frame,
                },
                store: Store {
                    ctx,
                    client,
                    bucket,
                },
                opening: None,
                reading: None,
            })
        })
}
