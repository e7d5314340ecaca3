//! redis_subscriber_source: subscribes to Redis pub/sub channels (SUBSCRIBE, or PSUBSCRIBE
//! patterns with `pattern=true`) and sends every published message to the engine, the
//! channel name as the message key and the message unchanged as the payload.
//!
//! Delivery: at-most-once. Pub/sub keeps nothing: a message published while this source is
//! not subscribed (Redis restarting, network down, this process restarting) is lost, and so
//! is one that arrives while `buffer` messages are already waiting for the engine (the
//! engine is slower than the publishers). Both are reported: the reconnect log line says how
//! long the subscription was down (metric `redis_disconnected_milliseconds_total`), and
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
use futures::StreamExt;
use redis_connectors::{
    connect_with_backoff, is_transient, unix_nanos, with_connection_params, Outage, RedisConfig,
};
use tokio::sync::mpsc;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "redis_subscriber_source",
    about: "Subscribes to Redis pub/sub channels and sends every message to the engine (at-most-once: pub/sub keeps nothing).",
    direction: Direction::Source,
    params: with_connection_params![
        Param::required("topic", "Channel(s) to subscribe to, comma-separated (patterns with pattern=true)"),
        Param::with_default("pattern", "Treat topic as glob patterns (PSUBSCRIBE)", "false"),
        Param::with_default("buffer", "Messages held while the engine is busy; more are dropped and counted", "100000"),
    ],
};

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        .check(|ctx| async move { vec![Check::from_result("Redis reachable", check(&ctx).await)] })
        .run(|ctx, mut source| async move {
            let topics = ctx.params.list("topic");
            if topics.is_empty() {
                bail!(
                    "--{}-topic is empty: give at least one channel",
                    ctx.connector
                );
            }
            let pattern = ctx.params.flag("pattern")?;
            let buffer: usize = ctx.params.parse_or("buffer", 100_000)?;
            let config = RedisConfig::from_context(&ctx)?;
            let (tx, mut rx) = mpsc::channel::<(Bytes, Bytes)>(buffer.max(1));
            let reader = tokio::spawn(subscribe(ctx.clone(), config, topics, pattern, tx));
            // Channel name -> (engine stream id, last message id).
            let mut streams: HashMap<Bytes, (u64, u64)> = HashMap::new();
            loop {
                let next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        source.flush().await?;
                        tokio::select! {
                            m = rx.recv() => m,
                            // Idle: the flush above notices a lost engine connection.
                            _ = tokio::time::sleep(IDLE_FLUSH) => continue,
                            _ = ctx.shutdown.cancelled() => None,
                        }
                    }
                };
                let Some((channel, payload)) = next else {
                    break;
                };
                let (stream_id, id) = match streams.get_mut(&channel) {
                    Some(s) => s,
                    None => {
                        let s = source
                            .notify(&format!("redis-pubsub:{}", stream_name(&channel)), None)
                            .await?;
                        let first = s.resume.unwrap_or(0).max(unix_nanos());
                        streams.entry(channel.clone()).or_insert((s.id, first))
                    }
                };
                *id += 1;
                ctx.metrics.messages_in.inc();
                ctx.metrics.bytes_in.add(payload.len() as u64);
                source.write(*stream_id, *id, &channel, &payload).await?;
            }
            let left = source.drain(Duration::from_secs(10)).await?;
            if left > 0 {
                tracing::warn!("{left} messages were not acknowledged by the engine before exit");
            }
            match reader.await {
                Ok(r) => r,
                Err(e) => Err(anyhow!("the subscriber task failed: {e}")),
            }
        })
}

/// Subscribes, forwards messages into `tx` (dropping and counting when it is full), and
/// subscribes again with back-off whenever the connection is lost. Ends on shutdown or on a
/// permanent error.
async fn subscribe(
    ctx: Context,
    config: RedisConfig,
    topics: Vec<String>,
    pattern: bool,
    tx: mpsc::Sender<(Bytes, Bytes)>,
) -> Result<()> {
    let dropped = ctx.metrics.registry.counter(
        "redis_pubsub_dropped_total",
        "Messages dropped because the buffer towards the engine was full.",
        &[],
    );
    let mut warn_at = 1; // log the first drop, then every 10,000th
    let mut outage = Outage::new(&ctx);
    let mut backoff = Backoff::default();
    let what = if pattern { "patterns" } else { "channels" };
    loop {
        let client = config.client.clone();
        let pubsub =
            connect_with_backoff(&ctx, &config.target, || client.get_async_pubsub()).await?;
        let (mut sink, mut messages) = pubsub.split();
        let subscribed = if pattern {
            sink.psubscribe(&topics).await
        } else {
            sink.subscribe(&topics).await
        };
        match subscribed {
            Ok(()) => backoff.reset(),
            Err(e) if is_transient(&e) => {
                outage.lost();
                tokio::select! {
                    _ = backoff.wait() => continue,
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => bail!(
                "Redis at {} refused to subscribe to {topics:?}: {e}",
                config.target
            ),
        }
        match outage.restored() {
            Some(down) => tracing::warn!(
                "subscribed again to {what} {topics:?} after {:.1}s without a connection: messages published meanwhile are lost (pub/sub keeps nothing)",
                down.as_secs_f64()
            ),
            None => tracing::info!("subscribed to {what} {topics:?} on Redis at {}", config.target),
        }
        let mut ping = tokio::time::interval(Duration::from_secs(15));
        ping.tick().await;
        loop {
            tokio::select! {
                m = messages.next() => {
                    let Some(m) = m else {
                        tracing::warn!(
                            "lost the subscription to Redis at {}: reconnecting (Redis also closes a subscriber that falls behind by more than its client-output-buffer-limit for pubsub, 32 MB by default)",
                            config.target
                        );
                        break;
                    };
                    // As bytes: a channel name need not be UTF-8.
                    let channel = m.get_channel::<Vec<u8>>().unwrap_or_else(|_| m.get_channel_name().into());
                    let item = (Bytes::from(channel), Bytes::copy_from_slice(m.get_payload_bytes()));
                    match tx.try_send(item) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropped.inc();
                            if dropped.get() >= warn_at {
                                warn_at = dropped.get() + 10_000;
                                tracing::warn!("the engine is slower than the publishers: {} messages dropped so far (buffer full)", dropped.get());
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                    }
                }
                _ = ping.tick() => {
                    // A silent network failure shows up here rather than as a closed stream.
                    match tokio::time::timeout(Duration::from_secs(5), sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) if !is_transient(&e) => {}
                        _ => {
                            tracing::warn!("Redis at {} stopped answering PING: reconnecting", config.target);
                            break;
                        }
                    }
                }
                _ = ctx.shutdown.cancelled() => return Ok(()),
            }
        }
        outage.lost();
    }
}

/// A channel name for the engine's stream name: as it is when it is UTF-8, else with its
/// bytes escaped (`\xff`), so distinct channels keep distinct streams.
fn stream_name(channel: &[u8]) -> String {
    match std::str::from_utf8(channel) {
        Ok(name) => name.to_string(),
        Err(_) => channel.escape_ascii().to_string(),
    }
}

async fn check(ctx: &Context) -> Result<()> {
    let config = RedisConfig::from_context(ctx)?;
    let mut conn = config
        .open()
        .await
        .with_context(|| format!("cannot connect to Redis at {}", config.target))?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stream_name;

    #[test]
    fn stream_names_keep_utf8_and_escape_other_bytes() {
        assert_eq!(stream_name("café".as_bytes()), "café");
        assert_eq!(stream_name(b"s.\xff\xfe"), "s.\\xff\\xfe");
        assert_ne!(stream_name(b"s.\xff"), stream_name(b"s.\xfe"));
    }
}
