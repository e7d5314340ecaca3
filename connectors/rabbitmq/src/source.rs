//! The consuming side of `rabbitmq_source`: declaring and consuming the queue, reading what
//! the broker delivered, acknowledging (`basic.ack`, `multiple`) and rejecting deliveries,
//! the lag gauge, and surviving a broker restart.

use std::sync::Arc;

use connector_runtime::prelude::*;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Acker;
use lapin::{Channel, Connection, Consumer, Event, ExchangeKind};
use tokio::time::{Interval, MissedTickBehavior};

use crate::{connect, short, Failure, Link};

/// How long an answer from the broker (an ack sent, a queue's size) may take before the
/// connection counts as lost.
const ANSWER: Duration = Duration::from_secs(5);

/// How to consume: the broker, the queue and what to declare, from the parameters.
pub struct Consume {
    /// Broker URL (with the password).
    pub url: String,
    /// The URL with the password masked, for logs.
    pub shown_url: String,
    /// Connection name in the broker's management UI (`program/connector`).
    pub name: String,
    /// Queue to consume from.
    pub queue: ShortString,
    /// `basic.qos` prefetch count.
    pub prefetch: u16,
    /// Declare the queue (durable) and its binding instead of requiring them.
    pub declare: bool,
    /// With `declare`: bind the queue to this exchange.
    pub exchange: Option<ShortString>,
    /// With `declare` and `exchange`: declare the exchange (durable) of this kind too.
    pub exchange_type: Option<ExchangeKind>,
    /// With `declare` and `exchange`: the binding key.
    pub routing_key: ShortString,
    /// With `declare`: the queue's `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<ShortString>,
    /// Rejected deliveries go back into the queue instead of to its dead-letter exchange.
    pub requeue: bool,
}

/// The `exchange_type` parameter as an exchange kind.
pub fn exchange_kind(connector: &str, value: Option<&str>) -> Result<Option<ExchangeKind>> {
    Ok(Some(match value {
        None => return Ok(None),
        Some("direct") => ExchangeKind::Direct,
        Some("fanout") => ExchangeKind::Fanout,
        Some("topic") => ExchangeKind::Topic,
        Some("headers") => ExchangeKind::Headers,
        Some(other) => bail!(
            "invalid --{connector}-exchange_type {other:?}: expected direct, fanout, topic or headers"
        ),
    }))
}

/// One connection to the broker, with its consuming channel.
pub struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    /// The connection's events: when it fails, lapin's own error says why.
    events: BoxStream<'static, Event>,
}

impl AsRef<Connection> for Session {
    fn as_ref(&self) -> &Connection {
        &self.conn
    }
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

/// The commit token of a delivery: the epoch of its channel and its acker. Tokens of a
/// closed channel are never acknowledged: the broker delivers those messages again.
pub struct Tag {
    epoch: u64,
    acker: Acker,
}

/// The queue being consumed, over as many connections as broker restarts require.
pub struct Queue {
    ctx: Context,
    cfg: Arc<Consume>,
    link: Link<Session>,
    consuming: String,
    lag: Interval,
    rejected: Counter,
}

impl Queue {
    /// Connects (waiting for the broker while it is unreachable), declares what `declare`
    /// asks for, sets the prefetch and starts consuming.
    pub async fn connect(ctx: &Context, cfg: Consume) -> Result<Queue> {
        let cfg = Arc::new(cfg);
        let mut link = Link::new(format!("RabbitMQ at {}", cfg.shown_url));
        link.first(ctx, |epoch| open(cfg.clone(), epoch)).await?;
        tracing::info!("consuming queue `{}` at {}", cfg.queue, cfg.shown_url);
        let mut lag = tokio::time::interval(Duration::from_secs(5));
        lag.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let rejected = ctx.metrics.registry.counter(
            "rabbitmq_rejected_total",
            "Deliveries rejected (basic.nack) because their body is too large.",
            &[],
        );
        Ok(Queue {
            rejected,
            ctx: ctx.clone(),
            consuming: format!("consume from queue `{}`", cfg.queue),
            cfg,
            link,
            lag,
        })
    }

    /// `--check`: the broker is reachable and the queue can be consumed.
    pub async fn check(cfg: Consume) -> Result<String> {
        let shown = cfg.shown_url.clone();
        crate::probe(open(Arc::new(cfg), 0)).await?;
        Ok(shown)
    }

    /// Waits for deliveries and returns those that are here (up to `max`), each with its
    /// commit token; empty after a lag update or a reconnect. Cancel safe: once a delivery
    /// arrived, nothing else is awaited. A lost connection is reopened by the next calls;
    /// a delivery lapin cannot parse is an error.
    pub async fn next(&mut self, max: usize) -> Result<Vec<(Delivery, Tag)>> {
        let Some(s) = self.link.session() else {
            self.link.due().await;
            let cfg = self.cfg.clone();
            self.link.open(&self.ctx, |epoch| open(cfg, epoch)).await?;
            return Ok(Vec::new());
        };
        let first = tokio::select! {
            next = s.consumer.next() => Ok(next),
            _ = self.lag.tick() => {
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                let q = self.cfg.queue.clone();
                let declare = s.channel.queue_declare(q, passive, FieldTable::default());
                match tokio::time::timeout(ANSWER, declare).await {
                    Ok(Ok(q)) => {
                        self.ctx.metrics.lag.set(i64::from(q.message_count()));
                        return Ok(Vec::new());
                    }
                    Ok(Err(e)) => Err(Failure::lost(&e, &self.consuming)),
                    Err(_) => Err(Failure::Transient("no answer to queue.declare".into())),
                }
            }
        };
        let mut next = match first {
            Ok(next) => next,
            Err(f) => return self.fail(f).map(|()| Vec::new()),
        };
        let epoch = self.link.epoch();
        let mut got = Vec::new();
        let failure = loop {
            match next {
                Some(Ok(d)) => {
                    let acker = d.acker.clone();
                    got.push((d, Tag { epoch, acker }));
                }
                Some(Err(e)) => break Some(Failure::lost(&e, &self.consuming)),
                None => {
                    break Some(Failure::Transient(
                        "the broker cancelled the consumer".into(),
                    ))
                }
            }
            if got.len() >= max {
                break None;
            }
            let Some(s) = self.link.session() else {
                break None;
            };
            match s.consumer.next().now_or_never() {
                Some(n) => next = n,
                None => break None,
            }
        };
        match failure {
            None => Ok(got),
            // Deliveries of a lost channel come again on the next one.
            Some(f) => self.fail(f).map(|()| Vec::new()),
        }
    }

    /// Rejects a delivery whose body is over `max_bytes` (`basic.nack`): to the queue's
    /// dead-letter exchange, or back into the queue with `requeue`. Logged and counted; the
    /// nack is queued at once, before any later acknowledgement.
    pub fn reject(&mut self, d: &Delivery, tag: Tag, max_bytes: usize) -> Result<()> {
        let size = d.data.len();
        self.rejected.inc();
        self.ctx.metrics.messages_in.inc();
        self.ctx.metrics.bytes_in.add(size as u64);
        self.ctx.metrics.error("decode");
        let requeue = self.cfg.requeue;
        tracing::warn!(
            "rejecting a {size}-byte message (routing key {:?}): over max_bytes {max_bytes}{}",
            d.routing_key.as_str(),
            if requeue {
                "; requeued"
            } else {
                "; dead-lettered"
            }
        );
        let opts = BasicNackOptions {
            multiple: false,
            requeue,
        };
        match tag.acker.nack(opts).now_or_never() {
            Some(Err(e)) => self.fail(Failure::lost(&e, "reject a delivery (basic.nack)")),
            _ => Ok(()),
        }
    }

    /// Acknowledges the deliveries of `tokens` (in delivery order) that belong to the current
    /// channel: one `basic.ack(multiple)` with the last of them. Tags of a channel are
    /// acknowledged in order, so that covers exactly these deliveries.
    pub async fn ack(&mut self, tokens: Vec<Tag>) -> Result<()> {
        let epoch = self.link.epoch();
        let stale = tokens.iter().filter(|t| t.epoch != epoch).count();
        if stale > 0 {
            tracing::debug!("{stale} acknowledged deliveries belonged to a closed channel; the broker redelivers them");
        }
        let last = tokens.into_iter().rev().find(|t| t.epoch == epoch);
        let (Some(last), Some(s)) = (last, self.link.session()) else {
            return Ok(());
        };
        // An ack queued just as the connection died may never be answered: bound the wait.
        let doing = "acknowledge deliveries (basic.ack)";
        if !s.conn.status().connected() {
            return self.fail(Failure::Transient(format!("{doing}: connection closed")));
        }
        let ack = last.acker.ack(BasicAckOptions { multiple: true });
        match tokio::time::timeout(ANSWER, ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => self.fail(Failure::lost(&e, doing)),
            Err(_) => self.fail(Failure::Transient(format!("{doing}: no answer"))),
        }
    }

    /// Closes the connection: the broker takes back what was not acknowledged.
    pub async fn close(&mut self) {
        self.link.close("shutdown").await;
    }

    /// The connection failed: stop when it would fail again on every connection (a delivery
    /// lapin cannot parse), else drop it and reconnect on the next [`Queue::next`].
    fn fail(&mut self, failure: Failure) -> Result<()> {
        let failure = match self.link.session().and_then(Session::connection_error) {
            Some(e) => Failure::lost(&e, &self.consuming),
            None => failure,
        };
        match failure {
            Failure::Fatal(e) => {
                self.link.session = None;
                Err(e)
            }
            Failure::Transient(why) => {
                self.link.lost(
                    &why,
                    "deliveries not yet acknowledged by the engine will come again",
                );
                Ok(())
            }
        }
    }
}

/// Connects, declares what `declare` asks for, sets the prefetch and starts consuming.
async fn open(cfg: Arc<Consume>, epoch: u64) -> Result<Session, Failure> {
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
