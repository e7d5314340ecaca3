//! kinesis_sink: writes every message from the engine as one record to a Kinesis data stream.
//!
//! Records go out with PutRecords in calls of up to `batch_records` records / 5 MiB; the
//! runtime gathers a batch for up to `linger_ms` after its first message. The MESSAGE key is
//! the partition key (a hash of the payload when the key is empty). PutRecords succeeds or
//! fails per record: only the failed records are written again (throttled, internal failure:
//! the runtime retries them with its back-off), and the batch is acknowledged to the engine
//! once every record of it is written or refused.
//!
//! Guarantee: at-least-once. A record over the stream's size limit (`max_record_bytes`) is
//! refused for good: dead-lettered with `--dead-letter DIR`, else the sink stops with the
//! reason. A retried record can land after records that followed it in the same PutRecords
//! call (as with the AWS KPL); later calls wait for it.

use std::collections::VecDeque;
use std::process::ExitCode;

use aws_connectors::client::{self, AwsParams};
use aws_connectors::kinesis::{self, Outgoing, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use connector_runtime::prelude::*;

/// Writes every message from the engine as a record to a Kinesis data stream (PutRecords batches).
#[derive(Parser)]
#[command(name = "kinesis_sink")]
struct Params {
    /// Kinesis stream name
    #[arg(long)]
    stream: String,
    #[command(flatten)]
    aws: AwsParams,
    /// Longest wait for a batch to fill before sending it
    #[arg(long, default_value_t = 100)]
    linger_ms: u64,
    /// Most records per PutRecords call (1-500)
    #[arg(long, default_value_t = MAX_BATCH_RECORDS)]
    batch_records: usize,
    /// Largest record (data + partition key) the stream accepts; larger ones are refused
    #[arg(long, default_value_t = kinesis::DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
}

struct KinesisSink {
    ctx: Context,
    client: aws_sdk_kinesis::Client,
    stream: String,
    batching: Batching,
    max_record: usize,
}

impl SinkConnector for KinesisSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let mut queue = VecDeque::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            let record = Outgoing {
                item: i,
                partition_key: kinesis::partition_key(&msg.key, &msg.payload),
                data: msg.payload.clone(),
            };
            if record.size() > self.max_record {
                let why = format!(
                    "record of {} bytes (data + partition key) is over the stream's limit of {} bytes",
                    record.size(),
                    self.max_record
                );
                outcomes.refuse(i, why);
                continue;
            }
            queue.push_back(record);
        }
        while !queue.is_empty() {
            let call = kinesis::take_batch(&mut queue, self.batching.max, MAX_BATCH_BYTES);
            let all = kinesis::put_records(&self.ctx, &self.client, &self.stream, &call, outcomes);
            if !all.await? {
                // Keep the order: what follows waits for the records written again.
                for r in queue.drain(..) {
                    outcomes.retry(r.item, "waiting for earlier records written again");
                }
            }
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        self.batching
    }
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|_ctx, p: Params| async move {
            let found = async {
                let client = p.aws.options().kinesis().await?;
                let call = client.describe_stream_summary().stream_name(&p.stream);
                call.send()
                    .await
                    .map_err(|e| anyhow!("{}", client::describe(&e)))
            };
            vec![Check::from_result(
                "Kinesis stream reachable and exists",
                found.await,
            )]
        })
        .run(|ctx, p: Params| async move {
            if !(1..=MAX_BATCH_RECORDS).contains(&p.batch_records) {
                bail!(
                    "--{}-batch_records {}: must be between 1 and {MAX_BATCH_RECORDS}",
                    ctx.connector,
                    p.batch_records
                );
            }
            let client = p.aws.options().kinesis().await?;
            // Fail fast on a missing stream; wait (with back-off) for an unreachable service.
            client::retry(&ctx, "DescribeStreamSummary", || {
                client
                    .describe_stream_summary()
                    .stream_name(&p.stream)
                    .send()
            })
            .await
            .with_context(|| format!("Kinesis stream `{}` is not usable", p.stream))?;
            Ok(KinesisSink {
                ctx,
                client,
                stream: p.stream,
                batching: Batching {
                    max: p.batch_records,
                    linger: Duration::from_millis(p.linger_ms),
                },
                max_record: p.max_record_bytes,
            })
        })
}
