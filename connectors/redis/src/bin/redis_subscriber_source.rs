//! redis_subscriber_source: subscribes to Redis pub/sub channels (SUBSCRIBE, or PSUBSCRIBE
//! patterns with `pattern=true`) and sends every published message to the engine, the
//! channel name as the message key and the message unchanged as the payload.
//!
//! Delivery: at-most-once. Pub/sub keeps nothing: a message published while this source is
//! not subscribed (Redis restarting, network down, this process restarting) is lost, and so
//! is one that arrives while `buffer` messages are already waiting for the engine (the
//! engine is slower than the publishers). Both are reported: the reconnect log line says how
//! long the subscription was down (metric `redis_disconnected_seconds_total`), and
//! `redis_pubsub_dropped_total` counts buffer overflows. Use redis_stream_source when
//! nothing may be lost.
//!
//! One engine stream per channel (`redis-pubsub:<channel>`); message ids start above both
//! the engine's resume point and the current time in nanoseconds and increase by one.
//! Channel names are bytes: the key is the name unchanged, and a name that is not UTF-8 is
//! written with `\xNN` escapes in the stream name.

use std::collections::HashMap;
use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::pubsub::{stream_name, Published, Subscription};
use redis_connectors::{Connection, RedisConfig};

/// Subscribes to Redis pub/sub channels and sends every message to the engine (at-most-once: pub/sub keeps nothing).
#[derive(Parser)]
#[command(name = "redis_subscriber_source")]
struct Params {
    #[command(flatten)]
    redis: Connection,
    /// Channel(s) to subscribe to, comma-separated (patterns with pattern=true)
    #[arg(long)]
    topic: CommaList,
    /// Treat topic as glob patterns (PSUBSCRIBE)
    #[arg(long)]
    pattern: bool,
    /// Messages held while the engine is busy; more are dropped and counted
    #[arg(long, default_value_t = 100_000)]
    buffer: usize,
}

struct Subscriber {
    subscription: Subscription,
    /// Channel name -> engine stream id.
    streams: HashMap<Bytes, u64>,
    /// Engine stream id -> last message id sent.
    last_ids: HashMap<u64, u64>,
    /// The first message of a channel whose stream is being opened.
    held: Option<Published>,
}

impl SourceConnector for Subscriber {
    type Token = ();

    async fn read(&mut self, out: &mut Batch<()>) -> Result<()> {
        let mut next = match self.held.take() {
            Some(m) => m,
            None => self.subscription.recv().await?,
        };
        // Everything already received, up to one batch.
        for taken in 1.. {
            let (channel, payload) = next;
            let Some(&stream) = self.streams.get(&channel) else {
                // A new channel: announce its stream, send once the engine answered.
                let name = format!("redis-pubsub:{}", stream_name(&channel));
                self.streams.insert(channel.clone(), out.open(&name, None));
                self.held = Some((channel, payload));
                break;
            };
            let id = self.last_ids.entry(stream).or_insert(0);
            *id += 1;
            out.push(stream, *id, &channel, &payload, ());
            if taken == 4096 {
                break;
            }
            match self.subscription.try_recv() {
                Some(m) => next = m,
                None => break,
            }
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        let first = stream
            .resume
            .unwrap_or(0)
            .max(connector_runtime::unix_nanos());
        self.last_ids.insert(stream.id, first);
        Ok(())
    }
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            let ok = async {
                RedisConfig::new(&ctx.connector, &p.redis)?
                    .check(None)
                    .await
            };
            vec![Check::from_result("Redis reachable", ok.await)]
        })
        .run(|ctx, p: Params| async move {
            let topics = p.topic.0;
            let config = RedisConfig::new(&ctx.connector, &p.redis)?;
            Ok(Subscriber {
                subscription: Subscription::start(&ctx, config, topics, p.pattern, p.buffer),
                streams: HashMap::new(),
                last_ids: HashMap::new(),
                held: None,
            })
        })
}
