//! kafka_source: reads Kafka topics as a member of a consumer group and sends every record
//! to the engine.
//!
//! One protocol stream per topic-partition (named `topic/partition`, id = hash of the name);
//! message id = Kafka offset, MESSAGE key = Kafka key, payload = Kafka value, event time =
//! Kafka timestamp.
//!
//! Delivery guarantee: at-least-once. Offsets are committed to the group only for what the
//! engine acknowledged (offset + 1 of the last acknowledged record, per partition; never
//! auto-commit): every second, synchronously when partitions are revoked, and synchronously
//! after draining on SIGTERM. A partition resumes at the later of the group's committed
//! offset and the engine's NOTIFY_ACK point + 1, so after a crash only records that were in
//! flight (sent, not yet acknowledged) are sent again.
//!
//! Rebalances: librdkafka calls the context below from inside the consumer's poll. On revoke
//! it commits what the engine acknowledged and tells the main loop, which stops sending for
//! those partitions and ends their streams (EOS); on assign the main loop announces the new
//! streams (NOTIFY) and seeks to the resume position.
//!
//! Copy this file to change it: parameters in `SPEC`, the consumer context, then `main`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::prelude::*;
use connector_runtime::source::ShuttingDown;
use futures::{FutureExt, StreamExt};
use kafka_connectors as kc;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::consumer::{MessageStream, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use telemetry::Counter;
use tokio::sync::mpsc;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "kafka_source",
    about: "Reads Kafka topics in a consumer group and sends every record to the engine; commits offsets only for what the engine acknowledged.",
    direction: Direction::Source,
    params: &[
        Param::required(
            "topics",
            "Comma-separated topics to read; an entry starting with ^ is a regular expression",
        ),
        Param::with_default(
            "bootstrap_brokers",
            "Comma-separated Kafka brokers (host:port)",
            "127.0.0.1:9092",
        ),
        Param::optional(
            "consumer_group",
            "Consumer group id [default: the connector name]",
        ),
        Param::with_default(
            "start",
            "Where to start a partition the group has no offset for: earliest or latest",
            "earliest",
        ),
        Param::with_default(
            "commit_interval_ms",
            "How often offsets the engine acknowledged are committed",
            "1000",
        ),
        Param::with_default(
            "drain_timeout_secs",
            "On SIGTERM, how long to wait for the engine to acknowledge what was sent before the final commit",
            "30",
        ),
        Param::repeated(
            "option",
            "Any librdkafka setting as key=value (SASL, TLS, fetch sizes, session.timeout.ms, ...); repeat it",
        ),
    ],
};

/// What the engine acknowledged and what was committed, for one assigned partition.
struct Progress {
    topic: String,
    partition: i32,
    /// Last offset the engine acknowledged.
    acked: Option<i64>,
    /// Offset committed to the group (the next one to read).
    committed: Option<i64>,
}

/// State shared by the main loop and the rebalance callbacks (which run inside the
/// consumer's poll, on the same thread, so the lock is never contended for long).
struct Shared {
    acks: Acks,
    /// By stream id; only partitions currently assigned and announced to the engine.
    progress: HashMap<u64, Progress>,
}

impl Shared {
    fn absorb(&mut self, acked: Vec<Acked>) {
        for a in acked {
            if let Some(p) = self.progress.get_mut(&a.stream_id) {
                let point = a.point as i64;
                p.acked = Some(p.acked.map_or(point, |x| x.max(point)));
            }
        }
    }

    /// Takes fresh acknowledgements and returns the offsets due for commit (of `only`, or
    /// of every partition), recording them as committed.
    fn due(&mut self, only: Option<&[u64]>) -> TopicPartitionList {
        let fresh = self.acks.try_next();
        self.absorb(fresh);
        let mut tpl = TopicPartitionList::new();
        for (id, p) in self.progress.iter_mut() {
            if only.is_some_and(|ids| !ids.contains(id)) {
                continue;
            }
            let Some(next) = p.acked.map(|a| a + 1) else {
                continue;
            };
            if p.committed.is_some_and(|c| c >= next) {
                continue;
            }
            if tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(next))
                .is_ok()
            {
                p.committed = Some(next);
            }
        }
        tpl
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the rebalance callbacks tell the main loop.
enum Event {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<u64>),
}

/// The consumer context: logs, errors, lag from statistics, and the rebalance hooks.
struct SourceContext {
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<Event>,
    metrics: ConnectorMetrics,
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        kc::log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kc::client_error(&self.metrics, &error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.lag.set(lag);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let ids: Vec<u64> = tpl
                    .elements()
                    .iter()
                    .map(|e| stream_id_for(&kc::stream_name(e.topic(), e.partition())))
                    .collect();
                let commit = {
                    let mut shared = lock(&self.shared);
                    let due = shared.due(Some(&ids));
                    for id in &ids {
                        shared.progress.remove(id);
                    }
                    due
                };
                if commit.count() > 0 {
                    match consumer.commit(&commit, CommitMode::Sync) {
                        Ok(()) => {
                            tracing::info!("partitions revoked; committed {}", describe(&commit))
                        }
                        Err(e) => {
                            self.metrics.error("commit");
                            tracing::warn!(
                                "partitions revoked; commit of {} failed: {e} (their unacknowledged records will be read again)",
                                describe(&commit)
                            )
                        }
                    }
                }
                let _ = self.events.send(Event::Revoked(ids));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                self.metrics.error("rebalance");
                tracing::warn!("rebalance error: {e}");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let _ = self.events.send(Event::Assigned(parts));
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            self.metrics.error("commit");
            tracing::warn!("offset commit of {} failed: {e}", describe(offsets));
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
            other => format!("{}/{}@{other:?}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A partition this process reads: its stream and the first offset still to send.
struct Assigned {
    topic: String,
    partition: i32,
    stream_id: u64,
    next: i64,
}

/// The partitions this process reads. A short list: records come in runs from one
/// partition, so the last one found is checked first.
#[derive(Default)]
struct Parts {
    list: Vec<Assigned>,
    last: usize,
}

impl Parts {
    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut Assigned> {
        let hit = |a: &Assigned| a.partition == partition && a.topic == topic;
        if !self.list.get(self.last).is_some_and(hit) {
            self.last = self.list.iter().position(hit)?;
        }
        self.list.get_mut(self.last)
    }

    fn contains(&self, topic: &str, partition: i32) -> bool {
        self.list
            .iter()
            .any(|a| a.partition == partition && a.topic == topic)
    }

    /// Forgets the partition of stream `id`; whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        let before = self.list.len();
        self.list.retain(|a| a.stream_id != id);
        self.last = 0;
        self.list.len() != before
    }
}

type Consumer_ = StreamConsumer<SourceContext>;

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        .check(|ctx| async move { check(&ctx) })
        .run(|ctx, mut source| async move {
            let brokers = ctx.params.required("bootstrap_brokers")?.to_string();
            let topics = kc::topics(&ctx.params.list("topics"), &ctx.connector)?;
            let group = ctx
                .params
                .get("consumer_group")
                .unwrap_or(&ctx.connector)
                .to_string();
            let start = match ctx.params.required("start")? {
                s @ ("earliest" | "latest") => s,
                other => bail!(
                    "invalid value {other:?} for --{}-start: expected earliest or latest",
                    ctx.connector
                ),
            };
            let commit_every: u64 = ctx.params.parse_or("commit_interval_ms", 1000)?;
            let drain_timeout: u64 = ctx.params.parse_or("drain_timeout_secs", 30)?;
            // A regex subscription sees topics created later only at a metadata refresh:
            // every 10 s rather than librdkafka's 5 minutes (an `option` still overrides it).
            let refresh = if topics.iter().any(|t| t.starts_with('^')) {
                "10000"
            } else {
                "300000"
            };
            let mut config = kc::client_config(
                &brokers,
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", start),
                    ("statistics.interval.ms", "5000"),
                    ("topic.metadata.refresh.interval.ms", refresh),
                ],
                ctx.params.all("option"),
                &ctx.connector,
            )?;
            kc::set_log_level(&mut config);

            let acks = source.acks();
            let shared = Arc::new(Mutex::new(Shared {
                acks: acks.clone(),
                progress: HashMap::new(),
            }));
            let (tx, mut events) = mpsc::unbounded_channel();
            let consumer: Consumer_ = config
                .create_with_context(SourceContext {
                    shared: shared.clone(),
                    events: tx,
                    metrics: ctx.metrics.clone(),
                })
                .context("cannot create the Kafka consumer (check --NAME-option settings)")?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&names)
                .with_context(|| format!("cannot subscribe to {topics:?}"))?;
            tracing::info!("consumer group `{group}` on {brokers}: subscribed to {topics:?}");

            let mut parts = Parts::default();
            let result = run(
                &ctx,
                &consumer,
                &mut source,
                &shared,
                &mut events,
                acks,
                &mut parts,
                Duration::from_millis(commit_every.max(10)),
            )
            .await;
            if let Err(e) = &result {
                if e.downcast_ref::<ShuttingDown>().is_none() {
                    // Keep what was acknowledged, then report the error.
                    commit(&consumer, &shared, CommitMode::Sync);
                    return result;
                }
            }

            // SIGTERM: stop reading, let the engine acknowledge what was sent, commit it.
            let left = source
                .drain(Duration::from_secs(drain_timeout))
                .await
                .unwrap_or_else(|_| source.in_flight());
            commit(&consumer, &shared, CommitMode::Sync);
            for id in parts.list.iter().map(|a| a.stream_id) {
                let _ = source.eos(id).await;
            }
            if left > 0 {
                tracing::warn!(
                    "{left} records were not acknowledged by the engine within {drain_timeout} s; they will be read again"
                );
            }
            // Dropping the consumer leaves the group (the revoke callback commits again,
            // which finds nothing new).
            drop(consumer);
            Ok(())
        })
}

/// The main loop: records to the engine, acknowledgements to commits, rebalances.
#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: &Context,
    consumer: &Consumer_,
    source: &mut Source,
    shared: &Arc<Mutex<Shared>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    mut acks: Acks,
    parts: &mut Parts,
    commit_every: Duration,
) -> Result<()> {
    let mut stream = consumer.stream();
    let mut tick = tokio::time::interval(commit_every);
    let skipped = ctx.metrics.registry.counter(
        "kafka_records_skipped_total",
        "Records not sent because the engine had already processed them.",
        &[],
    );
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ok(()),
            Some(event) = events.recv() => match event {
                Event::Assigned(list) => assign(consumer, source, shared, parts, list).await?,
                Event::Revoked(ids) => {
                    for id in ids {
                        lock(shared).progress.remove(&id);
                        if parts.remove(id) {
                            source.eos(id).await?;
                        }
                    }
                }
            },
            got = acks.next() => lock(shared).absorb(got),
            _ = tick.tick() => {
                commit(consumer, shared, CommitMode::Async);
                // Idle or not: notices a lost engine connection and resends (IDLE_FLUSH).
                source.flush().await?;
            }
            first = stream.next() => {
                let mut next = first;
                let mut n = 0;
                while let Some(item) = next {
                    match item {
                        Ok(msg) => forward(ctx, source, parts, &msg, &skipped).await?,
                        Err(e) => {
                            ctx.metrics.error("kafka_consume");
                            if let Some(n) = kc::repeated(&format!("consume {e}")) {
                                tracing::warn!("Kafka consumer: {e}{}", kc::held_back(n));
                            }
                        }
                    }
                    n += 1;
                    if n >= 4096 || !events.is_empty() {
                        break;
                    }
                    next = next_ready(&mut stream);
                }
                source.flush().await?;
            }
        }
    }
}

/// The next record if one is ready now.
fn next_ready<'a>(
    stream: &mut MessageStream<'a, SourceContext>,
) -> Option<rdkafka::error::KafkaResult<BorrowedMessage<'a>>> {
    stream.next().now_or_never().flatten()
}

/// Sends one record, unless its partition is no longer ours or the engine already has it.
async fn forward(
    ctx: &Context,
    source: &mut Source,
    parts: &mut Parts,
    msg: &BorrowedMessage<'_>,
    skipped: &Counter,
) -> Result<()> {
    let payload = msg.payload().unwrap_or_default();
    ctx.metrics.messages_in.inc();
    ctx.metrics.bytes_in.add(payload.len() as u64);
    let offset = msg.offset();
    let Some(part) = parts.find(msg.topic(), msg.partition()) else {
        return Ok(()); // revoked meanwhile: its new owner reads it
    };
    if offset < part.next {
        skipped.inc();
        return Ok(());
    }
    part.next = offset + 1;
    let event_time = msg.timestamp().to_millis().unwrap_or(0);
    source
        .write_at(
            part.stream_id,
            offset as u64,
            event_time,
            msg.key().unwrap_or_default(),
            payload,
        )
        .await?;
    // A record set aside in --dead-letter DIR is committed with the next acknowledged one.
    Ok(())
}

/// Announces newly assigned partitions to the engine and positions each at the later of
/// the group's committed offset and the engine's resume point + 1.
async fn assign(
    consumer: &Consumer_,
    source: &mut Source,
    shared: &Arc<Mutex<Shared>>,
    parts: &mut Parts,
    list: Vec<(String, i32)>,
) -> Result<()> {
    // A partition announced already (an assignment repeated without a revoke) stays as is.
    let list: Vec<(String, i32)> = list
        .into_iter()
        .filter(|(t, p)| !parts.contains(t, *p))
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &list {
        tpl.add_partition(t, *p);
    }
    // Copy the offsets out: a TopicPartitionList from the consumer must not outlive it.
    let committed: HashMap<(String, i32), i64> = match consumer
        .committed_offsets(tpl, Duration::from_secs(10))
    {
        Ok(c) => c
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot read the group's committed offsets ({e}); using the engine's resume points and `start`");
            HashMap::new()
        }
    };
    for (topic, partition) in list {
        let name = kc::stream_name(&topic, partition);
        let committed = committed.get(&(topic.clone(), partition)).copied();
        let hint = committed.filter(|c| *c > 0).map(|c| (c - 1) as u64);
        let stream = source.notify(&name, hint).await?;
        let engine_next = stream.resume.map(|r| r as i64 + 1);
        let start = match (committed, engine_next) {
            (Some(c), Some(e)) => Some(c.max(e)),
            (c, e) => c.or(e),
        };
        if let Some(s) = start.filter(|s| Some(*s) != committed) {
            // Records below `start` are skipped in `forward` anyway; seeking saves reading them.
            if let Err(e) =
                consumer.seek(&topic, partition, Offset::Offset(s), Duration::from_secs(5))
            {
                tracing::debug!("seek {name} to {s}: {e} (records before it will be skipped)");
            }
        }
        tracing::info!(
            "partition {name} assigned: starting at {} (group committed {}, engine processed up to {})",
            start.map_or("`start`".to_string(), |s| s.to_string()),
            committed.map_or("nothing".to_string(), |c| c.to_string()),
            stream.resume.map_or("nothing".to_string(), |r| r.to_string()),
        );
        lock(shared).progress.insert(
            stream.id,
            Progress {
                topic: topic.clone(),
                partition,
                acked: stream.resume.map(|r| r as i64),
                committed,
            },
        );
        parts.list.push(Assigned {
            topic,
            partition,
            stream_id: stream.id,
            next: start.unwrap_or(0),
        });
    }
    Ok(())
}

/// Commits every offset the engine acknowledged and that is not committed yet.
fn commit(consumer: &Consumer_, shared: &Mutex<Shared>, mode: CommitMode) {
    let tpl = lock(shared).due(None);
    if tpl.count() == 0 {
        return;
    }
    tracing::debug!("committing {}", describe(&tpl));
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!("offset commit of {} failed: {e}", describe(&tpl));
    }
}

/// `--check`: the brokers answer and every named topic exists.
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
    let consumer: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                what,
                format!("{e}: fix the --NAME-option settings"),
            )]
        }
    };
    let md = match consumer.fetch_metadata(None, Duration::from_secs(10)) {
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
    for topic in ctx.params.list("topics") {
        if topic.starts_with('^') {
            continue;
        }
        let what = format!("topic `{topic}` exists");
        checks.push(match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() => {
                Check::ok(format!("{what} ({} partitions)", t.partitions().len()))
            }
            _ => Check::fail(what, "create it, or fix --NAME-topics".to_string()),
        });
    }
    checks
}
