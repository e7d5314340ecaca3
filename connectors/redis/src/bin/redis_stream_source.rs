//! redis_stream_source: reads a Redis stream as one consumer of a consumer group
//! (XREADGROUP) and sends every entry to the engine; an entry is acknowledged in Redis
//! (XACK) only after the engine acknowledged it.
//!
//! Delivery: at-least-once. An entry read and not yet acknowledged stays in the group's
//! pending entries list (PEL), so nothing is lost when this process, the engine or Redis
//! stops:
//! - on start, and after every reconnect to Redis, this consumer first re-delivers its own
//!   pending entries (XREADGROUP from id 0), then reads new ones (`>`);
//! - every `claim_idle_ms / 2` it claims the entries that other consumers of the group left
//!   pending for longer than `claim_idle_ms` (a consumer that died) with XAUTOCLAIM, and
//!   delivers them too.
//!
//! The commit token of a record is its entry id: the runtime hands the ids back once the
//! engine acknowledged them (or set the record aside in `--dead-letter DIR` because the
//! protocol cannot carry it), and `commit` XACKs them. After a restart, the entries that
//! were in flight are delivered again (duplicates).
//!
//! Payload and key: the entry's `payload_field` is the payload and `key_field` the message
//! key; an entry without `payload_field` is sent as a JSON object of all its fields.
//!
//! Message ids: entry `ms-seq` is sent as `ms << 20 | seq`, which orders like the entries.
//! An entry that comes behind a newer one (claimed, re-delivered, or whose id does not fit)
//! is sent as the next id up instead, so ids always increase; after a restart ids start
//! above the Redis clock. The event time is the entry's milliseconds.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use redis_connectors::group::{Group, GroupSettings};
use redis_connectors::{next_message_id, Connection, EntryId, RedisConfig};

/// Reads a Redis stream with a consumer group (XREADGROUP) and sends each entry to the engine; XACK after the engine acknowledged it.
#[derive(Parser)]
#[command(name = "redis_stream_source")]
struct Params {
    #[command(flatten)]
    redis: Connection,
    /// Name of the Redis stream to read
    #[arg(long)]
    stream: String,
    /// Consumer group (created with MKSTREAM when missing; default: the connector name)
    #[arg(long)]
    group: Option<String>,
    /// Consumer name inside the group, stable across restarts (default: the connector name)
    #[arg(long)]
    consumer: Option<String>,
    /// Where a newly created group starts: 0 = the whole stream, $ = only new entries
    #[arg(long, default_value = "0")]
    start_id: String,
    /// Entry field that holds the payload
    #[arg(long, default_value = "payload")]
    payload_field: String,
    /// Entry field that holds the message key
    #[arg(long, default_value = "key")]
    key_field: String,
    /// Most entries per XREADGROUP / XAUTOCLAIM
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// How long one XREADGROUP waits for new entries
    #[arg(long, default_value_t = 500)]
    block_ms: u64,
    /// Claim other consumers' entries pending longer than this (0 = never)
    #[arg(long, default_value_t = 60000)]
    claim_idle_ms: u64,
}

struct StreamSource {
    group: Group,
    stream: Option<u64>,
    last_id: u64,
    key_field: Vec<u8>,
    payload_field: Vec<u8>,
}

impl SourceConnector for StreamSource {
    type Token = EntryId;

    async fn read(&mut self, out: &mut Batch<EntryId>) -> Result<()> {
        let Some(stream) = self.stream else {
            self.group.create().await?;
            self.stream = Some(out.open(&self.group.name(), None));
            return Ok(());
        };
        // Cancel safe: entries are pushed as soon as Redis returned them.
        for e in self.group.next().await? {
            let id = next_message_id(self.last_id, e.id);
            let (key, payload) = e.key_and_payload(&self.key_field, &self.payload_field);
            out.push_at(stream, id, e.id.ms as i64, &key, &payload, e.id);
            self.last_id = id;
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        self.last_id = self.group.first_id(stream.resume).await?;
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<EntryId>) -> Result<()> {
        self.group.ack(&tokens).await
    }

    async fn close(&mut self) -> Result<()> {
        self.group.close();
        Ok(())
    }
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            let ok = async {
                let config = RedisConfig::new(&ctx.connector, &p.redis)?;
                config.check(Some((&p.stream, "stream"))).await
            };
            vec![Check::from_result(
                "Redis reachable and the stream usable",
                ok.await,
            )]
        })
        .run(|ctx, p: Params| async move {
            let settings = GroupSettings {
                group: p.group.unwrap_or_else(|| ctx.connector.clone()),
                consumer: p.consumer.unwrap_or_else(|| ctx.connector.clone()),
                stream: p.stream,
                start_id: p.start_id,
                count: p.count,
                block_ms: p.block_ms,
                claim_idle_ms: p.claim_idle_ms,
            };
            let config = RedisConfig::new(&ctx.connector, &p.redis)?;
            Ok(StreamSource {
                group: Group::new(&ctx, config, settings),
                stream: None,
                last_id: 0,
                key_field: p.key_field.into_bytes(),
                payload_field: p.payload_field.into_bytes(),
            })
        })
}
