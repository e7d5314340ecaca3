//! redis_hash_sink: writes every message from the engine into one Redis hash, field = the
//! message key, value = the payload (HSET): the hash holds the latest value of every key.
//!
//! Delivery: at-least-once, and idempotent in effect. Each batch of messages becomes one
//! pipeline (one HSET with all its field/value pairs, then EXPIRE when `ttl_seconds` is set)
//! and is acknowledged to the engine only after Redis replied. A broken connection (server
//! restart, network) or a transient error (LOADING, OOM...) makes the runtime write the batch
//! again after a back-off, on a new connection: a replay rewrites the same values. A message
//! without a key, and every message while the hash `key` holds another type, is refused
//! (dead-lettered with `--dead-letter DIR`, else the sink stops with the reason).

use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::{Connection, Redis};

/// Writes each message from the engine into a Redis hash: HSET <key> <message key> <payload>.
#[derive(Parser)]
#[command(name = "redis_hash_sink")]
struct Params {
    #[command(flatten)]
    redis: Connection,
    /// Name of the Redis hash to write into
    #[arg(long)]
    key: String,
    /// EXPIRE the hash this many seconds after its last write (default: never)
    #[arg(long)]
    ttl_seconds: Option<u64>,
    /// Most messages per HSET pipeline
    #[arg(long, default_value_t = 4096)]
    batch: usize,
}

struct HashSink {
    redis: Redis,
    hash: String,
    ttl: Option<u64>,
    batch: usize,
    wrong_type: String,
}

impl SinkConnector for HashSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let mut hset = redis::cmd("HSET");
        hset.arg(&self.hash);
        let mut keyed = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            if msg.key.is_empty() {
                let why =
                    "message has no key: redis_hash_sink uses the message key as the hash field";
                outcomes.refuse(i, why);
                continue;
            }
            hset.arg(msg.key.as_ref()).arg(msg.payload.as_ref());
            keyed.push(i);
        }
        if keyed.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.add_command(hset);
        if let Some(ttl) = self.ttl {
            pipe.cmd("EXPIRE").arg(&self.hash).arg(ttl);
        }
        // One HSET carries every record: the first failed command decides for all.
        let verdicts = self.redis.write_once(pipe, &self.wrong_type).await?;
        if let Some(v) = verdicts.iter().find(|v| !v.is_written()) {
            keyed.iter().for_each(|&i| v.mark(outcomes, i));
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: self.batch,
            ..Batching::default()
        }
    }
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|ctx, p: Params| async move {
            redis_connectors::check_sink_key(&ctx, &p.redis, &p.key, "hash").await
        })
        .run(|ctx, p: Params| async move {
            let redis = redis_connectors::open_sink(&ctx, &p.redis).await?;
            Ok(HashSink {
                redis,
                wrong_type: redis_connectors::wrong_type(&ctx.connector, &p.key, "hash", "key"),
                hash: p.key,
                ttl: p.ttl_seconds,
                batch: p.batch.max(1),
            })
        })
}
