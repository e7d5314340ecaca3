//! s3_source's reading: the listing of a prefix in key order, one object at a time as one
//! stream whose message ids are byte offsets, and the checkpoint of what was acknowledged.
//!
//! Each object is split by its format (`auto` picks by extension: `.frames`, `.raw`/`.bin`,
//! else lines) after decompression chosen by extension (`.gz`, `.zst`; a truncated object is
//! a decode error, reported and skipped, never a silently shorter one). Every object is the
//! stream `s3://<bucket>/<key>`; a record's id is the offset just after it in the
//! (decompressed) object, so the engine's resume point is an offset in the object. Keys with
//! a path segment starting with `_` or `.` after the prefix (s3_sink's `_tmp/`, `_SUCCESS`
//! markers) and keys ending in `/` are skipped.
//!
//! The checkpoint holds the last key before which everything was acknowledged, plus the
//! acknowledged offset of each object in flight; it is written atomically, at most every
//! `checkpoint_ms`. A restart lists after that key and skips what was acknowledged inside
//! objects.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::{anyhow, Result};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use connector_runtime::{Backoff, Batch, Context};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{is_hidden, Compression, Decompressor, RecordFormat, SourceFormat, Splitter};
use crate::checkpoint::CheckpointFile;
use crate::client;

/// Objects read and not yet acknowledged to their end, at most.
pub const MAX_OPEN_OBJECTS: usize = 64;
/// Records pushed by one read, at most (then the runtime sends them).
const READ_RECORDS: usize = 4096;
/// Bytes pushed by one read, at most.
const READ_BYTES: usize = 4 << 20;

/// Commit token of a record: its object's stream and the offset just after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The object's stream id.
    pub stream: u64,
    /// Offset just after the record in the (decompressed) object.
    pub offset: u64,
}

/// The bucket being read.
#[derive(Clone)]
pub struct Store {
    /// The runtime context (retries, metrics, shutdown).
    pub ctx: Context,
    /// The S3 client.
    pub client: aws_sdk_s3::Client,
    /// The bucket.
    pub bucket: String,
}

impl Store {
    /// The stream name of an object: `s3://<bucket>/<key>`.
    pub fn stream_name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// An object found by the listing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Object key.
    pub key: String,
    /// Last modification, milliseconds since the epoch (the records' event time).
    pub modified: i64,
}

/// Lists a prefix in key order, page by page, and again every `poll` once it reached the end.
pub struct Lister {
    prefix: String,
    after: Option<String>,
    page: VecDeque<Listed>,
    more: bool,
    poll: Duration,
    next_poll: Option<Instant>,
}

impl Lister {
    /// Lists `prefix` after the key `after`; `poll` zero lists once.
    pub fn new(prefix: &str, after: Option<String>, poll: Duration) -> Lister {
        Lister {
            prefix: prefix.to_string(),
            after,
            page: VecDeque::new(),
            more: true,
            poll,
            next_poll: None,
        }
    }

    /// The next object to read (visible, not done according to `progress`), listing as
    /// needed; `None` when the listing reached the end for now. Cancel safe.
    pub async fn next(&mut self, s3: &Store, progress: &Progress) -> Result<Option<Listed>> {
        loop {
            while let Some(o) = self.page.pop_front() {
                if !is_hidden(&o.key, &self.prefix) && !progress.is_done(&o.key) {
                    return Ok(Some(o));
                }
            }
            if !self.more {
                match self.next_poll {
                    Some(at) if Instant::now() >= at => self.more = true,
                    _ => return Ok(None),
                }
            }
            let page = client::retry(&s3.ctx, "ListObjectsV2", || {
                s3.client
                    .list_objects_v2()
                    .bucket(&s3.bucket)
                    .prefix(&self.prefix)
                    .set_start_after(self.after.clone())
                    .send()
            })
            .await?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                self.after = Some(key.to_string());
                let modified = obj.last_modified().and_then(|t| t.to_millis().ok());
                self.page.push_back(Listed {
                    key: key.to_string(),
                    modified: modified.unwrap_or(0),
                });
            }
            if page.is_truncated() != Some(true) {
                self.more = false;
                self.next_poll = (!self.poll.is_zero()).then(|| Instant::now() + self.poll);
            }
        }
    }

    /// When to list again once [`Lister::next`] returned `None`; `None` when the listing is
    /// over for good (`poll_ms` 0).
    pub fn next_poll(&self) -> Option<Instant> {
        self.next_poll
    }
}

/// How objects are split into records.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    /// `format` parameter.
    pub format: SourceFormat,
    /// Record size of the raw format.
    pub chunk: usize,
    /// The MESSAGE key is the object key (else empty).
    pub key_is_object: bool,
    /// The frame limit, which bounds lines and frames.
    pub max_frame: usize,
}

/// The object being read: a GET streamed through the decompressor and the splitter, resumed
/// with a new GET after a failure.
pub struct ObjectReader {
    key: String,
    stream: u64,
    modified: i64,
    msg_key: Vec<u8>,
    compression: Compression,
    format: RecordFormat,
    chunk: usize,
    max_record: usize,
    written: u64,
    body: Option<Body>,
    /// A GET in flight: spawned, so that an interrupted read does not cancel it.
    get: Option<JoinHandle<Result<Option<GetObjectOutput>>>>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

/// An open GET.
struct Body {
    bytes: ByteStream,
    decomp: Decompressor,
    splitter: Splitter,
}

impl ObjectReader {
    /// Reads `object` on `stream`, from offset `skip` (what was acknowledged already).
    pub fn new(object: &Listed, stream: u64, skip: u64, s: &ReadSettings) -> ObjectReader {
        let msg_key = match s.key_is_object {
            true => object.key.as_bytes().to_vec(),
            false => Vec::new(),
        };
        ObjectReader {
            key: object.key.clone(),
            stream,
            modified: object.modified,
            compression: Compression::from_key(&object.key),
            format: s.format.for_key(&object.key),
            chunk: s.chunk,
            max_record: s.max_frame.saturating_sub(1100 + msg_key.len()).max(1),
            msg_key,
            written: skip,
            body: None,
            get: None,
            retry_at: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }

    /// The object's stream id.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// Offset just after the last record pushed.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Pushes the object's next records into `out` (up to one read's worth); `true` once the
    /// object is finished (read to its end, gone, or undecodable from here on). Cancel safe:
    /// records are pushed as soon as they are split, and the position moves with them.
    pub async fn read_some(&mut self, s3: &Store, out: &mut Batch<Position>) -> Result<bool> {
        loop {
            let Some(body) = self.body.as_mut() else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                    self.retry_at = None;
                }
                match self.get(s3).await? {
                    Some(b) => self.body = Some(b),
                    None => return Ok(true),
                }
                continue;
            };
            let (ended, fed) = match body.bytes.next().await {
                Some(Ok(chunk)) => (false, body.decomp.feed(&chunk, body.splitter.buffer())),
                None => (true, body.decomp.finish(body.splitter.buffer())),
                Some(Err(e)) => {
                    s3.ctx.metrics.reconnects.inc();
                    tracing::warn!(
                        "reading {} failed at offset {}: {e}; reading again from there",
                        self.key,
                        self.written
                    );
                    self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                    self.body = None;
                    continue;
                }
            };
            if let Err(e) = fed {
                corrupt(s3, &self.key, &format!("cannot decompress: {e}"));
                return Ok(true);
            }
            loop {
                let next = match ended {
                    true => body.splitter.finish(),
                    false => body.splitter.next_record(),
                };
                let (end, payload) = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(why) => {
                        corrupt(s3, &self.key, &why);
                        return Ok(true);
                    }
                };
                if end > self.written {
                    let token = Position {
                        stream: self.stream,
                        offset: end,
                    };
                    out.push_at(
                        self.stream,
                        end,
                        self.modified,
                        &self.msg_key,
                        &payload,
                        token,
                    );
                    self.written = end;
                }
            }
            if ended {
                return Ok(true);
            }
            if out.len() >= READ_RECORDS || out.bytes() >= READ_BYTES {
                return Ok(false);
            }
        }
    }

    /// GETs the object from where reading stands: uncompressed objects resume with a ranged
    /// GET, compressed ones are decompressed from the start (the records already pushed are
    /// skipped). `None` when there is nothing left to read.
    async fn get(&mut self, s3: &Store) -> Result<Option<Body>> {
        let from = match self.compression {
            Compression::None => self.written,
            _ => 0,
        };
        let task = self
            .get
            .get_or_insert_with(|| tokio::spawn(fetch(s3.clone(), self.key.clone(), from)));
        let got = task.await;
        self.get = None;
        let Some(out) = got.map_err(|e| anyhow!("GetObject {}: {e}", self.key))?? else {
            return Ok(None);
        };
        Ok(Some(Body {
            bytes: out.body,
            decomp: Decompressor::new(self.compression)?,
            splitter: Splitter::new(self.format, from, self.chunk, self.max_record),
        }))
    }
}

/// GETs `key` from byte `from` on; `None` when there is nothing (left) to read.
async fn fetch(s3: Store, key: String, from: u64) -> Result<Option<GetObjectOutput>> {
    let got = client::retry(&s3.ctx, &format!("GetObject {key}"), || {
        let req = s3.client.get_object().bucket(&s3.bucket).key(&key);
        match from {
            0 => req,
            _ => req.range(format!("bytes={from}-")),
        }
        .send()
    })
    .await;
    match got {
        Ok(out) => Ok(Some(out)),
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("InvalidRange") {
                return Ok(None); // resumed exactly at the end: nothing left
            }
            if text.contains("NoSuchKey") {
                tracing::warn!("object {key} disappeared before it was read; skipping it");
                return Ok(None);
            }
            Err(e)
        }
    }
}

/// An object that cannot be decoded: counted, reported, the rest of it skipped.
fn corrupt(s3: &Store, key: &str, why: &str) {
    s3.ctx.metrics.error("decode");
    tracing::error!("object {key}: {why}; skipping the rest of it");
}

/// The checkpoint file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    bucket: String,
    prefix: String,
    /// Every object up to and including this key is done.
    after: Option<String>,
    /// Objects after `after` with acknowledged progress.
    partial: BTreeMap<String, Saved>,
}

/// Acknowledged progress in one object.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Saved {
    /// Records ending at or before this offset are acknowledged.
    offset: u64,
    /// Fully read and acknowledged.
    done: bool,
}

/// An object read (or being read) and not yet acknowledged to its end.
struct OpenObject {
    key: String,
    stream: u64,
    written: u64,
    acked: u64,
    all_written: bool,
    closed: bool,
}

/// What was acknowledged, object by object, and the checkpoint file it is saved to.
pub struct Progress {
    file: Option<CheckpointFile>,
    cp: Checkpoint,
    open: VecDeque<OpenObject>,
    to_end: Vec<u64>,
    dirty: bool,
    last_save: Instant,
    every: Duration,
}

impl Progress {
    /// Loads the checkpoint `<dir>/<connector>.<bucket>.json` (nothing without `dir`) for
    /// `bucket`/`prefix`; saves at most every `every`.
    pub fn open(
        dir: Option<&str>,
        connector: &str,
        bucket: &str,
        prefix: &str,
        every: Duration,
    ) -> Result<Progress> {
        let file = match dir {
            Some(d) => Some(CheckpointFile::new(
                d.as_ref(),
                &format!("{connector}.{bucket}.json"),
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
        cp.bucket = bucket.to_string();
        cp.prefix = prefix.to_string();
        Ok(Progress {
            file,
            cp,
            open: VecDeque::new(),
            to_end: Vec::new(),
            dirty: false,
            last_save: Instant::now(),
            every,
        })
    }

    /// The key after which listing starts.
    pub fn after(&self) -> Option<String> {
        self.cp.after.clone()
    }

    /// Whether `key` was read and acknowledged to its end.
    pub fn is_done(&self, key: &str) -> bool {
        self.cp.partial.get(key).is_some_and(|p| p.done)
    }

    /// The acknowledged offset in `key`, if any.
    pub fn saved_offset(&self, key: &str) -> Option<u64> {
        self.cp
            .partial
            .get(key)
            .map(|p| p.offset)
            .filter(|o| *o > 0)
    }

    /// Reading `key` on `stream` starts at `skip` (acknowledged already).
    pub fn begin(&mut self, key: &str, stream: u64, skip: u64) {
        self.open.push_back(OpenObject {
            key: key.to_string(),
            stream,
            written: skip,
            acked: skip,
            all_written: false,
            closed: false,
        });
    }

    /// The object of `stream` was read to its end, its last record ending at `written`.
    pub fn all_written(&mut self, stream: u64, written: u64) -> Result<()> {
        if let Some(o) = self
            .open
            .iter_mut()
            .find(|o| o.stream == stream && !o.all_written)
        {
            o.written = written;
            o.all_written = true;
        }
        self.settle()
    }

    /// Records acknowledged by the engine: moves the objects' offsets and the checkpoint.
    pub fn commit(&mut self, tokens: &[Position]) -> Result<()> {
        for t in tokens {
            if let Some(o) = self
                .open
                .iter_mut()
                .find(|o| o.stream == t.stream && !o.closed)
            {
                o.acked = o.acked.max(t.offset);
                self.dirty = true;
            }
        }
        self.settle()
    }

    /// Closes the objects acknowledged to their end, moves `after` past the leading closed
    /// ones, records the others' progress, and saves when due.
    fn settle(&mut self) -> Result<()> {
        for o in self.open.iter_mut() {
            if o.all_written && !o.closed && o.acked >= o.written {
                o.closed = true;
                self.dirty = true;
                self.to_end.push(o.stream);
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
                let saved = Saved {
                    offset: o.acked,
                    done: o.closed,
                };
                self.cp.partial.insert(o.key.clone(), saved);
            }
        }
        self.save_if_due()
    }

    /// Streams of objects acknowledged to their end, to be ended (once each).
    pub fn take_finished(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.to_end)
    }

    /// Objects begun and not yet acknowledged to their end.
    pub fn unfinished(&self) -> usize {
        self.open.iter().filter(|o| !o.closed).count()
    }

    /// Saves if something changed and the last save is `every` old.
    pub fn save_if_due(&mut self) -> Result<()> {
        if self.dirty && self.last_save.elapsed() >= self.every {
            self.save()?;
        }
        Ok(())
    }

    /// Waits (cancel safe) until `until`, or until an unsaved change is due to be saved;
    /// forever when neither.
    pub async fn idle(&self, until: Option<Instant>) {
        let save = self.dirty.then_some(self.last_save + self.every);
        match until.into_iter().chain(save).min() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Writes the checkpoint now (without a checkpoint file, nothing).
    pub fn save(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.store(&self.cp)?;
        }
        self.dirty = false;
        self.last_save = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_moves_past_objects_acknowledged_to_their_end_in_key_order() {
        let mut p = Progress::open(None, "c", "b", "p/", Duration::ZERO).unwrap();
        p.begin("p/a", 1, 0);
        p.begin("p/b", 2, 0);
        p.all_written(1, 10).unwrap();
        p.all_written(2, 5).unwrap();
        assert_eq!(p.unfinished(), 2);
        p.commit(&[Position {
            stream: 2,
            offset: 5,
        }])
        .unwrap();
        assert_eq!(p.take_finished(), [2]);
        assert_eq!(p.after(), None, "p/a is not done yet");
        assert!(p.is_done("p/b"));
        p.commit(&[Position {
            stream: 1,
            offset: 4,
        }])
        .unwrap();
        assert_eq!(p.saved_offset("p/a"), Some(4));
        p.commit(&[Position {
            stream: 1,
            offset: 10,
        }])
        .unwrap();
        assert_eq!(p.take_finished(), [1]);
        assert_eq!(p.after().as_deref(), Some("p/b"));
        assert_eq!(p.unfinished(), 0);
        // An object with nothing left to send is finished at once.
        p.begin("p/c", 3, 7);
        p.all_written(3, 7).unwrap();
        assert_eq!(p.take_finished(), [3]);
        assert_eq!(p.after().as_deref(), Some("p/c"));
    }
}
