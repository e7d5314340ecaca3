//! s3_source: reads the objects under an S3 bucket/prefix in key order and sends their
//! records to the engine.
//!
//! Each object is split by `format` (`auto` picks by extension: `.frames`, `.raw`/`.bin`,
//! else lines) after decompression chosen by extension (`.gz`, `.zst`). Every object is one
//! protocol stream (`s3://<bucket>/<key>`) whose message ids are the byte offsets just after
//! each record in the (decompressed) object, so ids increase and the engine's resume point is
//! an offset in the object. Keys with a path segment starting with `_` or `.` after the
//! prefix (e.g. the `_tmp/` of s3_sink's multipart uploads, `_SUCCESS` markers) and keys
//! ending in `/` (folder placeholders) are skipped; s3_sink writes no other such name.
//!
//! The checkpoint (`checkpoint_dir`) holds the last key before which everything was
//! acknowledged, plus the acknowledged offset of each object in flight; it is written
//! atomically. A restart lists after that key and skips what was acknowledged inside objects,
//! so acknowledged data is not sent again. With `poll_ms` > 0 the source keeps listing for
//! new keys (which must sort after the ones already read, as s3_sink's names do); with 0 it
//! exits once every object was read and acknowledged.
//!
//! Guarantee: at-least-once.

use std::collections::{BTreeMap, VecDeque};
use std::process::ExitCode;

use aws_connectors::checkpoint::CheckpointFile;
use aws_connectors::client::{self, AwsOptions};
use aws_connectors::s3::{self, Compression, Decompressor, SourceFormat, Splitter};
use connector_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "s3_source",
    about: "Reads the objects under an S3 bucket/prefix in key order and sends their records to the engine.",
    direction: Direction::Source,
    params: &[
        Param::required("bucket", "S3 bucket"),
        Param::with_default("prefix", "Only keys starting with this", ""),
        Param::with_default("format", "auto (by extension), lines, frames or raw", "auto"),
        Param::with_default("chunk_bytes", "Record size for the raw format", "1048576"),
        Param::optional("checkpoint_dir", "Directory for the checkpoint (without it a restart reads everything again)"),
        Param::with_default("poll_ms", "List again for new objects this often; 0 = exit when done", "0"),
        Param::with_default("key", "MESSAGE key: none, or object (the object key)", "none"),
        Param::with_default("checkpoint_ms", "Longest time between checkpoint writes", "1000"),
        Param::optional("region", client::REGION_HELP),
        Param::optional("endpoint_url", client::ENDPOINT_HELP),
        Param::with_default("path_style", "Path-style addressing: auto (with endpoint_url), true, false", "auto"),
    ],
};

/// Objects read but not yet fully acknowledged, at most.
const MAX_OPEN_OBJECTS: usize = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    bucket: String,
    prefix: String,
    /// Every object up to and including this key is done.
    after: Option<String>,
    /// Objects after `after` with acknowledged progress.
    partial: BTreeMap<String, Progress>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Progress {
    /// Records ending at or before this offset are acknowledged.
    offset: u64,
    /// Fully read and acknowledged.
    done: bool,
}

/// An object read (or being read) and not yet acknowledged to its end.
struct Open {
    key: String,
    stream_id: u64,
    written: u64,
    acked: u64,
    all_written: bool,
    closed: bool,
}

struct Reader {
    ctx: Context,
    client: aws_sdk_s3::Client,
    bucket: String,
    format: SourceFormat,
    chunk: usize,
    key_mode_object: bool,
    file: Option<CheckpointFile>,
    cp: Checkpoint,
    open: VecDeque<Open>,
    acks: Acks,
    dirty: bool,
    last_save: Instant,
    checkpoint_every: Duration,
}

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        .check(client::check_bucket)
        .run(run)
}

async fn run(ctx: Context, mut source: Source) -> Result<()> {
    let bucket = ctx.params.required("bucket")?.to_string();
    let prefix = ctx.params.get("prefix").unwrap_or("").to_string();
    let poll = Duration::from_millis(ctx.params.parse_or("poll_ms", 0u64)?);
    let key_mode_object = match ctx.params.required("key")? {
        "none" => false,
        "object" => true,
        other => bail!("key {other:?}: expected none or object"),
    };
    let client = AwsOptions::from_params(&ctx.params)
        .s3(client::path_style_param(&ctx.params)?)
        .await?;
    client::retry(&ctx, &format!("HeadBucket {bucket}"), || {
        client.head_bucket().bucket(&bucket).send()
    })
    .await
    .with_context(|| {
        format!(
            "bucket `{bucket}` is not readable (does it exist, and may these credentials read it?)"
        )
    })?;
    let file = match ctx.params.get("checkpoint_dir") {
        Some(dir) => Some(CheckpointFile::new(
            dir.as_ref(),
            &format!("{}.{bucket}.json", ctx.connector),
        )?),
        None => None,
    };
    let mut cp: Checkpoint = match &file {
        Some(f) => f.load()?.unwrap_or_default(),
        None => Checkpoint::default(),
    };
    if cp.after.is_some() && cp.prefix != prefix {
        tracing::warn!(
            "checkpoint was written for prefix {:?}, now {prefix:?}: continuing after {:?}",
            cp.prefix,
            cp.after
        );
    }
    cp.bucket = bucket.clone();
    cp.prefix = prefix.clone();
    let chunk: usize = ctx.params.parse_or("chunk_bytes", 1usize << 20)?;
    if chunk == 0 {
        bail!(
            "--{}-chunk_bytes 0: the raw format needs records of at least 1 byte",
            ctx.connector
        );
    }
    let mut r = Reader {
        acks: source.acks(),
        format: ctx.params.required("format")?.parse()?,
        chunk,
        checkpoint_every: Duration::from_millis(ctx.params.parse_or("checkpoint_ms", 1000u64)?),
        ctx: ctx.clone(),
        client,
        bucket,
        key_mode_object,
        file,
        cp,
        open: VecDeque::new(),
        dirty: false,
        last_save: Instant::now(),
    };
    let mut listed_after = r.cp.after.clone();
    let outcome: Result<()> = async {
        'listing: loop {
            let page = client::retry(&ctx, "ListObjectsV2", || {
                r.client
                    .list_objects_v2()
                    .bucket(&r.bucket)
                    .prefix(&prefix)
                    .set_start_after(listed_after.clone())
                    .send()
            })
            .await?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                listed_after = Some(key.to_string());
                if s3::is_hidden(key, &prefix) || r.cp.partial.get(key).is_some_and(|p| p.done) {
                    continue;
                }
                while r.open.iter().filter(|o| !o.closed).count() >= MAX_OPEN_OBJECTS {
                    tokio::select! {
                        got = r.acks.next() => r.on_acks(&mut source, got).await?,
                        // Notices a lost engine connection and resends.
                        _ = tokio::time::sleep(IDLE_FLUSH) => source.flush().await?,
                        _ = ctx.shutdown.cancelled() => break 'listing,
                    }
                }
                if ctx.is_shutting_down() {
                    break 'listing;
                }
                let modified = obj
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0);
                r.read_object(&mut source, key, modified).await?;
            }
            if page.is_truncated() == Some(true) {
                continue;
            }
            if poll.is_zero() {
                break;
            }
            let until = Instant::now() + poll;
            loop {
                tokio::select! {
                    got = r.acks.next() => r.on_acks(&mut source, got).await?,
                    _ = tokio::time::sleep(IDLE_FLUSH) => source.flush().await?,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = ctx.shutdown.cancelled() => break 'listing,
                }
            }
        }
        // Everything listed was read: wait for the engine to acknowledge it.
        while r.open.iter().any(|o| !o.closed) && !ctx.is_shutting_down() {
            tokio::select! {
                got = r.acks.next() => r.on_acks(&mut source, got).await?,
                _ = tokio::time::sleep(IDLE_FLUSH) => source.flush().await?,
                _ = ctx.shutdown.cancelled() => break,
            }
        }
        Ok(())
    }
    .await;
    if outcome.is_ok() && r.open.iter().any(|o| !o.closed) {
        let left = source.drain(Duration::from_secs(10)).await.unwrap_or(0);
        if left > 0 {
            tracing::warn!(
                "{left} records were not acknowledged before exit; they will be read again"
            );
        }
    }
    let got = r.acks.try_next();
    if let Err(e) = r.on_acks(&mut source, got).await {
        tracing::debug!("while closing streams at exit: {e:#}");
    }
    r.save()?;
    outcome
}

impl Reader {
    /// Reads one object and sends its records (after what was already acknowledged).
    async fn read_object(&mut self, source: &mut Source, key: &str, modified: i64) -> Result<()> {
        let saved = self.cp.partial.get(key).map(|p| p.offset).unwrap_or(0);
        let name = format!("s3://{}/{key}", self.bucket);
        let h = source.notify(&name, (saved > 0).then_some(saved)).await?;
        let skip = saved.max(h.resume.unwrap_or(0));
        self.open.push_back(Open {
            key: key.to_string(),
            stream_id: h.id,
            written: skip,
            acked: skip,
            all_written: false,
            closed: false,
        });
        let compression = Compression::from_key(key);
        let format = self.format.for_key(key);
        let msg_key: Vec<u8> = if self.key_mode_object {
            key.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        let max_record = self
            .ctx
            .options
            .max_frame
            .saturating_sub(1100 + msg_key.len())
            .max(1);
        let mut written = skip;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        'attempt: loop {
            // Uncompressed objects resume with a ranged GET; compressed ones are decompressed
            // from the start and the acknowledged records skipped.
            let from = if compression == Compression::None {
                written
            } else {
                0
            };
            let got = client::retry(&self.ctx, &format!("GetObject {key}"), || {
                let req = self.client.get_object().bucket(&self.bucket).key(key);
                let req = if from > 0 {
                    req.range(format!("bytes={from}-"))
                } else {
                    req
                };
                req.send()
            })
            .await;
            let out = match got {
                Ok(out) => out,
                Err(e) => {
                    let text = format!("{e:#}");
                    if text.contains("InvalidRange") {
                        break 'attempt; // resumed exactly at the end: nothing left
                    }
                    if text.contains("NoSuchKey") {
                        tracing::warn!("object {key} disappeared before it was read; skipping it");
                        break 'attempt;
                    }
                    return Err(e);
                }
            };
            let mut body = out.body;
            let mut splitter = Splitter::new(format, from, self.chunk, max_record);
            let mut decomp = Decompressor::new(compression)?;
            let mut ended = false;
            loop {
                let chunk = match body.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        self.ctx.metrics.reconnects.inc();
                        tracing::warn!("reading {key} failed at offset {written}: {e}; reading again from there");
                        backoff.wait().await;
                        continue 'attempt;
                    }
                    None => {
                        ended = true;
                        bytes::Bytes::new()
                    }
                };
                let fed = if ended {
                    decomp.finish(splitter.buffer())
                } else {
                    decomp.feed(&chunk, splitter.buffer())
                };
                if let Err(e) = fed {
                    self.corrupt(key, &format!("cannot decompress: {e}"));
                    break 'attempt;
                }
                loop {
                    let next = if ended {
                        splitter.finish()
                    } else {
                        splitter.next_record()
                    };
                    let (end, payload) = match next {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(why) => {
                            self.corrupt(key, &why);
                            break 'attempt;
                        }
                    };
                    self.ctx.metrics.messages_in.inc();
                    self.ctx.metrics.bytes_in.add(payload.len() as u64);
                    if end <= written {
                        continue;
                    }
                    source
                        .write_at(h.id, end, modified, &msg_key, &payload)
                        .await?;
                    written = end;
                }
                if let Some(o) = self.open.back_mut() {
                    o.written = written;
                }
                let got = self.acks.try_next();
                if !got.is_empty() {
                    self.on_acks(source, got).await?;
                }
                if ended {
                    break 'attempt;
                }
            }
        }
        source.flush().await?;
        if let Some(o) = self
            .open
            .iter_mut()
            .find(|o| o.stream_id == h.id && !o.all_written)
        {
            o.written = written;
            o.all_written = true;
        }
        let got = self.acks.try_next();
        self.on_acks(source, got).await
    }

    fn corrupt(&self, key: &str, why: &str) {
        self.ctx.metrics.error("decode");
        tracing::error!("object {key}: {why}; skipping the rest of it");
    }

    /// Applies acknowledgements: closes finished objects, advances the checkpoint.
    async fn on_acks(&mut self, source: &mut Source, got: Vec<Acked>) -> Result<()> {
        for a in got {
            if let Some(o) = self
                .open
                .iter_mut()
                .find(|o| o.stream_id == a.stream_id && !o.closed)
            {
                o.acked = o.acked.max(a.point);
                self.dirty = true;
            }
        }
        for o in self.open.iter_mut() {
            if o.all_written && !o.closed && o.acked >= o.written {
                o.closed = true;
                self.dirty = true;
                source.eos(o.stream_id).await?;
            }
        }
        while self.open.front().is_some_and(|o| o.closed) {
            if let Some(o) = self.open.pop_front() {
                self.cp.partial.remove(&o.key);
                self.cp.after = Some(o.key);
            }
        }
        for o in &self.open {
            if o.acked > 0 || o.closed {
                self.cp.partial.insert(
                    o.key.clone(),
                    Progress {
                        offset: o.acked,
                        done: o.closed,
                    },
                );
            }
        }
        if self.dirty && self.last_save.elapsed() >= self.checkpoint_every {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.store(&self.cp)?;
        }
        self.dirty = false;
        self.last_save = Instant::now();
        Ok(())
    }
}
