//! postgres_sink: writes each message from the engine as a row of a PostgreSQL table:
//! the key into `key_column`, the payload into `value_column` (text, bytea or jsonb, chosen
//! by the column's type).
//!
//! Guarantee: at-least-once. A batch is written in one transaction and acknowledged to the
//! engine (by the runtime) only after COMMIT returned. After a crash the engine re-sends
//! what was not acknowledged: with `mode = upsert` (`ON CONFLICT (key) DO UPDATE`) a replay
//! rewrites the same rows, so the table holds every message exactly once by key; with
//! `mode = insert` replays may add duplicate rows.
//!
//! Outcomes per row: a row PostgreSQL refuses (invalid JSON for jsonb, a constraint, bad
//! UTF-8) is found by splitting the failed batch and refused with its key and the
//! database's message (the runtime sends it to `--dead-letter DIR`, or stops without the
//! flag); a lost connection (server restart) marks the rows not committed for a retry: the
//! runtime writes them again with back-off and the next write reconnects.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use postgres_connectors::pg;
use postgres_connectors::sink::{check, Mode, SinkConfig, Writer};

/// Writes every message from the engine as a row (key, value) of a PostgreSQL table, one transaction per batch.
#[derive(Parser)]
#[command(name = "postgres_sink")]
struct Params {
    /// libpq connection string: `host=127.0.0.1 user=postgres dbname=test` or `postgresql://user@host/db`
    #[arg(long)]
    connection: String,
    /// Table to write (`name` or `schema.name`)
    #[arg(long)]
    table: String,
    /// Column receiving the message key (NULL when the key is empty)
    #[arg(long, default_value = "key")]
    key_column: String,
    /// Column receiving the payload: text, bytea or jsonb
    #[arg(long, default_value = "value")]
    value_column: String,
    /// `upsert` (ON CONFLICT (key) DO UPDATE; needs a unique index on key) or `insert` (COPY, appends)
    #[arg(long, default_value = "upsert")]
    mode: Mode,
    /// Most messages written in one transaction
    #[arg(long, default_value_t = 5000)]
    batch_size: usize,
    /// How long to gather a batch after its first message
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

struct PgSink {
    writer: Writer,
    batching: Batching,
}

impl SinkConnector for PgSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        // One transaction; refused rows and rows to write again are marked in `outcomes`.
        self.writer.write(batch, outcomes).await
    }

    fn batching(&self) -> Batching {
        self.batching
    }
}

/// The connection and the writer's settings.
fn settings(ctx: &Context, p: &Params) -> Result<(tokio_postgres::Config, SinkConfig)> {
    let flag = format!("--{}-connection", ctx.connector);
    let config = pg::parse_config(&p.connection, ctx.program, &flag)?;
    let cfg = SinkConfig {
        table: p.table.clone(),
        key_column: p.key_column.clone(),
        value_column: p.value_column.clone(),
        mode: p.mode,
    };
    Ok((config, cfg))
}

fn main() -> ExitCode {
    connector_runtime::sink()
        .check(|ctx, p: Params| async move {
            match settings(&ctx, &p) {
                Ok((config, cfg)) => check(&config, &cfg).await,
                Err(e) => vec![Check::from_result::<()>("parameters", Err(e))],
            }
        })
        .run(|ctx, p: Params| async move {
            let (config, cfg) = settings(&ctx, &p)?;
            let batching = Batching {
                max: p.batch_size.max(1),
                linger: Duration::from_millis(p.linger_ms),
            };
            Ok(PgSink {
                writer: Writer::connect(config, cfg, ctx).await?,
                batching,
            })
        })
}
