//! rabbitmq_sink: publishes every message from the engine to a RabbitMQ exchange; the routing
//! key is the MESSAGE key (or the fixed `routing_key`), the body the payload, byte for byte.
//!
//! Delivery guarantee: at-least-once. Publisher confirms are on and a message counts as
//! written only once the broker confirmed it (for persistent messages to durable queues the
//! broker confirms once the message is on disk); the runtime acknowledges a batch to the
//! engine when every message of it is settled. After a broker restart the sink reconnects and
//! publishes again everything not confirmed, so a message may reach the queue twice, never
//! zero times.
//!
//! A message the broker nacks, or returns as unroutable (with `mandatory`), is published
//! again (the runtime's back-off) up to `retries` times, then refused: the runtime hands it to
//! the dead-letter directory (`--dead-letter DIR`), without one the sink stops rather than
//! drop it. A key that cannot be a routing key (not UTF-8, over 255 bytes) is refused at once.

use std::process::ExitCode;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rabbitmq_connectors::sink::{Attempts, Exchange, Publish, Published};
use rabbitmq_connectors::{check_url, short};

use connector_runtime::prelude::*;

/// Publishes each message from the engine to a RabbitMQ exchange (routing key = message key)
/// with publisher confirms; acknowledges to the engine only what the broker confirmed.
#[derive(Parser)]
#[command(name = "rabbitmq_sink")]
struct Params {
    /// Broker URL amqp://USER:PASSWORD@HOST:PORT/VHOST
    #[arg(long, default_value = rabbitmq_connectors::DEFAULT_URL)]
    amqpurl: String,
    /// Exchange to publish to; empty = the default exchange (routing key = queue name)
    #[arg(long, default_value = "")]
    exchange: String,
    /// Routing key of every message (default: the message's key)
    #[arg(long)]
    routing_key: Option<String>,
    /// Publish with delivery_mode 2 (kept on disk by durable queues)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    persistent: bool,
    /// Ask the broker to return messages no queue is bound for (then retried and dead-lettered)
    #[arg(long)]
    mandatory: bool,
    /// Times a nacked or returned message is published again before it is dead-lettered
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Messages published before waiting for their confirms
    #[arg(long, default_value_t = 4096)]
    max_batch: usize,
}

struct RabbitSink {
    exchange: Exchange,
    attempts: Attempts,
    retries: u32,
    max_batch: usize,
}

impl SinkConnector for RabbitSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let mut todo = Vec::with_capacity(batch.len());
        let mut msgs = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            match self.exchange.routing_key(&msg.key) {
                Ok(key) => {
                    todo.push(i);
                    msgs.push((key, &msg.payload[..]));
                }
                Err(why) => outcomes.refuse(i, why),
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let refusals = match self.exchange.publish(&msgs).await? {
            Published::Settled(refusals) => refusals,
            Published::Unconfirmed(why) => {
                todo.into_iter().for_each(|i| outcomes.retry(i, &why));
                return Ok(());
            }
        };
        // Nacked or returned: again, until the message was refused `retries` times more.
        for ((i, refusal), (key, _)) in todo.into_iter().zip(refusals).zip(msgs) {
            let msg = &batch[i];
            let Some(why) = refusal else {
                self.attempts.settled(msg);
                continue;
            };
            let n = self.attempts.refused(msg);
            if n > self.retries {
                self.attempts.settled(msg);
                outcomes.refuse(i, format!("{why}, {n} times"));
            } else {
                outcomes.retry(i, format!("{why} (routing key {:?})", key.as_str()));
            }
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: self.max_batch,
            ..Batching::default()
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.exchange.close().await;
        Ok(())
    }
}

fn main() -> ExitCode {
    rabbitmq_connectors::quiet_lapin_logs();
    connector_runtime::sink()
        .check(|ctx, p: Params| async move {
            let r = async { Exchange::check(config(&ctx, &p)?).await }.await;
            vec![Check::from_result(
                "broker reachable and exchange exists",
                r,
            )]
        })
        .run(|ctx, p: Params| async move {
            if p.max_batch == 0 {
                bail!("--{}-max_batch must be at least 1", ctx.connector);
            }
            Ok(RabbitSink {
                exchange: Exchange::connect(&ctx, config(&ctx, &p)?).await?,
                attempts: Attempts::default(),
                retries: p.retries,
                max_batch: p.max_batch,
            })
        })
}

/// The publishing configuration, checked: the URL parses and names fit AMQP.
fn config(ctx: &Context, p: &Params) -> Result<Publish> {
    let c = ctx.connector.as_str();
    let mut props = BasicProperties::default();
    if p.persistent {
        props = props.with_delivery_mode(2);
    }
    Ok(Publish {
        url: p.amqpurl.clone(),
        shown_url: check_url(c, &p.amqpurl)?,
        name: format!("{}/{c}", ctx.program),
        exchange: short(c, "exchange", &p.exchange)?,
        routing_key: p
            .routing_key
            .as_deref()
            .map(|k| short(c, "routing_key", k))
            .transpose()?,
        props,
        options: BasicPublishOptions {
            mandatory: p.mandatory,
            immediate: false,
        },
    })
}
