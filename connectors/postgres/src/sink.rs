//! The writer behind `postgres_sink`: one transaction per batch, bad rows found by bisection.
//!
//! - `insert` mode: `COPY table (key, value) FROM STDIN` (text format: PostgreSQL parses
//!   every value with the column type's own input function, whatever the types are).
//! - `upsert` mode: `INSERT INTO table (key, value) SELECT ... FROM unnest($1::text[],
//!   $2::text[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`: the whole batch is
//!   two array parameters of one statement (no 65,535-parameter limit). Within a batch only
//!   the last message of a key is written (the earlier ones would be overwritten anyway, and
//!   one statement may not update a row twice). Fast path: a batch is first tried as a plain
//!   `COPY` in its transaction, which succeeds exactly when none of its keys exists yet (the
//!   result is then the same as the upsert's) and runs at COPY speed; when it fails (a key
//!   exists: a replay, an update) the transaction is rolled back and the batch goes through
//!   the upsert statement, and the next 16 batches skip the fast path.
//!
//! The value goes in as text (text, varchar, json, jsonb, or any type with a text input) or
//! as raw bytes (bytea), chosen by the column's type, looked up once at start.
//!
//! A batch that fails because of its data (SQLSTATE classes 21, 22, 23, 54: invalid JSON, a
//! constraint, a value too long) is rolled back and split in halves, each written in its own
//! transaction, down to the single rows that fail: those are refused with the database's
//! message (the runtime dead-letters them), and everything else is committed. A broken
//! connection (or a server restart) marks the rows not committed yet for a retry: the
//! runtime writes them again after its back-off, and the next write reconnects first.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use bytes::{BufMut, Bytes, BytesMut};
use connector_runtime::{Check, Context, Outcomes, SinkMessage};
use futures::SinkExt;
use tokio_postgres::{Config, Statement};

use crate::pg::{self, classify, describe, ErrorClass, PgConn};
use crate::table::TableInfo;

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Append every message as a new row (`COPY`).
    Insert,
    /// Insert or update the row with the message's key (`ON CONFLICT (key) DO UPDATE`).
    Upsert,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "insert" => Ok(Mode::Insert),
            "upsert" => Ok(Mode::Upsert),
            _ => Err("expected `insert` or `upsert`".into()),
        }
    }
}

/// How the payload is handed to the value column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// As text, parsed by the column type's input function (text, varchar, json, jsonb, ...):
    /// the payload must be UTF-8 without NUL bytes.
    Text,
    /// As raw bytes (bytea).
    Bytes,
}

/// The sink's settings (from its parameters).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The table, as in SQL (`name`, `schema.name`).
    pub table: String,
    /// Column receiving the message key.
    pub key_column: String,
    /// Column receiving the payload.
    pub value_column: String,
    /// `insert` or `upsert`.
    pub mode: Mode,
}

/// The table as the writer uses it.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    key: String,
    value: String,
    key_type: String,
    value_type: String,
    value_kind: ValueKind,
}

/// Writes batches of messages to one table.
pub struct Writer {
    config: Config,
    cfg: SinkConfig,
    target: Target,
    /// The connection and its statements; `None` after it failed, until the next write
    /// reconnects.
    conn: Option<Conn>,
    /// Upsert mode: batches left to write without trying the COPY fast path first.
    skip_copy: u32,
    ctx: Context,
}

/// Batches that skip the COPY fast path after it met an existing key.
const SKIP_COPY_AFTER_CONFLICT: u32 = 16;

/// One message ready to write: its index in the batch and its key (None = SQL NULL).
struct Row<'a> {
    index: usize,
    key: Option<&'a str>,
    value: &'a [u8],
}

impl Writer {
    /// Connects (retrying while the server is unreachable), checks the table and prepares
    /// the statement.
    pub async fn connect(config: Config, cfg: SinkConfig, ctx: Context) -> Result<Writer> {
        let pg = pg::connect(&config, &ctx, false).await?;
        let target = describe_target(&pg, &cfg).await?;
        tracing::info!(
            "writing to {} ({} {}, {} {} as {:?}) in {:?} mode",
            target.name,
            target.key,
            target.key_type,
            target.value,
            target.value_type,
            target.value_kind,
            cfg.mode
        );
        let conn = prepare(pg, &cfg, &target).await.map_err(|e| {
            anyhow!(
                "cannot prepare writing to {}: {}",
                target.name,
                describe(&e)
            )
        })?;
        Ok(Writer {
            config,
            cfg,
            target,
            conn: Some(conn),
            skip_copy: 0,
            ctx,
        })
    }

    /// Writes `batch`, one transaction per chunk, and marks in `outcomes` the rows
    /// PostgreSQL refused (with its message) and those to write again (the connection
    /// failed before their COMMIT). `Err` only when retrying cannot help.
    pub async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        let mut rows = Vec::with_capacity(batch.len());
        for (index, m) in batch.iter().enumerate() {
            match self.check_row(index, m) {
                Ok(row) => rows.push(row),
                Err(why) => outcomes.refuse(index, why),
            }
        }
        let mut conn = match self.connection().await? {
            Ok(conn) => conn,
            Err(why) => {
                rows.iter().for_each(|r| outcomes.retry(r.index, &why));
                return Ok(());
            }
        };
        if self.skip_copy > 0 {
            self.skip_copy -= 1;
        }
        // Ranges of `rows` still to write, in order (a stack: last = next).
        let mut todo = vec![(0usize, rows.len())];
        while let Some((lo, hi)) = todo.pop() {
            if lo >= hi {
                continue;
            }
            let chunk = &rows[lo..hi];
            let kind = self.target.value_kind;
            let Err(e) = conn.write_chunk(chunk, kind, &mut self.skip_copy).await else {
                continue;
            };
            match classify(&e) {
                ErrorClass::Row if hi - lo == 1 => {
                    let r = &rows[lo];
                    let key = r.key.unwrap_or("");
                    let why = format!(
                        "row with key {key:?} refused by PostgreSQL: {}",
                        describe(&e)
                    );
                    outcomes.refuse(r.index, why);
                }
                ErrorClass::Row => {
                    let mid = lo + (hi - lo) / 2;
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
                ErrorClass::Transient => {
                    // Not committed: this chunk and every one after it are written again,
                    // on a new connection.
                    let why = format!("writing to {} failed: {}", self.target.name, describe(&e));
                    self.ctx.metrics.error("connection");
                    todo.push((lo, hi));
                    for (lo, hi) in todo {
                        rows[lo..hi]
                            .iter()
                            .for_each(|r| outcomes.retry(r.index, &why));
                    }
                    return Ok(());
                }
                ErrorClass::Fatal => bail!(
                    "PostgreSQL refused writing to {}: {}",
                    self.target.name,
                    describe(&e)
                ),
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// The connection, taken out for one write (put back once the write did not fail on
    /// it), or a new one: `Ok(Err(why))` while the server is not reachable (the runtime
    /// writes the batch again after its back-off).
    async fn connection(&mut self) -> Result<Result<Conn, String>> {
        if let Some(conn) = self.conn.take().filter(|c| !c.pg.client.is_closed()) {
            return Ok(Ok(conn));
        }
        let pg = match pg::reconnect_once(&self.config, &self.ctx).await? {
            Ok(pg) => pg,
            Err(why) => return Ok(Err(why)),
        };
        match prepare(pg, &self.cfg, &self.target).await {
            Ok(conn) => Ok(Ok(conn)),
            Err(e) if classify(&e) == ErrorClass::Transient => Ok(Err(format!(
                "preparing after reconnect failed: {}",
                describe(&e)
            ))),
            Err(e) => bail!(
                "cannot prepare writing to {}: {}",
                self.target.name,
                describe(&e)
            ),
        }
    }

    fn check_row<'a>(&self, index: usize, m: &'a SinkMessage) -> Result<Row<'a>, String> {
        let key = if m.key.is_empty() {
            None
        } else {
            match std::str::from_utf8(&m.key) {
                Ok(k) if !k.contains('\0') => Some(k),
                _ => {
                    return Err(format!(
                        "key {:?} is not valid UTF-8 text without NUL bytes (column {} is {})",
                        String::from_utf8_lossy(&m.key),
                        self.target.key,
                        self.target.key_type
                    ))
                }
            }
        };
        if self.target.value_kind == ValueKind::Text {
            match std::str::from_utf8(&m.payload) {
                Ok(v) if !v.contains('\0') => {}
                _ => {
                    return Err(format!(
                        "row with key {:?}: payload is not valid UTF-8 text without NUL bytes, which column {} ({}) needs",
                        key.unwrap_or(""),
                        self.target.value,
                        self.target.value_type
                    ))
                }
            }
        }
        Ok(Row {
            index,
            key,
            value: &m.payload,
        })
    }
}

/// A connection and its prepared statements.
struct Conn {
    pg: PgConn,
    copy: Statement,
    upsert: Option<Statement>,
}

impl Conn {
    /// One transaction (two in upsert mode when the COPY fast path is declined): the rows
    /// are committed, or nothing is. `skip_copy`: batches left without the fast path.
    async fn write_chunk(
        &mut self,
        rows: &[Row<'_>],
        kind: ValueKind,
        skip_copy: &mut u32,
    ) -> Result<(), tokio_postgres::Error> {
        let Some(upsert) = &self.upsert else {
            let rows: Vec<&Row<'_>> = rows.iter().collect();
            let tx = self.pg.client.transaction().await?;
            let r = copy_rows(&tx, &self.copy, &rows, kind).await;
            return finish(tx, r).await;
        };
        let rows = last_per_key(rows);
        if *skip_copy == 0 {
            let tx = self.pg.client.transaction().await?;
            let r = copy_rows(&tx, &self.copy, &rows, kind).await;
            match finish(tx, r).await {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e) == ErrorClass::Row => {
                    // A key exists already (or a row is bad): the upsert statement decides.
                    tracing::debug!("COPY fast path declined: {}", describe(&e));
                    *skip_copy = SKIP_COPY_AFTER_CONFLICT;
                }
                Err(e) => return Err(e),
            }
        }
        let tx = self.pg.client.transaction().await?;
        let r = upsert_rows(&tx, upsert, &rows, kind).await;
        finish(tx, r).await
    }
}

/// Looks the table up and checks that it can take what this sink writes.
async fn describe_target(pg: &PgConn, cfg: &SinkConfig) -> Result<Target> {
    let table = TableInfo::lookup(&pg.client, &cfg.table).await?;
    let key = table.column(&cfg.key_column, "key_column")?;
    let value = table.column(&cfg.value_column, "value_column")?;
    if key.name == value.name {
        bail!(
            "key_column and value_column are both `{}`: use two different columns",
            key.name
        );
    }
    for c in &table.columns {
        if c.num != key.num && c.num != value.num && c.not_null && !c.has_default {
            bail!(
                "column {} of {} is NOT NULL without a default, and this sink writes only {} and {}: give it a default or drop NOT NULL",
                c.ident(),
                table.name,
                key.ident(),
                value.ident()
            );
        }
    }
    if cfg.mode == Mode::Upsert && !table.has_unique_index_on(&pg.client, key).await? {
        bail!(
            "upsert mode needs a unique index or primary key on {}.{} alone, and there is none: `ALTER TABLE {} ADD PRIMARY KEY ({})`, or use mode `insert`",
            table.name,
            key.ident(),
            table.name,
            key.ident()
        );
    }
    let value_kind = if value.base_type == "bytea" {
        ValueKind::Bytes
    } else {
        ValueKind::Text
    };
    Ok(Target {
        name: table.name.clone(),
        key: key.ident(),
        value: value.ident(),
        key_type: key.sql_type.clone(),
        value_type: value.sql_type.clone(),
        value_kind,
    })
}

/// Prepares the statements on a new connection.
async fn prepare(pg: PgConn, cfg: &SinkConfig, t: &Target) -> Result<Conn, tokio_postgres::Error> {
    let copy = pg
        .client
        .prepare(&format!(
            "COPY {} ({}, {}) FROM STDIN",
            t.name, t.key, t.value
        ))
        .await?;
    let upsert = match cfg.mode {
        Mode::Insert => None,
        Mode::Upsert => {
            let arr = match t.value_kind {
                ValueKind::Text => "text[]",
                ValueKind::Bytes => "bytea[]",
            };
            let sql = format!(
                "INSERT INTO {name} ({k}, {v}) SELECT u.k::{kt}, u.v::{vt} FROM unnest($1::text[], $2::{arr}) AS u(k, v) \
                 ON CONFLICT ({k}) DO UPDATE SET {v} = EXCLUDED.{v}",
                name = t.name,
                k = t.key,
                v = t.value,
                kt = t.key_type,
                vt = t.value_type,
            );
            Some(pg.client.prepare(&sql).await?)
        }
    };
    Ok(Conn { pg, copy, upsert })
}

/// Commits, or rolls back and returns the error.
async fn finish(
    tx: tokio_postgres::Transaction<'_>,
    r: Result<(), tokio_postgres::Error>,
) -> Result<(), tokio_postgres::Error> {
    match r {
        Ok(()) => tx.commit().await,
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The rows to write in upsert mode: the last message of each key (and every keyless one).
fn last_per_key<'r, 'a>(rows: &'r [Row<'a>]) -> Vec<&'r Row<'a>> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if let Some(k) = r.key {
            last.insert(k, i);
        }
    }
    rows.iter()
        .enumerate()
        .filter(|(i, r)| r.key.is_none_or(|k| last.get(k) == Some(i)))
        .map(|(_, r)| r)
        .collect()
}

/// `COPY ... FROM STDIN` in text format, sent in pieces of about 1 MiB.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: &Statement,
    rows: &[&Row<'_>],
    kind: ValueKind,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(stmt).await?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(1 << 20);
    for r in rows {
        match r.key {
            Some(k) => copy_escape(&mut buf, k.as_bytes()),
            None => buf.put_slice(b"\\N"),
        }
        buf.put_u8(b'\t');
        match kind {
            ValueKind::Text => copy_escape(&mut buf, r.value),
            ValueKind::Bytes => copy_bytea(&mut buf, r.value),
        }
        buf.put_u8(b'\n');
        if buf.len() >= 1 << 20 {
            sink.feed(buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.freeze()).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// One `INSERT ... SELECT FROM unnest(...) ON CONFLICT` (rows already one per key).
async fn upsert_rows(
    tx: &tokio_postgres::Transaction<'_>,
    stmt: &Statement,
    rows: &[&Row<'_>],
    kind: ValueKind,
) -> Result<(), tokio_postgres::Error> {
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key).collect();
    match kind {
        ValueKind::Text => {
            // Checked UTF-8 in `check_row`.
            let v: Vec<&str> = rows
                .iter()
                .map(|r| std::str::from_utf8(r.value).unwrap_or_default())
                .collect();
            tx.execute(stmt, &[&keys, &v]).await?;
        }
        ValueKind::Bytes => {
            let v: Vec<&[u8]> = rows.iter().map(|r| r.value).collect();
            tx.execute(stmt, &[&keys, &v]).await?;
        }
    }
    Ok(())
}

/// Appends `s` escaped for COPY's text format (backslash, tab, newline, carriage return).
pub fn copy_escape(buf: &mut BytesMut, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        buf.put_slice(&s[start..i]);
        buf.put_slice(esc);
        start = i + 1;
    }
    buf.put_slice(&s[start..]);
}

/// Appends `b` as a bytea hex literal in COPY's text format (`\\x0a1b...`).
pub fn copy_bytea(buf: &mut BytesMut, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.reserve(3 + 2 * b.len());
    buf.put_slice(b"\\\\x");
    for &x in b {
        buf.put_u8(HEX[(x >> 4) as usize]);
        buf.put_u8(HEX[(x & 15) as usize]);
    }
}

/// `--check`: reach the server, find the table and columns, check the mode's needs.
pub async fn check(config: &Config, cfg: &SinkConfig) -> Vec<Check> {
    let what = format!("PostgreSQL reachable at {}", pg::target(config));
    let pg = match pg::connect_once(config).await {
        Ok(c) => c,
        Err(e) => return vec![Check::fail(what, describe(&e))],
    };
    let mut checks = vec![Check::ok(what)];
    checks.push(Check::from_result(
        format!(
            "table `{}` takes {} ({:?} mode) and the value column's type is known",
            cfg.table, cfg.key_column, cfg.mode
        ),
        describe_target(&pg, cfg).await,
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escaping() {
        let mut b = BytesMut::new();
        copy_escape(&mut b, b"a\\b\tc\nd\re\\.");
        assert_eq!(&b[..], b"a\\\\b\\tc\\nd\\re\\\\.");
        let mut b = BytesMut::new();
        copy_bytea(&mut b, &[0, 0xff, 0x10]);
        assert_eq!(&b[..], b"\\\\x00ff10");
    }

    #[test]
    fn mode_parses() {
        assert_eq!("Upsert".parse::<Mode>(), Ok(Mode::Upsert));
        assert!("merge".parse::<Mode>().is_err());
    }
}
