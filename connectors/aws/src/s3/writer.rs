//! s3_sink's writes: the messages of one runtime batch become one or more objects, each
//! stored before the call returns (so the runtime acknowledges only stored messages).
//!
//! Batch mode: messages are appended, per output stream and rendered prefix, to an object in
//! the configured [`RecordFormat`] and [`Compression`]; an object closes at `batch_bytes`
//! (before compression) and at the end of the batch (the runtime's linger is the time window,
//! its size the count window). Its name is `<prefix><UTC time>-<stream>-<first id>-<last
//! id>.<format>[.gz|.zst]`, the time taken from a [`NameClock`] when its final write starts;
//! the final writes into one prefix run one after the other, each once the previous one is
//! complete, so a later object always sorts after the earlier ones (what a polling s3_source
//! needs), across engine and sink restarts. Once its compressed output passes
//! [`PART_BYTES`], an object is streamed as a multipart upload under `<prefix dir>_tmp/` and
//! copied to its final name at the end.
//!
//! Per-message mode: each message is one object (key -> object key, payload -> body); the
//! writes of one key land in order.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use connector_runtime::args::Input;
use connector_runtime::{Batching, Context, Outcomes, SinkMessage};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    batch_object_key, now_millis, percent_encode, temp_object_key, visible_path, Compression,
    Compressor, NameClock, PrefixTemplate, RecordFormat, PART_BYTES,
};
use crate::client;

/// Messages in one batch with `--from stdin`, where no engine credits bound it: an object
/// then also closes after this many messages.
pub const STDIN_BATCH: usize = 1 << 16;

/// How the runtime should group the engine's messages so that one batch is one object
/// window: at most as many messages as the engine may have unacknowledged (a batch waiting
/// for more would wait forever), lingering `window` (`batch_ms`) after the first.
pub fn batching(ctx: &Context, window: Duration) -> Batching {
    let max = match (ctx.options.input, &ctx.options.config) {
        (Input::Engine, Some(c)) => c.max_credits as usize,
        (Input::Engine, None) => Batching::default().max,
        (Input::Stdin, _) => STDIN_BATCH,
    };
    Batching {
        max: max.max(1),
        linger: window,
    }
}

/// How messages become objects.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    /// Key prefix template.
    pub prefix: PrefixTemplate,
    /// An object closes at this many bytes before compression (batch mode).
    pub batch_bytes: usize,
    /// Record layout (batch mode).
    pub format: RecordFormat,
    /// Object compression.
    pub compression: Compression,
    /// Uploads running at the same time.
    pub max_in_flight: usize,
}

/// Everything an upload needs, cheap to clone into each one.
#[derive(Clone)]
struct Target {
    ctx: Context,
    client: aws_sdk_s3::Client,
    bucket: Arc<str>,
    format: RecordFormat,
    compression: Compression,
    clock: Arc<NameClock>,
}

/// Writes batches of messages as S3 objects.
pub struct ObjectWriter {
    target: Target,
    prefix: PrefixTemplate,
    batch_bytes: usize,
    max_in_flight: usize,
}

impl ObjectWriter {
    /// A writer into `bucket`.
    pub fn new(
        ctx: Context,
        client: aws_sdk_s3::Client,
        bucket: &str,
        s: ObjectSettings,
    ) -> ObjectWriter {
        ObjectWriter {
            target: Target {
                ctx,
                client,
                bucket: bucket.into(),
                format: s.format,
                compression: s.compression,
                clock: Arc::default(),
            },
            prefix: s.prefix,
            batch_bytes: s.batch_bytes.max(1),
            max_in_flight: s.max_in_flight.max(1),
        }
    }

    /// The rendered prefix of a message (its event time, else now, for `{date}`/`{hour}`).
    fn prefix_for(&self, msg: &SinkMessage) -> String {
        let time = match msg.event_time {
            t if t > 0 => t,
            _ => now_millis(),
        };
        self.prefix
            .render(&self.target.ctx.connector, &msg.key, time)
    }

    /// Batch mode: writes `batch` as objects and returns once every one is stored. A payload
    /// the format cannot carry is refused; a failed upload is an error.
    pub async fn write_objects(
        &self,
        batch: &[SinkMessage],
        outcomes: &mut Outcomes,
    ) -> Result<()> {
        let replayed = replay_starts(batch);
        for (stream, at) in &replayed {
            tracing::info!(
                "stream {stream:016x} restarted at id {}: dropping the messages of the lost connection",
                batch[*at].message_id
            );
        }
        let mut open: HashMap<(u64, String), Object> = HashMap::new();
        let mut uploads = Uploads::new(self.max_in_flight);
        let mut record = Vec::new();
        for (i, msg) in batch.iter().enumerate() {
            if replayed.get(&msg.stream_id).is_some_and(|at| i < *at) {
                continue; // acknowledged into the lost connection: the engine sends it again
            }
            record.clear();
            if let Err(why) = self.target.format.encode(&msg.payload, &mut record) {
                outcomes.refuse(i, why);
                continue;
            }
            let slot = (msg.stream_id, self.prefix_for(msg));
            let object = match open.entry(slot.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Object::new(&slot.1, msg, self.target.compression)?),
            };
            object.append(&record, msg.message_id)?;
            if object.comp.output_len() >= PART_BYTES {
                object.upload_part(&self.target).await?;
            }
            if object.raw_bytes >= self.batch_bytes {
                if let Some(o) = open.remove(&slot) {
                    self.close(&mut uploads, o).await?;
                }
            }
        }
        for (_, o) in open {
            self.close(&mut uploads, o).await?;
        }
        uploads.wait_all().await
    }

    /// Queues the final write of an object (in its prefix's turn).
    async fn close(&self, uploads: &mut Uploads, o: Object) -> Result<()> {
        let t = self.target.clone();
        uploads
            .queue(o.prefix.clone(), move |turn| finish_object(t, o, turn))
            .await
    }

    /// Per-message mode: one PUT per message (key -> object key), several at a time, in order
    /// per key; returns once every one is stored. A key S3 cannot take is refused.
    pub async fn put_each(&self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let mut uploads = Uploads::new(self.max_in_flight);
        for (i, msg) in batch.iter().enumerate() {
            let prefix = self.prefix_for(msg);
            let key = match object_key_for(&prefix, msg, self.target.compression) {
                Ok(k) => k,
                Err(why) => {
                    outcomes.refuse(i, why);
                    continue;
                }
            };
            let (t, payload) = (self.target.clone(), msg.payload.clone());
            uploads
                .queue(key.clone(), move |turn| put_one(t, key, payload, turn))
                .await?;
        }
        uploads.wait_all().await
    }
}

/// Per stream, the index in `batch` where its ids went back: the engine reconnected and sends
/// again what was not acknowledged, so the stream's earlier messages in the batch belong to
/// the lost connection (their acknowledgements cannot reach the engine any more).
fn replay_starts(batch: &[SinkMessage]) -> HashMap<u64, usize> {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut starts = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        if last
            .insert(m.stream_id, m.message_id)
            .is_some_and(|prev| m.message_id <= prev)
        {
            starts.insert(m.stream_id, i);
        }
    }
    starts
}

/// An upload's place among the writes of one prefix (or key): it waits for the previous one
/// to be complete before its final write, and tells the next one when it is.
struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    visible: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until the previous write is complete (or failed, which stops the sink).
    async fn wait(&mut self) {
        if let Some(p) = self.previous.take() {
            let _ = p.await;
        }
    }

    /// This write is complete: the next one may go.
    fn done(self) {
        let _ = self.visible.send(());
    }
}

/// Uploads running in the background, at most `max` at a time, in order per turn key.
struct Uploads {
    running: FuturesUnordered<JoinHandle<Result<String>>>,
    max: usize,
    turns: HashMap<String, oneshot::Receiver<()>>,
}

impl Uploads {
    fn new(max: usize) -> Uploads {
        Uploads {
            running: FuturesUnordered::new(),
            max,
            turns: HashMap::new(),
        }
    }

    /// Starts an upload once a slot is free; it runs after the previous one of `turn_key`.
    async fn queue<F>(&mut self, turn_key: String, make: impl FnOnce(Turn) -> F) -> Result<()>
    where
        F: Future<Output = Result<String>> + Send + 'static,
    {
        while self.running.len() >= self.max {
            self.next().await?;
        }
        let (visible, turn) = oneshot::channel();
        let previous = self.turns.insert(turn_key, turn);
        self.running
            .push(tokio::spawn(make(Turn { previous, visible })));
        Ok(())
    }

    /// Waits for one upload to finish.
    async fn next(&mut self) -> Result<()> {
        if let Some(done) = self.running.next().await {
            let key = done.map_err(|e| anyhow!("upload task failed: {e}"))??;
            tracing::debug!("stored {key}");
        }
        Ok(())
    }

    /// Waits for every upload.
    async fn wait_all(mut self) -> Result<()> {
        while !self.running.is_empty() {
            self.next().await?;
        }
        Ok(())
    }
}

impl Drop for Uploads {
    /// A failed write stops the sink: the other uploads of the batch are abandoned.
    fn drop(&mut self) {
        for h in self.running.iter() {
            h.abort();
        }
    }
}

/// An object being filled (batch mode).
struct Object {
    stream_id: u64,
    prefix: String,
    first: u64,
    last: u64,
    raw_bytes: usize,
    comp: Compressor,
    multipart: Option<Multipart>,
}

/// The multipart upload an object streams into once it is large.
struct Multipart {
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    bytes: i64,
}

impl Object {
    fn new(prefix: &str, msg: &SinkMessage, c: Compression) -> Result<Object> {
        Ok(Object {
            stream_id: msg.stream_id,
            prefix: prefix.to_string(),
            first: msg.message_id,
            last: msg.message_id,
            raw_bytes: 0,
            comp: Compressor::new(c)?,
            multipart: None,
        })
    }

    fn append(&mut self, record: &[u8], id: u64) -> Result<()> {
        self.comp.write(record)?;
        self.raw_bytes += record.len();
        self.last = id;
        Ok(())
    }

    /// Uploads the compressed output produced so far as the next part (starting the
    /// multipart upload if needed).
    async fn upload_part(&mut self, t: &Target) -> Result<()> {
        if self.multipart.is_none() {
            let key = temp_object_key(&self.prefix, self.stream_id, self.first);
            let out = client::retry(&t.ctx, &format!("CreateMultipartUpload {key}"), || {
                t.client
                    .create_multipart_upload()
                    .bucket(&*t.bucket)
                    .key(&key)
                    .send()
            })
            .await?;
            let upload_id = out
                .upload_id
                .ok_or_else(|| anyhow!("CreateMultipartUpload {key} returned no upload id"))?;
            self.multipart = Some(Multipart {
                key,
                upload_id,
                parts: Vec::new(),
                bytes: 0,
            });
        }
        let data = Bytes::from(self.comp.take_output());
        if let Some(mp) = self.multipart.as_mut() {
            send_part(t, mp, data).await?;
        }
        Ok(())
    }
}

/// Uploads `data` as the next part of `mp`.
async fn send_part(t: &Target, mp: &mut Multipart, data: Bytes) -> Result<()> {
    let number = mp.parts.len() as i32 + 1;
    let len = data.len() as i64;
    let out = client::retry(&t.ctx, &format!("UploadPart {} #{number}", mp.key), || {
        t.client
            .upload_part()
            .bucket(&*t.bucket)
            .key(&mp.key)
            .upload_id(&mp.upload_id)
            .part_number(number)
            .body(ByteStream::from(data.clone()))
            .send()
    })
    .await?;
    mp.parts.push(
        CompletedPart::builder()
            .set_e_tag(out.e_tag)
            .part_number(number)
            .build(),
    );
    mp.bytes += len;
    Ok(())
}

/// Stores an object: one PUT, or the last part + complete + copy to the final name. The final
/// write waits for its turn, then takes its name from the clock.
async fn finish_object(t: Target, o: Object, mut turn: Turn) -> Result<String> {
    let rest = Bytes::from(o.comp.finish()?);
    let name = |t: &Target| {
        batch_object_key(
            &o.prefix,
            t.clock.next(),
            o.stream_id,
            o.first,
            o.last,
            t.format,
            t.compression,
        )
    };
    let Some(mut mp) = o.multipart else {
        turn.wait().await;
        let key = name(&t);
        client::retry(&t.ctx, &format!("PutObject {key}"), || {
            t.client
                .put_object()
                .bucket(&*t.bucket)
                .key(&key)
                .body(ByteStream::from(rest.clone()))
                .send()
        })
        .await?;
        turn.done();
        return Ok(key);
    };
    if !rest.is_empty() || mp.parts.is_empty() {
        send_part(&t, &mut mp, rest).await?;
    }
    complete_multipart(&t, &mp).await?;
    turn.wait().await;
    let key = name(&t);
    let source = format!("{}/{}", t.bucket, percent_encode(mp.key.as_bytes(), true));
    client::retry(&t.ctx, &format!("CopyObject {} -> {key}", mp.key), || {
        t.client
            .copy_object()
            .bucket(&*t.bucket)
            .key(&key)
            .copy_source(&source)
            .send()
    })
    .await?;
    turn.done();
    client::retry(&t.ctx, &format!("DeleteObject {}", mp.key), || {
        t.client
            .delete_object()
            .bucket(&*t.bucket)
            .key(&mp.key)
            .send()
    })
    .await?;
    Ok(key)
}

/// CompleteMultipartUpload; an answer that cannot be read (some S3-compatible services send
/// another XML root) or a lost answer to a retried call is checked against the object.
async fn complete_multipart(t: &Target, mp: &Multipart) -> Result<()> {
    let done = CompletedMultipartUpload::builder()
        .set_parts(Some(mp.parts.clone()))
        .build();
    let completed = client::retry(
        &t.ctx,
        &format!("CompleteMultipartUpload {}", mp.key),
        || {
            t.client
                .complete_multipart_upload()
                .bucket(&*t.bucket)
                .key(&mp.key)
                .upload_id(&mp.upload_id)
                .multipart_upload(done.clone())
                .send()
        },
    )
    .await;
    let Err(e) = completed else {
        return Ok(());
    };
    let head = t
        .client
        .head_object()
        .bucket(&*t.bucket)
        .key(&mp.key)
        .send()
        .await;
    match head {
        Ok(h) if h.content_length == Some(mp.bytes) => {
            tracing::debug!(
                "CompleteMultipartUpload {}: answer unreadable ({e:#}), but the object is complete",
                mp.key
            );
            Ok(())
        }
        _ => Err(e),
    }
}

/// Uploads one message as one object (per-message mode), after the previous write of its key.
async fn put_one(t: Target, key: String, payload: Bytes, mut turn: Turn) -> Result<String> {
    let body = match t.compression {
        Compression::None => payload,
        c => {
            let mut comp = Compressor::new(c)?;
            comp.write(&payload)?;
            Bytes::from(comp.finish()?)
        }
    };
    turn.wait().await;
    client::retry(&t.ctx, &format!("PutObject {key}"), || {
        t.client
            .put_object()
            .bucket(&*t.bucket)
            .key(&key)
            .body(ByteStream::from(body.clone()))
            .send()
    })
    .await?;
    turn.done();
    Ok(key)
}

/// Object key of a message in per-message mode: the prefix, then the MESSAGE key (made
/// visible to readers, see [`visible_path`]) or `<stream>-<id>` without one.
fn object_key_for(
    prefix: &str,
    msg: &SinkMessage,
    c: Compression,
) -> std::result::Result<String, String> {
    let name = if msg.key.is_empty() {
        format!("{:016x}-{:020}", msg.stream_id, msg.message_id)
    } else {
        visible_path(std::str::from_utf8(&msg.key).map_err(|_| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(stream: u64, id: u64) -> SinkMessage {
        SinkMessage::detached(stream, id, Bytes::new(), Bytes::from("x"))
    }

    #[test]
    fn a_replay_in_a_batch_drops_the_lost_connections_messages() {
        let batch = [
            msg(1, 5),
            msg(2, 1),
            msg(1, 6),
            msg(1, 5),
            msg(1, 6),
            msg(2, 2),
        ];
        let starts = replay_starts(&batch);
        assert_eq!(starts.get(&1), Some(&3));
        assert_eq!(starts.get(&2), None);
    }

    #[test]
    fn per_message_keys_are_visible_and_bounded() {
        let mut m = msg(1, 7);
        assert_eq!(
            object_key_for("p/", &m, Compression::Gzip).unwrap(),
            "p/0000000000000001-00000000000000000007.gz"
        );
        m.key = Bytes::from("a/_b");
        assert_eq!(
            object_key_for("p/", &m, Compression::None).unwrap(),
            "p/a/%5Fb"
        );
        m.key = Bytes::from("k".repeat(1100));
        assert!(object_key_for("p/", &m, Compression::None).is_err());
    }
}
