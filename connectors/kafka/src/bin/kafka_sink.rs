//! kafka_sink: writes every message from the engine to a Kafka topic (MESSAGE key -> record
//! key, payload -> record value).
//!
//! Delivery guarantee: at-least-once. A message is acknowledged to the engine only after its
//! delivery report succeeded, and in order per stream (a later message confirmed first
//! waits for the earlier ones). The producer is idempotent with `acks=all` by default, so
//! librdkafka's own retries add no duplicates; a message replayed by the engine after a
//! crash can be written twice.
//!
//! Failures: a message the broker will never take (too large, unknown topic, not allowed)
//! goes to `--dead-letter DIR` with its reason and is acknowledged; without that flag the
//! sink stops with the reason. Transient failures are retried by librdkafka for
//! `message.timeout.ms` and then produced again by this file; a fatal producer error
//! (idempotence state lost) stops the sink, and the engine replays what was not
//! acknowledged when it reconnects.
//!
//! Copy this file to change it: parameters in `SPEC`, the producer context, then `main`.

use std::collections::VecDeque;
use std::process::ExitCode;

use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::prelude::*;
use kafka_connectors::{self as kc, Failure};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "kafka_sink",
    about: "Writes every message from the engine to a Kafka topic; acknowledges it once the broker confirmed it.",
    direction: Direction::Sink,
    params: &[
        Param::required("topic", "Topic to write to"),
        Param::with_default(
            "bootstrap_brokers",
            "Comma-separated Kafka brokers (host:port)",
            "127.0.0.1:9092",
        ),
        Param::with_default(
            "compression",
            "Record batch compression: none, gzip, snappy, lz4 or zstd",
            "none",
        ),
        Param::with_default(
            "acks",
            "Broker acknowledgements before a write counts: all, 1 or 0 (0 and 1 need idempotence=false)",
            "all",
        ),
        Param::with_default(
            "idempotence",
            "Idempotent producer: librdkafka's retries never duplicate or reorder",
            "true",
        ),
        Param::with_default(
            "linger_ms",
            "How long librdkafka waits to fill a batch",
            "5",
        ),
        Param::with_default(
            "max_in_flight",
            "Messages handed to librdkafka and not yet confirmed before the sink stops reading (back-pressure to the engine)",
            "50000",
        ),
        Param::repeated(
            "option",
            "Any librdkafka setting as key=value (SASL, TLS, batch.size, message.timeout.ms, ...); repeat it",
        ),
    ],
};

/// A delivery report: the message's ticket (see [`InFlight`]) and the outcome.
type Report = (usize, Result<(), KafkaError>);

/// Delivery reports on their way from librdkafka's polling thread to the main loop, handed
/// over in batches (one wake-up per batch, not per message).
#[derive(Default)]
struct Reports {
    queue: Mutex<Vec<Report>>,
    ready: Notify,
}

impl Reports {
    /// Waits until at least one report is there and moves all of them into `out`.
    async fn take(&self, out: &mut Vec<Report>) {
        loop {
            {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if !q.is_empty() {
                    std::mem::swap(&mut *q, out);
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// The producer context: logs, errors, and delivery reports for the main loop.
struct SinkContext {
    reports: Arc<Reports>,
    metrics: ConnectorMetrics,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        kc::log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kc::client_error(&self.metrics, &error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        let mut q = self.reports.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push((ticket, outcome));
        let first = q.len() == 1;
        drop(q);
        if first {
            self.reports.ready.notify_one();
        }
    }
}

/// Messages of one engine stream handed to librdkafka, in the order received.
struct StreamQueue {
    id: u64,
    order: InOrderAcks,
    msgs: VecDeque<SinkMessage>,
    /// `InOrderAcks` ticket of `msgs[0]`.
    first: u64,
}

/// Everything handed to the producer and not yet acknowledged to the engine.
///
/// A message's delivery opaque (its "ticket") is its stream's index in `streams` (high
/// bits) and its `InOrderAcks` ticket (low bits): a report finds its message without a map.
#[derive(Default)]
struct InFlight {
    streams: Vec<StreamQueue>,
    /// Produce attempts without a delivery report yet.
    pending: usize,
    last: Option<(u64, usize)>,
}

const TICKET_BITS: u32 = 40;

impl InFlight {
    fn push(&mut self, msg: SinkMessage) -> usize {
        let idx = match self.last {
            Some((id, i)) if id == msg.stream_id => i,
            _ => {
                let i = match self.streams.iter().position(|q| q.id == msg.stream_id) {
                    Some(i) => i,
                    None => {
                        self.streams.push(StreamQueue {
                            id: msg.stream_id,
                            order: InOrderAcks::default(),
                            msgs: VecDeque::new(),
                            first: 0,
                        });
                        self.streams.len() - 1
                    }
                };
                self.last = Some((msg.stream_id, i));
                i
            }
        };
        let q = &mut self.streams[idx];
        let ticket = q.order.push(msg.message_id);
        q.msgs.push_back(msg);
        self.pending += 1;
        (idx << TICKET_BITS) | (ticket as usize & ((1 << TICKET_BITS) - 1))
    }

    fn split(ticket: usize) -> (usize, u64) {
        (
            ticket >> TICKET_BITS,
            (ticket & ((1 << TICKET_BITS) - 1)) as u64,
        )
    }

    fn message(&self, ticket: usize) -> Option<&SinkMessage> {
        let (idx, t) = Self::split(ticket);
        let q = self.streams.get(idx)?;
        q.msgs.get(t.checked_sub(q.first)? as usize)
    }

    fn complete(&mut self, ticket: usize) {
        let (idx, t) = Self::split(ticket);
        if let Some(q) = self.streams.get_mut(idx) {
            q.order.complete(t);
        }
    }

    /// Moves every message whose predecessors are all confirmed into `out`.
    fn release(&mut self, out: &mut Vec<SinkMessage>) {
        for q in &mut self.streams {
            let before = q.order.pending();
            if q.order.advance().is_some() {
                let n = before - q.order.pending();
                out.extend(q.msgs.drain(..n));
                q.first += n as u64;
            }
        }
    }
}

/// Everything the main loop needs to produce and to handle reports.
struct Writer<'a> {
    ctx: &'a Context,
    producer: &'a ThreadedProducer<SinkContext>,
    topic: &'a str,
    inflight: InFlight,
    reports: Arc<Reports>,
    retries: Backoff,
    released: Vec<SinkMessage>,
}

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        .check(|ctx| async move { check(&ctx) })
        .run(|ctx, mut sink| async move {
            let topic = ctx.params.required("topic")?.to_string();
            let brokers = ctx.params.required("bootstrap_brokers")?.to_string();
            let compression =
                kc::compression_codec(ctx.params.required("compression")?, &ctx.connector)?;
            let acks = kc::acks_setting(ctx.params.required("acks")?, &ctx.connector)?;
            let idempotence = ctx.params.flag("idempotence")?;
            if idempotence && acks != "all" {
                bail!(
                    "--{c}-acks {acks} needs --{c}-idempotence false (an idempotent producer requires acks=all)",
                    c = ctx.connector
                );
            }
            let linger: u64 = ctx.params.parse_or("linger_ms", 5)?;
            let max_in_flight: usize = ctx.params.parse_or("max_in_flight", 50_000)?;
            let mut config = kc::client_config(
                &brokers,
                &[
                    ("acks", acks),
                    ("enable.idempotence", if idempotence { "true" } else { "false" }),
                    ("compression.codec", compression),
                    ("linger.ms", &linger.to_string()),
                    ("queue.buffering.max.messages", "1000000"),
                ],
                ctx.params.all("option"),
                &ctx.connector,
            )?;
            kc::set_log_level(&mut config);
            let reports = Arc::new(Reports::default());
            let producer: ThreadedProducer<SinkContext> = config
                .create_with_context(SinkContext {
                    reports: reports.clone(),
                    metrics: ctx.metrics.clone(),
                })
                .context("cannot create the Kafka producer (check --NAME-compression and --NAME-option settings)")?;
            tracing::info!("writing to topic `{topic}` on {brokers} (acks={acks}, idempotence={idempotence}, compression={compression})");
            warm_up(&producer, &topic).await;

            let mut taken = Vec::new();
            let mut w = Writer {
                ctx: &ctx,
                producer: &producer,
                topic: &topic,
                inflight: InFlight::default(),
                reports,
                retries: Backoff::default(),
                released: Vec::new(),
            };
            loop {
                tokio::select! {
                    biased;
                    _ = w.reports.take(&mut taken) => w.apply(&mut taken).await?,
                    batch = sink.read_batch(4096), if w.inflight.pending < max_in_flight => {
                        let Some(batch) = batch else { break };
                        for msg in batch {
                            let ticket = w.inflight.push(msg);
                            if let Err(e) = w.try_send(ticket) {
                                w.send_failed(ticket, e).await?;
                            }
                        }
                    }
                }
                // Acknowledge every stream's confirmed prefix.
                w.inflight.release(&mut w.released);
                sink.ack_all(&w.released);
                w.released.clear();
            }

            // Shutdown or end of input: wait for what librdkafka still holds.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while w.inflight.pending > 0 {
                tokio::select! {
                    _ = w.reports.take(&mut taken) => w.apply(&mut taken).await?,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                w.inflight.release(&mut w.released);
                sink.ack_all(&w.released);
                w.released.clear();
            }
            if w.inflight.pending > 0 {
                tracing::warn!(
                    "{} messages were not confirmed by Kafka before exit; the engine sends them again",
                    w.inflight.pending
                );
            }
            Ok(())
        })
}

impl Writer<'_> {
    /// Hands message `ticket` to librdkafka (`Ok` also when it was refused and set aside).
    fn try_send(&self, ticket: usize) -> Result<(), KafkaError> {
        let Some(msg) = self.inflight.message(ticket) else {
            return Ok(());
        };
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(self.topic, ticket).payload(&msg.payload[..]);
        if !msg.key.is_empty() {
            record = record.key(&msg.key[..]);
        }
        self.producer.send(record).map_err(|(e, _)| e)
    }

    /// Produces message `ticket`, waiting for delivery reports while librdkafka's queue is
    /// full.
    async fn produce(&mut self, ticket: usize) -> Result<()> {
        match self.try_send(ticket) {
            Ok(()) => Ok(()),
            Err(e) => self.send_failed(ticket, e).await,
        }
    }

    /// `try_send` failed: wait for room when the queue is full, else handle the failure.
    async fn send_failed(&mut self, ticket: usize, mut err: KafkaError) -> Result<()> {
        while err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
            // librdkafka's queue is full: handle some delivery reports, then retry.
            let reports = self.reports.clone();
            let mut taken = Vec::new();
            reports.take(&mut taken).await;
            Box::pin(self.apply(&mut taken)).await?;
            match self.try_send(ticket) {
                Ok(()) => return Ok(()),
                Err(e) => err = e,
            }
        }
        self.inflight.pending -= 1;
        Box::pin(self.fail(ticket, err)).await
    }

    /// Applies the delivery reports in `taken` (emptying it).
    async fn apply(&mut self, taken: &mut Vec<Report>) -> Result<()> {
        for report in taken.drain(..) {
            if let Some((ticket, e)) = self.on_report(report) {
                Box::pin(self.fail(ticket, e)).await?;
            }
        }
        Ok(())
    }

    /// Applies one delivery report; returns the failure still to handle, if any.
    fn on_report(&mut self, (ticket, outcome): Report) -> Option<(usize, KafkaError)> {
        self.inflight.pending -= 1;
        match outcome {
            Ok(()) => {
                if let Some(m) = self.inflight.message(ticket) {
                    self.ctx.metrics.messages_out.inc();
                    self.ctx.metrics.bytes_out.add(m.payload.len() as u64);
                }
                self.inflight.complete(ticket);
                if self.retries.attempts() > 0 {
                    self.retries.reset();
                }
                None
            }
            Err(e) => Some((ticket, e)),
        }
    }

    /// A message failed: dead-letter it (permanent), stop (fatal) or produce it again.
    async fn fail(&mut self, ticket: usize, error: KafkaError) -> Result<()> {
        let Some(msg) = self.inflight.message(ticket).cloned() else {
            return Ok(());
        };
        let failure = match error.rdkafka_error_code() {
            Some(c) => kc::classify(c),
            None => Failure::Permanent,
        };
        let fatal = self.producer.client().fatal_error();
        if failure == Failure::Fatal || fatal.is_some() {
            let detail = fatal
                .map(|(c, r)| format!(" ({c}: {r})"))
                .unwrap_or_default();
            bail!(
                "the Kafka producer hit a fatal error: {error}{detail}; restart the sink: the engine re-sends what was not acknowledged"
            );
        }
        if failure == Failure::Permanent {
            let reason = format!(
                "Kafka refused the record for topic `{}`: {error}",
                self.topic
            );
            self.ctx.dead_letter(&msg, &reason).await?;
            self.inflight.complete(ticket);
            return Ok(());
        }
        self.ctx.metrics.error("kafka_retry");
        let delay = self.retries.next_delay();
        tracing::warn!(
            "message {} not delivered ({error}); producing it again in {delay:?}",
            msg.message_id
        );
        tokio::time::sleep(delay).await;
        self.inflight.pending += 1;
        Box::pin(self.produce(ticket)).await
    }
}

/// Connects and learns the topic's partitions before the first message arrives (otherwise
/// the first messages wait for that), and says early when the topic is missing. Never fails:
/// librdkafka keeps retrying on its own.
async fn warm_up(producer: &ThreadedProducer<SinkContext>, topic: &str) {
    let (p, t) = (producer.clone(), topic.to_string());
    let md = tokio::task::spawn_blocking(move || {
        p.client()
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map(|md| {
                md.topics()
                    .first()
                    .map(|t| (t.error().is_none(), t.partitions().len()))
            })
    })
    .await;
    match md {
        Ok(Ok(Some((true, n)))) => tracing::info!("topic `{topic}` has {n} partitions"),
        Ok(Ok(_)) => tracing::warn!(
            "topic `{topic}` does not exist (yet): its messages will be refused unless the broker creates it"
        ),
        Ok(Err(e)) => tracing::warn!("Kafka metadata not available yet ({e}); retrying in the background"),
        Err(_) => {}
    }
}

/// `--check`: the brokers answer and the topic exists.
fn check(ctx: &Context) -> Vec<Check> {
    let brokers = ctx
        .params
        .get("bootstrap_brokers")
        .unwrap_or("127.0.0.1:9092");
    let what = format!("Kafka brokers {brokers} answer");
    let config = match kc::client_config(brokers, &[], ctx.params.all("option"), &ctx.connector) {
        Ok(c) => c,
        Err(e) => return vec![Check::fail(what, format!("{e:#}"))],
    };
    let producer: rdkafka::producer::BaseProducer = match config.create() {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                what,
                format!("{e}: fix the --NAME-option settings"),
            )]
        }
    };
    let topic = ctx.params.get("topic").unwrap_or_default().to_string();
    let md = match producer.client().fetch_metadata(
        Some(&topic).filter(|t| !t.is_empty()).map(String::as_str),
        Duration::from_secs(10),
    ) {
        Ok(md) => md,
        Err(e) => {
            return vec![Check::fail(
                what,
                format!(
                    "{e}: start the broker or fix --{}-bootstrap_brokers",
                    ctx.connector
                ),
            )]
        }
    };
    let mut checks = vec![Check::ok(what)];
    let what = format!("topic `{topic}` exists");
    checks.push(match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() => {
            Check::ok(format!("{what} ({} partitions)", t.partitions().len()))
        }
        _ => Check::fail(
            what,
            "create it (or enable auto-creation on the broker), or fix --NAME-topic".to_string(),
        ),
    });
    checks
}
