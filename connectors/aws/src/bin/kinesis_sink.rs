//! kinesis_sink: writes every message from the engine as one record to a Kinesis data stream.
//!
//! Records go out with PutRecords in batches of up to 500 records / 5 MiB, sent when a batch
//! is full or `linger_ms` after its first message. The MESSAGE key is the partition key (a
//! hash of the payload when the key is empty). PutRecords succeeds or fails per record: only
//! the failed records are retried (with back-off when throttled), and each message is
//! acknowledged to the engine only once its own record was written, in order per stream.
//!
//! Guarantee: at-least-once. A record over the stream's size limit (`max_record_bytes`) is
//! refused for good: dead-lettered with `--dead-letter DIR`, else the sink stops with the
//! reason (that message is never acknowledged). A retried record can land after records that
//! followed it in the same batch (as with the AWS KPL).

use std::collections::VecDeque;
use std::process::ExitCode;

use aws_connectors::acks::{SinkAcks, Ticket};
use aws_connectors::client::{self, classify, AwsOptions, Failure};
use aws_connectors::kinesis::{self, Outgoing};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use connector_runtime::prelude::*;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "kinesis_sink",
    about: "Writes every message from the engine as a record to a Kinesis data stream (PutRecords batches).",
    direction: Direction::Sink,
    params: &[
        Param::required("stream", "Kinesis stream name"),
        Param::optional("region", client::REGION_HELP),
        Param::optional("endpoint_url", client::ENDPOINT_HELP),
        Param::with_default("linger_ms", "Longest wait for a batch to fill before sending it", "100"),
        Param::with_default("batch_records", "Most records per PutRecords call (1-500)", "500"),
        Param::with_default(
            "max_record_bytes",
            "Largest record (data + partition key) the stream accepts; larger ones are refused",
            "1048576",
        ),
    ],
};

/// A record on its way, with the ticket that acknowledges its message.
type Record = Outgoing<(Ticket, SinkMessage)>;

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC).check(check).run(run)
}

/// `--check`: the service is reachable and the resource exists.
async fn check(ctx: Context) -> Vec<Check> {
    let r = async {
        let stream = ctx.params.required("stream")?;
        let client = AwsOptions::from_params(&ctx.params).kinesis().await?;
        client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| anyhow!("{}", client::describe(&e)))?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    vec![Check::from_result("Kinesis stream reachable and exists", r)]
}

async fn run(ctx: Context, mut sink: Sink) -> Result<()> {
    let stream = ctx.params.required("stream")?.to_string();
    let linger = Duration::from_millis(ctx.params.parse_or("linger_ms", 100u64)?);
    let batch_records: usize = ctx.params.parse_or("batch_records", 500)?;
    if !(1..=kinesis::MAX_BATCH_RECORDS).contains(&batch_records) {
        bail!("batch_records {batch_records}: must be between 1 and 500");
    }
    let max_record: usize = ctx
        .params
        .parse_or("max_record_bytes", kinesis::DEFAULT_MAX_RECORD_BYTES)?;
    let client = AwsOptions::from_params(&ctx.params).kinesis().await?;
    // Fail fast on a missing stream; wait (with back-off) for an unreachable service.
    client::retry(&ctx, "DescribeStreamSummary", || {
        client.describe_stream_summary().stream_name(&stream).send()
    })
    .await
    .with_context(|| format!("Kinesis stream `{stream}` is not usable"))?;

    let mut p = Pending {
        max_record,
        ..Pending::default()
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut input_open = true;
    loop {
        // Fill: wait for a first message, then up to `linger` for a full batch.
        if p.queue.is_empty() {
            // At shutdown, finish what was taken and stop: the engine replays the rest.
            if !input_open || ctx.is_shutting_down() {
                break;
            }
            match sink.read_batch(batch_records).await {
                Some(b) => p.add(&ctx, b).await?,
                None => input_open = false,
            }
            let deadline = tokio::time::Instant::now() + linger;
            while input_open
                && !ctx.is_shutting_down()
                && p.queue.len() < batch_records
                && p.bytes < kinesis::MAX_BATCH_BYTES
            {
                let want = batch_records - p.queue.len();
                match tokio::time::timeout_at(deadline, sink.read_batch(want)).await {
                    Ok(Some(b)) => p.add(&ctx, b).await?,
                    Ok(None) => input_open = false,
                    Err(_) => break,
                }
            }
            p.acks.release(&sink);
            if p.queue.is_empty() {
                continue;
            }
        }

        // Send one PutRecords call.
        let batch = p.take(batch_records);
        let entries: Vec<PutRecordsRequestEntry> = batch
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(r.data.to_vec()))
                    .partition_key(r.partition_key.clone())
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let sent = client
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                let failure = classify(&e);
                let named = kinesis::validation_record_index(failure.message())
                    .filter(|i| *i < batch.len());
                match (failure, named) {
                    // The request names one record it refuses (too large, bad key):
                    // refuse that one, send the others again.
                    (Failure::Permanent(m), Some(i)) => {
                        let mut batch = batch;
                        let bad = batch.remove(i);
                        p.refuse(&ctx, bad, &m).await?;
                        p.requeue(batch);
                        p.acks.release(&sink);
                        continue;
                    }
                    (Failure::Permanent(m), None) => {
                        bail!("PutRecords to stream `{stream}` failed: {m}")
                    }
                    (f, _) => {
                        if matches!(f, Failure::Throttled(_)) {
                            client::throttled(&ctx, "PutRecords");
                        } else {
                            ctx.metrics.reconnects.inc();
                            ctx.metrics.error("aws");
                            let m = f.message();
                            if client::should_warn(backoff.attempts()) {
                                tracing::warn!("PutRecords keeps failing ({m}); retrying");
                            } else {
                                tracing::debug!("PutRecords failed ({m}); retrying");
                            }
                        }
                        p.requeue(batch);
                        if ctx.is_shutting_down() && backoff.attempts() > 20 {
                            bail!("giving up at shutdown: PutRecords fails: {}", f.message());
                        }
                        backoff.wait().await;
                        continue;
                    }
                }
            }
        };
        let outcome = kinesis::apply_results(batch, out.records());
        for r in outcome.written {
            ctx.metrics.messages_out.inc();
            ctx.metrics.bytes_out.add(r.data.len() as u64);
            p.acks.complete(r.item.0);
        }
        for (r, why) in outcome.refused {
            p.refuse(&ctx, r, &why).await?;
        }
        p.acks.release(&sink);
        if outcome.retry.is_empty() {
            backoff.reset();
        } else {
            if outcome.throttled {
                client::throttled(&ctx, "PutRecords");
            }
            tracing::debug!(
                "{} records of the batch failed; retrying them",
                outcome.retry.len()
            );
            p.requeue(outcome.retry);
            backoff.wait().await;
        }
    }
    p.acks.release(&sink);
    Ok(())
}

/// Records waiting to be written, and the acknowledgement order of their messages.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Record>,
    /// Bytes (data + partition keys) in `queue`.
    bytes: usize,
    acks: SinkAcks,
    max_record: usize,
}

impl Pending {
    /// Turns messages into records; a record over the size limit is refused right away.
    async fn add(&mut self, ctx: &Context, batch: Vec<SinkMessage>) -> Result<()> {
        for msg in batch {
            let ticket = self.acks.push(&msg);
            let rec = Outgoing {
                partition_key: kinesis::partition_key(&msg.key, &msg.payload),
                data: msg.payload.clone(),
                item: (ticket, msg),
                attempts: 0,
            };
            if rec.size() > self.max_record {
                let why = format!(
                    "record of {} bytes (data + partition key) is over the stream's limit of {} bytes",
                    rec.size(),
                    self.max_record
                );
                self.refuse(ctx, rec, &why).await?;
                continue;
            }
            self.bytes += rec.size();
            self.queue.push_back(rec);
        }
        Ok(())
    }

    /// The next PutRecords batch.
    fn take(&mut self, max_records: usize) -> Vec<Record> {
        let batch = kinesis::take_batch(&mut self.queue, max_records, kinesis::MAX_BATCH_BYTES);
        self.bytes -= batch.iter().map(|r| r.size()).sum::<usize>();
        batch
    }

    /// Puts records to retry back at the front, in order.
    fn requeue(&mut self, records: Vec<Record>) {
        self.bytes += records.iter().map(|r| r.size()).sum::<usize>();
        kinesis::requeue_front(&mut self.queue, records);
    }

    /// Dead-letters a record (an error without `--dead-letter`) and completes its ticket.
    async fn refuse(&mut self, ctx: &Context, rec: Record, why: &str) -> Result<()> {
        ctx.dead_letter(&rec.item.1, why).await?;
        self.acks.complete(rec.item.0);
        Ok(())
    }
}
