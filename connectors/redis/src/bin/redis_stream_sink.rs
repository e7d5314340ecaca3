//! redis_stream_sink: appends every message from the engine to a Redis stream with XADD,
//! the message key in field `key_field` and the payload in field `payload_field`; with
//! `maxlen` the stream is trimmed to about that many entries (`MAXLEN ~`).
//!
//! Delivery: at-least-once. Each batch of messages becomes one pipeline of XADDs and is
//! acknowledged to the engine only after Redis replied to all of them. When the connection
//! breaks before the reply (server restart, network) the sink reconnects with back-off and
//! sends the batch again, so entries of that batch that Redis had already appended are
//! appended twice (XADD has no idempotence key): consumers see at-least-once.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::{code_of, with_connection_params, Redis, RedisConfig};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "redis_stream_sink",
    about: "Appends each message from the engine to a Redis stream (XADD <stream> * key <key> payload <payload>).",
    direction: Direction::Sink,
    params: with_connection_params![
        Param::required("stream", "Name of the Redis stream to append to"),
        Param::with_default("key_field", "Field that holds the message key (omitted when the key is empty)", "key"),
        Param::with_default("payload_field", "Field that holds the payload", "payload"),
        Param::optional("maxlen", "Trim the stream to about this many entries (XADD MAXLEN ~ N)"),
        Param::with_default("batch", "Most messages per XADD pipeline", "4096"),
    ],
};

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        .check(|ctx| async move {
            vec![Check::from_result(
                "Redis reachable and the stream key usable",
                check(&ctx).await,
            )]
        })
        .run(|ctx, mut sink| async move {
            let stream = ctx.params.required("stream")?.to_string();
            let key_field = ctx.params.required("key_field")?.to_string();
            let payload_field = ctx.params.required("payload_field")?.to_string();
            if key_field == payload_field {
                bail!("--{0}-key_field and --{0}-payload_field must differ", ctx.connector);
            }
            let maxlen: Option<u64> = ctx.params.parse("maxlen")?;
            let batch_size: usize = ctx.params.parse_or("batch", 4096)?;
            let mut redis = Redis::connect(RedisConfig::from_context(&ctx)?, &ctx).await?;
            while let Some(batch) = sink.read_batch(batch_size).await {
                let mut pipe = redis::pipe();
                for msg in &batch {
                    let xadd = pipe.cmd("XADD").arg(&stream);
                    if let Some(n) = maxlen {
                        xadd.arg("MAXLEN").arg("~").arg(n);
                    }
                    xadd.arg("*");
                    if !msg.key.is_empty() {
                        xadd.arg(&key_field).arg(msg.key.as_ref());
                    }
                    xadd.arg(&payload_field).arg(msg.payload.as_ref()).ignore();
                }
                if let Err(e) = redis.pipe::<()>(&pipe).await {
                    if code_of(&e).as_deref() == Some("WRONGTYPE") {
                        bail!("Redis key `{stream}` holds a value that is not a stream: choose another --{}-stream or delete it", ctx.connector);
                    }
                    return Err(e.context(format!("XADD {stream} on Redis at {}", redis.target())));
                }
                for msg in &batch {
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
