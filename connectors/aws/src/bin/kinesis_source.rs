//! kinesis_source: reads the records of a Kinesis data stream and sends each one (partition
//! key as the MESSAGE key, data as the payload, arrival time as the event time) to the engine.
//!
//! One protocol stream per shard (`kinesis:<stream>/<shardId>`); the message id is a
//! per-shard counter (sequence numbers are too wide for a u64), so a record keeps its id
//! across restarts and the engine drops a replay. The checkpoint (`checkpoint_dir`) holds,
//! per shard, the sequence number and id of the last record the engine acknowledged; it is
//! written atomically and a restart resumes AFTER_SEQUENCE_NUMBER.
//!
//! Resharding: a shard is read only once its parents are finished (read to their end and
//! fully acknowledged); a finished shard is marked in the checkpoint and its stream ended.
//! Shards found after the start (children) are read from TRIM_HORIZON.
//!
//! Guarantee: at-least-once. The checkpoint only moves to records the engine acknowledged,
//! so a crash (even `kill -9`) re-reads at most what was not acknowledged yet. GetRecords is
//! called at most 5 times a second per shard, with back-off when throttled.
//!
//! The shard machinery (lineage, GetRecords tasks, ids, checkpoint) is
//! `aws_connectors::kinesis::reader`; this file wires it to the runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use aws_connectors::checkpoint::CheckpointFile;
use aws_connectors::client::AwsParams;
use aws_connectors::kinesis::reader::{start_position, Options, Position, ShardReader};
use aws_connectors::kinesis::{self, MAX_GET_RECORDS};
use connector_runtime::prelude::*;

/// Reads the records of a Kinesis data stream (one protocol stream per shard) and sends them to the engine.
#[derive(Parser)]
#[command(name = "kinesis_source")]
struct Params {
    /// Kinesis stream name
    #[arg(long)]
    stream: String,
    /// Comma-separated shard ids to read (and their children) [default: all]
    #[arg(long)]
    shards: Option<String>,
    /// Where to start without a checkpoint: TRIM_HORIZON, LATEST or AT_TIMESTAMP
    #[arg(long, default_value = "TRIM_HORIZON")]
    iterator: String,
    /// Start time for AT_TIMESTAMP: seconds since the epoch or RFC 3339
    #[arg(long)]
    timestamp: Option<String>,
    /// Directory for the per-shard checkpoint (without it a restart starts at `iterator` again)
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[command(flatten)]
    aws: AwsParams,
    /// Wait between GetRecords calls on a shard that is caught up
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Records per GetRecords call (1-10000)
    #[arg(long, default_value_t = MAX_GET_RECORDS)]
    max_records: i32,
    /// How often to list shards to find new ones (resharding)
    #[arg(long, default_value_t = 10000)]
    shard_refresh_ms: u64,
    /// Longest time between checkpoint writes
    #[arg(long, default_value_t = 1000)]
    checkpoint_ms: u64,
}

/// Records pushed by one `read` at the most (a GetRecords answer is never split).
const BATCH: usize = 4096;

struct KinesisSource {
    shards: ShardReader,
}

impl SourceConnector for KinesisSource {
    /// Shard, message id and sequence number: what the checkpoint saves.
    type Token = Position;

    async fn read(&mut self, out: &mut Batch<Position>) -> Result<()> {
        // Shards ended by the last read are committed by now: finished parents let their
        // children start at the next listing.
        self.shards.settle()?;
        // Waiting is cancel safe; what arrived is pushed before the next `.await`.
        let mut event = self.shards.next().await?;
        let mut pushed = 0;
        loop {
            // Records, a shard read to its end (`out.end`) or new shards (`out.open`).
            pushed += self.shards.apply(out, event)?;
            if pushed >= BATCH {
                return Ok(());
            }
            let Some(next) = self.shards.try_next() else {
                return Ok(());
            };
            event = next;
        }
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        // Ids continue from the checkpoint; records the engine already has are skipped.
        self.shards.opened(stream);
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<Position>) -> Result<()> {
        self.shards.commit(tokens)
    }

    async fn close(&mut self) -> Result<()> {
        self.shards.close()
    }
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            let listed = async {
                let client = p.aws.options().kinesis().await?;
                kinesis::list_shards(&ctx, &client, &p.stream).await
            };
            vec![Check::from_result(
                "Kinesis stream reachable and listable",
                listed.await,
            )]
        })
        .run(|ctx, p: Params| async move {
            let start = start_position(&p.iterator, p.timestamp.as_deref())?;
            if !(1..=MAX_GET_RECORDS).contains(&p.max_records) {
                bail!(
                    "--{}-max_records {}: Kinesis returns 1 to {MAX_GET_RECORDS} records per call",
                    ctx.connector,
                    p.max_records
                );
            }
            let checkpoint = match &p.checkpoint_dir {
                Some(dir) => {
                    let name = format!("{}.{}.json", ctx.connector, p.stream);
                    Some(CheckpointFile::new(dir, &name)?)
                }
                None => None,
            };
            let shards = p.shards.as_deref().map(|list| {
                let ids = list.split(',').map(str::trim).filter(|s| !s.is_empty());
                ids.map(String::from).collect()
            });
            let options = Options {
                stream: p.stream,
                shards,
                start,
                checkpoint,
                max_records: p.max_records,
                poll: Duration::from_millis(p.poll_ms),
                refresh: Duration::from_millis(p.shard_refresh_ms.max(100)),
                checkpoint_every: Duration::from_millis(p.checkpoint_ms.max(10)),
            };
            let client = p.aws.options().kinesis().await?;
            let shards = ShardReader::new(ctx, client, options).await?;
            Ok(KinesisSource { shards })
        })
}
