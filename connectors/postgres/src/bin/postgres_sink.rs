//! postgres_sink: writes each message from the engine as a row of a PostgreSQL table:
//! the key into `key_column`, the payload into `value_column` (text, bytea or jsonb, chosen
//! by the column's type).
//!
//! Guarantee: at-least-once. A batch is written in one transaction and acknowledged to the
//! engine only after COMMIT returned. After a crash the engine re-sends what was not
//! acknowledged: with `mode = upsert` (`ON CONFLICT (key) DO UPDATE`) a replay rewrites the
//! same rows, so the table holds every message exactly once by key; with `mode = insert`
//! replays may add duplicate rows.
//!
//! A row PostgreSQL refuses (invalid JSON for jsonb, a constraint, bad UTF-8) is found by
//! splitting the failed batch, reported with its key and the database's message, and sent
//! to `--dead-letter DIR` (without the flag the sink stops on it); the rest of the batch is
//! committed. A lost connection (server restart) reconnects with back-off and retries.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use postgres_connectors::pg;
use postgres_connectors::sink::{check, Mode, SinkConfig, Writer};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "postgres_sink",
    about: "Writes every message from the engine as a row (key, value) of a PostgreSQL table, one transaction per batch.",
    direction: Direction::Sink,
    params: &[
        Param::required(
            "connection",
            "libpq connection string: `host=127.0.0.1 user=postgres dbname=test` or `postgresql://user@host/db`",
        ),
        Param::required("table", "Table to write (`name` or `schema.name`)"),
        Param::with_default("key_column", "Column receiving the message key (NULL when the key is empty)", "key"),
        Param::with_default("value_column", "Column receiving the payload: text, bytea or jsonb", "value"),
        Param::with_default(
            "mode",
            "`upsert` (ON CONFLICT (key) DO UPDATE; needs a unique index on key) or `insert` (COPY, appends)",
            "upsert",
        ),
        Param::with_default("batch_size", "Most messages written in one transaction", "5000"),
        Param::with_default("linger_ms", "How long to gather a batch after its first message", "5"),
    ],
};

fn settings(params: &Params) -> Result<(tokio_postgres::Config, SinkConfig)> {
    let config = pg::parse_config(params.required("connection")?, SPEC.program)?;
    let mode: Mode = params.parse_or("mode", Mode::Upsert)?;
    let cfg = SinkConfig {
        table: params.required("table")?.to_string(),
        key_column: params.get("key_column").unwrap_or("key").to_string(),
        value_column: params.get("value_column").unwrap_or("value").to_string(),
        mode,
    };
    Ok((config, cfg))
}

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        .check(|ctx| async move {
            match settings(&ctx.params) {
                Ok((config, cfg)) => check(&config, &cfg).await,
                Err(e) => vec![Check::from_result::<()>("parameters", Err(e))],
            }
        })
        .run(|ctx, mut sink| async move {
            let (config, cfg) = settings(&ctx.params)?;
            let batch_size: usize = ctx.params.parse_or("batch_size", 5000)?;
            let linger = Duration::from_millis(ctx.params.parse_or("linger_ms", 5)?);
            let mut writer = Writer::connect(config, cfg, ctx.clone()).await?;
            while let Some(batch) = sink.read_batch_linger(batch_size.max(1), linger).await {
                let outcome = writer.write(&batch).await?;
                // Committed: count it, set aside the refused rows, then acknowledge all.
                for (i, reason) in &outcome.refused {
                    ctx.dead_letter(&batch[*i], reason).await?;
                }
                ctx.metrics.messages_out.add(outcome.written as u64);
                ctx.metrics
                    .bytes_out
                    .add(batch.iter().map(|m| m.payload.len() as u64).sum());
                sink.ack_all(&batch);
            }
            Ok(())
        })
}
