//! redis_stream_sink: appends every message from the engine to a Redis stream with XADD,
//! the message key in field `key_field` and the payload in field `payload_field`; with
//! `maxlen` the stream is trimmed to about that many entries (`MAXLEN ~`).
//!
//! Delivery: at-least-once. Each batch of messages becomes one pipeline of XADDs and is
//! acknowledged to the engine only after Redis replied to all of them. When the connection
//! breaks before the reply (server restart, network) the runtime writes the batch again after
//! a back-off, on a new connection, so entries of that batch that Redis had already appended
//! are appended twice (XADD has no idempotence key): consumers see at-least-once. A transient
//! error reply (OOM, LOADING...) writes that message and every later one of the batch again,
//! which keeps the engine's order. While `stream` holds another type every message is
//! refused (dead-lettered with `--dead-letter DIR`, else the sink stops with the reason).

use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::{in_order, Connection, Redis};

/// Appends each message from the engine to a Redis stream (XADD <stream> * key <key> payload <payload>).
#[derive(Parser)]
#[command(name = "redis_stream_sink")]
struct Params {
    #[command(flatten)]
    redis: Connection,
    /// Name of the Redis stream to append to
    #[arg(long)]
    stream: String,
    /// Field that holds the message key (omitted when the key is empty)
    #[arg(long, default_value = "key")]
    key_field: String,
    /// Field that holds the payload
    #[arg(long, default_value = "payload")]
    payload_field: String,
    /// Trim the stream to about this many entries (XADD MAXLEN ~ N)
    #[arg(long)]
    maxlen: Option<u64>,
    /// Most messages per XADD pipeline
    #[arg(long, default_value_t = 4096)]
    batch: usize,
}

struct StreamSink {
    redis: Redis,
    p: Params,
    wrong_type: String,
}

impl SinkConnector for StreamSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let p = &self.p;
        let mut pipe = redis::pipe();
        for msg in batch {
            let xadd = pipe.cmd("XADD").arg(&p.stream);
            if let Some(n) = p.maxlen {
                xadd.arg("MAXLEN").arg("~").arg(n);
            }
            xadd.arg("*");
            if !msg.key.is_empty() {
                xadd.arg(&p.key_field).arg(msg.key.as_ref());
            }
            xadd.arg(&p.payload_field).arg(msg.payload.as_ref());
        }
        let verdicts = self.redis.write_once(pipe, &self.wrong_type).await?;
        // The stream keeps the engine's order: a message written again comes after the ones
        // before it, so every later one is written again too (duplicates, not reordering).
        for (i, v) in in_order(verdicts).iter().enumerate() {
            v.mark(outcomes, i);
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: self.p.batch.max(1),
            ..Batching::default()
        }
    }
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|ctx, p: Params| async move {
            redis_connectors::check_sink_key(&ctx, &p.redis, &p.stream, "stream").await
        })
        .run(|ctx, p: Params| async move {
            if p.key_field == p.payload_field {
                bail!(
                    "--{0}-key_field and --{0}-payload_field must differ",
                    ctx.connector
                );
            }
            let redis = redis_connectors::open_sink(&ctx, &p.redis).await?;
            Ok(StreamSink {
                redis,
                wrong_type: redis_connectors::wrong_type(
                    &ctx.connector,
                    &p.stream,
                    "stream",
                    "stream",
                ),
                p,
            })
        })
}
