//! kafka_sink: writes every message from the engine to a Kafka topic (MESSAGE key -> record
//! key, payload -> record value).
//!
//! At-least-once: a batch is handed to librdkafka, and acknowledged to the engine once every
//! record of it has a successful delivery report. The producer is idempotent with `acks=all`
//! by default, so librdkafka's own retries add no duplicates; a message the engine sends
//! again after a crash can be written twice.
//!
//! Per record: a refusal for good (too large, unknown topic, not allowed) is refused to the
//! runtime (dead-lettered with `--dead-letter DIR`, else the sink stops with the reason); a
//! transient failure (after librdkafka's own retries for `message.timeout.ms`) is written
//! again by the runtime; a fatal producer error (idempotence state lost) stops the sink.
//!
//! Copy this file to change it: the parameters, `write`, then `main` (producer settings).

use std::process::ExitCode;

use connector_runtime::prelude::*;
use kafka_connectors::producer::Writer;
use kafka_connectors::{self as kc, Failure};

/// Writes every message from the engine to a Kafka topic; acknowledges it once the broker confirmed it.
#[derive(Parser)]
#[command(name = "kafka_sink")]
struct Params {
    /// Topic to write to
    #[arg(long)]
    topic: String,
    /// Comma-separated Kafka brokers (host:port)
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_brokers: String,
    /// Record batch compression: none, gzip, snappy, lz4 or zstd
    #[arg(long, default_value = "none")]
    compression: String,
    /// Broker acknowledgements before a write counts: all, 1 or 0 (0 and 1 need idempotence=false)
    #[arg(long, default_value = "all")]
    acks: String,
    /// Idempotent producer: librdkafka's retries never duplicate or reorder
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    idempotence: bool,
    /// How long librdkafka waits to fill a batch
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Most messages handed to librdkafka at once (one batch) before their delivery reports are awaited (back-pressure to the engine)
    #[arg(long, default_value_t = 50000)]
    max_in_flight: usize,
    /// Any librdkafka setting as key=value (SASL, TLS, batch.size, message.timeout.ms, ...); repeat it
    #[arg(long)]
    option: Vec<String>,
}

struct KafkaSink {
    writer: Writer,
    max_in_flight: usize,
    ctx: Context,
}

impl SinkConnector for KafkaSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let ctx = &self.ctx;
        // At shutdown, delivery reports get 30 s more (the drain timeout); what has none by
        // then is not acknowledged, and the engine sends it again to the next sink.
        let give_up = async {
            ctx.shutdown.cancelled().await;
            tokio::time::sleep(ctx.options.drain_timeout).await
        };
        let written = self.writer.write(batch, give_up).await;
        for i in written.unconfirmed {
            outcomes.retry(i, "not confirmed by Kafka before shutdown");
        }
        for (i, e) in written.failed {
            match e
                .rdkafka_error_code()
                .map_or(Failure::Permanent, kc::classify)
            {
                Failure::Permanent => {
                    let topic = self.writer.topic();
                    outcomes.refuse(
                        i,
                        format!("Kafka refused the record for topic `{topic}`: {e}"),
                    )
                }
                Failure::Transient => {
                    ctx.metrics.error("kafka_retry");
                    outcomes.retry(i, e.to_string())
                }
                Failure::Fatal => {
                    let detail = (self.writer.fatal_error())
                        .map(|(c, r)| format!(" ({c}: {r})"))
                        .unwrap_or_default();
                    bail!("the Kafka producer hit a fatal error: {e}{detail}; restart the sink: the engine re-sends what was not acknowledged");
                }
            }
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: self.max_in_flight.max(1),
            ..Batching::default()
        }
    }
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|ctx, p: Params| async move {
            let c = &ctx.connector;
            let fix =
                format!("create it (or enable auto-creation on the broker), or fix --{c}-topic");
            kc::check(&p.bootstrap_brokers, &p.option, c, &[p.topic], &fix)
        })
        .run(start)
}

/// Checks the parameters, creates the producer and learns the topic's partitions.
async fn start(ctx: Context, p: Params) -> Result<KafkaSink> {
    let c = &ctx.connector;
    let compression = kc::compression_codec(&p.compression, c)?;
    let acks = kc::acks_setting(&p.acks, c)?;
    if p.idempotence && acks != "all" {
        bail!("--{c}-acks {acks} needs --{c}-idempotence false (an idempotent producer requires acks=all)");
    }
    let (linger, idempotence) = (p.linger_ms.to_string(), p.idempotence.to_string());
    let defaults = [
        ("acks", acks),
        ("enable.idempotence", &idempotence),
        ("compression.codec", compression),
        ("linger.ms", &linger),
        ("queue.buffering.max.messages", "1000000"),
    ];
    let mut config = kc::client_config(&p.bootstrap_brokers, &defaults, &p.option, c)?;
    kc::set_log_level(&mut config);
    let writer = Writer::new(&config, p.topic, ctx.metrics.clone()).with_context(|| {
        format!("cannot create the Kafka producer (check --{c}-compression and --{c}-option)")
    })?;
    let (topic, brokers) = (writer.topic(), p.bootstrap_brokers);
    tracing::info!("writing to topic `{topic}` on {brokers} (acks={acks}, idempotence={idempotence}, compression={compression})");
    writer.warm_up().await;
    Ok(KafkaSink {
        writer,
        max_in_flight: p.max_in_flight,
        ctx,
    })
}
