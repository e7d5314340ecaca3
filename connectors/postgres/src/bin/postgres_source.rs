//! postgres_source: sends the rows of a PostgreSQL table to the engine in id order, one
//! message per row (message id = the row's id, key = `key_column`, payload = a column or
//! the row as JSON).
//!
//! NOTIFY (from the trigger `install_trigger` creates) only wakes the source up; it then
//! reads the rows above its position in batches, so rows inserted while it was down and
//! payloads beyond NOTIFY's 8000-byte limit are never lost, and it also reads every
//! `poll_ms` in case a notification was missed. It never moves past a gap in the ids that
//! a still-open transaction may fill (see the crate's `source` module and the README).
//!
//! Guarantee: at-least-once. The position is what the engine acknowledged (its NOTIFY_ACK
//! point on restart), and, with `position_table`, is also stored in the database once
//! acknowledged; the source resumes from the higher of the two. The table itself is never
//! changed. A lost connection (server restart) reconnects with back-off.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use postgres_connectors::pg;
use postgres_connectors::source::{check, Reader, SourceConfig};

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "postgres_source",
    about: "Sends the rows of a PostgreSQL table to the engine in id order, woken by NOTIFY, resuming after the acknowledged id.",
    direction: Direction::Source,
    params: &[
        Param::required(
            "connection",
            "libpq connection string: `host=127.0.0.1 user=postgres dbname=test` or `postgresql://user@host/db`",
        ),
        Param::required("table", "Table to read (`name` or `schema.name`)"),
        Param::with_default("id_column", "Increasing integer id (e.g. bigserial); the message id", "id"),
        Param::with_default("payload", "Column sent as the payload, or `row_to_json` for the whole row as JSON", "row_to_json"),
        Param::optional("key_column", "Column sent as the message key (its text form)"),
        Param::with_default("channel", "NOTIFY channel that wakes the source", "postgres_source"),
        Param::with_default("install_trigger", "Create the AFTER INSERT trigger that NOTIFYs the channel", "false"),
        Param::with_default("poll_ms", "Read at least this often even without a notification", "1000"),
        Param::with_default("batch_size", "Rows per read", "1000"),
        Param::optional("position_table", "Table (created if missing) storing the acknowledged id per stream"),
        Param::with_default(
            "max_gap_wait_ms",
            "Move past a gap in the ids after this long even if a transaction that may fill it is open (0 = never)",
            "0",
        ),
    ],
};

fn settings(params: &Params) -> Result<(tokio_postgres::Config, SourceConfig)> {
    let config = pg::parse_config(params.required("connection")?, SPEC.program)?;
    Ok((config, SourceConfig::from_params(params)?))
}

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        .check(|ctx| async move {
            match settings(&ctx.params) {
                Ok((config, cfg)) => check(&config, &cfg).await,
                Err(e) => vec![Check::from_result::<()>("parameters", Err(e))],
            }
        })
        .run(|ctx, mut source| async move {
            let (config, cfg) = settings(&ctx.params)?;
            let mut reader = Reader::connect(config, cfg, ctx.clone()).await?;
            let name = format!("{}/{}", ctx.connector, reader.table_name());
            let stored = reader.stored_position(&name).await?;
            let stream = source.notify(&name, stored).await?;
            let mut pos = stream.resume.max(stored).unwrap_or(0);
            tracing::info!("reading {} from id {} on", reader.table_name(), pos + 1);
            let mut acks = source.acks();
            let (mut acked, mut saved) = (pos, pos);
            loop {
                let batch = reader.next_batch(pos).await?;
                ctx.metrics.messages_in.add(batch.rows.len() as u64);
                for row in &batch.rows {
                    ctx.metrics.bytes_in.add(row.payload.len() as u64);
                    source.write(stream.id, row.id, &row.key, &row.payload).await?;
                    pos = row.id;
                }
                for a in acks.try_next() {
                    acked = acked.max(a.point);
                }
                if saved < acked && reader.save_position(&name, acked).await? {
                    saved = acked;
                }
                if batch.more {
                    continue;
                }
                source.flush().await?;
                let delay = reader.delay(batch.held);
                tokio::select! {
                    _ = reader.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                    got = acks.next() => {
                        for a in got {
                            acked = acked.max(a.point);
                        }
                    }
                    _ = ctx.shutdown.cancelled() => break,
                }
            }
            let left = source.drain(Duration::from_secs(10)).await?;
            if left > 0 {
                tracing::warn!("{left} rows were not acknowledged before exit; they are read again on the next start");
            }
            for a in acks.try_next() {
                acked = acked.max(a.point);
            }
            if saved < acked {
                reader.save_position(&name, acked).await?;
            }
            Ok(())
        })
}
