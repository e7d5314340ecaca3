//! redis_stream_source: reads a Redis stream as one consumer of a consumer group
//! (XREADGROUP) and sends every entry to the engine; an entry is acknowledged in Redis
//! (XACK) only after the engine acknowledged it.
//!
//! Delivery: at-least-once. An entry read and not yet acknowledged stays in the group's
//! pending entries list (PEL), so nothing is lost when this process, the engine or Redis
//! stops:
//! - on start, and after every reconnect to Redis, this consumer first re-delivers its own
//!   pending entries (XREADGROUP from id 0), then reads new ones (`>`);
//! - every `claim_idle_ms / 2` it claims the entries that other consumers of the group left
//!   pending for longer than `claim_idle_ms` (a consumer that died) with XAUTOCLAIM, and
//!   delivers them too.
//!
//! Duplicates: after a restart, the entries that were in flight (sent, not acknowledged by
//! the engine or not yet XACKed) are delivered again.
//!
//! Payload and key: the entry's `payload_field` is the payload and `key_field` the message
//! key; an entry without `payload_field` is sent as a JSON object of all its fields.
//!
//! An entry the protocol cannot carry (a key over 65,535 bytes, a frame over the limit) is
//! set aside by the runtime in `--dead-letter DIR` and XACKed at once: the engine never sees
//! it, so no acknowledgement would ever cover it. Without `--dead-letter` it stops the source
//! and stays pending.
//!
//! Message ids: entry `ms-seq` is sent as `ms << 20 | seq`, which orders like the entries.
//! An entry that comes behind a newer one (claimed from another consumer, re-delivered, or
//! whose id does not fit: sequence >= 2^20 or milliseconds >= 2^44) is sent as the next id up
//! instead, so ids always increase. After
//! a restart ids start above the Redis clock: no id of an earlier run is reused with another
//! entry (the engine drops ids it already saw). The in-flight map gives the entry to XACK.
//! The event time is the entry's milliseconds.

use std::process::ExitCode;
use std::time::Instant;

use connector_runtime::prelude::*;
use redis::Value;
use redis_connectors::{
    code_of, group_info, next_message_id, parse_xautoclaim, parse_xread, with_connection_params,
    Entry, EntryId, InFlight, Redis, RedisConfig,
};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "redis_stream_source",
    about: "Reads a Redis stream with a consumer group (XREADGROUP) and sends each entry to the engine; XACK after the engine acknowledged it.",
    direction: Direction::Source,
    params: with_connection_params![
        Param::required("stream", "Name of the Redis stream to read"),
        Param::optional("group", "Consumer group (created with MKSTREAM when missing; default: the connector name)"),
        Param::optional("consumer", "Consumer name inside the group, stable across restarts (default: the connector name)"),
        Param::with_default("start_id", "Where a newly created group starts: 0 = the whole stream, $ = only new entries", "0"),
        Param::with_default("payload_field", "Entry field that holds the payload", "payload"),
        Param::with_default("key_field", "Entry field that holds the message key", "key"),
        Param::with_default("count", "Most entries per XREADGROUP / XAUTOCLAIM", "1000"),
        Param::with_default("block_ms", "How long one XREADGROUP waits for new entries", "500"),
        Param::with_default("claim_idle_ms", "Claim other consumers' entries pending longer than this (0 = never)", "60000"),
    ],
};

/// What the next read asks Redis for.
enum Phase {
    /// This consumer's pending entries after this id (after a start or reconnect).
    Pending(EntryId),
    /// Other consumers' idle entries, XAUTOCLAIM scan from this cursor.
    Claim(EntryId),
    /// New entries (`>`).
    New,
}

struct Stream {
    key: String,
    group: String,
    consumer: String,
    start_id: String,
}

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        .check(|ctx| async move {
            vec![Check::from_result(
                "Redis reachable and the stream usable",
                check(&ctx).await,
            )]
        })
        .run(|ctx, mut source| async move {
            let p = &ctx.params;
            let st = Stream {
                key: p.required("stream")?.to_string(),
                group: p.get("group").unwrap_or(&ctx.connector).to_string(),
                consumer: p.get("consumer").unwrap_or(&ctx.connector).to_string(),
                start_id: p.required("start_id")?.to_string(),
            };
            let payload_field = p.required("payload_field")?.as_bytes().to_vec();
            let key_field = p.required("key_field")?.as_bytes().to_vec();
            let count: usize = p.parse_or("count", 1000)?;
            let block_ms: u64 = p.parse_or("block_ms", 500)?;
            let claim_idle_ms: u64 = p.parse_or("claim_idle_ms", 60_000)?;
            let claim_every = Duration::from_millis((claim_idle_ms / 2).max(1000));
            let gone = ctx.metrics.registry.counter(
                "redis_stream_deleted_pending_total",
                "Pending entries found deleted from the stream (acknowledged, not delivered).",
                &[],
            );
            let claimed = ctx.metrics.registry.counter(
                "redis_stream_claimed_total",
                "Entries claimed from other consumers with XAUTOCLAIM.",
                &[],
            );

            let mut config = RedisConfig::from_context(&ctx)?;
            config.response_timeout = Duration::from_millis(block_ms) + Duration::from_secs(30);
            let mut redis = Redis::connect(config, &ctx).await?;
            create_group(&mut redis, &st).await?;
            let s = source
                .notify(&format!("redis:{}:{}:{}", st.key, st.group, st.consumer), None)
                .await?;
            let mut last_id = first_id(&mut redis, &st, s.resume).await?;
            let mut acks = source.acks();
            let mut in_flight = InFlight::default();
            let mut generation = 0;
            let mut phase = Phase::New;
            let mut next_claim = Instant::now();
            let mut next_info = Instant::now();
            let mut warned_unfit: Vec<&str> = Vec::new();
            while !ctx.shutdown.is_cancelled() {
                // Entries the engine acknowledged: XACKed with the next command.
                let done = acknowledged(&mut in_flight, acks.try_next(), s.id);
                if redis.generation() != generation {
                    // (Re)connected: entries read on a connection that broke before the reply
                    // arrived are pending for this consumer; deliver them first.
                    generation = redis.generation();
                    phase = Phase::Pending(EntryId::default());
                }
                let entries = match phase {
                    Phase::Pending(after) => {
                        let e = read(&mut redis, &st, count, &after.to_string(), None, &done).await?;
                        phase = match e.last() {
                            Some(last) => Phase::Pending(last.id),
                            None => Phase::New,
                        };
                        e
                    }
                    Phase::Claim(cursor) => {
                        ack_ids(&mut redis, &st, &done).await?;
                        let mut cmd = redis::cmd("XAUTOCLAIM");
                        cmd.arg(&st.key)
                            .arg(&st.group)
                            .arg(&st.consumer)
                            .arg(claim_idle_ms)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(count);
                        let (next, e, deleted) = match redis.query::<Value>(&cmd).await {
                            Ok(v) => parse_xautoclaim(v)?,
                            Err(e) if code_of(&e).as_deref() == Some("NOGROUP") => {
                                (EntryId::default(), Vec::new(), Vec::new())
                            }
                            Err(e) => return Err(e.context(format!("XAUTOCLAIM on {}", st.key))),
                        };
                        let fresh = e.iter().filter(|e| !in_flight.contains(&e.id)).count();
                        if fresh > 0 {
                            tracing::info!("claimed {fresh} entries left pending by other consumers of group {}", st.group);
                            claimed.add(fresh as u64);
                        }
                        gone.add(deleted.len() as u64);
                        phase = if next == EntryId::default() { Phase::New } else { Phase::Claim(next) };
                        e
                    }
                    Phase::New if claim_idle_ms > 0 && Instant::now() >= next_claim => {
                        next_claim = Instant::now() + claim_every;
                        phase = Phase::Claim(EntryId::default());
                        ack_ids(&mut redis, &st, &done).await?;
                        continue;
                    }
                    Phase::New => {
                        if Instant::now() >= next_info {
                            next_info = Instant::now() + Duration::from_secs(5);
                            report_lag(&mut redis, &st, &ctx).await;
                        }
                        read(&mut redis, &st, count, ">", Some(block_ms), &done).await?
                    }
                };
                // Entries to XACK now: deleted from the stream while pending, or set aside.
                let mut settled = Vec::new();
                for e in entries {
                    if in_flight.contains(&e.id) {
                        continue; // sent already, waiting for the engine
                    }
                    if e.fields.is_none() {
                        gone.inc();
                        settled.push(e.id);
                        continue;
                    }
                    if let Some(why) = e.id.unfit().filter(|w| !warned_unfit.contains(w)) {
                        warned_unfit.push(why);
                        tracing::warn!("entry id {} does not fit a message id ({why}): such entries get the next id up", e.id);
                    }
                    let id = next_message_id(last_id, e.id);
                    let (key, payload) = e.key_and_payload(&key_field, &payload_field);
                    ctx.metrics.messages_in.inc();
                    ctx.metrics.bytes_in.add(payload.len() as u64);
                    // A record set aside in --dead-letter DIR (the protocol cannot carry it)
                    // is never acknowledged by the engine: it is settled here.
                    match source.write_at(s.id, id, e.id.ms as i64, &key, &payload).await? {
                        Written::SetAside => settled.push(e.id),
                        Written::Sent => in_flight.push(id, e.id),
                    }
                    last_id = id;
                }
                if !settled.is_empty() {
                    ack_ids(&mut redis, &st, &settled).await?;
                }
                source.flush().await?;
            }
            let left = source.drain(Duration::from_secs(10)).await?;
            let done = acknowledged(&mut in_flight, acks.try_next(), s.id);
            ack_ids(&mut redis, &st, &done).await?;
            if left > 0 {
                tracing::warn!("{left} entries were not acknowledged by the engine: they stay pending in group {} and are delivered again on the next start", st.group);
            }
            Ok(())
        })
}

/// XGROUP CREATE ... MKSTREAM; an existing group is fine.
async fn create_group(redis: &mut Redis, st: &Stream) -> Result<()> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(&st.key)
        .arg(&st.group)
        .arg(&st.start_id)
        .arg("MKSTREAM");
    match redis.query::<()>(&cmd).await {
        Ok(()) => {
            tracing::info!(
                "created consumer group {} on stream {} at {}",
                st.group,
                st.key,
                st.start_id
            );
            Ok(())
        }
        Err(e) if code_of(&e).as_deref() == Some("BUSYGROUP") => Ok(()),
        Err(e) if code_of(&e).as_deref() == Some("WRONGTYPE") => bail!(
            "Redis key `{}` is not a stream: fix the stream parameter",
            st.key
        ),
        Err(e) => Err(e.context(format!(
            "cannot create consumer group {} on {}",
            st.group, st.key
        ))),
    }
}

/// XACK `done` (in the same round trip) and XREADGROUP from `from` (`>` or a pending-list
/// position); recreates the group when Redis lost it (a restart without persistence).
async fn read(
    redis: &mut Redis,
    st: &Stream,
    count: usize,
    from: &str,
    block_ms: Option<u64>,
    done: &[EntryId],
) -> Result<Vec<Entry>> {
    let mut pipe = redis::pipe();
    if !done.is_empty() {
        pipe.cmd("XACK")
            .arg(&st.key)
            .arg(&st.group)
            .arg(done)
            .ignore();
    }
    let read = pipe
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&st.group)
        .arg(&st.consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(b) = block_ms {
        read.arg("BLOCK").arg(b);
    }
    read.arg("STREAMS").arg(&st.key).arg(from);
    loop {
        match redis.pipe::<(Value,)>(&pipe).await {
            Ok((v,)) => return parse_xread(v),
            Err(e) if code_of(&e).as_deref() == Some("NOGROUP") => {
                tracing::warn!(
                    "consumer group {} or stream {} is gone (Redis restarted without persistence?): creating it again",
                    st.group,
                    st.key
                );
                create_group(redis, st).await?;
            }
            Err(e) => return Err(e.context(format!("XREADGROUP on {}", st.key))),
        }
    }
}

/// The in-flight entries the engine acknowledged (removed from `in_flight`).
fn acknowledged(in_flight: &mut InFlight, acked: Vec<Acked>, stream_id: u64) -> Vec<EntryId> {
    match acked
        .iter()
        .filter(|a| a.stream_id == stream_id)
        .map(|a| a.point)
        .max()
    {
        Some(point) => in_flight.release(point),
        None => Vec::new(),
    }
}

async fn ack_ids(redis: &mut Redis, st: &Stream, ids: &[EntryId]) -> Result<()> {
    for chunk in ids.chunks(10_000) {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&st.key).arg(&st.group).arg(chunk);
        match redis.query::<i64>(&cmd).await {
            Ok(_) => {}
            // The group went away with the server's data: nothing left to acknowledge.
            Err(e) if code_of(&e).as_deref() == Some("NOGROUP") => {}
            Err(e) => return Err(e.context(format!("XACK on {}", st.key))),
        }
    }
    Ok(())
}

/// The id to continue from: above the engine's resume point, the group's last delivered
/// entry and the Redis clock, so that no id an earlier run sent is reused for another entry.
async fn first_id(redis: &mut Redis, st: &Stream, resume: Option<u64>) -> Result<u64> {
    let (secs, micros): (u64, u64) = redis.query(&redis::cmd("TIME")).await?;
    let now = EntryId {
        ms: secs * 1000 + micros / 1000,
        seq: 0,
    };
    let mut xinfo = redis::cmd("XINFO");
    xinfo.arg("GROUPS").arg(&st.key);
    let delivered = redis
        .query::<Value>(&xinfo)
        .await
        .ok()
        .and_then(|v| group_info(v, &st.group))
        .and_then(|g| g.last_delivered)
        .and_then(EntryId::message_id)
        .unwrap_or(0);
    Ok(resume
        .unwrap_or(0)
        .max(now.message_id().unwrap_or(0))
        .max(delivered))
}

async fn report_lag(redis: &mut Redis, st: &Stream, ctx: &Context) {
    let mut xinfo = redis::cmd("XINFO");
    xinfo.arg("GROUPS").arg(&st.key);
    if let Ok(v) = redis.query::<Value>(&xinfo).await {
        let lag = group_info(v, &st.group).and_then(|g| g.lag);
        ctx.metrics.lag.set(lag.unwrap_or(-1));
    }
}

async fn check(ctx: &Context) -> Result<()> {
    let config = RedisConfig::from_context(ctx)?;
    let mut conn = config
        .open()
        .await
        .with_context(|| format!("cannot connect to Redis at {}", config.target))?;
    let stream = ctx.params.required("stream")?;
    let kind: String = redis::cmd("TYPE")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    if kind != "stream" && kind != "none" {
        bail!("key `{stream}` holds a {kind}, not a stream");
    }
    Ok(())
}
