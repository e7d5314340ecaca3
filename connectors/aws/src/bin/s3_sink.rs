//! s3_sink: writes the messages from the engine to S3 objects.
//!
//! Batch mode (default): messages are appended, in `format` (raw / lines / frames) and
//! `compression` (none / gzip / zstd), to one object per batch and output stream. A batch is
//! closed when it holds `batch_bytes` (before compression), when it is `batch_ms` old, or when
//! it holds as many messages as the engine may have unacknowledged (the sink's `max_credits`).
//! Its object is named `<prefix><UTC time>-<stream>-<first id>-<last id>.<format>[.gz|.zst]`,
//! the time taken when its final write starts. The final writes into one prefix run one after
//! the other, each once the previous one is complete, so within a prefix an object that
//! appears later always sorts after the ones before it, across engine and sink restarts (what
//! a polling s3_source needs); a replayed batch is written again under a later name. `prefix`
//! may contain `{date}` and `{hour}` (UTC, from the message's event time, else the clock),
//! `{connector}` and `{key}` (the MESSAGE key, percent-encoded, see `s3::key_segment`):
//! messages with different prefixes go to different objects. A batch whose compressed size
//! passes 8 MiB is uploaded as a multipart upload while it is being written (8 MiB parts, so
//! memory stays bounded), under `<prefix dir>_tmp/`, then copied to its final name.
//!
//! `per_message=true` keeps the seed's behaviour: the MESSAGE key is the object key (after
//! `prefix`), the payload its body; a leading `_` or `.` of a key segment, and a trailing
//! `/`, are percent-encoded so that s3_source does not skip the object.
//!
//! Guarantee: at-least-once. A message is acknowledged to the engine only after the PUT (or
//! CompleteMultipartUpload and copy) of its object succeeded, in order per stream.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use aws_connectors::acks::{SinkAcks, Ticket};
use aws_connectors::client::{self, AwsOptions};
use aws_connectors::s3::{self, Compression, Compressor, NameClock, PrefixTemplate, RecordFormat};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use connector_runtime::args::Input;
use connector_runtime::prelude::*;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "s3_sink",
    about: "Writes the messages from the engine to S3: one object per batch (or per message with per_message=true).",
    direction: Direction::Sink,
    params: &[
        Param::required("bucket", "S3 bucket"),
        Param::with_default("prefix", "Object key prefix; placeholders {date} {hour} {connector} {key}", "{connector}/{date}/{hour}/"),
        Param::with_default("batch_bytes", "Close a batch at this many bytes (before compression)", "67108864"),
        Param::with_default("batch_ms", "Close a batch this long after its first message", "60000"),
        Param::with_default("compression", "none, gzip or zstd", "none"),
        Param::with_default("format", "raw (payloads concatenated), lines (one per line) or frames (u32 length + bytes)", "lines"),
        Param::with_default("per_message", "true: one object per message, key -> object key, payload -> body", "false"),
        Param::with_default("max_in_flight", "Uploads running at the same time", "4"),
        Param::optional("region", client::REGION_HELP),
        Param::optional("endpoint_url", client::ENDPOINT_HELP),
        Param::with_default("path_style", "Path-style addressing: auto (with endpoint_url), true, false", "auto"),
    ],
};

type Upload = Pin<Box<dyn std::future::Future<Output = Result<Finished>> + Send>>;

/// What a finished upload hands back.
struct Finished {
    tickets: Vec<Ticket>,
    key: String,
}

/// Everything the uploads need, cheap to clone into each one.
#[derive(Clone)]
struct Target {
    ctx: Context,
    client: aws_sdk_s3::Client,
    bucket: String,
    format: RecordFormat,
    compression: Compression,
    clock: Arc<NameClock>,
}

/// A batch being filled.
struct OpenBatch {
    stream_id: u64,
    prefix: String,
    first: u64,
    last: u64,
    opened: Instant,
    raw_bytes: usize,
    comp: Compressor,
    tickets: Vec<Ticket>,
    multipart: Option<Multipart>,
}

struct Multipart {
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    bytes: i64,
}

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        .check(client::check_bucket)
        .run(run)
}

async fn run(ctx: Context, mut sink: Sink) -> Result<()> {
    let bucket = ctx.params.required("bucket")?.to_string();
    let client = AwsOptions::from_params(&ctx.params)
        .s3(client::path_style_param(&ctx.params)?)
        .await?;
    client::retry(&ctx, &format!("HeadBucket {bucket}"), || {
        client.head_bucket().bucket(&bucket).send()
    })
    .await
    .with_context(|| {
        format!(
            "bucket `{bucket}` is not usable (does it exist, may these credentials write to it?)"
        )
    })?;
    // The engine never has more than max_credits messages unacknowledged: a batch must
    // close before it holds that many, or both sides would wait for each other forever.
    let credit_limit = match ctx.options.input {
        Input::Engine => ctx.options.config.as_ref().map(|c| c.max_credits as usize),
        Input::Stdin => None,
    };
    let mut w = Writer {
        prefix: PrefixTemplate::new(ctx.params.required("prefix")?)?,
        batch_bytes: ctx.params.parse_or("batch_bytes", 64 << 20)?,
        batch_ms: Duration::from_millis(ctx.params.parse_or("batch_ms", 60_000u64)?),
        per_message: ctx.params.flag("per_message")?,
        max_in_flight: ctx.params.parse_or("max_in_flight", 4usize)?.max(1),
        credit_limit,
        target: Target {
            ctx: ctx.clone(),
            client,
            bucket,
            format: ctx.params.required("format")?.parse()?,
            compression: ctx.params.required("compression")?.parse()?,
            clock: Arc::default(),
        },
        acks: SinkAcks::default(),
        uploads: FuturesUnordered::new(),
        open: HashMap::new(),
        busy_keys: HashSet::new(),
        turns: HashMap::new(),
    };
    loop {
        let deadline = w.deadline();
        tokio::select! {
            got = sink.read_batch(4096), if !ctx.is_shutting_down() => {
                let Some(batch) = got else { break };
                for msg in batch {
                    w.on_message(msg).await?;
                }
                w.close_at_credit_limit().await?;
            }
            Some(done) = w.uploads.next(), if !w.uploads.is_empty() => w.finished(done)?,
            // At shutdown: stop reading, upload what is open (the engine replays the rest).
            _ = ctx.shutdown.cancelled() => break,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                w.close_due().await?
            }
        }
        w.acks.release(&sink);
    }
    // Input ended or shutdown: upload what is open, wait for every upload.
    w.close_all().await?;
    while let Some(done) = w.uploads.next().await {
        w.finished(done)?;
    }
    w.acks.release(&sink);
    Ok(())
}

/// The sink's state: open batches, running uploads, acknowledgement order.
struct Writer {
    prefix: PrefixTemplate,
    batch_bytes: usize,
    batch_ms: Duration,
    per_message: bool,
    max_in_flight: usize,
    credit_limit: Option<usize>,
    target: Target,
    acks: SinkAcks,
    uploads: FuturesUnordered<Upload>,
    /// Batches being filled, by (stream, rendered prefix).
    open: HashMap<(u64, String), OpenBatch>,
    /// Object keys being written (per-message mode).
    busy_keys: HashSet<String>,
    /// Per rendered prefix, resolves when the last batch upload queued for it is complete:
    /// the next one waits for it before it takes its name (batch mode).
    turns: HashMap<String, oneshot::Receiver<()>>,
}

impl Writer {
    async fn on_message(&mut self, msg: SinkMessage) -> Result<()> {
        let time = match msg.event_time {
            t if t > 0 => t,
            _ => s3::now_millis(),
        };
        let rendered = self
            .prefix
            .render(&self.target.ctx.connector, &msg.key, time);
        if self.per_message {
            self.put_message(msg, &rendered).await
        } else {
            self.append(msg, rendered).await
        }
    }

    /// Per-message mode: one PUT per message, several at a time, one at a time per key.
    async fn put_message(&mut self, msg: SinkMessage, prefix: &str) -> Result<()> {
        let ticket = self.acks.push(&msg);
        let key = match object_key_for(prefix, &msg, self.target.compression) {
            Ok(k) => k,
            Err(why) => {
                self.target.ctx.dead_letter(&msg, &why).await?;
                self.acks.complete(ticket);
                return Ok(());
            }
        };
        // Two writes of one key must land in order: wait for the first.
        while self.busy_keys.contains(&key) || self.uploads.len() >= self.max_in_flight {
            match self.uploads.next().await {
                Some(done) => self.finished(done)?,
                None => break,
            }
        }
        self.busy_keys.insert(key.clone());
        let upload = put_one(self.target.clone(), key, msg, ticket);
        self.uploads.push(Box::pin(upload));
        Ok(())
    }

    /// Batch mode: appends the message to its batch, uploading parts and closing the batch
    /// as it grows.
    async fn append(&mut self, msg: SinkMessage, prefix: String) -> Result<()> {
        let slot = (msg.stream_id, prefix);
        if self
            .open
            .get(&slot)
            .is_some_and(|b| msg.message_id <= b.last)
        {
            // Ids went back: the engine reconnected and replays what was not acknowledged.
            // Drop the stale batch (its acknowledgements could not reach the engine any
            // more); the replay fills a new one.
            if let Some(stale) = self.open.remove(&slot) {
                tracing::info!(
                    "stream {:016x} restarted at id {}: dropping a partial batch",
                    msg.stream_id,
                    msg.message_id
                );
                for t in &stale.tickets {
                    self.acks.complete(*t);
                }
                if let Some(mp) = stale.multipart {
                    abort(&self.target, &mp).await;
                }
            }
        }
        let ticket = self.acks.push(&msg);
        let format = self.target.format;
        let mut record = Vec::with_capacity(format.encoded_len(msg.payload.len()));
        if let Err(why) = format.encode(&msg.payload, &mut record) {
            self.target.ctx.dead_letter(&msg, &why).await?;
            self.acks.complete(ticket);
            return Ok(());
        }
        let b = match self.open.entry(slot.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(OpenBatch {
                stream_id: msg.stream_id,
                prefix: slot.1.clone(),
                first: msg.message_id,
                last: msg.message_id,
                opened: Instant::now(),
                raw_bytes: 0,
                comp: Compressor::new(self.target.compression)?,
                tickets: Vec::new(),
                multipart: None,
            }),
        };
        b.comp.write(&record)?;
        b.raw_bytes += record.len();
        b.last = msg.message_id;
        b.tickets.push(ticket);
        let metrics = &self.target.ctx.metrics;
        metrics.messages_out.inc();
        metrics.bytes_out.add(msg.payload.len() as u64);
        if b.comp.output_len() >= s3::PART_BYTES {
            upload_part(&self.target, b).await?;
        }
        if b.raw_bytes >= self.batch_bytes {
            self.close(&slot).await?;
        }
        Ok(())
    }

    /// When the batch should close by age next.
    fn deadline(&self) -> Option<Instant> {
        self.open.values().map(|b| b.opened + self.batch_ms).min()
    }

    /// Closes the batches that are `batch_ms` old.
    async fn close_due(&mut self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<(u64, String)> = self
            .open
            .iter()
            .filter(|(_, b)| b.opened + self.batch_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for slot in due {
            self.close(&slot).await?;
        }
        Ok(())
    }

    /// Closes every batch when the engine has no credit left to send more.
    async fn close_at_credit_limit(&mut self) -> Result<()> {
        if self.credit_limit.is_some_and(|l| self.acks.pending() >= l) {
            self.close_all().await?;
        }
        Ok(())
    }

    async fn close_all(&mut self) -> Result<()> {
        let slots: Vec<(u64, String)> = self.open.keys().cloned().collect();
        for slot in slots {
            self.close(&slot).await?;
        }
        Ok(())
    }

    /// Closes one batch: queues its upload (waiting for a free slot first).
    async fn close(&mut self, slot: &(u64, String)) -> Result<()> {
        let Some(b) = self.open.remove(slot) else {
            return Ok(());
        };
        while self.uploads.len() >= self.max_in_flight {
            match self.uploads.next().await {
                Some(done) => self.finished(done)?,
                None => break,
            }
        }
        let (visible, turn) = oneshot::channel();
        let previous = self.turns.insert(b.prefix.clone(), turn);
        self.uploads.push(Box::pin(finish_batch(
            self.target.clone(),
            b,
            previous,
            visible,
        )));
        Ok(())
    }

    /// An upload finished: its messages may be acknowledged (in order).
    fn finished(&mut self, done: Result<Finished>) -> Result<()> {
        let f = done?;
        self.busy_keys.remove(&f.key);
        // Forget the prefixes whose last upload is complete.
        self.turns
            .retain(|_, t| matches!(t.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        tracing::debug!("uploaded {} ({} messages)", f.key, f.tickets.len());
        for t in f.tickets {
            self.acks.complete(t);
        }
        Ok(())
    }
}

/// Object key of a message in per-message mode.
fn object_key_for(
    prefix: &str,
    msg: &SinkMessage,
    c: Compression,
) -> std::result::Result<String, String> {
    let name = if msg.key.is_empty() {
        format!("{:016x}-{:020}", msg.stream_id, msg.message_id)
    } else {
        s3::visible_path(std::str::from_utf8(&msg.key).map_err(|_| {
            "message key is not UTF-8, so it cannot be an S3 object key".to_string()
        })?)
    };
    let key = format!("{prefix}{name}{}", c.extension());
    if key.len() > 1024 {
        return Err(format!(
            "object key of {} bytes is over S3's 1024-byte limit",
            key.len()
        ));
    }
    Ok(key)
}

/// Uploads the compressed output produced so far as the next part of the batch's multipart
/// upload (starting it if needed).
async fn upload_part(t: &Target, b: &mut OpenBatch) -> Result<()> {
    if b.multipart.is_none() {
        let key = s3::temp_object_key(&b.prefix, b.stream_id, b.first);
        let out = client::retry(&t.ctx, &format!("CreateMultipartUpload {key}"), || {
            t.client
                .create_multipart_upload()
                .bucket(&t.bucket)
                .key(&key)
                .send()
        })
        .await?;
        let upload_id = out
            .upload_id
            .ok_or_else(|| anyhow!("CreateMultipartUpload {key} returned no upload id"))?;
        b.multipart = Some(Multipart {
            key,
            upload_id,
            parts: Vec::new(),
            bytes: 0,
        });
    }
    let data = bytes::Bytes::from(b.comp.take_output());
    let Some(mp) = b.multipart.as_mut() else {
        return Ok(());
    };
    let len = data.len() as i64;
    let part = send_part(t, mp, data).await?;
    mp.parts.push(part);
    mp.bytes += len;
    Ok(())
}

async fn send_part(t: &Target, mp: &Multipart, data: bytes::Bytes) -> Result<CompletedPart> {
    let number = mp.parts.len() as i32 + 1;
    let out = client::retry(&t.ctx, &format!("UploadPart {} #{number}", mp.key), || {
        t.client
            .upload_part()
            .bucket(&t.bucket)
            .key(&mp.key)
            .upload_id(&mp.upload_id)
            .part_number(number)
            .body(ByteStream::from(data.clone()))
            .send()
    })
    .await?;
    Ok(CompletedPart::builder()
        .set_e_tag(out.e_tag)
        .part_number(number)
        .build())
}

/// Finishes a batch's object: one PUT, or the last part + complete + copy to the final name.
/// The final write waits for `previous` (the upload queued before it in the same prefix) and
/// then takes its name from the clock; `visible` tells the next one that it is complete.
async fn finish_batch(
    t: Target,
    b: OpenBatch,
    previous: Option<oneshot::Receiver<()>>,
    visible: oneshot::Sender<()>,
) -> Result<Finished> {
    let rest = bytes::Bytes::from(b.comp.finish()?);
    let name = |t: &Target| {
        s3::batch_object_key(
            &b.prefix,
            t.clock.next(),
            b.stream_id,
            b.first,
            b.last,
            t.format,
            t.compression,
        )
    };
    let key = match b.multipart {
        None => {
            wait_turn(previous).await;
            let key = name(&t);
            client::retry(&t.ctx, &format!("PutObject {key}"), || {
                let req = t
                    .client
                    .put_object()
                    .bucket(&t.bucket)
                    .key(&key)
                    .body(ByteStream::from(rest.clone()));
                req.send()
            })
            .await?;
            let _ = visible.send(());
            key
        }
        Some(mut mp) => {
            if !rest.is_empty() || mp.parts.is_empty() {
                let len = rest.len() as i64;
                let part = send_part(&t, &mp, rest).await?;
                mp.parts.push(part);
                mp.bytes += len;
            }
            let done = CompletedMultipartUpload::builder()
                .set_parts(Some(mp.parts.clone()))
                .build();
            let completed = client::retry(
                &t.ctx,
                &format!("CompleteMultipartUpload {}", mp.key),
                || {
                    t.client
                        .complete_multipart_upload()
                        .bucket(&t.bucket)
                        .key(&mp.key)
                        .upload_id(&mp.upload_id)
                        .multipart_upload(done.clone())
                        .send()
                },
            )
            .await;
            if let Err(e) = completed {
                // An answer we could not read (some S3-compatible services send another XML
                // root) or a lost answer to a retried call: the object tells whether it worked.
                let head = t
                    .client
                    .head_object()
                    .bucket(&t.bucket)
                    .key(&mp.key)
                    .send()
                    .await;
                match head {
                    Ok(h) if h.content_length == Some(mp.bytes) => {
                        tracing::debug!("CompleteMultipartUpload {}: answer unreadable ({e:#}), but the object is complete", mp.key);
                    }
                    _ => return Err(e),
                }
            }
            wait_turn(previous).await;
            let key = name(&t);
            let source = format!(
                "{}/{}",
                t.bucket,
                s3::percent_encode(mp.key.as_bytes(), true)
            );
            client::retry(&t.ctx, &format!("CopyObject {} -> {key}", mp.key), || {
                t.client
                    .copy_object()
                    .bucket(&t.bucket)
                    .key(&key)
                    .copy_source(&source)
                    .send()
            })
            .await?;
            let _ = visible.send(());
            client::retry(&t.ctx, &format!("DeleteObject {}", mp.key), || {
                t.client
                    .delete_object()
                    .bucket(&t.bucket)
                    .key(&mp.key)
                    .send()
            })
            .await?;
            key
        }
    };
    Ok(Finished {
        tickets: b.tickets,
        key,
    })
}

/// Waits until the upload queued before this one in the same prefix is complete (or failed,
/// which stops the sink).
async fn wait_turn(previous: Option<oneshot::Receiver<()>>) {
    if let Some(p) = previous {
        let _ = p.await;
    }
}

/// Uploads one message as one object (per-message mode).
async fn put_one(t: Target, key: String, msg: SinkMessage, ticket: Ticket) -> Result<Finished> {
    let body = match t.compression {
        Compression::None => msg.payload.clone(),
        c => {
            let mut comp = Compressor::new(c)?;
            comp.write(&msg.payload)?;
            bytes::Bytes::from(comp.finish()?)
        }
    };
    client::retry(&t.ctx, &format!("PutObject {key}"), || {
        t.client
            .put_object()
            .bucket(&t.bucket)
            .key(&key)
            .body(ByteStream::from(body.clone()))
            .send()
    })
    .await?;
    t.ctx.metrics.messages_out.inc();
    t.ctx.metrics.bytes_out.add(msg.payload.len() as u64);
    Ok(Finished {
        tickets: vec![ticket],
        key,
    })
}

/// Best-effort abort of a multipart upload that will not be completed.
async fn abort(t: &Target, mp: &Multipart) {
    if let Err(e) = t
        .client
        .abort_multipart_upload()
        .bucket(&t.bucket)
        .key(&mp.key)
        .upload_id(&mp.upload_id)
        .send()
        .await
    {
        tracing::warn!(
            "could not abort multipart upload of {}: {}",
            mp.key,
            client::describe(&e)
        );
    }
}
