//! Connecting to PostgreSQL, classifying its errors, quoting identifiers.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use connector_runtime::{Backoff, Context, ShuttingDown};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};

/// A live connection: the client plus the notifications (`LISTEN`) it receives.
///
/// The connection itself is driven by a task; when it ends (server restart, network
/// failure) the notification channel closes and every call on `client` fails.
pub struct PgConn {
    /// The client: run queries here.
    pub client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

impl PgConn {
    /// Waits for the next notification, then takes every other one already queued.
    /// Returns `false` when the connection is gone (the caller's next query fails and
    /// reconnects).
    pub async fn notified(&mut self) -> bool {
        match self.notifications.recv().await {
            Some(_) => {
                while self.notifications.try_recv().is_ok() {}
                true
            }
            None => false,
        }
    }

    /// Drops notifications already received (before a read that covers them anyway).
    pub fn clear_notifications(&mut self) {
        while self.notifications.try_recv().is_ok() {}
    }
}

/// Parses a libpq-style connection string (`host=... dbname=...` or `postgresql://...`)
/// and fills in the application name and a connect timeout when absent. `flag` names the
/// parameter in errors (`--NAME-connection`).
pub fn parse_config(s: &str, application_name: &str, flag: &str) -> Result<Config> {
    let mut c = Config::from_str(s).map_err(|e| {
        anyhow!(
            "invalid {flag}: {} (expected e.g. `host=127.0.0.1 port=5432 user=postgres dbname=test` or `postgresql://postgres@127.0.0.1:5432/test`)",
            describe(&e)
        )
    })?;
    if c.get_application_name().is_none() {
        c.application_name(application_name);
    }
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(10));
    }
    Ok(c)
}

/// `host:port/dbname` for log lines (never the password).
pub fn target(c: &Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let db = c.get_dbname().or(c.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// Connects once (no retry) and starts the task driving the connection.
pub async fn connect_once(config: &Config) -> Result<PgConn, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let where_ = target(config);
    tokio::spawn(async move {
        loop {
            match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!("PostgreSQL notice: {}", n.message());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("PostgreSQL connection to {where_} lost: {e}");
                    break;
                }
                None => break,
            }
        }
    });
    Ok(PgConn {
        client,
        notifications: rx,
    })
}

/// Connects, retrying with back-off (100 ms doubling to 5 s) while the server is
/// unreachable or starting up; gives up at once on errors a retry cannot fix (bad
/// password, unknown database) and on shutdown. With `reconnect`, a success is counted in
/// `reconnects` and logged.
pub async fn connect(config: &Config, ctx: &Context, reconnect: bool) -> Result<PgConn> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let where_ = target(config);
    loop {
        if ctx.is_shutting_down() {
            return Err(ShuttingDown.into());
        }
        let attempt = tokio::select! {
            r = connect_once(config) => r,
            _ = ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
        };
        match attempt {
            Ok(c) => {
                ctx.external().up();
                if reconnect {
                    ctx.metrics.reconnects.inc();
                    tracing::warn!(
                        "reconnected to PostgreSQL at {where_} after {} failed attempt(s)",
                        backoff.attempts()
                    );
                } else {
                    tracing::info!("connected to PostgreSQL at {where_}");
                }
                return Ok(c);
            }
            Err(e) if is_fatal_connect(&e) => return Err(fatal_connect(&where_, &e)),
            Err(e) => {
                ctx.external().down(format!(
                    "PostgreSQL at {where_} not reachable ({}); retrying",
                    describe(&e)
                ));
                let delay = backoff.next_delay();
                if backoff.attempts() % 20 == 1 {
                    tracing::warn!(
                        "PostgreSQL at {where_} not reachable ({}); retrying every {delay:?} up to 5s (is the server running?)",
                        describe(&e)
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
                }
            }
        }
    }
}

/// One reconnect attempt, for a caller that retries with its own back-off: `Ok(Err(why))`
/// while the server is unreachable, `Err` when a retry cannot help (bad password, unknown
/// database). A success is logged and counted in `reconnects`.
pub async fn reconnect_once(config: &Config, ctx: &Context) -> Result<Result<PgConn, String>> {
    let where_ = target(config);
    match connect_once(config).await {
        Ok(c) => {
            ctx.metrics.reconnects.inc();
            ctx.external().up();
            tracing::warn!("reconnected to PostgreSQL at {where_}");
            Ok(Ok(c))
        }
        Err(e) if is_fatal_connect(&e) => Err(fatal_connect(&where_, &e)),
        Err(e) => {
            let why = format!("PostgreSQL at {where_} not reachable: {}", describe(&e));
            ctx.external().down(format!("{why}; retrying"));
            Ok(Err(why))
        }
    }
}

fn fatal_connect(where_: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow!(
        "cannot connect to PostgreSQL at {where_}: {}; fix the `connection` parameter",
        describe(e)
    )
}

fn is_fatal_connect(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // 28: invalid authorization; 3D: unknown database.
        Some(c) => matches!(&c.code()[..2], "28" | "3D"),
        None => {
            let s = e.to_string();
            s.contains("invalid configuration") || s.contains("password missing")
        }
    }
}

/// What to do about an error from PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection broke or the server is restarting/overloaded: reconnect, retry.
    Transient,
    /// The data of some row was refused (bad value, constraint): find the row, set it aside.
    Row,
    /// Retrying cannot help (missing table, permissions, SQL error): stop with the reason.
    Fatal,
}

/// Classifies an error by its SQLSTATE class (no SQLSTATE = I/O or closed connection).
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        None => ErrorClass::Transient,
        Some(code) => match &code.code()[..2] {
            // connection exception, invalid transaction state, insufficient resources,
            // object not in prerequisite state (locks), operator intervention (shutdown,
            // cancel), system error, transaction rollback (serialization, deadlock).
            "08" | "25" | "40" | "53" | "55" | "57" | "58" => ErrorClass::Transient,
            // cardinality violation, data exception, integrity constraint violation,
            // program limit exceeded (e.g. a value too large for an index).
            "21" | "22" | "23" | "54" => ErrorClass::Row,
            _ => ErrorClass::Fatal,
        },
    }
}

/// The database's message with its SQLSTATE, detail and hint, on one line.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {}", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s.push(')');
            s.replace('\n', " ")
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(&format!(": {t}"));
                }
                src = inner.source();
            }
            s
        }
    }
}

/// Quotes an identifier (`name` -> `"name"`), exactly as given (case kept).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (`it's` -> `'it''s'`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn config_forms_and_target() {
        let c = parse_config(
            "host=127.0.0.1 port=5433 user=u dbname=d",
            "x",
            "--c-connection",
        )
        .unwrap();
        assert_eq!(target(&c), "127.0.0.1:5433/d");
        assert_eq!(c.get_application_name(), Some("x"));
        let c = parse_config(
            "postgresql://u:secret@db.example:6000/app",
            "x",
            "--c-connection",
        )
        .unwrap();
        assert_eq!(target(&c), "db.example:6000/app");
        let e = parse_config("host=x port=notaport", "x", "--c-connection").unwrap_err();
        assert!(e.to_string().contains("--c-connection"), "{e}");
    }
}
