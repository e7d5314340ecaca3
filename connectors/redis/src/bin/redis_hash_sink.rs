//! redis_hash_sink: writes every message from the engine into one Redis hash, field = the
//! message key, value = the payload (HSET): the hash holds the latest value of every key.
//!
//! Delivery: at-least-once, and idempotent in effect. Each batch of messages becomes one
//! pipeline (one HSET with all its field/value pairs, then EXPIRE when `ttl_seconds` is set)
//! and is acknowledged to the engine only after Redis replied. When the connection breaks
//! (server restart, network) the sink reconnects with back-off and writes the whole batch
//! again: a replay rewrites the same values. A message without a key is refused (dead letter);
//! a hash `key` that holds another type stops the sink with the reason.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::{code_of, with_connection_params, Redis, RedisConfig};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "redis_hash_sink",
    about:
        "Writes each message from the engine into a Redis hash: HSET <key> <message key> <payload>.",
    direction: Direction::Sink,
    params: with_connection_params![
        Param::required("key", "Name of the Redis hash to write into"),
        Param::optional(
            "ttl_seconds",
            "EXPIRE the hash this many seconds after its last write (default: never)",
        ),
        Param::with_default("batch", "Most messages per HSET pipeline", "4096"),
    ],
};

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        .check(|ctx| async move {
            vec![Check::from_result(
                "Redis reachable and the hash key usable",
                check(&ctx).await,
            )]
        })
        .run(|ctx, mut sink| async move {
            let hash = ctx.params.required("key")?.to_string();
            let ttl: Option<u64> = ctx.params.parse("ttl_seconds")?;
            let batch_size: usize = ctx.params.parse_or("batch", 4096)?;
            let mut redis = Redis::connect(RedisConfig::from_context(&ctx)?, &ctx).await?;
            while let Some(batch) = sink.read_batch(batch_size).await {
                let mut hset = redis::cmd("HSET");
                hset.arg(&hash);
                let mut fields = 0;
                for msg in &batch {
                    if msg.key.is_empty() {
                        // Acknowledged with the batch once set aside (else the sink stops).
                        ctx.dead_letter(msg, "message has no key: redis_hash_sink uses the message key as the hash field")
                            .await?;
                        continue;
                    }
                    hset.arg(msg.key.as_ref()).arg(msg.payload.as_ref());
                    fields += 1;
                }
                if fields > 0 {
                    let mut pipe = redis::pipe();
                    pipe.add_command(hset).ignore();
                    if let Some(ttl) = ttl {
                        pipe.cmd("EXPIRE").arg(&hash).arg(ttl).ignore();
                    }
                    if let Err(e) = redis.pipe::<()>(&pipe).await {
                        if code_of(&e).as_deref() == Some("WRONGTYPE") {
                            bail!("Redis key `{hash}` holds a value that is not a hash: choose another --{}-key or delete it", ctx.connector);
                        }
                        return Err(e.context(format!("HSET {hash} on Redis at {}", redis.target())));
                    }
                }
                for msg in batch.iter().filter(|m| !m.key.is_empty()) {
                    ctx.metrics.messages_out.inc();
                    ctx.metrics.bytes_out.add(msg.payload.len() as u64);
                }
                sink.ack_all(&batch);
            }
            Ok(())
        })
}

async fn check(ctx: &Context) -> Result<()> {
    let config = RedisConfig::from_context(ctx)?;
    let mut conn = config
        .open()
        .await
        .with_context(|| format!("cannot connect to Redis at {}", config.target))?;
    let hash = ctx.params.required("key")?;
    let kind: String = redis::cmd("TYPE").arg(hash).query_async(&mut conn).await?;
    if kind != "hash" && kind != "none" {
        bail!("key `{hash}` holds a {kind}, not a hash");
    }
    Ok(())
}
