//! rabbitmq_sink: publishes every message from the engine to a RabbitMQ exchange; the routing
//! key is the MESSAGE key (or the fixed `routing_key`), the body the payload, byte for byte.
//!
//! Delivery guarantee: at-least-once. Publisher confirms are on and a message is acknowledged
//! to the engine only after the broker confirmed it (for persistent messages to durable queues
//! the broker confirms once the message is on disk). After a broker restart the sink
//! reconnects with back-off and publishes again everything not confirmed, so a message may
//! reach the queue twice, never zero times.
//!
//! A message the broker nacks, or returns as unroutable (with `mandatory`), is published
//! again up to `retries` times with back-off, then handed to the dead-letter directory
//! (`--dead-letter DIR`); without one the sink stops rather than drop it. A key that cannot
//! be a routing key (not UTF-8, over 255 bytes) is dead-lettered at once.

use std::process::ExitCode;
use std::task::Poll;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use rabbitmq_connectors::{
    check_url, close_quietly, connect, match_returned, short, with_backoff, Failure, Reconnects,
};

use connector_runtime::prelude::*;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "rabbitmq_sink",
    about: "Publishes each message from the engine to a RabbitMQ exchange (routing key = message key) with publisher confirms; acknowledges to the engine only what the broker confirmed.",
    direction: Direction::Sink,
    params: &[
        Param::with_default(
            "amqpurl",
            "Broker URL amqp://USER:PASSWORD@HOST:PORT/VHOST",
            rabbitmq_connectors::DEFAULT_URL,
        ),
        Param::with_default(
            "exchange",
            "Exchange to publish to; empty = the default exchange (routing key = queue name)",
            "",
        ),
        Param::optional(
            "routing_key",
            "Routing key of every message (default: the message's key)",
        ),
        Param::with_default(
            "persistent",
            "Publish with delivery_mode 2 (kept on disk by durable queues)",
            "true",
        ),
        Param::with_default(
            "mandatory",
            "Ask the broker to return messages no queue is bound for (then retried and dead-lettered)",
            "false",
        ),
        Param::with_default(
            "retries",
            "Times a nacked or returned message is published again before it is dead-lettered",
            "10",
        ),
        Param::with_default(
            "max_batch",
            "Messages published before waiting for their confirms",
            "4096",
        ),
    ],
};

struct Config {
    url: String,
    shown_url: String,
    name: String,
    exchange: ShortString,
    routing_key: Option<ShortString>,
    props: BasicProperties,
    options: BasicPublishOptions,
    retries: u32,
    max_batch: usize,
}

/// A message of the current batch still to be confirmed.
struct Pending {
    index: usize,
    routing_key: ShortString,
    attempts: u32,
}

/// What the broker said about one publish.
enum Outcome {
    Confirmed,
    Refused(String),
}

fn main() -> ExitCode {
    rabbitmq_connectors::quiet_lapin_logs();
    connector_runtime::legacy_sink(SPEC)
        .check(|ctx| async move {
            let r = async {
                let cfg = config(&ctx)?;
                let (conn, _) = open(&cfg).await.map_err(|f| match f {
                    Failure::Fatal(e) => e,
                    Failure::Transient(why) => anyhow!("{why}"),
                })?;
                close_quietly(&conn, "check done").await;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            vec![Check::from_result("broker reachable and exchange exists", r)]
        })
        .run(|ctx, mut sink| async move {
            let cfg = config(&ctx)?;
            let what = format!("RabbitMQ at {}", cfg.shown_url);
            let Some(mut session) = with_backoff(&ctx, &what, false, || open(&cfg)).await? else {
                return Ok(());
            };
            tracing::info!("publishing to exchange `{}` at {}", cfg.exchange, cfg.shown_url);
            let mut reconnects = Reconnects::default();
            while let Some(batch) = sink.read_batch(cfg.max_batch).await {
                let mut todo = Vec::with_capacity(batch.len());
                for (index, msg) in batch.iter().enumerate() {
                    match routing_key(&cfg, &msg.key) {
                        Ok(routing_key) => todo.push(Pending { index, routing_key, attempts: 0 }),
                        Err(why) => ctx.dead_letter(msg, &why).await?,
                    }
                }
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                while !todo.is_empty() {
                    let outcomes = match publish(&session.1, &cfg, &batch, &todo).await {
                        Ok(o) => o,
                        Err(Failure::Fatal(e)) => return Err(e),
                        Err(Failure::Transient(why)) => {
                            tracing::warn!(
                                "lost the broker connection ({why}); publishing {} unconfirmed messages again after reconnecting",
                                todo.len()
                            );
                            close_quietly(&session.0, "reconnecting").await;
                            // On shutdown the batch stays unacknowledged; the engine resends it.
                            if !reconnects.wait(&ctx).await {
                                return Ok(());
                            }
                            match with_backoff(&ctx, &what, true, || open(&cfg)).await? {
                                Some(s) => session = s,
                                None => return Ok(()),
                            }
                            reconnects.opened();
                            continue;
                        }
                    };
                    let mut again = Vec::new();
                    // One line per round of refusals, naming the first, not one per message.
                    let mut first_refusal: Option<(u64, String, String)> = None;
                    for (mut p, outcome) in todo.into_iter().zip(outcomes) {
                        let msg = &batch[p.index];
                        match outcome {
                            Outcome::Confirmed => {
                                ctx.metrics.messages_out.inc();
                                ctx.metrics.bytes_out.add(msg.payload.len() as u64);
                            }
                            Outcome::Refused(why) if p.attempts >= cfg.retries => {
                                ctx.dead_letter(msg, &format!("{why}, {} times", p.attempts + 1)).await?;
                            }
                            Outcome::Refused(why) => {
                                ctx.metrics.error("refused");
                                if first_refusal.is_none() {
                                    first_refusal = Some((msg.message_id, p.routing_key.to_string(), why));
                                }
                                p.attempts += 1;
                                again.push(p);
                            }
                        }
                    }
                    if let Some((id, key, why)) = first_refusal {
                        tracing::warn!(
                            "{} of {} messages refused (first: message {id}, routing key {key:?}: {why}); publishing them again after a back-off",
                            again.len(),
                            batch.len()
                        );
                    }
                    todo = again;
                    if !todo.is_empty() {
                        tokio::select! {
                            _ = backoff.wait() => {}
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
                sink.ack_all(&batch);
            }
            close_quietly(&session.0, "shutdown").await;
            Ok(())
        })
}

/// Publishes `todo` in order, then waits for every confirm. Returns one outcome per message;
/// an error means the channel or connection failed (nothing of `todo` counts as confirmed).
async fn publish(
    channel: &Channel,
    cfg: &Config,
    batch: &[SinkMessage],
    todo: &[Pending],
) -> Result<Vec<Outcome>, Failure> {
    let doing = format!("publish to exchange `{}`", cfg.exchange);
    let fail = |e: lapin::Error| Failure::from_lapin(&e, &doing);
    // The first poll of basic_publish queues the frames and numbers the confirm, so polling
    // each once in turn keeps the batch order on the wire without a round trip per message.
    let mut sends = Vec::with_capacity(todo.len());
    for p in todo {
        let mut send = Box::pin(channel.basic_publish(
            cfg.exchange.clone(),
            p.routing_key.clone(),
            cfg.options,
            &batch[p.index].payload,
            cfg.props.clone(),
        ));
        let first = futures::poll!(send.as_mut());
        sends.push((send, first));
    }
    let mut confirms = Vec::with_capacity(sends.len());
    for (send, first) in sends {
        let sent = match first {
            Poll::Ready(r) => r,
            Poll::Pending => send.await,
        };
        confirms.push(sent.map_err(fail)?);
    }
    let mut outcomes = Vec::with_capacity(confirms.len());
    let mut returned = Vec::new();
    for confirm in confirms {
        match confirm.await.map_err(fail)? {
            Confirmation::Ack(r) => {
                returned.extend(r);
                outcomes.push(Outcome::Confirmed);
            }
            Confirmation::Nack(r) => {
                returned.extend(r);
                outcomes.push(Outcome::Refused("nacked by the broker".into()));
            }
            Confirmation::NotRequested => {
                return Err(Failure::Transient(
                    "publisher confirms are not enabled".into(),
                ))
            }
        }
    }
    if !returned.is_empty() {
        let published: Vec<(&str, &[u8])> = todo
            .iter()
            .map(|p| (p.routing_key.as_str(), &batch[p.index].payload[..]))
            .collect();
        let keys: Vec<(String, Vec<u8>)> = returned
            .iter()
            .map(|r| (r.delivery.routing_key.to_string(), r.delivery.data.clone()))
            .collect();
        let why = format!(
            "returned by the broker ({} {}): no queue is bound to exchange `{}` for this routing key",
            returned[0].reply_code, returned[0].reply_text, cfg.exchange
        );
        for i in match_returned(&published, &keys) {
            outcomes[i] = Outcome::Refused(why.clone());
        }
    }
    Ok(outcomes)
}

/// The routing key of a message: the fixed one, or the message key when it can be one.
fn routing_key(cfg: &Config, key: &[u8]) -> Result<ShortString, String> {
    if let Some(k) = &cfg.routing_key {
        return Ok(k.clone());
    }
    let text = std::str::from_utf8(key).map_err(|_| {
        "the message key is not UTF-8 text, so it cannot be a routing key; set routing_key"
            .to_string()
    })?;
    ShortString::try_new(text).map_err(|_| {
        format!(
            "the message key is {} bytes; routing keys are at most 255 bytes",
            key.len()
        )
    })
}

fn config(ctx: &Context) -> Result<Config> {
    let c = ctx.connector.as_str();
    let url = ctx.params.required("amqpurl")?.to_string();
    let shown_url = check_url(c, &url)?;
    let persistent = ctx.params.flag("persistent")?;
    let mut props = BasicProperties::default();
    if persistent {
        props = props.with_delivery_mode(2);
    }
    let max_batch: usize = ctx.params.parse_or("max_batch", 4096)?;
    if max_batch == 0 {
        bail!("--{c}-max_batch must be at least 1");
    }
    Ok(Config {
        url,
        shown_url,
        name: format!("{}/{}", ctx.program, ctx.connector),
        exchange: short(c, "exchange", ctx.params.get("exchange").unwrap_or(""))?,
        routing_key: ctx
            .params
            .get("routing_key")
            .map(|k| short(c, "routing_key", k))
            .transpose()?,
        props,
        options: BasicPublishOptions {
            mandatory: ctx.params.flag("mandatory")?,
            immediate: false,
        },
        retries: ctx.params.parse_or("retries", 10)?,
        max_batch,
    })
}

/// Connects, checks that the exchange exists and turns publisher confirms on.
async fn open(cfg: &Config) -> Result<(Connection, Channel), Failure> {
    let conn = connect(&cfg.url, &cfg.name).await?;
    let fail = |doing: String| move |e: lapin::Error| Failure::from_lapin(&e, &doing);
    let channel = conn
        .create_channel()
        .await
        .map_err(fail("open a channel".into()))?;
    if !cfg.exchange.as_str().is_empty() {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let x = &cfg.exchange;
        channel
            .exchange_declare(
                x.clone(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(fail(format!("publish to exchange `{x}`")))?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("turn publisher confirms on".into()))?;
    Ok((conn, channel))
}
