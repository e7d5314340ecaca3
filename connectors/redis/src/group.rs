//! The consumer group that `redis_stream_source` reads: XGROUP CREATE, XREADGROUP of this
//! consumer's pending entries (after a start or a reconnect) and of new entries, XAUTOCLAIM
//! of entries other consumers left pending, XACK, and the lag from XINFO GROUPS.
//!
//! [`Group::next`] is cancel safe: the XREADGROUP or XAUTOCLAIM in flight runs in a task of
//! its own, so a reply that moved entries into this consumer's pending list is never lost
//! when the caller drops the future; the next call picks the reply up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use connector_runtime::{Context, Counter, Gauge};
use redis::{RedisError, RedisResult, Value};
use tokio::task::JoinHandle;

use crate::{
    code_of, error_codes, group_info, is_transient, parse_xautoclaim, parse_xread, permanent,
    Entry, EntryId, Redis, RedisConfig,
};

/// What to read and how.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The stream key.
    pub stream: String,
    /// The consumer group (created with MKSTREAM when missing).
    pub group: String,
    /// This consumer's name in the group.
    pub consumer: String,
    /// Where a newly created group starts (`0` or `$`).
    pub start_id: String,
    /// Most entries per XREADGROUP / XAUTOCLAIM.
    pub count: usize,
    /// How long one XREADGROUP waits for new entries.
    pub block_ms: u64,
    /// Claim other consumers' entries pending longer than this (0 = never).
    pub claim_idle_ms: u64,
}

/// What the next read asks Redis for.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// This consumer's pending entries after this id (after a start or reconnect).
    Pending(EntryId),
    /// Other consumers' idle entries, XAUTOCLAIM scan from this cursor.
    Claim(EntryId),
    /// New entries (`>`).
    New,
}

/// A read sent to Redis, whose reply has not been taken yet.
struct Request {
    phase: Phase,
    generation: u64,
    reply: JoinHandle<RedisResult<Value>>,
}

/// One consumer of a consumer group.
pub struct Group {
    redis: Redis,
    s: GroupSettings,
    phase: Phase,
    /// The connection generation the phase was chosen for.
    generation: u64,
    request: Option<Request>,
    /// Entries handed out by [`Group::next`] and not acknowledged yet: a re-read of the
    /// pending list (after a reconnect) or a claim returns them again, and they are skipped.
    handed_out: HashSet<EntryId>,
    /// Pending entries deleted from the stream: XACKed with the next read.
    settle: Vec<EntryId>,
    claim_every: Duration,
    next_claim: Instant,
    next_info: Instant,
    warned_unfit: Vec<&'static str>,
    lag: Gauge,
    gone: Counter,
    claimed: Counter,
}

impl Group {
    /// A consumer of `s.group` on Redis `config` (nothing is sent before [`Group::create`]).
    pub fn new(ctx: &Context, mut config: RedisConfig, s: GroupSettings) -> Group {
        config.response_timeout = Duration::from_millis(s.block_ms) + Duration::from_secs(30);
        let counter = |name, help| ctx.metrics.registry.counter(name, help, &[]);
        Group {
            redis: Redis::new(config, ctx).with_blocking(),
            claim_every: Duration::from_millis((s.claim_idle_ms / 2).max(1000)),
            s,
            phase: Phase::New,
            generation: 0,
            request: None,
            handed_out: HashSet::new(),
            settle: Vec::new(),
            next_claim: Instant::now(),
            next_info: Instant::now(),
            warned_unfit: Vec::new(),
            lag: ctx.metrics.lag.clone(),
            gone: counter(
                "redis_stream_deleted_pending_total",
                "Pending entries found deleted from the stream (acknowledged, not delivered).",
            ),
            claimed: counter(
                "redis_stream_claimed_total",
                "Entries claimed from other consumers with XAUTOCLAIM.",
            ),
        }
    }

    /// The engine stream name: `redis:STREAM:GROUP:CONSUMER`.
    pub fn name(&self) -> String {
        format!(
            "redis:{}:{}:{}",
            self.s.stream, self.s.group, self.s.consumer
        )
    }

    /// Connects (waiting for Redis) and creates the group (XGROUP CREATE ... MKSTREAM); an
    /// existing group is fine.
    pub async fn create(&mut self) -> Result<()> {
        let s = &self.s;
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&s.stream)
            .arg(&s.group)
            .arg(&s.start_id)
            .arg("MKSTREAM");
        match self.redis.query::<()>(&cmd).await {
            Ok(()) => {
                tracing::info!(
                    "created consumer group {} on stream {} at {}",
                    s.group,
                    s.stream,
                    s.start_id
                );
                Ok(())
            }
            Err(e) if code_of(&e).as_deref() == Some("BUSYGROUP") => Ok(()),
            Err(e) if code_of(&e).as_deref() == Some("WRONGTYPE") => bail!(
                "Redis key `{}` is not a stream: fix the stream parameter",
                s.stream
            ),
            Err(e) => Err(e.context(format!(
                "cannot create consumer group {} on {}",
                s.group, s.stream
            ))),
        }
    }

    /// The message id to continue from: above the engine's resume point, the group's last
    /// delivered entry and the Redis clock, so that no id an earlier run sent is reused for
    /// another entry.
    pub async fn first_id(&mut self, resume: Option<u64>) -> Result<u64> {
        let (secs, micros): (u64, u64) = self.redis.query(&redis::cmd("TIME")).await?;
        let now = EntryId {
            ms: secs * 1000 + micros / 1000,
            seq: 0,
        };
        let mut xinfo = redis::cmd("XINFO");
        xinfo.arg("GROUPS").arg(&self.s.stream);
        let delivered = self
            .redis
            .query::<Value>(&xinfo)
            .await
            .ok()
            .and_then(|v| group_info(v, &self.s.group))
            .and_then(|g| g.last_delivered)
            .and_then(EntryId::message_id)
            .unwrap_or(0);
        Ok(resume
            .unwrap_or(0)
            .max(now.message_id().unwrap_or(0))
            .max(delivered))
    }

    /// The next entries to deliver, waiting for them: this consumer's pending entries first
    /// (after a start or a reconnect), then, every `claim_idle_ms / 2`, the entries other
    /// consumers left idle, then new ones. Entries handed out before and not acknowledged
    /// are skipped; pending entries deleted from the stream are XACKed, not returned.
    /// Cancel safe.
    pub async fn next(&mut self) -> Result<Vec<Entry>> {
        loop {
            if self.request.is_none() {
                self.request = Some(self.ask().await?);
            }
            let Some(request) = self.request.as_mut() else {
                continue;
            };
            let reply = (&mut request.reply).await;
            let Some(request) = self.request.take() else {
                continue;
            };
            let entries = match reply {
                Ok(Ok(v)) => self.parse(request.phase, v)?,
                Ok(Err(e)) => {
                    self.failed(request, e).await?;
                    continue;
                }
                Err(e) => bail!("the Redis read task failed: {e}"),
            };
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }

    /// Chooses the next read and sends it (with the XACK of settled entries).
    async fn ask(&mut self) -> Result<Request> {
        let claim_due = self.s.claim_idle_ms > 0 && Instant::now() >= self.next_claim;
        if matches!(self.phase, Phase::New) && !claim_due && Instant::now() >= self.next_info {
            self.next_info = Instant::now() + Duration::from_secs(5);
            self.report_lag().await;
        }
        let mut conn = self.redis.blocking_connection().await?;
        if self.redis.generation() != self.generation {
            // (Re)connected: entries read on a connection that broke before the reply
            // arrived are pending for this consumer; deliver them first.
            self.generation = self.redis.generation();
            self.phase = Phase::Pending(EntryId::default());
        }
        if matches!(self.phase, Phase::New) && claim_due {
            self.next_claim = Instant::now() + self.claim_every;
            self.phase = Phase::Claim(EntryId::default());
        }
        let s = &self.s;
        let mut pipe = redis::pipe();
        if !self.settle.is_empty() {
            let settle = std::mem::take(&mut self.settle);
            pipe.cmd("XACK")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(settle)
                .ignore();
        }
        match self.phase {
            Phase::Claim(cursor) => pipe
                .cmd("XAUTOCLAIM")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(&s.consumer)
                .arg(s.claim_idle_ms)
                .arg(cursor)
                .arg("COUNT")
                .arg(s.count),
            Phase::Pending(_) | Phase::New => {
                let read = pipe
                    .cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&s.group)
                    .arg(&s.consumer)
                    .arg("COUNT")
                    .arg(s.count);
                match self.phase {
                    Phase::Pending(after) => read.arg("STREAMS").arg(&s.stream).arg(after),
                    _ => read
                        .arg("BLOCK")
                        .arg(s.block_ms)
                        .arg("STREAMS")
                        .arg(&s.stream)
                        .arg(">"),
                }
            }
        };
        let reply =
            tokio::spawn(
                async move { pipe.query_async::<(Value,)>(&mut conn).await.map(|(v,)| v) },
            );
        Ok(Request {
            phase: self.phase,
            generation: self.generation,
            reply,
        })
    }

    /// A read failed: recreate a lost group, or wait and re-read the pending list.
    async fn failed(&mut self, request: Request, e: RedisError) -> Result<()> {
        let codes = error_codes(&e);
        if codes.iter().any(|c| c == "NOGROUP") {
            if let Phase::Claim(_) = request.phase {
                self.phase = Phase::New;
                return Ok(());
            }
            tracing::warn!(
                "consumer group {} or stream {} is gone (Redis restarted without persistence?): creating it again",
                self.s.group,
                self.s.stream
            );
            return self.create().await;
        }
        if !is_transient(&e) {
            let what = match request.phase {
                Phase::Claim(_) => "XAUTOCLAIM",
                _ => "XREADGROUP",
            };
            return Err(permanent(e).context(format!("{what} on {}", self.s.stream)));
        }
        // Whatever the read moved into this consumer's pending list is read from there.
        self.phase = Phase::Pending(EntryId::default());
        self.redis.failed(&e, request.generation);
        if request.generation == self.redis.generation() {
            self.redis.pause(&e).await?;
        }
        Ok(())
    }

    /// The entries of a reply that are to be delivered; moves the phase on.
    fn parse(&mut self, phase: Phase, v: Value) -> Result<Vec<Entry>> {
        self.redis.reset_backoff();
        let entries = match phase {
            Phase::Pending(_) => {
                let e = parse_xread(v)?;
                self.phase = match e.last() {
                    Some(last) => Phase::Pending(last.id),
                    None => Phase::New,
                };
                e
            }
            Phase::Claim(_) => {
                let (next, e, deleted) = parse_xautoclaim(v)?;
                self.gone.add(deleted.len() as u64);
                self.phase = match next == EntryId::default() {
                    true => Phase::New,
                    false => Phase::Claim(next),
                };
                let fresh = e
                    .iter()
                    .filter(|e| !self.handed_out.contains(&e.id))
                    .count();
                if fresh > 0 {
                    tracing::info!(
                        "claimed {fresh} entries left pending by other consumers of group {}",
                        self.s.group
                    );
                    self.claimed.add(fresh as u64);
                }
                e
            }
            Phase::New => parse_xread(v)?,
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if self.handed_out.contains(&e.id) {
                continue; // delivered already, waiting for the engine
            }
            if e.fields.is_none() {
                self.gone.inc();
                self.settle.push(e.id);
                continue;
            }
            if let Some(why) = e.id.unfit().filter(|w| !self.warned_unfit.contains(w)) {
                self.warned_unfit.push(why);
                tracing::warn!(
                    "entry id {} does not fit a message id ({why}): such entries get the next id up",
                    e.id
                );
            }
            self.handed_out.insert(e.id);
            out.push(e);
        }
        Ok(out)
    }

    /// XACKs entries the engine acknowledged (or that were set aside).
    pub async fn ack(&mut self, ids: &[EntryId]) -> Result<()> {
        for chunk in ids.chunks(10_000) {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.s.stream).arg(&self.s.group).arg(chunk);
            match self.redis.query::<i64>(&cmd).await {
                Ok(_) => {}
                // The group went away with the server's data: nothing left to acknowledge.
                Err(e) if code_of(&e).as_deref() == Some("NOGROUP") => {}
                Err(e) => return Err(e.context(format!("XACK on {}", self.s.stream))),
            }
            for id in chunk {
                self.handed_out.remove(id);
            }
        }
        Ok(())
    }

    /// Sets `connector_upstream_lag` to the group's lag (XINFO GROUPS; -1 when unknown).
    async fn report_lag(&mut self) {
        let mut xinfo = redis::cmd("XINFO");
        xinfo.arg("GROUPS").arg(&self.s.stream);
        if let Ok(v) = self.redis.query::<Value>(&xinfo).await {
            let lag = group_info(v, &self.s.group).and_then(|g| g.lag);
            self.lag.set(lag.unwrap_or(-1));
        }
    }

    /// Stops the read in flight (its entries stay pending for the next start).
    pub fn close(&mut self) {
        if let Some(r) = self.request.take() {
            r.reply.abort();
        }
    }
}
