//! The shard reader behind `kinesis_source`: which shards to read and when (lineage), one
//! GetRecords task per shard, the per-shard message ids and the checkpoint file.
//!
//! Message ids: Kinesis sequence numbers are decimal strings of up to 128 digits, too wide for
//! a u64, so a shard's message id is a counter: the n-th record after the checkpointed one
//! gets `checkpoint id + n`. A record never moves in its shard, so it keeps its id across
//! restarts and the engine drops a replay it already has.
//!
//! The checkpoint holds, per shard, the sequence number and id of the last record the engine
//! acknowledged (written from [`ShardReader::commit`]), whether the shard is finished (closed,
//! read to its end, fully acknowledged), and, until its first acknowledgement, where the shard
//! started (`first`, saved before that record is sent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use connector_runtime::{Backoff, Batch, Context, FloatGauge, StreamHandle};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{list_shards, seq_cmp, ShardInfo};
use crate::checkpoint::CheckpointFile;
use crate::client::{self, classify, error_code, Failure};

/// GetRecords calls per shard are limited to 5 a second.
const MIN_CALL_GAP: Duration = Duration::from_millis(200);

/// Where a shard starts reading.
#[derive(Debug, Clone)]
pub enum Start {
    /// TRIM_HORIZON, LATEST or AT_TIMESTAMP (with its time).
    At(ShardIteratorType, Option<DateTime>),
    /// After this sequence number (the checkpoint).
    After(String),
    /// At (including) this sequence number (a shard's saved first record).
    From(String),
}

/// Parses the `iterator` and `timestamp` parameters.
pub fn start_position(iterator: &str, timestamp: Option<&str>) -> Result<Start> {
    let it = iterator.trim().to_ascii_uppercase();
    Ok(match it.as_str() {
        "TRIM_HORIZON" => Start::At(ShardIteratorType::TrimHorizon, None),
        "LATEST" => Start::At(ShardIteratorType::Latest, None),
        "AT_TIMESTAMP" => {
            let Some(ts) = timestamp else {
                bail!("iterator AT_TIMESTAMP needs the `timestamp` parameter (seconds since the epoch or RFC 3339)");
            };
            Start::At(ShardIteratorType::AtTimestamp, Some(parse_timestamp(ts)?))
        }
        other => bail!("iterator {other:?}: expected TRIM_HORIZON, LATEST or AT_TIMESTAMP"),
    })
}

/// Parses `timestamp`: seconds since the epoch (`1732550400.5`) or RFC 3339 with any offset
/// (`2026-11-25T15:00:00Z`, `2026-11-25t16:00:00.5+01:00`).
pub fn parse_timestamp(ts: &str) -> Result<DateTime> {
    let ts = ts.trim();
    if let Ok(secs) = ts.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            bail!("timestamp {ts:?}: seconds since the epoch must be a number >= 0");
        }
        return Ok(DateTime::from_secs_f64(secs));
    }
    let t = OffsetDateTime::parse(ts, &Rfc3339).map_err(|e| {
        anyhow!("timestamp {ts:?}: {e}; expected seconds since the epoch (1732550400.5) or RFC 3339 (2026-11-25T15:00:00Z, 2026-11-25T16:00:00+01:00)")
    })?;
    Ok(DateTime::from_secs_and_nanos(
        t.unix_timestamp(),
        t.nanosecond(),
    ))
}

/// What the reader takes from the connector's parameters.
#[derive(Debug)]
pub struct Options {
    /// The Kinesis stream.
    pub stream: String,
    /// Only these shards (and the shards split or merged from them); `None`: every shard.
    pub shards: Option<HashSet<String>>,
    /// Where the shards of the very first start begin (later ones: TRIM_HORIZON).
    pub start: Start,
    /// The checkpoint file; `None`: a restart starts at `start` again.
    pub checkpoint: Option<CheckpointFile>,
    /// `Limit` of each GetRecords call.
    pub max_records: i32,
    /// Wait between GetRecords calls on a shard that is caught up.
    pub poll: Duration,
    /// How often to list the shards (resharding).
    pub refresh: Duration,
    /// Longest time between checkpoint writes.
    pub checkpoint_every: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    stream: String,
    shards: BTreeMap<String, ShardCheckpoint>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ShardCheckpoint {
    /// Sequence number of the last acknowledged record.
    seq: Option<String>,
    /// Its message id (the shard's counter).
    id: u64,
    /// Fully read and acknowledged (closed shard).
    #[serde(default)]
    finished: bool,
    /// While nothing of the shard is acknowledged yet: the sequence number of its first
    /// record read, `id` being the counter before it. Saved before that record is sent, so
    /// a restart reads the same records under the same ids and the engine drops those it
    /// already has, instead of getting them again under new ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first: Option<String>,
}

/// The commit token of one record: its shard, message id and sequence number.
#[derive(Debug, Clone)]
pub struct Position {
    shard: Arc<str>,
    id: u64,
    seq: String,
}

/// What a shard's GetRecords task or the shard listing reports.
#[derive(Debug)]
pub enum Fetched {
    /// Records of one shard, in order.
    Records {
        /// The reading task (a shard read again gets a new one).
        reader: u64,
        /// Its records.
        records: Vec<Record>,
        /// `MillisBehindLatest`.
        behind: Option<i64>,
    },
    /// A closed shard was read to its end.
    End {
        /// The reading task.
        reader: u64,
    },
    /// A shard cannot be read (a permanent error).
    Failed {
        /// The reading task.
        reader: u64,
        /// Why.
        why: String,
    },
    /// The stream's shards, as listed now.
    Listed(Vec<ShardInfo>),
}

/// What ended a wait of [`ShardReader::next`].
enum Woke {
    Fetched(Option<Fetched>),
    Listed(Result<Result<Vec<ShardInfo>>, tokio::task::JoinError>),
    Refresh,
    Save,
}

/// A shard opened as a protocol stream.
struct Active {
    shard: Arc<str>,
    /// Its protocol stream.
    stream: u64,
    /// Where reading starts, and the checkpointed id it continues from.
    begin: Start,
    saved_id: Option<u64>,
    /// Message id of the last record pushed, and of the last one acknowledged.
    last_id: u64,
    acked_id: u64,
    /// Its checkpoint already holds a position (`seq` or `first`).
    positioned: bool,
    /// Read to its end and handed to [`Batch::end`].
    ended: bool,
    /// The shard's last sequence number once it is closed (shared with its reading task).
    ending: Arc<Mutex<Option<String>>>,
    /// The reading task and its number (started by [`ShardReader::opened`]).
    reader: u64,
    task: Option<JoinHandle<()>>,
    behind: Option<FloatGauge>,
}

/// What every GetRecords task of a stream shares.
struct Settings {
    stream: String,
    limit: i32,
    poll: Duration,
}

/// Reads the shards of one Kinesis stream: lists them, opens a protocol stream per shard
/// once its parents are finished, reads each with its own GetRecords task and keeps the
/// checkpoint of what the engine acknowledged.
pub struct ShardReader {
    ctx: Context,
    client: aws_sdk_kinesis::Client,
    settings: Arc<Settings>,
    start: Start,
    /// Shards present at the very first start (they begin at `start`).
    initial: HashSet<String>,
    /// With an explicit `shards` list: those shards and their descendants.
    mine: Option<HashSet<String>>,
    file: Option<CheckpointFile>,
    cp: Checkpoint,
    /// By shard id.
    active: HashMap<String, Active>,
    /// Reading task number -> shard id.
    readers: HashMap<u64, String>,
    next_reader: u64,
    tx: mpsc::Sender<Fetched>,
    rx: mpsc::Receiver<Fetched>,
    /// The first listing (made by [`ShardReader::new`]), until it is applied.
    first_list: Option<Vec<ShardInfo>>,
    listing: Option<JoinHandle<Result<Vec<ShardInfo>>>>,
    refresh_every: Duration,
    refresh_at: Instant,
    checkpoint_every: Duration,
    saved_at: Instant,
    dirty: bool,
}

impl ShardReader {
    /// Loads the checkpoint and lists the shards (checking an explicit `shards` list).
    pub async fn new(
        ctx: Context,
        client: aws_sdk_kinesis::Client,
        opts: Options,
    ) -> Result<ShardReader> {
        let stream = opts.stream;
        let mut cp: Checkpoint = match &opts.checkpoint {
            Some(f) => f.load()?.unwrap_or_default(),
            None => {
                tracing::info!("no checkpoint_dir: a restart starts at `iterator` again");
                Checkpoint::default()
            }
        };
        cp.stream = stream.clone();
        let listed = list_shards(&ctx, &client, &stream)
            .await
            .with_context(|| format!("cannot list the shards of Kinesis stream `{stream}`"))?;
        if let Some(want) = &opts.shards {
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| !listed.iter().any(|s| &s.id == *w))
                .collect();
            if !missing.is_empty() {
                let have: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
                bail!(
                    "shards {missing:?} are not in stream `{stream}` (it has {})",
                    have.join(", ")
                );
            }
        }
        // The `iterator` applies to the shards present at the very first start; shards found
        // later (children) are read from TRIM_HORIZON.
        let first_run = cp.shards.is_empty();
        let mut initial = HashSet::new();
        if first_run {
            initial = listed.iter().map(|s| s.id.clone()).collect();
            if matches!(opts.start, Start::At(ShardIteratorType::Latest, _)) {
                // LATEST: closed shards hold nothing new.
                for s in listed.iter().filter(|s| s.is_closed()) {
                    let done = ShardCheckpoint {
                        finished: true,
                        ..Default::default()
                    };
                    cp.shards.insert(s.id.clone(), done);
                }
            }
        }
        let (tx, rx) = mpsc::channel(8);
        let now = Instant::now();
        Ok(ShardReader {
            ctx,
            client,
            settings: Arc::new(Settings {
                stream,
                limit: opts.max_records,
                poll: opts.poll,
            }),
            start: opts.start,
            initial,
            mine: opts.shards,
            file: opts.checkpoint,
            cp,
            active: HashMap::new(),
            readers: HashMap::new(),
            next_reader: 0,
            tx,
            rx,
            first_list: Some(listed),
            listing: None,
            refresh_every: opts.refresh,
            refresh_at: now + opts.refresh,
            checkpoint_every: opts.checkpoint_every,
            saved_at: now,
            dirty: false,
        })
    }

    /// Settles the shards ended by an earlier read (their acknowledged records are committed
    /// by now): fully acknowledged ones are finished in the checkpoint, written at once, and
    /// their children can start; others are read again from the checkpoint.
    pub fn settle(&mut self) -> Result<()> {
        let ended: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.ended)
            .map(|(s, _)| s.clone())
            .collect();
        if ended.is_empty() {
            return Ok(());
        }
        for shard in ended {
            let Some(a) = self.active.remove(&shard) else {
                continue;
            };
            self.readers.remove(&a.reader);
            if a.acked_id < a.last_id {
                tracing::warn!(
                    "shard {shard} ended with {} records not acknowledged; reading it again from the checkpoint",
                    a.last_id - a.acked_id
                );
                continue;
            }
            let c = self.cp.shards.entry(shard.clone()).or_default();
            c.finished = true;
            c.first = None;
            tracing::info!("shard {shard} finished (closed and fully acknowledged)");
        }
        self.save()?;
        self.refresh_at = Instant::now();
        Ok(())
    }

    /// Waits for the next report of a shard task or listing, listing the shards and writing
    /// the checkpoint when they are due meanwhile. Cancel safe.
    pub async fn next(&mut self) -> Result<Fetched> {
        if let Some(list) = self.first_list.take() {
            return Ok(Fetched::Listed(list));
        }
        loop {
            if self.listing.is_none() && Instant::now() >= self.refresh_at {
                let (ctx, client) = (self.ctx.clone(), self.client.clone());
                let settings = self.settings.clone();
                self.listing = Some(tokio::spawn(async move {
                    list_shards(&ctx, &client, &settings.stream).await
                }));
            }
            let listing_idle = self.listing.is_none();
            let slot = &mut self.listing;
            let listing = async {
                match slot {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            let save_at = self.saved_at + self.checkpoint_every;
            let woke = tokio::select! {
                got = self.rx.recv() => Woke::Fetched(got),
                listed = listing => Woke::Listed(listed),
                _ = tokio::time::sleep_until(self.refresh_at), if listing_idle => Woke::Refresh,
                _ = tokio::time::sleep_until(save_at), if self.dirty => Woke::Save,
            };
            match woke {
                Woke::Fetched(got) => {
                    return got.ok_or_else(|| anyhow!("every shard reader stopped"))
                }
                Woke::Listed(listed) => {
                    self.listing = None;
                    self.refresh_at = Instant::now() + self.refresh_every;
                    let listed = listed.map_err(|e| anyhow!("shard listing task failed: {e}"))?;
                    return Ok(Fetched::Listed(listed?));
                }
                Woke::Refresh => {}
                Woke::Save => self.save()?,
            }
        }
    }

    /// A report that is ready now, if any (to fill one batch).
    pub fn try_next(&mut self) -> Option<Fetched> {
        self.rx.try_recv().ok()
    }

    /// Applies a report: pushes records (saving a shard's start before its first record),
    /// ends a shard read to its end ([`Batch::end`]), opens the shards that can start
    /// ([`Batch::open`]). Returns the number of records pushed.
    pub fn apply(&mut self, out: &mut Batch<Position>, ev: Fetched) -> Result<usize> {
        let reader = match &ev {
            Fetched::Listed(list) => {
                self.open_ready(out, list);
                return Ok(0);
            }
            Fetched::Records { reader, .. }
            | Fetched::End { reader }
            | Fetched::Failed { reader, .. } => *reader,
        };
        // A report of a task replaced meanwhile (a shard read again) is stale.
        let Some(a) = self
            .readers
            .get(&reader)
            .and_then(|s| self.active.get_mut(s))
        else {
            return Ok(0);
        };
        let (records, behind) = match ev {
            Fetched::Records {
                records, behind, ..
            } => (records, behind),
            Fetched::End { .. } => {
                a.ended = true;
                out.end(a.stream);
                return Ok(0);
            }
            Fetched::Failed { why, .. } => bail!("reading shard {}: {why}", a.shard),
            Fetched::Listed(_) => return Ok(0),
        };
        if let (Some(g), Some(ms)) = (&a.behind, behind) {
            g.set(ms as f64 / 1e3);
        }
        let n = records.len();
        for r in records {
            if !a.positioned {
                // The shard's first record: keep where it starts before sending anything.
                a.positioned = true;
                let c = ShardCheckpoint {
                    id: a.last_id,
                    first: Some(r.sequence_number.clone()),
                    ..Default::default()
                };
                self.cp.shards.insert(a.shard.to_string(), c);
                if let Some(f) = &self.file {
                    f.store(&self.cp)?;
                }
            }
            a.last_id += 1;
            let time = r
                .approximate_arrival_timestamp
                .and_then(|d| d.to_millis().ok())
                .unwrap_or(0);
            let key = r.partition_key.as_deref().unwrap_or_default();
            let token = Position {
                shard: a.shard.clone(),
                id: a.last_id,
                seq: r.sequence_number,
            };
            out.push_at(
                a.stream,
                a.last_id,
                time,
                key.as_bytes(),
                r.data.as_ref(),
                token,
            );
        }
        Ok(n)
    }

    /// Opens a protocol stream for every shard that can start now (not started or finished,
    /// ours, its parents finished); [`ShardReader::opened`] then starts reading it.
    fn open_ready(&mut self, out: &mut Batch<Position>, known: &[ShardInfo]) {
        for s in known {
            if let (Some(a), Some(end)) = (self.active.get(&s.id), &s.ending_seq) {
                *a.ending.lock().unwrap_or_else(|p| p.into_inner()) = Some(end.clone());
            }
        }
        if let Some(m) = &mut self.mine {
            for s in known {
                if s.parent.as_ref().is_some_and(|p| m.contains(p)) {
                    m.insert(s.id.clone());
                }
            }
        }
        let started = |id: &str| self.active.contains_key(id);
        let ready: Vec<&ShardInfo> = known
            .iter()
            .filter(|s| eligible(s, known, &self.cp, started, self.mine.as_ref()))
            .collect();
        for s in ready {
            let saved = self
                .cp
                .shards
                .get(&s.id)
                .filter(|c| c.seq.is_some() || c.first.is_some());
            let begin = match saved.map(|c| (c.seq.clone(), c.first.clone())) {
                Some((Some(seq), _)) => Start::After(seq),
                Some((None, Some(first))) => Start::From(first),
                _ if self.initial.contains(&s.id) => self.start.clone(),
                _ => Start::At(ShardIteratorType::TrimHorizon, None),
            };
            let saved_id = saved.map(|c| c.id);
            let name = format!("kinesis:{}/{}", self.settings.stream, s.id);
            let active = Active {
                shard: s.id.as_str().into(),
                stream: out.open(&name, saved_id),
                begin,
                saved_id,
                last_id: 0,
                acked_id: 0,
                positioned: saved.is_some(),
                ended: false,
                ending: Arc::new(Mutex::new(s.ending_seq.clone())),
                reader: 0,
                task: None,
                behind: None,
            };
            self.active.insert(s.id.clone(), active);
        }
    }

    /// The engine answered for a shard's stream: number its records after the checkpoint
    /// (or, without one, after the engine's resume point) and start reading it.
    pub fn opened(&mut self, h: &StreamHandle) {
        let Some(a) = self.active.values_mut().find(|a| a.stream == h.id) else {
            return;
        };
        // The engine may already hold records after the checkpoint (acknowledged, checkpoint
        // not written yet): they keep their ids and the runtime skips them.
        a.last_id = a.saved_id.unwrap_or_else(|| h.resume.unwrap_or(0));
        a.acked_id = a.last_id;
        tracing::info!(
            "reading shard {} from {:?} (message ids after {})",
            a.shard,
            a.begin,
            a.last_id
        );
        self.next_reader += 1;
        a.reader = self.next_reader;
        self.readers.insert(a.reader, a.shard.to_string());
        let help = "How far behind the shard's newest record the reader is.";
        let shard: &str = &a.shard;
        a.behind = Some(self.ctx.metrics.registry.float_gauge(
            "kinesis_behind_latest_seconds",
            help,
            &[("shard", shard)],
        ));
        a.task = Some(tokio::spawn(fetch(
            self.ctx.clone(),
            self.client.clone(),
            self.settings.clone(),
            a.shard.to_string(),
            a.begin.clone(),
            a.ending.clone(),
            (self.tx.clone(), a.reader),
        )));
    }

    /// Moves the checkpoint to the records the engine acknowledged (in order per shard);
    /// writes it when `checkpoint_every` has passed since the last write.
    pub fn commit(&mut self, tokens: Vec<Position>) -> Result<()> {
        for t in tokens {
            if let Some(a) = self.active.get_mut(&*t.shard) {
                a.acked_id = t.id;
            }
            if !self.cp.shards.contains_key(&*t.shard) {
                let c = ShardCheckpoint::default();
                self.cp.shards.insert(t.shard.to_string(), c);
            }
            if let Some(c) = self.cp.shards.get_mut(&*t.shard) {
                c.seq = Some(t.seq);
                c.id = t.id;
                c.first = None;
                self.dirty = true;
            }
        }
        if self.dirty && Instant::now() >= self.saved_at + self.checkpoint_every {
            self.save()?;
        }
        Ok(())
    }

    /// Stops the shard tasks and writes the checkpoint.
    pub fn close(&mut self) -> Result<()> {
        for a in self.active.values() {
            if let Some(t) = &a.task {
                t.abort();
            }
        }
        if let Some(t) = &self.listing {
            t.abort();
        }
        self.save()
    }

    /// Writes the checkpoint.
    fn save(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.store(&self.cp)?;
        }
        self.dirty = false;
        self.saved_at = Instant::now();
        Ok(())
    }
}

/// Whether a shard can be started: not started or finished, ours, and its parents finished
/// (or gone from the stream, or read by another instance).
fn eligible(
    s: &ShardInfo,
    known: &[ShardInfo],
    cp: &Checkpoint,
    started: impl Fn(&str) -> bool,
    mine: Option<&HashSet<String>>,
) -> bool {
    let finished = |id: &str| cp.shards.get(id).is_some_and(|c| c.finished);
    if started(&s.id) || finished(&s.id) {
        return false;
    }
    if mine.is_some_and(|m| !m.contains(&s.id)) {
        return false;
    }
    s.parents().all(|p| {
        finished(p) || !known.iter().any(|k| k.id == p) || mine.is_some_and(|m| !m.contains(p))
    })
}

/// Reads one shard with GetRecords and reports to the reader; a permanent failure is
/// reported as [`Fetched::Failed`].
async fn fetch(
    ctx: Context,
    client: aws_sdk_kinesis::Client,
    settings: Arc<Settings>,
    shard: String,
    start: Start,
    ending: Arc<Mutex<Option<String>>>,
    (tx, reader): (mpsc::Sender<Fetched>, u64),
) {
    let r = read_shard(
        &ctx, &client, &settings, &shard, start, &ending, &tx, reader,
    )
    .await;
    let _ = match r {
        Ok(()) => tx.send(Fetched::End { reader }).await,
        Err(e) => {
            let why = format!("{e:#}");
            tx.send(Fetched::Failed { reader, why }).await
        }
    };
}

/// The GetRecords loop of one shard; returns once the (closed) shard was read to its end.
/// Keeps to 5 calls a second, backs off when throttled and renews an expired iterator after
/// the last record read.
#[allow(clippy::too_many_arguments)]
async fn read_shard(
    ctx: &Context,
    client: &aws_sdk_kinesis::Client,
    settings: &Settings,
    shard: &str,
    start: Start,
    ending: &Mutex<Option<String>>,
    tx: &mpsc::Sender<Fetched>,
    reader: u64,
) -> Result<()> {
    let mut last_seq: Option<String> = match &start {
        Start::After(s) => Some(s.clone()),
        Start::At(..) | Start::From(_) => None,
    };
    let mut iterator = shard_iterator(ctx, client, &settings.stream, shard, &start).await?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut next_call = Instant::now();
    loop {
        tokio::time::sleep_until(next_call).await;
        next_call = Instant::now() + MIN_CALL_GAP;
        let req = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(settings.limit);
        let out = match req.send().await {
            Ok(out) => {
                if backoff.attempts() > 0 {
                    ctx.external().up();
                }
                out
            }
            Err(e) if error_code(&e) == Some("ExpiredIteratorException") => {
                let from = last_seq
                    .clone()
                    .map(Start::After)
                    .unwrap_or_else(|| start.clone());
                iterator = shard_iterator(ctx, client, &settings.stream, shard, &from).await?;
                continue;
            }
            Err(e) => {
                match classify(&e) {
                    Failure::Permanent(m) => bail!("GetRecords: {m}"),
                    Failure::Throttled(_) => client::throttled(ctx, "GetRecords"),
                    Failure::Transient(m) => {
                        ctx.metrics.reconnects.inc();
                        ctx.metrics.error("aws");
                        ctx.external()
                            .down(format!("GetRecords on {shard} failing ({m}); retrying"));
                        if client::should_warn(backoff.attempts()) {
                            tracing::warn!("GetRecords on {shard} keeps failing ({m}); retrying");
                        } else {
                            tracing::debug!("GetRecords on {shard} failed ({m}); retrying");
                        }
                    }
                }
                next_call = Instant::now() + backoff.next_delay();
                continue;
            }
        };
        backoff.reset();
        let n = out.records.len();
        if let Some(r) = out.records.last() {
            last_seq = Some(r.sequence_number.clone());
        }
        let behind = out.millis_behind_latest;
        if n > 0 {
            let records = out.records;
            let sent = tx.send(Fetched::Records {
                reader,
                records,
                behind,
            });
            if sent.await.is_err() {
                return Ok(()); // the reader is gone
            }
        }
        match out.next_shard_iterator {
            None => return Ok(()),
            Some(it) => iterator = it,
        }
        if n == 0 {
            // A closed shard read to its end (some services never return a null iterator).
            let end = ending.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(end) = end {
                if last_seq.as_deref().is_none_or(|s| seq_cmp(s, &end).is_ge()) {
                    return Ok(());
                }
            }
        }
        if n == 0 || (behind == Some(0) && n < settings.limit as usize) {
            next_call = Instant::now() + settings.poll.max(MIN_CALL_GAP);
        }
    }
}

/// A shard iterator for `start`.
async fn shard_iterator(
    ctx: &Context,
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    start: &Start,
) -> Result<String> {
    let out = client::retry(ctx, "GetShardIterator", || {
        let req = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard);
        let req = match start {
            Start::At(t, ts) => req.shard_iterator_type(t.clone()).set_timestamp(*ts),
            Start::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.clone()),
            Start::From(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.clone()),
        };
        req.send()
    })
    .await?;
    out.shard_iterator
        .ok_or_else(|| anyhow!("GetShardIterator returned no iterator for {shard}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>, closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parent: parent.map(String::from),
            adjacent_parent: adjacent.map(String::from),
            ending_seq: closed.then(|| "99".to_string()),
        }
    }

    fn finished(ids: &[&str]) -> Checkpoint {
        let mut cp = Checkpoint::default();
        for id in ids {
            cp.shards.insert(
                id.to_string(),
                ShardCheckpoint {
                    finished: true,
                    ..Default::default()
                },
            );
        }
        cp
    }

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn children_wait_for_every_parent() {
        // 0 split into 1 and 2; 1 and 2 merged into 3.
        let known = vec![
            shard("s0", None, None, true),
            shard("s1", Some("s0"), None, true),
            shard("s2", Some("s0"), None, true),
            shard("s3", Some("s1"), Some("s2"), false),
        ];
        let ready = |cp: &Checkpoint| -> Vec<&str> {
            known
                .iter()
                .filter(|s| eligible(s, &known, cp, none, None))
                .map(|s| s.id.as_str())
                .collect()
        };
        assert_eq!(ready(&finished(&[])), vec!["s0"]);
        assert_eq!(ready(&finished(&["s0"])), vec!["s1", "s2"]);
        assert_eq!(ready(&finished(&["s0", "s1"])), vec!["s2"]);
        assert_eq!(ready(&finished(&["s0", "s1", "s2"])), vec!["s3"]);
    }

    #[test]
    fn expired_parents_and_other_readers_parents_do_not_block() {
        // The parent aged out of the stream (not listed any more).
        let known = vec![shard("s5", Some("s4"), None, false)];
        assert!(eligible(&known[0], &known, &finished(&[]), none, None));
        // With an explicit shard list, a parent read by another instance does not block.
        let known = vec![
            shard("s0", None, None, true),
            shard("s1", Some("s0"), None, false),
        ];
        let mine: HashSet<String> = ["s1".to_string()].into();
        let cp = finished(&[]);
        assert!(eligible(&known[1], &known, &cp, none, Some(&mine)));
        assert!(!eligible(&known[0], &known, &cp, none, Some(&mine)));
        // A shard being read is not started twice.
        assert!(!eligible(
            &known[1],
            &known,
            &cp,
            |s| s == "s1",
            Some(&mine)
        ));
    }

    #[test]
    fn timestamps_in_seconds_or_any_rfc3339_form() {
        // 2020-01-01T00:00:00Z
        let midnight = DateTime::from_secs(1_577_836_800);
        for ts in [
            "1577836800",
            " 1577836800.0 ",
            "2020-01-01T00:00:00Z",
            "2020-01-01t00:00:00z",
            "2020-01-01T01:00:00+01:00",
            "2019-12-31T19:30:00-04:30",
            "2020-01-01T00:00:00.000000000+00:00",
        ] {
            assert_eq!(parse_timestamp(ts).unwrap(), midnight, "{ts}");
        }
        assert_eq!(
            parse_timestamp("2020-01-01T01:00:00.25+01:00").unwrap(),
            DateTime::from_secs_and_nanos(1_577_836_800, 250_000_000)
        );
        assert_eq!(
            parse_timestamp("1577836800.5").unwrap(),
            DateTime::from_secs_and_nanos(1_577_836_800, 500_000_000)
        );
        for bad in [
            "",
            "2020-01-01",
            "2020-01-01T00:00:00",
            "2020-13-01T00:00:00Z",
            "-1",
            "NaN",
            "inf",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn iterator_parameter() {
        assert!(matches!(
            start_position("at_timestamp", Some("1700000000.5")).unwrap(),
            Start::At(ShardIteratorType::AtTimestamp, Some(_))
        ));
        assert!(start_position("AT_TIMESTAMP", Some("2024-01-02T03:04:05Z")).is_ok());
        let e = format!(
            "{:#}",
            start_position("AT_TIMESTAMP", Some("yesterday")).unwrap_err()
        );
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
        assert!(start_position("AT_TIMESTAMP", None).is_err());
        let e = format!("{:#}", start_position("OLDEST", None).unwrap_err());
        assert!(e.contains("TRIM_HORIZON"));
    }
}
