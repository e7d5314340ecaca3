//! kafka_source: reads Kafka topics as a member of a consumer group and sends every record
//! to the engine.
//!
//! One stream per topic-partition (named `topic/partition`); message id = Kafka offset,
//! key = Kafka key, payload = Kafka value, event time = Kafka timestamp.
//!
//! At-least-once: offsets are committed to the group only for what the engine acknowledged
//! (offset + 1 of the last acknowledged record per partition, never auto-commit): every
//! `commit_interval_ms`, synchronously when partitions are revoked and at the end. A
//! partition resumes at the later of the group's committed offset and the engine's resume
//! point + 1. Rebalances, commits and positioning are in `kafka_connectors::consumer`.
//!
//! Copy this file to change it: the parameters, `read` (push what the consumer has ready),
//! then `main` (the consumer's settings).

use std::process::ExitCode;
use std::sync::Arc;

use connector_runtime::prelude::*;
use futures::{FutureExt, StreamExt};
use kafka_connectors as kc;
use kafka_connectors::consumer::{Group, KafkaConsumer, Partitions, SourceContext, Token};
use rdkafka::consumer::{CommitMode, Consumer};

/// Reads Kafka topics in a consumer group and sends every record to the engine; commits offsets only for what the engine acknowledged.
#[derive(Parser)]
#[command(name = "kafka_source")]
struct Params {
    /// Comma-separated topics to read; an entry starting with ^ is a regular expression
    #[arg(long)]
    topics: CommaList,
    /// Comma-separated Kafka brokers (host:port)
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_brokers: String,
    /// Consumer group id [default: the connector name]
    #[arg(long)]
    consumer_group: Option<String>,
    /// Where to start a partition the group has no offset for: earliest or latest
    #[arg(long, default_value = "earliest")]
    start: String,
    /// How often offsets the engine acknowledged are committed
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
    /// How long to wait for the engine's acknowledgements at shutdown and on revoke before the final commit [default: --drain-timeout, 30]
    #[arg(long)]
    drain_timeout_secs: Option<u64>,
    /// Any librdkafka setting as key=value (SASL, TLS, fetch sizes, session.timeout.ms, ...); repeat it
    #[arg(long)]
    option: Vec<String>,
}

struct KafkaSource {
    consumer: KafkaConsumer,
    parts: Partitions,
    tick: tokio::time::Interval,
    metrics: connector_runtime::metrics::ConnectorMetrics,
    drain_timeout: Option<Duration>,
}

impl SourceConnector for KafkaSource {
    type Token = Token;

    async fn read(&mut self, out: &mut Batch<Token>) -> Result<()> {
        // Rebalances first: the runtime announces or drains those streams before more records.
        if self.parts.rebalance(&self.consumer, out) {
            return Ok(());
        }
        let mut stream = self.consumer.stream();
        let mut next = loop {
            tokio::select! {
                biased;
                _ = self.parts.group().changed() => return Ok(()),
                _ = self.tick.tick() => self.parts.commit(&self.consumer, CommitMode::Async),
                m = stream.next() => break m,
            }
        };
        // Everything the consumer already holds, up to one batch or a rebalance.
        for taken in 1.. {
            match next {
                Some(Ok(msg)) => self.parts.push(out, &msg),
                Some(Err(e)) => kc::consume_error(&self.metrics, &e),
                None => bail!("the Kafka consumer stopped"),
            }
            if taken == 4096 || self.parts.group().pending() {
                break;
            }
            match stream.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        self.parts.opened(&self.consumer, stream);
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<Token>) -> Result<()> {
        self.parts.acknowledged(&self.consumer, &tokens);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        // Dropping the consumer afterwards leaves the group.
        self.parts.commit(&self.consumer, CommitMode::Sync);
        Ok(())
    }

    fn drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            let c = &ctx.connector;
            let fix = format!("create it, or fix --{c}-topics");
            kc::check(&p.bootstrap_brokers, &p.option, c, &p.topics.0, &fix)
        })
        .run(start)
}

/// Checks the parameters, joins the consumer group and subscribes.
async fn start(ctx: Context, p: Params) -> Result<KafkaSource> {
    let c = &ctx.connector;
    let topics = p.topics.0;
    if p.start != "earliest" && p.start != "latest" {
        bail!(
            "invalid value {:?} for --{c}-start: expected earliest or latest",
            p.start
        );
    }
    let group = p.consumer_group.unwrap_or_else(|| c.clone());
    // A regex subscription sees topics created later only at a metadata refresh: every
    // 10 s rather than librdkafka's 5 minutes (an `option` still overrides it).
    let regex = topics.iter().any(|t| t.starts_with('^'));
    let refresh = if regex { "10000" } else { "300000" };
    let defaults = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", &p.start),
        ("statistics.interval.ms", "5000"),
        ("topic.metadata.refresh.interval.ms", refresh),
    ];
    let mut config = kc::client_config(&p.bootstrap_brokers, &defaults, &p.option, c)?;
    kc::set_log_level(&mut config);
    let shared = Arc::new(Group::default());
    let consumer: KafkaConsumer = config
        .create_with_context(SourceContext::new(shared.clone(), ctx.metrics.clone()))
        .with_context(|| format!("cannot create the Kafka consumer (check --{c}-option)"))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .with_context(|| format!("cannot subscribe to {topics:?}"))?;
    tracing::info!(
        "consumer group `{group}` on {}: subscribed to {topics:?}",
        p.bootstrap_brokers
    );
    let every = Duration::from_millis(p.commit_interval_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Ok(KafkaSource {
        consumer,
        parts: Partitions::new(shared, every, &ctx.metrics),
        tick,
        metrics: ctx.metrics,
        drain_timeout: p.drain_timeout_secs.map(Duration::from_secs),
    })
}
