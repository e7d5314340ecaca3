//! rabbitmq_source: consumes a RabbitMQ queue and sends every message to the engine; the
//! MESSAGE key is the delivery's routing key, the payload its body, byte for byte.
//!
//! Delivery guarantee: at-least-once. Deliveries are acknowledged to the broker (`basic.ack`,
//! `multiple`) only after the engine acknowledged them, so a killed connector, engine or
//! broker never loses a message: the broker delivers what was not acknowledged again
//! (duplicates downstream are possible, at most about `prefetch` per failure). A body larger
//! than `max_bytes` is rejected with `basic.nack` (`requeue` false: the queue's dead-letter
//! exchange gets it, or the broker drops it when the queue has none).
//!
//! The broker going away (restart, network) is not an error: the connector reconnects with
//! back-off, sets the QoS prefetch again and resumes consuming; deliveries of the old channel
//! come again from the broker. A connection lost soon after it was opened makes the next
//! reconnect wait longer, so reconnects never spin. A delivery lapin cannot parse (a routing
//! key or header that is not UTF-8) ends the connection before its delivery tag is known, so
//! it cannot be rejected alone and would come again on every connection: the connector stops
//! with a line that says so.

use std::process::ExitCode;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, Event, ExchangeKind};
use rabbitmq_connectors::{
    check_url, close_quietly, connect, short, unix_nanos, with_backoff, Failure, Ledger, Reconnects,
};

use connector_runtime::prelude::*;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "rabbitmq_source",
    about: "Consumes a RabbitMQ queue and forwards each message (key = routing key) to the engine; acknowledges to the broker only what the engine acknowledged.",
    direction: Direction::Source,
    params: &[
        Param::with_default(
            "amqpurl",
            "Broker URL amqp://USER:PASSWORD@HOST:PORT/VHOST",
            rabbitmq_connectors::DEFAULT_URL,
        ),
        Param::required("queue", "Queue to consume from"),
        Param::with_default(
            "prefetch",
            "Deliveries not yet acknowledged at most (basic.qos prefetch count)",
            "1000",
        ),
        Param::with_default(
            "declare",
            "Declare the queue (durable) and its binding at start instead of requiring them",
            "false",
        ),
        Param::optional(
            "exchange",
            "With declare: bind the queue to this exchange",
        ),
        Param::optional(
            "exchange_type",
            "With declare and exchange: also declare the exchange (durable) with this type: direct, fanout, topic, headers",
        ),
        Param::with_default(
            "routing_key",
            "With declare and exchange: the binding key",
            "#",
        ),
        Param::optional(
            "dead_letter_exchange",
            "With declare: the queue's x-dead-letter-exchange, where rejected messages go",
        ),
        Param::with_default(
            "requeue",
            "Put rejected messages back in the queue instead of dead-lettering them",
            "false",
        ),
        Param::optional(
            "max_bytes",
            "Reject bodies larger than this (default: what fits in one protocol frame)",
        ),
    ],
};

/// Everything that describes how to consume, read once from the parameters.
struct Config {
    url: String,
    shown_url: String,
    name: String,
    queue: ShortString,
    prefetch: u16,
    declare: bool,
    exchange: Option<ShortString>,
    exchange_type: Option<ExchangeKind>,
    routing_key: ShortString,
    dead_letter_exchange: Option<ShortString>,
}

/// One connection to the broker, with its consuming channel.
struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    /// The connection's events: when it fails, lapin's own error says why.
    events: BoxStream<'static, Event>,
}

impl Session {
    /// Why the connection failed, when lapin reported it: an operation on a connection that
    /// already failed only says "invalid channel state", the root cause (such as a delivery
    /// that could not be parsed) comes as an event.
    fn connection_error(&mut self) -> Option<lapin::Error> {
        while let Some(Some(event)) = self.events.next().now_or_never() {
            if let Event::Error(e) = event {
                return Some(e);
            }
        }
        None
    }
}

fn main() -> ExitCode {
    rabbitmq_connectors::quiet_lapin_logs();
    connector_runtime::legacy_source(SPEC)
        .check(|ctx| async move {
            let r = async {
                let cfg = config(&ctx)?;
                let s = open(&cfg, 0).await.map_err(|f| match f {
                    Failure::Fatal(e) => e,
                    Failure::Transient(why) => anyhow!("{why}"),
                })?;
                close_quietly(&s.conn, "check done").await;
                Ok::<_, anyhow::Error>(cfg.shown_url)
            }
            .await;
            vec![Check::from_result("broker reachable and queue consumable", r)]
        })
        .run(|ctx, mut source| async move {
            let cfg = config(&ctx)?;
            let requeue = ctx.params.flag("requeue")?;
            let frame_room = ctx.options.max_frame.saturating_sub(1024);
            let max_bytes: usize = ctx.params.parse_or("max_bytes", frame_room)?.min(frame_room);
            let mut acks = source.acks();
            let mut epoch = 1u64;
            // The queue first: a missing queue or a refused login is reported at once, not
            // after the engine is reachable (the first notify connects to the engine).
            let Some(mut session) =
                with_backoff(&ctx, &format!("RabbitMQ at {}", cfg.shown_url), false, || {
                    open(&cfg, epoch)
                })
                .await?
            else {
                return Ok(());
            };
            let stream = source
                .notify(&format!("rabbitmq:{}:{}", ctx.connector, cfg.queue), None)
                .await?;
            // Ids increase across reconnects and across runs of this process (see Ledger).
            let first_id = stream.resume.map_or(0, |p| p.saturating_add(1));
            let mut ledger = Ledger::new(first_id.max(unix_nanos()));
            tracing::info!("consuming queue `{}` at {}", cfg.queue, cfg.shown_url);
            let rejected = ctx.metrics.registry.counter(
                "rabbitmq_rejected_total",
                "Deliveries rejected (basic.nack) because their body is too large.",
                &[],
            );
            let mut reconnects = Reconnects::default();
            let consuming = format!("consume from queue `{}`", cfg.queue);
            let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
            // While deliveries wait for the engine, the broker sends nothing new (prefetch), so
            // a lost engine connection must be noticed without a write.
            let mut idle_tick = tokio::time::interval(Duration::from_millis(500));
            idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Set when the broker connection is lost: reconnect below (or stop when fatal).
                let lost: Option<Failure> = tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => break,
                    got = acks.next() => {
                        let point = got.iter().filter(|a| a.stream_id == stream.id).map(|a| a.point).max();
                        match point {
                            Some(p) => ack_upto(&mut ledger, p, epoch, &session.channel)
                                .await
                                .err()
                                .map(|e| Failure::lost(&e, "acknowledge deliveries (basic.ack)")),
                            None => None,
                        }
                    }
                    _ = idle_tick.tick() => {
                        if !ledger.is_empty() {
                            source.keep_alive().await?;
                        }
                        None
                    }
                    _ = lag_tick.tick() => {
                        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                        match session.channel.queue_declare(cfg.queue.clone(), passive, FieldTable::default()).await {
                            Ok(q) => { ctx.metrics.lag.set(i64::from(q.message_count())); None }
                            Err(e) => Some(Failure::lost(&e, &consuming)),
                        }
                    }
                    next = session.consumer.next() => {
                        let mut next = next;
                        let mut lost = None;
                        // Take every delivery that is already here, then flush once.
                        for _ in 0..4096 {
                            let delivery = match next {
                                Some(Ok(d)) => d,
                                Some(Err(e)) => { lost = Some(Failure::lost(&e, &consuming)); break; }
                                None => {
                                    lost = Some(Failure::Transient("the broker cancelled the consumer".into()));
                                    break;
                                }
                            };
                            ctx.metrics.messages_in.inc();
                            ctx.metrics.bytes_in.add(delivery.data.len() as u64);
                            if delivery.data.len() > max_bytes {
                                rejected.inc();
                                ctx.metrics.error("decode");
                                tracing::warn!(
                                    "rejecting a {}-byte message (routing key {:?}): over max_bytes {max_bytes}{}",
                                    delivery.data.len(), delivery.routing_key.as_str(),
                                    if requeue { "; requeued" } else { "; dead-lettered" }
                                );
                                let opts = BasicNackOptions { multiple: false, requeue };
                                if let Err(e) = delivery.acker.nack(opts).await {
                                    lost = Some(Failure::lost(&e, "reject a delivery (basic.nack)"));
                                    break;
                                }
                            } else {
                                let id = ledger.record(epoch, delivery.delivery_tag);
                                source
                                    .write(stream.id, id, delivery.routing_key.as_str().as_bytes(), &delivery.data)
                                    .await?;
                            }
                            match session.consumer.next().now_or_never() {
                                Some(n) => next = n,
                                None => break,
                            }
                        }
                        source.flush().await?;
                        lost
                    }
                };
                if let Some(failure) = lost {
                    let failure = match session.connection_error() {
                        Some(e) => Failure::lost(&e, &consuming),
                        None => failure,
                    };
                    let why = match failure {
                        Failure::Transient(why) => why,
                        Failure::Fatal(e) => {
                            close_quietly(&session.conn, "stopping").await;
                            return Err(e);
                        }
                    };
                    tracing::warn!(
                        "lost the broker connection ({why}); {} deliveries not yet acknowledged by the engine will come again",
                        ledger.len()
                    );
                    close_quietly(&session.conn, "reconnecting").await;
                    if !reconnects.wait(&ctx).await {
                        break;
                    }
                    epoch += 1;
                    let what = format!("RabbitMQ at {}", cfg.shown_url);
                    match with_backoff(&ctx, &what, true, || open(&cfg, epoch)).await? {
                        Some(s) => session = s,
                        None => break,
                    }
                    reconnects.opened();
                }
            }
            // Shutdown: wait for the engine to acknowledge what it has, acknowledge that to
            // the broker; closing the channel hands everything else back to the queue.
            let left = source.drain(Duration::from_secs(10)).await?;
            if let Some(p) = acks
                .try_next()
                .iter()
                .filter(|a| a.stream_id == stream.id)
                .map(|a| a.point)
                .max()
            {
                let _ = ack_upto(&mut ledger, p, epoch, &session.channel).await;
            }
            if left > 0 {
                tracing::warn!("{left} messages not acknowledged by the engine: the broker will deliver them again");
            }
            close_quietly(&session.conn, "shutdown").await;
            Ok(())
        })
}

/// Acknowledges to the broker every delivery the engine processed, up to `point`.
async fn ack_upto(
    ledger: &mut Ledger,
    point: u64,
    epoch: u64,
    channel: &Channel,
) -> Result<(), lapin::Error> {
    let settled = ledger.settle(point, epoch);
    if settled.stale > 0 {
        tracing::debug!(
            "{} acknowledged deliveries belonged to a closed channel; the broker redelivers them",
            settled.stale
        );
    }
    match settled.ack_tag {
        Some(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
        None => Ok(()),
    }
}

fn config(ctx: &Context) -> Result<Config> {
    let c = ctx.connector.as_str();
    let url = ctx.params.required("amqpurl")?.to_string();
    let shown_url = check_url(c, &url)?;
    let prefetch: u16 = ctx.params.parse_or("prefetch", 1000)?;
    if prefetch == 0 {
        bail!(
            "--{c}-prefetch 0 means unlimited deliveries in flight: give a count from 1 to 65535"
        );
    }
    let exchange_type = match ctx.params.get("exchange_type") {
        None => None,
        Some("direct") => Some(ExchangeKind::Direct),
        Some("fanout") => Some(ExchangeKind::Fanout),
        Some("topic") => Some(ExchangeKind::Topic),
        Some("headers") => Some(ExchangeKind::Headers),
        Some(other) => bail!(
            "invalid --{c}-exchange_type {other:?}: expected direct, fanout, topic or headers"
        ),
    };
    let opt = |p: &str| -> Result<Option<ShortString>> {
        ctx.params.get(p).map(|v| short(c, p, v)).transpose()
    };
    Ok(Config {
        url,
        shown_url,
        name: format!("{}/{}", ctx.program, ctx.connector),
        queue: short(c, "queue", ctx.params.required("queue")?)?,
        prefetch,
        declare: ctx.params.flag("declare")?,
        exchange: opt("exchange")?,
        exchange_type,
        routing_key: short(
            c,
            "routing_key",
            ctx.params.get("routing_key").unwrap_or("#"),
        )?,
        dead_letter_exchange: opt("dead_letter_exchange")?,
    })
}

/// Connects, declares what `declare` asks for, sets the prefetch and starts consuming.
async fn open(cfg: &Config, epoch: u64) -> Result<Session, Failure> {
    let conn = connect(&cfg.url, &cfg.name).await?;
    let events = conn.events_listener().boxed();
    let fail = |doing: String| move |e: lapin::Error| Failure::from_lapin(&e, &doing);
    let channel = conn
        .create_channel()
        .await
        .map_err(fail("open a channel".into()))?;
    let q = &cfg.queue;
    if cfg.declare {
        if let (Some(x), Some(kind)) = (&cfg.exchange, &cfg.exchange_type) {
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(x.clone(), kind.clone(), opts, FieldTable::default())
                .await
                .map_err(fail(format!("declare exchange `{x}`")))?;
        }
        let mut args = FieldTable::default();
        if let Some(dlx) = &cfg.dead_letter_exchange {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        channel
            .queue_declare(q.clone(), QueueDeclareOptions::durable(), args)
            .await
            .map_err(fail(format!("declare queue `{q}`")))?;
        if let Some(x) = &cfg.exchange {
            channel
                .queue_bind(
                    q.clone(),
                    x.clone(),
                    cfg.routing_key.clone(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(fail(format!("bind queue `{q}` to exchange `{x}`")))?;
        }
    }
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(fail("set the prefetch (basic.qos)".into()))?;
    let tag = format!("{}-{}-{epoch}", cfg.name, std::process::id());
    let consumer = channel
        .basic_consume(
            q.clone(),
            short("", "", &tag).unwrap_or_default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail(format!("consume from queue `{q}`")))?;
    Ok(Session {
        conn,
        channel,
        consumer,
        events,
    })
}
