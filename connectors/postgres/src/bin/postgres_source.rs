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
//! Guarantee: at-least-once. The commit token of a row is its id: the runtime hands it to
//! `commit` once the engine acknowledged the row, and, with `position_table`, it is stored
//! in the database then. A restart resumes after the higher of the engine's resume point
//! and the stored position. The table itself is never changed. A lost connection (server
//! restart) reconnects with back-off.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use postgres_connectors::pg;
use postgres_connectors::source::{check, Payload, Reader, SourceConfig};

/// Sends the rows of a PostgreSQL table to the engine in id order, woken by NOTIFY, resuming after the acknowledged id.
#[derive(Parser)]
#[command(name = "postgres_source")]
struct Params {
    /// libpq connection string: `host=127.0.0.1 user=postgres dbname=test` or `postgresql://user@host/db`
    #[arg(long)]
    connection: String,
    /// Table to read (`name` or `schema.name`)
    #[arg(long)]
    table: String,
    /// Increasing integer id (e.g. bigserial); the message id
    #[arg(long, default_value = "id")]
    id_column: String,
    /// Column sent as the payload, or `row_to_json` for the whole row as JSON
    #[arg(long, default_value = "row_to_json")]
    payload: String,
    /// Column sent as the message key (its text form)
    #[arg(long)]
    key_column: Option<String>,
    /// NOTIFY channel that wakes the source
    #[arg(long, default_value = "postgres_source")]
    channel: String,
    /// Create the AFTER INSERT trigger that NOTIFYs the channel
    #[arg(long)]
    install_trigger: bool,
    /// Read at least this often even without a notification
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Rows per read
    #[arg(long, default_value_t = 1000)]
    batch_size: i64,
    /// Table (created if missing) storing the acknowledged id per stream
    #[arg(long)]
    position_table: Option<String>,
    /// Move past a gap in the ids after this long even if a transaction that may fill it is open (0 = never)
    #[arg(long, default_value_t = 0)]
    max_gap_wait_ms: u64,
}

struct PgSource {
    reader: Reader,
    stream: Option<u64>,
}

impl SourceConnector for PgSource {
    /// The row id: acknowledged, it is the position to resume after.
    type Token = u64;

    async fn read(&mut self, out: &mut Batch<u64>) -> Result<()> {
        let Some(stream) = self.stream else {
            let stored = self.reader.stored_position();
            self.stream = Some(out.open(self.reader.stream_name(), stored));
            return Ok(());
        };
        // Waits for a NOTIFY or poll_ms, then the rows that may be sent now (cancel safe).
        for row in self.reader.next_rows().await? {
            out.push(stream, row.id, &row.key, &row.payload, row.id);
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        self.reader.start_after(stream.resume);
        Ok(())
    }

    async fn commit(&mut self, ids: Vec<u64>) -> Result<()> {
        match ids.last() {
            Some(&id) => self.reader.commit(id).await,
            None => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.reader.close().await
    }
}

/// The connection and the reader's settings, checked.
fn settings(ctx: &Context, p: Params) -> Result<(tokio_postgres::Config, SourceConfig)> {
    let flag = format!("--{}-connection", ctx.connector);
    let config = pg::parse_config(&p.connection, ctx.program, &flag)?;
    let cfg = SourceConfig {
        table: p.table,
        id_column: p.id_column,
        payload: Payload::from_param(&p.payload),
        key_column: p.key_column.filter(|s| !s.is_empty()),
        channel: p.channel,
        install_trigger: p.install_trigger,
        poll: Duration::from_millis(p.poll_ms.max(1)),
        batch_size: p.batch_size,
        position_table: p.position_table.filter(|s| !s.is_empty()),
        max_gap_wait: (p.max_gap_wait_ms > 0).then(|| Duration::from_millis(p.max_gap_wait_ms)),
    };
    cfg.validate(&ctx.connector)?;
    Ok((config, cfg))
}

fn main() -> ExitCode {
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            match settings(&ctx, p) {
                Ok((config, cfg)) => check(&config, &cfg).await,
                Err(e) => vec![Check::from_result::<()>("parameters", Err(e))],
            }
        })
        .run(|ctx, p: Params| async move {
            let (config, cfg) = settings(&ctx, p)?;
            Ok(PgSource {
                reader: Reader::connect(config, cfg, ctx).await?,
                stream: None,
            })
        })
}
