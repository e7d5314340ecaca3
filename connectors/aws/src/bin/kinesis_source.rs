//! kinesis_source: reads the records of a Kinesis data stream and sends each one (partition
//! key as the MESSAGE key, data as the payload, arrival time as the event time) to the engine.
//!
//! One protocol stream per shard (`kinesis:<stream>/<shardId>`). Kinesis sequence numbers are
//! decimal strings of up to 128 digits, too wide for a u64 message id, so the message id is a
//! per-shard counter: the n-th record read after the checkpoint gets `checkpoint id + n`.
//! Records never change position in a shard, so the same record always gets the same id and
//! the engine de-duplicates a replay. The checkpoint (`checkpoint_dir`) holds, per shard, the
//! sequence number of the last record the engine acknowledged and its id; it is written
//! atomically (temp file + fsync + rename) and a restart resumes AFTER_SEQUENCE_NUMBER.
//!
//! Resharding: a shard is read only once its parents are finished (fully read and fully
//! acknowledged); a finished shard is marked in the checkpoint and its stream closed (EOS).
//! Shards discovered after the start (children) are read from TRIM_HORIZON.
//!
//! Guarantee: at-least-once. The checkpoint only ever moves to records the engine
//! acknowledged, so a crash (even `kill -9`) re-reads at most what was not acknowledged yet.
//! GetRecords is called at most 5 times a second per shard, with back-off when throttled.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use aws_connectors::checkpoint::CheckpointFile;
use aws_connectors::client::{self, classify, error_code, AwsOptions, Failure};
use aws_connectors::kinesis::{self, seq_cmp, ShardInfo};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use connector_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "kinesis_source",
    about: "Reads the records of a Kinesis data stream (one protocol stream per shard) and sends them to the engine.",
    direction: Direction::Source,
    params: &[
        Param::required("stream", "Kinesis stream name"),
        Param::optional("shards", "Comma-separated shard ids to read (and their children) [default: all]"),
        Param::with_default("iterator", "Where to start without a checkpoint: TRIM_HORIZON, LATEST or AT_TIMESTAMP", "TRIM_HORIZON"),
        Param::optional("timestamp", "Start time for AT_TIMESTAMP: seconds since the epoch or RFC 3339"),
        Param::optional("checkpoint_dir", "Directory for the per-shard checkpoint (without it a restart starts at `iterator` again)"),
        Param::optional("region", client::REGION_HELP),
        Param::optional("endpoint_url", client::ENDPOINT_HELP),
        Param::with_default("poll_ms", "Wait between GetRecords calls on a shard that is caught up", "1000"),
        Param::with_default("max_records", "Records per GetRecords call (1-10000)", "10000"),
        Param::with_default("shard_refresh_ms", "How often to list shards to find new ones (resharding)", "10000"),
        Param::with_default("checkpoint_ms", "Longest time between checkpoint writes", "1000"),
    ],
};

/// GetRecords calls per shard are limited to 5 a second.
const MIN_CALL_GAP: Duration = Duration::from_millis(200);

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

#[derive(Debug, Clone)]
enum Start {
    At(ShardIteratorType, Option<DateTime>),
    After(String),
    /// At (including) this sequence number.
    From(String),
}

enum Fetched {
    Records {
        shard: String,
        records: Vec<aws_sdk_kinesis::types::Record>,
        behind: Option<i64>,
    },
    End(String),
    Failed(String, String),
}

/// A shard being read.
struct Active {
    /// Its protocol stream.
    stream_id: u64,
    /// Message id of the last record read (the shard's counter).
    last_id: u64,
    /// Records up to this id were already processed by the engine (skip them).
    skip_upto: Option<u64>,
    /// (id, sequence number) of records sent and not yet acknowledged.
    unacked: VecDeque<(u64, String)>,
    /// The last acknowledged record: what the checkpoint saves.
    acked: Option<(u64, String)>,
    /// The shard is closed and was read to its end.
    read_done: bool,
    /// Its checkpoint already holds a position (`seq` or `first`).
    positioned: bool,
    /// The shard's last sequence number once it is closed (shared with its reader task).
    ending: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Settings {
    stream: String,
    limit: i32,
    poll: Duration,
}

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC).check(check).run(run)
}

/// `--check`: the stream exists and its shards can be listed.
async fn check(ctx: Context) -> Vec<Check> {
    let r = async {
        let stream = ctx.params.required("stream")?;
        let client = AwsOptions::from_params(&ctx.params).kinesis().await?;
        kinesis::list_shards(&ctx, &client, stream).await
    }
    .await;
    vec![Check::from_result(
        "Kinesis stream reachable and listable",
        r,
    )]
}

async fn run(ctx: Context, mut source: Source) -> Result<()> {
    let stream = ctx.params.required("stream")?.to_string();
    let start = start_param(&ctx.params)?;
    let limit = ctx
        .params
        .parse_or("max_records", kinesis::MAX_GET_RECORDS)?;
    if !(1..=kinesis::MAX_GET_RECORDS).contains(&limit) {
        bail!(
            "--{}-max_records {limit}: Kinesis returns 1 to {} records per call",
            ctx.connector,
            kinesis::MAX_GET_RECORDS
        );
    }
    let settings = Arc::new(Settings {
        stream: stream.clone(),
        limit,
        poll: Duration::from_millis(ctx.params.parse_or("poll_ms", 1000u64)?),
    });
    let refresh_ms = ctx.params.parse_or("shard_refresh_ms", 10_000u64)?.max(100);
    let checkpoint_ms = ctx.params.parse_or("checkpoint_ms", 1000u64)?.max(10);
    let client = AwsOptions::from_params(&ctx.params).kinesis().await?;
    let file = match ctx.params.get("checkpoint_dir") {
        Some(dir) => {
            let name = format!("{}.{stream}.json", ctx.connector);
            Some(CheckpointFile::new(dir.as_ref(), &name)?)
        }
        None => {
            tracing::info!("no checkpoint_dir: a restart starts at `iterator` again");
            None
        }
    };
    let mut cp: Checkpoint = match &file {
        Some(f) => f.load()?.unwrap_or_default(),
        None => Checkpoint::default(),
    };
    cp.stream = stream.clone();
    let explicit: Option<HashSet<String>> = ctx
        .params
        .get("shards")
        .map(|_| ctx.params.list("shards").into_iter().collect());

    let listed = kinesis::list_shards(&ctx, &client, &stream)
        .await
        .with_context(|| format!("cannot list the shards of Kinesis stream `{stream}`"))?;
    if let Some(want) = &explicit {
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
    let initial: HashSet<String> = match first_run {
        true => listed.iter().map(|s| s.id.clone()).collect(),
        false => HashSet::new(),
    };
    if first_run && matches!(start, Start::At(ShardIteratorType::Latest, _)) {
        // LATEST: closed shards hold nothing new.
        for s in listed.iter().filter(|s| s.is_closed()) {
            let done = ShardCheckpoint {
                finished: true,
                ..Default::default()
            };
            cp.shards.insert(s.id.clone(), done);
        }
    }

    let (tx, mut rx) = mpsc::channel::<Fetched>(8);
    let mut acks = source.acks();
    let mut r = Reader {
        ctx: ctx.clone(),
        client,
        settings,
        start,
        initial,
        mine: explicit,
        file,
        cp,
        active: HashMap::new(),
        by_stream: HashMap::new(),
        tx,
        dirty: false,
        refresh_now: true,
    };
    let mut refresh = tokio::time::interval(Duration::from_millis(refresh_ms));
    let mut save = tokio::time::interval(Duration::from_millis(checkpoint_ms));
    let outcome: Result<()> = async {
        loop {
            if r.refresh_now {
                r.refresh(&mut source).await?;
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Fetched::Records { shard, records, behind }) => {
                        r.on_records(&mut source, &shard, records, behind).await?
                    }
                    Some(Fetched::End(shard)) => r.on_end(&mut source, &shard).await?,
                    Some(Fetched::Failed(shard, why)) => bail!("reading shard {shard}: {why}"),
                    None => bail!("all shard readers stopped"),
                },
                got = acks.next() => r.on_acks(&mut source, got).await?,
                _ = save.tick() => {
                    r.save_if_dirty()?;
                    // Idle or not: notices a lost engine connection and resends.
                    source.flush().await?;
                }
                _ = refresh.tick() => r.refresh_now = true,
                _ = ctx.shutdown.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    // Stop reading, give the engine a moment for what is in flight, save progress.
    for a in r.active.values() {
        a.task.abort();
    }
    if outcome.is_ok() {
        let left = source.drain(Duration::from_secs(10)).await.unwrap_or(0);
        if left > 0 {
            tracing::warn!(
                "{left} records were not acknowledged before exit; they will be read again"
            );
        }
    }
    r.apply_acks(acks.try_next());
    r.dirty = true;
    r.save_if_dirty()?;
    outcome
}

/// The reader's state: the shards being read and the checkpoint.
struct Reader {
    ctx: Context,
    client: aws_sdk_kinesis::Client,
    settings: Arc<Settings>,
    start: Start,
    initial: HashSet<String>,
    /// With an explicit `shards` list: those shards and their descendants.
    mine: Option<HashSet<String>>,
    file: Option<CheckpointFile>,
    cp: Checkpoint,
    active: HashMap<String, Active>,
    by_stream: HashMap<u64, String>,
    tx: mpsc::Sender<Fetched>,
    dirty: bool,
    refresh_now: bool,
}

impl Reader {
    /// Lists the shards; notes closed ones; starts every shard whose parents are finished.
    async fn refresh(&mut self, source: &mut Source) -> Result<()> {
        self.refresh_now = false;
        let known = kinesis::list_shards(&self.ctx, &self.client, &self.settings.stream).await?;
        for s in &known {
            if let (Some(a), Some(end)) = (self.active.get(&s.id), &s.ending_seq) {
                *a.ending.lock().unwrap_or_else(|p| p.into_inner()) = Some(end.clone());
            }
        }
        if let Some(m) = &mut self.mine {
            for s in &known {
                if s.parent.as_ref().is_some_and(|p| m.contains(p)) {
                    m.insert(s.id.clone());
                }
            }
        }
        let ready: Vec<&ShardInfo> = known
            .iter()
            .filter(|s| eligible(s, &known, &self.cp, &self.active, self.mine.as_ref()))
            .collect();
        for s in ready {
            self.start_shard(source, s).await?;
        }
        Ok(())
    }

    async fn start_shard(&mut self, source: &mut Source, s: &ShardInfo) -> Result<()> {
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
        let h = source.notify(&name, saved_id).await?;
        // Ids continue from the checkpoint; the engine may already hold some of the records
        // after it (acknowledged, checkpoint not yet written): those are skipped.
        let (last_id, skip_upto) = match saved_id {
            Some(id) => (id, h.resume.filter(|p| *p > id)),
            None => (h.resume.unwrap_or(0), None),
        };
        tracing::info!(
            "reading shard {} from {begin:?} (message ids after {last_id})",
            s.id
        );
        let ending = Arc::new(Mutex::new(s.ending_seq.clone()));
        let task = tokio::spawn(fetch(
            self.ctx.clone(),
            self.client.clone(),
            self.settings.clone(),
            s.id.clone(),
            begin,
            ending.clone(),
            self.tx.clone(),
        ));
        self.by_stream.insert(h.id, s.id.clone());
        let active = Active {
            stream_id: h.id,
            last_id,
            skip_upto,
            unacked: VecDeque::new(),
            acked: None,
            read_done: false,
            positioned: saved.is_some(),
            ending,
            task,
        };
        self.active.insert(s.id.clone(), active);
        Ok(())
    }

    /// Sends a shard's records to the engine, numbering them with the shard's counter.
    async fn on_records(
        &mut self,
        source: &mut Source,
        shard: &str,
        records: Vec<aws_sdk_kinesis::types::Record>,
        behind: Option<i64>,
    ) -> Result<()> {
        let metrics = &self.ctx.metrics;
        let Some(a) = self.active.get_mut(shard) else {
            return Ok(());
        };
        if let Some(ms) = behind {
            let help = "How far behind the shard's newest record the reader is.";
            let g =
                metrics
                    .registry
                    .gauge("kinesis_millis_behind_latest", help, &[("shard", shard)]);
            g.set(ms);
        }
        for r in records {
            if !a.positioned {
                // The shard's first record: keep where it starts before sending anything.
                a.positioned = true;
                let c = ShardCheckpoint {
                    id: a.last_id,
                    first: Some(r.sequence_number.clone()),
                    ..Default::default()
                };
                self.cp.shards.insert(shard.to_string(), c);
                if let Some(f) = &self.file {
                    f.store(&self.cp)?;
                }
            }
            a.last_id += 1;
            let id = a.last_id;
            let data = r.data.into_inner();
            metrics.messages_in.inc();
            metrics.bytes_in.add(data.len() as u64);
            if a.skip_upto.is_some_and(|p| id <= p) {
                a.acked = Some((id, r.sequence_number));
                self.dirty = true;
                continue;
            }
            let time = r
                .approximate_arrival_timestamp
                .and_then(|d| d.to_millis().ok());
            let key = r.partition_key.unwrap_or_default();
            source
                .write_at(a.stream_id, id, time.unwrap_or(0), key.as_bytes(), &data)
                .await?;
            a.unacked.push_back((id, r.sequence_number));
        }
        source.flush().await
    }

    /// A closed shard was read to its end.
    async fn on_end(&mut self, source: &mut Source, shard: &str) -> Result<()> {
        if let Some(a) = self.active.get_mut(shard) {
            a.read_done = true;
        }
        self.finish_done(source).await
    }

    async fn on_acks(&mut self, source: &mut Source, got: Vec<Acked>) -> Result<()> {
        self.apply_acks(got);
        self.finish_done(source).await
    }

    /// Moves acknowledged records out of the in-flight lists.
    fn apply_acks(&mut self, got: Vec<Acked>) {
        for a in got {
            let Some(shard) = self.by_stream.get(&a.stream_id) else {
                continue;
            };
            let Some(st) = self.active.get_mut(shard) else {
                continue;
            };
            while st.unacked.front().is_some_and(|(id, _)| *id <= a.point) {
                st.acked = st.unacked.pop_front();
                self.dirty = true;
            }
        }
    }

    /// Closes shards that were read to their end and fully acknowledged: marks them finished
    /// (saved at once), ends their stream, and looks for their children.
    async fn finish_done(&mut self, source: &mut Source) -> Result<()> {
        let done: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.read_done && a.unacked.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        for shard in done {
            let Some(a) = self.active.remove(&shard) else {
                continue;
            };
            self.by_stream.remove(&a.stream_id);
            let prev = self.cp.shards.remove(&shard).unwrap_or_default();
            let (id, seq) = match a.acked {
                Some((id, seq)) => (id, Some(seq)),
                None => (prev.id, prev.seq),
            };
            self.cp.shards.insert(
                shard.clone(),
                ShardCheckpoint {
                    seq,
                    id,
                    finished: true,
                    first: None,
                },
            );
            source.eos(a.stream_id).await?;
            tracing::info!("shard {shard} finished (closed and fully acknowledged)");
        }
        self.dirty = true;
        self.save_if_dirty()?;
        self.refresh_now = true;
        Ok(())
    }

    /// Copies acknowledged positions into the checkpoint and writes it, if anything changed.
    fn save_if_dirty(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        for (shard, a) in &self.active {
            if let Some((id, seq)) = &a.acked {
                let c = ShardCheckpoint {
                    seq: Some(seq.clone()),
                    id: *id,
                    finished: false,
                    first: None,
                };
                self.cp.shards.insert(shard.clone(), c);
            }
        }
        if let Some(f) = &self.file {
            f.store(&self.cp)?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// Parses `iterator` and `timestamp`.
fn start_param(params: &Params) -> Result<Start> {
    let it = params.required("iterator")?.trim().to_ascii_uppercase();
    Ok(match it.as_str() {
        "TRIM_HORIZON" => Start::At(ShardIteratorType::TrimHorizon, None),
        "LATEST" => Start::At(ShardIteratorType::Latest, None),
        "AT_TIMESTAMP" => {
            let Some(ts) = params.get("timestamp") else {
                bail!("iterator AT_TIMESTAMP needs the `timestamp` parameter (seconds since the epoch or RFC 3339)");
            };
            Start::At(ShardIteratorType::AtTimestamp, Some(parse_timestamp(ts)?))
        }
        other => bail!("iterator {other:?}: expected TRIM_HORIZON, LATEST or AT_TIMESTAMP"),
    })
}

/// Parses `timestamp`: seconds since the epoch (`1732550400.5`) or RFC 3339 with any offset
/// (`2026-11-25T15:00:00Z`, `2026-11-25t16:00:00.5+01:00`).
fn parse_timestamp(ts: &str) -> Result<DateTime> {
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

/// Whether a shard can be started: not started or finished, ours, and its parents finished
/// (or gone from the stream, or read by another instance).
fn eligible(
    s: &ShardInfo,
    known: &[ShardInfo],
    cp: &Checkpoint,
    active: &HashMap<String, Active>,
    mine: Option<&HashSet<String>>,
) -> bool {
    let finished = |id: &str| cp.shards.get(id).is_some_and(|c| c.finished);
    if active.contains_key(&s.id) || finished(&s.id) {
        return false;
    }
    if mine.is_some_and(|m| !m.contains(&s.id)) {
        return false;
    }
    s.parents().all(|p| {
        finished(p) || !known.iter().any(|k| k.id == p) || mine.is_some_and(|m| !m.contains(p))
    })
}

/// Reads one shard with GetRecords and hands the records to the main loop; reports a
/// permanent failure as [`Fetched::Failed`].
async fn fetch(
    ctx: Context,
    client: aws_sdk_kinesis::Client,
    settings: Arc<Settings>,
    shard: String,
    start: Start,
    ending: Arc<Mutex<Option<String>>>,
    tx: mpsc::Sender<Fetched>,
) {
    let r = read_shard(&ctx, &client, &settings, &shard, start, &ending, &tx).await;
    let _ = match r {
        Ok(()) => tx.send(Fetched::End(shard)).await,
        Err(e) => tx.send(Fetched::Failed(shard, format!("{e:#}"))).await,
    };
}

/// The GetRecords loop of one shard; returns once the (closed) shard was read to its end.
async fn read_shard(
    ctx: &Context,
    client: &aws_sdk_kinesis::Client,
    settings: &Settings,
    shard: &str,
    start: Start,
    ending: &Mutex<Option<String>>,
    tx: &mpsc::Sender<Fetched>,
) -> Result<()> {
    let mut last_seq: Option<String> = match &start {
        Start::After(s) => Some(s.clone()),
        Start::At(..) | Start::From(_) => None,
    };
    let mut iterator = iterator(ctx, client, &settings.stream, shard, &start).await?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut next_call = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next_call).await;
        next_call = tokio::time::Instant::now() + MIN_CALL_GAP;
        let req = client
            .get_records()
            .shard_iterator(&iterator)
            .limit(settings.limit);
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("ExpiredIteratorException") => {
                let from = last_seq
                    .clone()
                    .map(Start::After)
                    .unwrap_or_else(|| start.clone());
                iterator = self::iterator(ctx, client, &settings.stream, shard, &from).await?;
                continue;
            }
            Err(e) => {
                match classify(&e) {
                    Failure::Permanent(m) => bail!("GetRecords: {m}"),
                    Failure::Throttled(_) => client::throttled(ctx, "GetRecords"),
                    Failure::Transient(m) => {
                        ctx.metrics.reconnects.inc();
                        ctx.metrics.error("aws");
                        if client::should_warn(backoff.attempts()) {
                            tracing::warn!("GetRecords on {shard} keeps failing ({m}); retrying");
                        } else {
                            tracing::debug!("GetRecords on {shard} failed ({m}); retrying");
                        }
                    }
                }
                next_call = tokio::time::Instant::now() + backoff.next_delay();
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
            let shard = shard.to_string();
            if tx
                .send(Fetched::Records {
                    shard,
                    records,
                    behind,
                })
                .await
                .is_err()
            {
                return Ok(()); // the main loop is gone
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
            next_call = tokio::time::Instant::now() + settings.poll.max(MIN_CALL_GAP);
        }
    }
}

/// A shard iterator for `start`.
async fn iterator(
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

    #[test]
    fn children_wait_for_every_parent() {
        // 0 split into 1 and 2; 1 and 2 merged into 3.
        let known = vec![
            shard("s0", None, None, true),
            shard("s1", Some("s0"), None, true),
            shard("s2", Some("s0"), None, true),
            shard("s3", Some("s1"), Some("s2"), false),
        ];
        let none = HashMap::new();
        let ready = |cp: &Checkpoint| -> Vec<&str> {
            known
                .iter()
                .filter(|s| eligible(s, &known, cp, &none, None))
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
        assert!(eligible(
            &known[0],
            &known,
            &finished(&[]),
            &HashMap::new(),
            None
        ));
        // With an explicit shard list, a parent read by another instance does not block.
        let known = vec![
            shard("s0", None, None, true),
            shard("s1", Some("s0"), None, false),
        ];
        let mine: HashSet<String> = ["s1".to_string()].into();
        assert!(eligible(
            &known[1],
            &known,
            &finished(&[]),
            &HashMap::new(),
            Some(&mine)
        ));
        assert!(!eligible(
            &known[0],
            &known,
            &finished(&[]),
            &HashMap::new(),
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
        let p = Params::from_pairs(
            "k",
            &[("iterator", "at_timestamp"), ("timestamp", "1700000000.5")],
        );
        assert!(matches!(
            start_param(&p).unwrap(),
            Start::At(ShardIteratorType::AtTimestamp, Some(_))
        ));
        let p = Params::from_pairs(
            "k",
            &[
                ("iterator", "AT_TIMESTAMP"),
                ("timestamp", "2024-01-02T03:04:05Z"),
            ],
        );
        assert!(start_param(&p).is_ok());
        let p = Params::from_pairs(
            "k",
            &[("iterator", "AT_TIMESTAMP"), ("timestamp", "yesterday")],
        );
        let e = format!("{:#}", start_param(&p).unwrap_err());
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
        let p = Params::from_pairs("k", &[("iterator", "AT_TIMESTAMP")]);
        assert!(start_param(&p).is_err());
        let p = Params::from_pairs("k", &[("iterator", "OLDEST")]);
        assert!(format!("{:#}", start_param(&p).unwrap_err()).contains("TRIM_HORIZON"));
    }
}
