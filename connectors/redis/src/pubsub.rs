//! The subscription of `redis_subscriber_source`: a task that subscribes (SUBSCRIBE or
//! PSUBSCRIBE), subscribes again with back-off whenever the connection is lost, and hands
//! messages over through a bounded buffer, dropping (and counting) what does not fit.

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use connector_runtime::{Backoff, Context, ShuttingDown};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{connect_with_backoff, is_transient, Outage, RedisConfig};

/// One published message: the channel name (bytes, need not be UTF-8) and the payload.
pub type Published = (Bytes, Bytes);

/// A running subscription.
pub struct Subscription {
    messages: mpsc::Receiver<Published>,
    task: Option<JoinHandle<Result<()>>>,
    ctx: Context,
}

impl Subscription {
    /// Subscribes to `topics` (patterns when `pattern`) in a task of its own; at most
    /// `buffer` messages wait for [`Subscription::recv`], more are dropped and counted.
    pub fn start(
        ctx: &Context,
        config: RedisConfig,
        topics: Vec<String>,
        pattern: bool,
        buffer: usize,
    ) -> Subscription {
        let (tx, messages) = mpsc::channel(buffer.max(1));
        let task = tokio::spawn(subscribe(ctx.clone(), config, topics, pattern, tx));
        Subscription {
            messages,
            task: Some(task),
            ctx: ctx.clone(),
        }
    }

    /// The next message, waiting for it. Cancel safe. An error when the subscription
    /// stopped for good (Redis refused it); never returns after a shutdown.
    pub async fn recv(&mut self) -> Result<Published> {
        if let Some(m) = self.messages.recv().await {
            return Ok(m);
        }
        if let Some(task) = self.task.as_mut() {
            let ended = task.await;
            self.task = None;
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("the subscriber task failed: {e}"),
            }
        }
        // The task ends by itself only on shutdown, when this future is dropped.
        self.ctx.shutdown.cancelled().await;
        Err(ShuttingDown.into())
    }

    /// A message that is waiting already, if any.
    pub fn try_recv(&mut self) -> Option<Published> {
        self.messages.try_recv().ok()
    }
}

/// Subscribes, forwards messages into `tx` (dropping and counting when it is full), and
/// subscribes again with back-off whenever the connection is lost. Ends on shutdown or on a
/// permanent error.
async fn subscribe(
    ctx: Context,
    config: RedisConfig,
    topics: Vec<String>,
    pattern: bool,
    tx: mpsc::Sender<Published>,
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
        let pubsub = connect_with_backoff(&ctx, &config.target, &mut backoff, || {
            client.get_async_pubsub()
        })
        .await?;
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
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
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
pub fn stream_name(channel: &[u8]) -> String {
    match std::str::from_utf8(channel) {
        Ok(name) => name.to_string(),
        Err(_) => channel.escape_ascii().to_string(),
    }
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
