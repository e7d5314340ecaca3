//! The reader behind `postgres_source`: rows above a position, in id order, in batches,
//! never past a gap an open transaction may still fill.
//!
//! # Why gaps need care
//!
//! Ids from a sequence are handed out when a row is inserted, but the row becomes visible
//! when its transaction commits. Transaction A takes id 9, transaction B takes id 10, B
//! commits first: a reader sees 10 and not 9. Moving the position to 10 would lose 9 for
//! ever. A gap can also be permanent (a rolled-back insert, a deleted row), so waiting for
//! every gap to fill is not an answer either.
//!
//! # The rule used here
//!
//! An `INSERT` (or `COPY`) takes its `RowExclusiveLock` on the table while the statement is
//! parsed, *before* the column default calls `nextval`, and keeps it until the transaction
//! ends. So a transaction that holds an id below a visible row took that lock before the
//! reader's snapshot and still holds it. When the reader sees a gap it stops before it and,
//! on each following round, first lists the transactions holding a write lock on the table
//! (`pg_locks`), then reads again:
//!
//! 1. the first round after the gap was seen records that list as the gap's *suspects*
//!    (taken after the snapshot that showed the gap: any transaction that could fill it is
//!    in it, or has already committed);
//! 2. each later round keeps only the suspects still holding the lock;
//! 3. once no suspect is left, the next read (a newer snapshot) shows every row they
//!    committed; if the gap is still there it is permanent and the reader moves past it.
//!
//! Transactions that took the lock later cannot fill the gap (their ids are higher), so
//! a steady stream of new writers never stalls the reader; one long-open writing
//! transaction does, and that is correct (it may hold the missing id). The wait is logged
//! with the backend pids after 10 s, and `max_gap_wait_ms` (off by default) bounds it for
//! those who prefer liveness to completeness.
//!
//! Compared with the alternative of a transaction-id column filled by a trigger and
//! compared with `pg_snapshot_xmin(pg_current_snapshot())`: no column has to be added to
//! the user's table, only transactions that write *this* table are waited for (xmin waits
//! for every writing transaction of the whole server), and the lock is taken before
//! `nextval`, whereas a transaction id is assigned at the first row write, after it.
//!
//! Limits (see the README): the ids must come from the inserting statement itself (a column
//! default, identity, or `nextval` inside the `INSERT`), not from a `SELECT nextval()`
//! issued earlier in the transaction; and the sequence must not use `CACHE` > 1 (each
//! session would hand out ids from its own block, so ids are not ordered by time at all).
//! The reader warns at start when it finds such a sequence.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use connector_runtime::{Backoff, Check, Context, ShuttingDown};
use tokio_postgres::{Config, Statement};

use crate::pg::{self, classify, describe, quote_ident, quote_literal, ErrorClass, PgConn};
use crate::table::TableInfo;

/// What the source sends as the message payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// One column (bytea as raw bytes, anything else as its text form).
    Column(String),
    /// The whole row as a JSON object (`row_to_json`).
    RowToJson,
}

impl Payload {
    /// The `payload` parameter: `row_to_json`, or a column name.
    pub fn from_param(s: &str) -> Payload {
        match s {
            "row_to_json" => Payload::RowToJson,
            c => Payload::Column(c.to_string()),
        }
    }
}

/// The source's settings (from its parameters).
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The table, as in SQL.
    pub table: String,
    /// The increasing integer id column.
    pub id_column: String,
    /// The payload.
    pub payload: Payload,
    /// Column sent as the message key, if any.
    pub key_column: Option<String>,
    /// NOTIFY channel that wakes the reader.
    pub channel: String,
    /// Create the NOTIFY trigger on the table at start.
    pub install_trigger: bool,
    /// Read even without a notification this often.
    pub poll: Duration,
    /// Rows per read.
    pub batch_size: i64,
    /// Table holding the acknowledged position, if any.
    pub position_table: Option<String>,
    /// Give up waiting for a gap after this long (None = wait while a suspect is open).
    pub max_gap_wait: Option<Duration>,
}

impl SourceConfig {
    /// Checks what PostgreSQL would refuse later; errors name `--{connector}-PARAM`.
    pub fn validate(&self, connector: &str) -> Result<()> {
        if self.batch_size < 1 {
            bail!("--{connector}-batch_size must be at least 1");
        }
        let channel = &self.channel;
        if channel.is_empty() || channel.len() > MAX_IDENTIFIER {
            bail!(
                "--{connector}-channel `{channel}` is {} bytes: PostgreSQL channel names are 1 to {MAX_IDENTIFIER} bytes (pg_notify refuses longer ones, and so would every INSERT through the trigger)",
                channel.len()
            );
        }
        Ok(())
    }
}

/// The longest identifier (and NOTIFY channel name) PostgreSQL takes, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// One row read: id, key, payload.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The row id (the message id).
    pub id: u64,
    /// The key column's text (empty without a key column or for NULL).
    pub key: Vec<u8>,
    /// The payload bytes (empty for NULL).
    pub payload: Vec<u8>,
}

/// One read: the rows that may be sent now.
#[derive(Debug, Default)]
struct Rows {
    /// Rows to send, ids increasing.
    rows: Vec<SourceRow>,
    /// The read was full: more rows are probably ready.
    more: bool,
    /// Stopped before a gap that may still fill: read again soon.
    held: bool,
}

/// A transaction holding a write lock on the table: virtual transaction id -> backend pid.
pub type Holders = HashMap<String, Option<i32>>;

#[derive(Debug)]
struct Pending {
    after: u64,
    suspects: Option<Holders>,
    since: Instant,
    warned: Option<Instant>,
}

/// Decides how far the reader may go past gaps in the ids (see the module doc).
#[derive(Debug, Default)]
pub struct GapGate {
    pending: Option<Pending>,
}

impl GapGate {
    /// Whether the next round must list the lock holders before reading.
    pub fn needs_holders(&self) -> bool {
        self.pending.is_some()
    }

    /// Given the position, the ids just read (increasing) and the lock holders listed
    /// *before* that read (when [`GapGate::needs_holders`] said so), returns how many of
    /// the ids may be sent.
    pub fn admit(
        &mut self,
        pos: u64,
        ids: &[u64],
        holders: Option<&Holders>,
        now: Instant,
        max_wait: Option<Duration>,
    ) -> usize {
        let mut prev = pos;
        for (n, &id) in ids.iter().enumerate() {
            if id == prev.saturating_add(1) {
                prev = id;
                continue;
            }
            match &mut self.pending {
                Some(p) if p.after == prev => {
                    let resolved = match holders {
                        Some(h) => {
                            let left: Holders = match &p.suspects {
                                None => h.clone(),
                                Some(s) => s
                                    .iter()
                                    .filter(|(k, _)| h.contains_key(*k))
                                    .map(|(k, v)| (k.clone(), *v))
                                    .collect(),
                            };
                            let empty = left.is_empty();
                            p.suspects = Some(left);
                            empty
                        }
                        None => false,
                    };
                    let waited = now.saturating_duration_since(p.since);
                    let timed_out = max_wait.is_some_and(|m| waited >= m);
                    if resolved || timed_out {
                        if resolved {
                            tracing::debug!(
                                "ids {}..{} never committed (rolled back or deleted): moving on",
                                prev + 1,
                                id - 1
                            );
                        } else {
                            tracing::warn!(
                                "gave up waiting for ids {}..{} after {waited:?} (max_gap_wait_ms); transactions still open: {}",
                                prev + 1,
                                id - 1,
                                pids(p.suspects.as_ref())
                            );
                        }
                        self.pending = None;
                        prev = id;
                        continue;
                    }
                    if waited >= Duration::from_secs(10)
                        && p.warned.is_none_or(|w| {
                            now.saturating_duration_since(w) >= Duration::from_secs(60)
                        })
                    {
                        tracing::warn!(
                            "waiting {waited:?} for ids {}..{}: transactions that may still commit them are open (backend pids {}); see pg_stat_activity",
                            prev + 1,
                            id - 1,
                            pids(p.suspects.as_ref())
                        );
                        p.warned = Some(now);
                    }
                    return n;
                }
                _ => {
                    self.pending = Some(Pending {
                        after: prev,
                        suspects: None,
                        since: now,
                        warned: None,
                    });
                    return n;
                }
            }
        }
        self.pending = None;
        ids.len()
    }
}

fn pids(h: Option<&Holders>) -> String {
    match h {
        None => "not listed yet".into(),
        Some(h) => {
            let mut v: Vec<String> = h
                .iter()
                .map(|(vx, pid)| match pid {
                    Some(p) => p.to_string(),
                    None => format!("prepared {vx}"),
                })
                .collect();
            v.sort();
            v.join(", ")
        }
    }
}

/// A read in flight: it owns the session until it is done, so dropping the `read` that
/// awaits it (the runtime does, to commit) loses nothing; the next call awaits it again.
type InFlight = Pin<Box<dyn Future<Output = (Session, Result<Rows>)> + Send>>;

/// Why [`Reader::next_rows`] has no connection (a read did not end in time at shutdown).
const NO_SESSION: &str = "no connection to PostgreSQL: a read did not end at shutdown";

/// How long [`Reader::close`] waits for a read in flight before storing the position.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Reads the table in id order for `postgres_source`: waits for a NOTIFY (or `poll_ms`),
/// reads the rows above its position, never past a gap an open transaction may still fill,
/// and stores acknowledged positions in `position_table`. Reconnects by itself.
pub struct Reader {
    /// The connection, or `None` while a read holds it (in `in_flight`).
    session: Option<Session>,
    in_flight: Option<InFlight>,
    table: String,
    /// The stream name, `<connector>/<table>`: the key of `position_table`.
    stream: String,
    /// The position `position_table` held at start.
    stored: Option<u64>,
    /// The id of the last row returned.
    pos: u64,
    /// After a read that was not full: the next one waits for a NOTIFY or this instant.
    due: Option<tokio::time::Instant>,
    /// An acknowledged position not stored in `position_table` yet.
    unsaved: Option<u64>,
}

impl Reader {
    /// Connects (retrying while the server is unreachable), checks the table, installs the
    /// trigger when asked, LISTENs, prepares the queries and reads the stored position.
    pub async fn connect(config: Config, cfg: SourceConfig, ctx: Context) -> Result<Reader> {
        let pg = pg::connect(&config, &ctx, false).await?;
        let prepared = setup(&pg, &cfg, true).await?;
        let trigger_retry =
            (prepared.trigger == Some(TriggerState::Busy)).then(|| Instant::now() + TRIGGER_RETRY);
        let table = prepared.table.name.clone();
        let stream = format!("{}/{table}", ctx.connector);
        let mut session = Session {
            config,
            cfg,
            ctx,
            pg,
            prepared,
            trigger_retry,
            gate: GapGate::default(),
            gap_delay: Duration::from_millis(5),
            last_lag: None,
            retry: Backoff::default(),
        };
        let stored = session.stored_position(&stream).await?;
        Ok(Reader {
            session: Some(session),
            in_flight: None,
            table,
            stream,
            stored,
            pos: 0,
            due: None,
            unsaved: None,
        })
    }

    /// The stream name, `<connector>/<table>`.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The position stored in `position_table` at start, if any.
    pub fn stored_position(&self) -> Option<u64> {
        self.stored
    }

    /// Starts after the higher of the engine's resume point and the stored position.
    pub fn start_after(&mut self, resume: Option<u64>) {
        self.pos = resume.max(self.stored).unwrap_or(0);
        tracing::info!("reading {} from id {} on", self.table, self.pos + 1);
    }

    /// Waits for a NOTIFY (or `poll_ms`, or at once after a full read), then returns the
    /// next rows above the position that may be sent now, and moves the position past them:
    /// push them before the next `.await`. Cancel safe: a read interrupted in the middle is
    /// taken up again by the next call.
    pub async fn next_rows(&mut self) -> Result<Vec<SourceRow>> {
        if self.in_flight.is_none() {
            let session = self.session.as_mut().context(NO_SESSION)?;
            if let Some(p) = self.unsaved {
                if session.save_position(&self.stream, p).await? {
                    self.unsaved = None;
                }
            }
            if let Some(due) = self.due {
                tokio::select! {
                    _ = session.notified() => {}
                    _ = tokio::time::sleep_until(due) => {}
                }
                self.due = None;
            }
            let (mut session, pos) = (self.session.take().context(NO_SESSION)?, self.pos);
            self.in_flight = Some(Box::pin(async move {
                let rows = session.next_batch(pos).await;
                (session, rows)
            }));
        }
        let in_flight = self.in_flight.as_mut().context(NO_SESSION)?;
        let (session, read) = in_flight.await;
        self.in_flight = None;
        let session = self.session.insert(session);
        let read = read?;
        if let Some(last) = read.rows.last() {
            self.pos = last.id;
        }
        if !read.more {
            self.due = Some(tokio::time::Instant::now() + session.delay(read.held));
        }
        Ok(read.rows)
    }

    /// The engine acknowledged every row up to `position`: stores it in `position_table`
    /// (no-op without one; while a read is in flight, or after a transient failure, it is
    /// stored with the next read).
    pub async fn commit(&mut self, position: u64) -> Result<()> {
        self.unsaved = Some(position.max(self.unsaved.unwrap_or(0)));
        if let (Some(session), Some(p)) = (self.session.as_mut(), self.unsaved) {
            if session.save_position(&self.stream, p).await? {
                self.unsaved = None;
            }
        }
        Ok(())
    }

    /// At the end: lets a read in flight finish (up to 10 s), then stores the last
    /// acknowledged position.
    pub async fn close(&mut self) -> Result<()> {
        if let Some(in_flight) = self.in_flight.take() {
            match tokio::time::timeout(CLOSE_WAIT, in_flight).await {
                Ok((session, _)) => self.session = Some(session),
                Err(_) => {
                    tracing::warn!("a read of {} did not end within {CLOSE_WAIT:?}", self.table)
                }
            }
        }
        if let (Some(session), Some(p)) = (self.session.as_mut(), self.unsaved) {
            if !session.save_position(&self.stream, p).await? {
                tracing::warn!(
                    "position {p} not stored in position_table: the next start reads from the engine's resume point"
                );
            }
        }
        Ok(())
    }
}

/// One connection to the table and what reading it needs; reconnects by itself.
struct Session {
    config: Config,
    cfg: SourceConfig,
    ctx: Context,
    pg: PgConn,
    prepared: Prepared,
    /// When to try installing the NOTIFY trigger again (it is missing: the table was busy).
    trigger_retry: Option<Instant>,
    gate: GapGate,
    gap_delay: Duration,
    last_lag: Option<Instant>,
    /// Spaces out reconnects after failed reads, so a read that keeps failing never spins.
    retry: Backoff,
}

impl Session {
    /// Reads the next rows above `pos` that may be sent now.
    async fn next_batch(&mut self, pos: u64) -> Result<Rows> {
        self.retry_trigger().await;
        loop {
            match self.try_batch(pos).await {
                Ok(b) => {
                    if self.retry.attempts() > 0 {
                        self.retry.reset();
                    }
                    return Ok(b);
                }
                Err(e) => self.on_error(e, "reading").await?,
            }
        }
    }

    /// Tries again to install the trigger that could not be installed at start, when due.
    /// A failure only delays it: reading goes on by polling meanwhile.
    async fn retry_trigger(&mut self) {
        if self.trigger_retry.is_none_or(|at| Instant::now() < at) {
            return;
        }
        let state = ensure_trigger(&self.pg.client, &self.prepared.table, &self.cfg.channel)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}; trying again in {}s", TRIGGER_RETRY.as_secs());
                TriggerState::Busy
            });
        self.trigger_retry = (state == TriggerState::Busy).then(|| Instant::now() + TRIGGER_RETRY);
    }

    async fn try_batch(&mut self, pos: u64) -> Result<Rows, tokio_postgres::Error> {
        self.pg.clear_notifications();
        let holders = if self.gate.needs_holders() {
            let rows = self
                .pg
                .client
                .query(&self.prepared.holders, &[&self.prepared.relations])
                .await?;
            Some(
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Option<i32>>(1)))
                    .collect::<Holders>(),
            )
        } else {
            None
        };
        let from = i64::try_from(pos).unwrap_or(i64::MAX);
        let rows = self
            .pg
            .client
            .query(&self.prepared.select, &[&from, &self.cfg.batch_size])
            .await?;
        let full = rows.len() as i64 >= self.cfg.batch_size;
        let mut out = Vec::with_capacity(rows.len());
        let mut last = pos;
        for r in &rows {
            let id: i64 = r.get(0);
            let Ok(id) = u64::try_from(id) else { continue };
            if id <= last {
                // Only possible when the id column is not unique.
                tracing::warn!(
                    "id {id} appears twice in {}: sending it once",
                    self.prepared.table.name
                );
                continue;
            }
            last = id;
            let key: Option<&str> = r.get(1);
            let payload: Option<&[u8]> = r.get(2);
            out.push(SourceRow {
                id,
                key: key.map(|k| k.as_bytes().to_vec()).unwrap_or_default(),
                payload: payload.map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
        let ids: Vec<u64> = out.iter().map(|r| r.id).collect();
        let n = self.gate.admit(
            pos,
            &ids,
            holders.as_ref(),
            Instant::now(),
            self.cfg.max_gap_wait,
        );
        let held = n < out.len();
        out.truncate(n);
        if held {
            self.gap_delay =
                (self.gap_delay * 2).min(Duration::from_millis(200).min(self.cfg.poll));
        } else {
            self.gap_delay = Duration::from_millis(5);
        }
        if full && !held {
            self.update_lag(pos).await;
        } else if !full {
            self.ctx.metrics.lag.set(if held { -1 } else { 0 });
        }
        Ok(Rows {
            rows: out,
            more: full && !held,
            held,
        })
    }

    async fn update_lag(&mut self, pos: u64) {
        if self
            .last_lag
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_lag = Some(Instant::now());
        let sql = format!(
            "SELECT max({})::int8 FROM {}",
            quote_ident(&self.cfg.id_column),
            self.prepared.table.name
        );
        if let Ok(row) = self.pg.client.query_one(&sql, &[]).await {
            if let Some(max) = row.get::<_, Option<i64>>(0) {
                self.ctx
                    .metrics
                    .lag
                    .set((max - i64::try_from(pos).unwrap_or(i64::MAX)).max(0));
            }
        }
    }

    /// How long to wait before reading again when a notification does not come first:
    /// short (5 ms doubling to 200 ms) while holding before a gap, else `poll_ms`.
    fn delay(&self, held: bool) -> Duration {
        if held {
            self.gap_delay
        } else {
            self.cfg.poll
        }
    }

    /// Waits for a NOTIFY on the channel (returns at once if the connection is gone).
    async fn notified(&mut self) {
        if !self.pg.notified().await {
            // The connection task ended: the next read reconnects. Do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The position stored in `position_table`, if configured and present.
    async fn stored_position(&mut self, stream: &str) -> Result<Option<u64>> {
        let Some(table) = &self.cfg.position_table else {
            return Ok(None);
        };
        let sql = format!("SELECT position FROM {table} WHERE stream = $1");
        loop {
            match self.pg.client.query_opt(&sql, &[&stream]).await {
                Ok(r) => {
                    return Ok(r
                        .and_then(|r| r.get::<_, Option<i64>>(0))
                        .and_then(|p| u64::try_from(p).ok()))
                }
                Err(e) => self.on_error(e, "reading the stored position").await?,
            }
        }
    }

    /// Records the acknowledged `position` in `position_table` (no-op without one). A
    /// transient failure is logged and left for the next acknowledgement.
    async fn save_position(&mut self, stream: &str, position: u64) -> Result<bool> {
        let Some(stmt) = &self.prepared.save else {
            return Ok(true);
        };
        let p = i64::try_from(position).unwrap_or(i64::MAX);
        match self.pg.client.execute(stmt, &[&stream, &p]).await {
            Ok(_) => Ok(true),
            Err(e) if classify(&e) == ErrorClass::Transient => {
                tracing::warn!("cannot save the position yet: {}", describe(&e));
                Ok(false)
            }
            Err(e) => bail!("cannot save the position: {}", describe(&e)),
        }
    }

    /// Reconnects on a transient error (then the caller retries), fails otherwise.
    async fn on_error(&mut self, e: tokio_postgres::Error, doing: &str) -> Result<()> {
        if classify(&e) != ErrorClass::Transient {
            bail!(
                "{doing} {} failed: {}",
                self.prepared.table.name,
                describe(&e)
            );
        }
        self.ctx.metrics.error("connection");
        tracing::warn!(
            "{doing} {} failed: {}; reconnecting",
            self.prepared.table.name,
            describe(&e)
        );
        tokio::select! {
            _ = tokio::time::sleep(self.retry.next_delay()) => {}
            _ = self.ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
        }
        loop {
            self.pg = pg::connect(&self.config, &self.ctx, true).await?;
            match setup(&self.pg, &self.cfg, false).await {
                Ok(prepared) => {
                    self.prepared = prepared;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("setting up after reconnect failed: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// What one connection needs to read the table: the table and the prepared statements.
struct Prepared {
    table: TableInfo,
    select: Statement,
    holders: Statement,
    save: Option<Statement>,
    /// The table and its descendants (partitions, children): the lock holders to watch.
    relations: Vec<u32>,
    /// The NOTIFY trigger, when this setup was asked to install it.
    trigger: Option<TriggerState>,
}

/// Checks the table, installs the trigger (first time only), creates the position table,
/// LISTENs, prepares the statements.
async fn setup(pg: &PgConn, cfg: &SourceConfig, first: bool) -> Result<Prepared> {
    let c = &pg.client;
    let table = TableInfo::lookup(c, &cfg.table).await?;
    let id = table.column(&cfg.id_column, "id_column")?;
    if !matches!(id.base_type.as_str(), "int2" | "int4" | "int8") {
        bail!(
            "id_column {} of {} is {}, not an integer: point id_column at a bigint filled from a sequence (e.g. `id bigserial` or `GENERATED ALWAYS AS IDENTITY`)",
            id.ident(),
            table.name,
            id.sql_type
        );
    }
    let payload_sql = match &cfg.payload {
        Payload::RowToJson => "convert_to(row_to_json(_src.*)::text, 'UTF8')".to_string(),
        Payload::Column(name) => {
            let col = table.column(name, "payload")?;
            if col.base_type == "bytea" {
                format!("_src.{}", col.ident())
            } else {
                format!("convert_to(_src.{}::text, 'UTF8')", col.ident())
            }
        }
    };
    let key_sql = match &cfg.key_column {
        Some(k) => format!("_src.{}::text", table.column(k, "key_column")?.ident()),
        None => "NULL::text".to_string(),
    };
    let mut trigger = None;
    if first {
        for problem in id_sequence_problems(c, &table, id.num, &id.ident()).await {
            tracing::warn!("{problem}");
        }
        refuse_non_positive_ids(c, &table, &id.ident()).await?;
        if cfg.install_trigger {
            trigger = Some(ensure_trigger(c, &table, &cfg.channel).await?);
        } else if !trigger_present(c, &table, &cfg.channel).await? {
            tracing::warn!(
                "no trigger on {} notifies channel `{}`: new rows are seen only every poll_ms; set install_trigger=true to create it",
                table.name,
                cfg.channel
            );
        }
    }
    c.batch_execute(&format!("LISTEN {}", quote_ident(&cfg.channel)))
        .await
        .map_err(|e| anyhow!("LISTEN {} failed: {}", cfg.channel, describe(&e)))?;
    let select = c
        .prepare(&format!(
            "SELECT _src.{id}::int8, {key_sql}, {payload_sql} FROM {t} AS _src \
             WHERE _src.{id} > $1::int8 ORDER BY _src.{id} LIMIT $2::int8",
            id = id.ident(),
            t = table.name
        ))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot prepare the read of {}: {}",
                table.name,
                describe(&e)
            )
        })?;
    let holders = c
        .prepare(
            "SELECT virtualtransaction, pid FROM pg_locks \
             WHERE locktype = 'relation' AND relation = ANY($1::oid[]) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
             AND pid IS DISTINCT FROM pg_backend_pid()",
        )
        .await
        .map_err(|e| anyhow!("cannot prepare the lock query: {}", describe(&e)))?;
    let relations: Vec<u32> = c
        .query_one(
            "WITH RECURSIVE r(oid) AS (SELECT $1::oid UNION SELECT i.inhrelid FROM pg_inherits i JOIN r ON i.inhparent = r.oid) \
             SELECT array_agg(oid) FROM r",
            &[&table.oid],
        )
        .await
        .map_err(|e| anyhow!("cannot list the partitions of {}: {}", table.name, describe(&e)))?
        .get(0);
    let save = match &cfg.position_table {
        None => None,
        Some(pt) => {
            c.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {pt} (stream text PRIMARY KEY, position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(|e| anyhow!("cannot create position_table {pt}: {}", describe(&e)))?;
            Some(
                c.prepare(&format!(
                    "INSERT INTO {pt} AS p (stream, position) VALUES ($1, $2) \
                     ON CONFLICT (stream) DO UPDATE SET position = GREATEST(p.position, EXCLUDED.position), updated_at = now()"
                ))
                .await
                .map_err(|e| anyhow!("cannot prepare the position update: {}", describe(&e)))?,
            )
        }
    };
    Ok(Prepared {
        table,
        select,
        holders,
        save,
        relations,
        trigger,
    })
}

/// What is wrong with the sequence that fills the id column, if anything: a CACHE above 1
/// hands out ids out of time order (rows may be skipped), a MINVALUE below 1 ids this source
/// never reads. The sequence is found as the column's own (serial, identity, OWNED BY) or
/// as the one its default calls `nextval` on.
async fn id_sequence_problems(
    c: &tokio_postgres::Client,
    table: &TableInfo,
    attnum: i16,
    col: &str,
) -> Vec<String> {
    let r = c
        .query_opt(
            "SELECT s.seqcache, s.seqmin FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid = $1 AND d.refobjsubid = $2 AND d.deptype IN ('a', 'i') \
             UNION ALL \
             SELECT s.seqcache, s.seqmin FROM pg_attrdef a \
             JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = a.oid \
             AND d.refclassid = 'pg_class'::regclass \
             JOIN pg_sequence s ON s.seqrelid = d.refobjid \
             WHERE a.adrelid = $1 AND a.adnum = $3 LIMIT 1",
            &[&table.oid, &(attnum as i32), &attnum],
        )
        .await;
    let mut problems = Vec::new();
    match r {
        Ok(Some(row)) => {
            let cache: i64 = row.get(0);
            let min: i64 = row.get(1);
            if cache > 1 {
                problems.push(format!(
                    "the sequence of {}.{col} has CACHE {cache}: sessions hand out ids from their own blocks, out of time order, and rows may be skipped; ALTER SEQUENCE ... CACHE 1",
                    table.name
                ));
            }
            if min <= 0 {
                problems.push(format!(
                    "the sequence of {}.{col} may hand out ids down to {min}: rows with ids of 0 or less are never read; ALTER SEQUENCE ... MINVALUE 1",
                    table.name
                ));
            }
        }
        Ok(None) => tracing::info!(
            "{}.{col} is not filled by a sequence: ids must still increase with insert time",
            table.name
        ),
        Err(e) => tracing::debug!("cannot inspect the id sequence: {}", describe(&e)),
    }
    problems
}

/// Message ids are unsigned and the reader starts above 0: rows with an id of 0 or less
/// would never be sent, so their presence stops the source with the reason.
async fn refuse_non_positive_ids(
    c: &tokio_postgres::Client,
    table: &TableInfo,
    col: &str,
) -> Result<()> {
    let sql = format!("SELECT count(*) FROM {} WHERE {col} <= 0", table.name);
    let n: i64 = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| anyhow!("cannot read {}: {}", table.name, describe(&e)))?
        .get(0);
    if n > 0 {
        bail!(
            "{n} row(s) of {} have {col} <= 0; postgres_source reads ids from 1 up (they become unsigned message ids): renumber them, or point id_column at a column whose values start at 1",
            table.name
        );
    }
    Ok(())
}

fn trigger_name(channel: &str) -> String {
    let mut name = format!("postgres_source_notify_{channel}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

async fn trigger_present(
    c: &tokio_postgres::Client,
    table: &TableInfo,
    channel: &str,
) -> Result<bool> {
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2 AND NOT tgisinternal)",
            &[&table.oid, &trigger_name(channel)],
        )
        .await
        .map_err(|e| anyhow!("cannot read the triggers of {}: {}", table.name, describe(&e)))?;
    Ok(r.get(0))
}

/// How long installing the trigger may wait for the table lock. `CREATE TRIGGER` needs a
/// lock that conflicts with inserts, and while it waits every new insert queues behind it:
/// so it never waits long, and gives way to open writers (it is retried later).
const TRIGGER_LOCK_TIMEOUT: &str = "200ms";

/// How often a trigger that could not be installed (the table was busy) is tried again.
const TRIGGER_RETRY: Duration = Duration::from_secs(10);

/// Whether the NOTIFY trigger is in place after [`ensure_trigger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TriggerState {
    /// Present (found or created).
    Present,
    /// Not installed yet: the table was busy; try again later.
    Busy,
}

/// Creates the statement-level trigger that NOTIFYs `channel` after inserts, unless it is
/// already there. Never queues for long in front of the table's writers: when a
/// transaction holds the table the attempt gives up at once and reports [`TriggerState::Busy`].
async fn ensure_trigger(
    c: &tokio_postgres::Client,
    table: &TableInfo,
    channel: &str,
) -> Result<TriggerState> {
    if trigger_present(c, table, channel).await? {
        return Ok(TriggerState::Present);
    }
    let func = format!("{}.postgres_source_notify", table.schema);
    let trig = quote_ident(&trigger_name(channel));
    // The advisory lock (per function) keeps two sources from replacing the function at
    // the same moment ("tuple concurrently updated"); lock_timeout bounds that wait too.
    let sql = format!(
        "BEGIN;
         SET LOCAL lock_timeout = '{TRIGGER_LOCK_TIMEOUT}';
         SELECT pg_advisory_xact_lock(hashtext({func_lit}));
         CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS
           $f$ BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $f$;
         CREATE TRIGGER {trig} AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {func}({chan});
         COMMIT;",
        func_lit = quote_literal(&func),
        t = table.name,
        chan = quote_literal(channel)
    );
    let Err(e) = c.batch_execute(&sql).await else {
        tracing::info!(
            "trigger {trig} on {} notifies channel `{channel}` after inserts",
            table.name
        );
        return Ok(TriggerState::Present);
    };
    let _ = c.batch_execute("ROLLBACK").await;
    match e.code().map(|c| c.code()) {
        // Another instance created it meanwhile.
        Some("42710") => Ok(TriggerState::Present),
        // lock_not_available: a transaction holds the table.
        Some("55P03") => {
            tracing::warn!(
                "the NOTIFY trigger on {} is not installed yet: a transaction holds the table; trying again every {}s, and reading every poll_ms meanwhile",
                table.name,
                TRIGGER_RETRY.as_secs()
            );
            Ok(TriggerState::Busy)
        }
        _ => bail!(
            "cannot install the NOTIFY trigger on {}: {} (create it yourself, or grant this user TRIGGER on the table and CREATE on its schema)",
            table.name,
            describe(&e)
        ),
    }
}

/// `--check`: reach the server, find the table and columns, the trigger, the position table.
pub async fn check(config: &Config, cfg: &SourceConfig) -> Vec<Check> {
    let what = format!("PostgreSQL reachable at {}", pg::target(config));
    let pg = match pg::connect_once(config).await {
        Ok(c) => c,
        Err(e) => return vec![Check::fail(what, describe(&e))],
    };
    let mut checks = vec![Check::ok(what)];
    let mut no_install = cfg.clone();
    no_install.install_trigger = false;
    let what = format!("table `{}` readable by id `{}`", cfg.table, cfg.id_column);
    let table = match setup(&pg, &no_install, false).await {
        Ok(prepared) => prepared.table,
        Err(e) => {
            checks.push(Check::fail(what, format!("{e:#}")));
            return checks;
        }
    };
    checks.push(Check::ok(what));
    if let Ok(id) = table.column(&cfg.id_column, "id_column") {
        let problems = id_sequence_problems(&pg.client, &table, id.num, &id.ident()).await;
        let what = format!(
            "the sequence filling `{}` hands out ids in time order",
            cfg.id_column
        );
        checks.push(match problems.is_empty() {
            true => Check::ok(what),
            false => Check::fail(what, problems.join("; ")),
        });
    }
    if !cfg.install_trigger {
        checks.push(match trigger_present(&pg.client, &table, &cfg.channel).await {
            Ok(true) => Check::ok(format!("trigger notifies channel `{}`", cfg.channel)),
            // Not a failure: without the trigger the source reads every poll_ms.
            Ok(false) => Check::ok(format!(
                "no trigger notifies channel `{}`: rows are read every poll_ms (install_trigger=true creates one)",
                cfg.channel
            )),
            Err(e) => Check::fail("trigger lookup", format!("{e:#}")),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ids: &[&str]) -> Holders {
        ids.iter().map(|s| (s.to_string(), Some(1))).collect()
    }

    #[test]
    fn contiguous_ids_pass() {
        let mut g = GapGate::default();
        let now = Instant::now();
        assert_eq!(g.admit(0, &[1, 2, 3], None, now, None), 3);
        assert!(!g.needs_holders());
    }

    #[test]
    fn a_gap_holds_until_its_suspects_end() {
        let mut g = GapGate::default();
        let now = Instant::now();
        // 9 missing: stop before 10.
        assert_eq!(g.admit(7, &[8, 10, 11], None, now, None), 1);
        assert!(g.needs_holders());
        // Round 2: suspects = {a, b}; still a gap.
        assert_eq!(g.admit(8, &[10, 11], Some(&h(&["a", "b"])), now, None), 0);
        // Round 3: a new writer c appeared, b ended; a is left.
        assert_eq!(g.admit(8, &[10, 11], Some(&h(&["a", "c"])), now, None), 0);
        // Round 4: a ended; c does not count: the gap is permanent.
        assert_eq!(g.admit(8, &[10, 11, 12], Some(&h(&["c"])), now, None), 3);
        assert!(!g.needs_holders());
    }

    #[test]
    fn a_filled_gap_clears_and_a_new_one_starts_over() {
        let mut g = GapGate::default();
        let now = Instant::now();
        assert_eq!(g.admit(0, &[1, 3], None, now, None), 1);
        // 2 committed: everything passes, up to the next gap (5 missing).
        assert_eq!(g.admit(1, &[2, 3, 4, 6], Some(&h(&["x"])), now, None), 3);
        // The new gap after 4 needs its own round of suspects, even with no holders now
        // listed for it yet.
        assert!(g.needs_holders());
        assert_eq!(g.admit(4, &[6], Some(&h(&[])), now, None), 1);
    }

    #[test]
    fn max_wait_gives_up() {
        let mut g = GapGate::default();
        let t0 = Instant::now();
        assert_eq!(
            g.admit(0, &[2], None, t0, Some(Duration::from_millis(10))),
            0
        );
        let later = t0 + Duration::from_millis(20);
        assert_eq!(
            g.admit(
                0,
                &[2],
                Some(&h(&["a"])),
                later,
                Some(Duration::from_millis(10))
            ),
            1
        );
    }
}
