//! Code shared by the Redis connectors (`redis_subscriber_source`, `redis_stream_source`,
//! `redis_hash_sink`, `redis_stream_sink`):
//!
//! - [`Connection`]: the connection parameters every binary takes, and [`RedisConfig`],
//!   built from them (TLS included);
//! - [`Redis`]: a connection that is opened again after a server restart or a network error,
//!   counting reconnects and how long Redis was unreachable. Sources wait for Redis with
//!   [`Redis::query`]; sinks run a pipeline once with [`Redis::write_once`] and let the
//!   runtime write again after a transient failure;
//! - [`is_transient`]: which Redis errors are worth retrying;
//! - [`entries`]: stream entry ids and reply parsing; [`group`]: the consumer group read by
//!   `redis_stream_source`; [`pubsub`]: the subscription of `redis_subscriber_source`.

#![warn(missing_docs)]

pub mod entries;
pub mod group;
pub mod pubsub;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use connector_runtime::{Backoff, Context, External, Outcomes, ShuttingDown};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, RedisResult, ServerErrorKind, Value,
};
use telemetry::{Counter, FloatCounter};

pub use entries::{
    group_info, next_message_id, parse_entries, parse_xautoclaim, parse_xread, Entry, EntryId,
    GroupInfo, SEQ_BITS,
};

/// The connection parameters of every Redis connector (`#[command(flatten)]` them into the
/// binary's parameters).
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Redis URL redis://[user:password@]host:port/db (rediss:// for TLS); overrides host, port, username, password, db and tls
    #[arg(long)]
    pub url: Option<String>,
    /// Redis host
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Redis port
    #[arg(long, default_value_t = 6379)]
    pub port: u16,
    /// ACL user name (Redis 6+), used with password
    #[arg(long)]
    pub username: Option<String>,
    /// AUTH password (prefer the NAME_PASSWORD environment variable: arguments are visible in ps)
    #[arg(long)]
    pub password: Option<String>,
    /// Database number (SELECT)
    #[arg(long, default_value_t = 0)]
    pub db: i64,
    /// Connect with TLS (like a rediss:// URL); the server certificate is checked against the system's roots or tls_ca
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificate(s) to trust for the server instead of the system's roots
    #[arg(long)]
    pub tls_ca: Option<String>,
    /// Accept any server certificate and host name (tests only: no protection against a man in the middle)
    #[arg(long)]
    pub tls_insecure: bool,
}

/// Where and how to connect, resolved from the connection parameters.
#[derive(Clone)]
pub struct RedisConfig {
    /// The client (cheap to clone; opens connections).
    pub client: Client,
    /// `host:port/db` for messages (never the password).
    pub target: String,
    /// Longest wait for a reply before the connection is considered lost (must exceed any
    /// BLOCK time used on it).
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// Resolves `url` or `host`/`port`/`username`/`password`/`db`/`tls`/`tls_ca`/
    /// `tls_insecure` of connector `connector` (named in error messages).
    pub fn new(connector: &str, p: &Connection) -> Result<RedisConfig> {
        let flag = |name: &str| format!("--{connector}-{name}");
        let mut info = match &p.url {
            Some(url) => url.as_str().into_connection_info().map_err(|e| {
                anyhow!(
                    "invalid {} {:?}: {e} (expected redis://[user:password@]host:port/db or rediss://...)",
                    flag("url"),
                    redact(url)
                )
            })?,
            None => {
                let addr = if p.tls {
                    ConnectionAddr::TcpTls {
                        host: p.host.clone(),
                        port: p.port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(p.host.clone(), p.port)
                };
                let mut redis = RedisConnectionInfo::default().set_db(p.db);
                if let Some(user) = &p.username {
                    redis = redis.set_username(user);
                }
                if let Some(pass) = &p.password {
                    redis = redis.set_password(pass);
                }
                addr.into_connection_info()?.set_redis_settings(redis)
            }
        };
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if tls && p.tls_insecure {
            if let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() {
                info = info.set_addr(ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: true,
                    tls_params: None,
                });
            }
        }
        let target = format!("{}/{}", info.addr(), info.redis_settings().db());
        let client = if tls {
            tls_client(info, p.tls_ca.as_deref())
                .with_context(|| format!("TLS setup for Redis at {target}"))?
        } else {
            if p.tls_ca.is_some() || p.tls_insecure {
                bail!(
                    "{} / {} given but TLS is off: add {} true or use a rediss:// URL",
                    flag("tls_ca"),
                    flag("tls_insecure"),
                    flag("tls")
                );
            }
            Client::open(info)?
        };
        Ok(RedisConfig {
            client,
            target,
            response_timeout: Duration::from_secs(30),
        })
    }

    /// Opens a multiplexed connection with this configuration's timeouts.
    pub async fn open(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// For `--check`: connects, and when `key` is given checks that it holds a `kind` (or
    /// does not exist yet).
    pub async fn check(&self, key: Option<(&str, &str)>) -> Result<()> {
        let mut conn = self
            .open()
            .await
            .with_context(|| format!("cannot connect to Redis at {}", self.target))?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        if let Some((key, kind)) = key {
            let found: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
            if found != kind && found != "none" {
                bail!("key `{key}` holds a {found}, not a {kind}");
            }
        }
        Ok(())
    }
}

#[cfg(feature = "tls")]
fn tls_client(info: redis::ConnectionInfo, ca: Option<&str>) -> Result<Client> {
    // rustls needs one process-wide crypto provider; an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(match ca {
        None => Client::open(info)?,
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the tls_ca file {path}"))?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?
        }
    })
}

#[cfg(not(feature = "tls"))]
fn tls_client(_info: redis::ConnectionInfo, _ca: Option<&str>) -> Result<Client> {
    bail!("this build has no TLS support: rebuild redis-connectors with its default `tls` feature")
}

/// `--check` of a sink that writes to `key`, which must hold a `kind` (hash, stream) or
/// nothing yet.
pub async fn check_sink_key(
    ctx: &Context,
    conn: &Connection,
    key: &str,
    kind: &str,
) -> Vec<connector_runtime::Check> {
    let ok = async {
        RedisConfig::new(&ctx.connector, conn)?
            .check(Some((key, kind)))
            .await
    };
    vec![connector_runtime::Check::from_result(
        format!("Redis reachable and the {kind} key usable"),
        ok.await,
    )]
}

/// What a sink reports when `key` holds something other than a `kind`: the parameter to
/// change (`--NAME-param`) or the key to delete.
pub fn wrong_type(connector: &str, key: &str, kind: &str, param: &str) -> String {
    format!(
        "Redis key `{key}` holds a value that is not a {kind}: choose another --{connector}-{param} or delete it"
    )
}

/// A sink's connection: opened and tried once at start (a permanent error such as a
/// refused password stops the sink at once; an unreachable Redis is left to the writes).
pub async fn open_sink(ctx: &Context, conn: &Connection) -> Result<Redis> {
    let mut redis = Redis::new(RedisConfig::new(&ctx.connector, conn)?, ctx);
    redis.probe().await?;
    Ok(redis)
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Whether retrying (after a reconnect or a pause) can make this error go away: the
/// connection broke or timed out, the server is loading its data set, out of memory,
/// busy with a script, failing over, or cannot persist right now.
pub fn is_transient(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse => true,
        ErrorKind::Server(k) => matches!(
            k,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
        ),
        _ => error_codes(e).iter().any(|c| {
            matches!(
                c.as_str(),
                "OOM" | "BUSY" | "MISCONF" | "NOREPLICAS" | "LOADING"
            )
        }),
    }
}

/// Whether connecting failed because TLS refused the peer (an unknown or invalid
/// certificate, or the server's fatal alert): retrying cannot help.
pub fn is_tls_refusal(e: &RedisError) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("certificate") || text.contains("fatal alert")
}

/// Transient ([`is_transient`]) and not a TLS refusal: worth trying again.
pub fn retryable(e: &RedisError) -> bool {
    is_transient(e) && !is_tls_refusal(e)
}

/// The error codes in `e` (several for a pipeline).
pub fn error_codes(e: &RedisError) -> Vec<String> {
    if let Some(c) = e.code() {
        return vec![c.to_string()];
    }
    e.clone()
        .into_server_errors()
        .map(|errs| errs.iter().map(|(_, s)| s.code().to_string()).collect())
        .unwrap_or_default()
}

/// The Redis error code (`NOGROUP`, `WRONGTYPE`, ...) inside an error from [`Redis`].
pub fn code_of(e: &anyhow::Error) -> Option<String> {
    e.downcast_ref::<RedisError>()
        .and_then(|r| error_codes(r).into_iter().next())
}

/// A permanent error, with the way out when the code tells it.
fn permanent(e: RedisError) -> anyhow::Error {
    let hint = match error_codes(&e).first().map(String::as_str) {
        Some("NOAUTH") => Some("Redis requires a password: set the password parameter (or the NAME_PASSWORD environment variable)"),
        Some("NOPERM") => Some("the Redis (ACL) user may not run this command"),
        _ => None,
    };
    let e = anyhow::Error::new(e);
    match hint {
        Some(h) => e.context(h),
        None => e,
    }
}

/// A connection that could not be opened and will not open by waiting.
fn cannot_connect(e: RedisError, target: &str) -> anyhow::Error {
    permanent(e).context(format!(
        "cannot connect to Redis at {target} (check host, port, password, db and TLS settings)"
    ))
}

/// Tracks outages of a connection: reconnects and the time spent disconnected, as metrics,
/// and Redis's part of `/ready`.
pub struct Outage {
    since: Option<Instant>,
    ever_connected: bool,
    reconnects: Counter,
    down_seconds: FloatCounter,
    external: External,
}

impl Outage {
    /// Registers `redis_disconnected_seconds_total` beside the standard reconnect counter.
    pub fn new(ctx: &Context) -> Outage {
        Outage {
            since: None,
            ever_connected: false,
            reconnects: ctx.metrics.reconnects.clone(),
            external: ctx.external(),
            down_seconds: ctx.metrics.registry.float_counter(
                "redis_disconnected_seconds_total",
                "Time spent without a Redis connection after the first one.",
                &[],
            ),
        }
    }

    /// The connection was lost (keeps the earliest time of an ongoing outage).
    pub fn lost(&mut self) {
        self.external
            .down("lost the connection to Redis; reconnecting");
        if self.ever_connected && self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Connected again: counts a reconnect and returns how long the outage lasted (`None`
    /// for the first connection).
    pub fn restored(&mut self) -> Option<Duration> {
        let first = !self.ever_connected;
        self.ever_connected = true;
        self.external.up();
        let down = self.since.take().map(|t| t.elapsed());
        if first {
            return None;
        }
        self.reconnects.inc();
        let down = down.unwrap_or_default();
        self.down_seconds.add(down.as_secs_f64());
        Some(down)
    }
}

/// Calls `open` until it succeeds, waiting with `backoff` after transient failures (logged
/// on the first attempt and every 20th). A permanent error (wrong password, bad database
/// number, TLS refused) is returned at once; shutdown ends the wait with [`ShuttingDown`].
pub async fn connect_with_backoff<T, F, Fut>(
    ctx: &Context,
    target: &str,
    backoff: &mut Backoff,
    mut open: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    loop {
        match open().await {
            Ok(c) => return Ok(c),
            Err(e) if retryable(&e) => {
                ctx.external()
                    .down(format!("Redis at {target} not reachable ({e}); retrying"));
                let delay = backoff.next_delay();
                if worth_logging(backoff) {
                    tracing::warn!(
                        "Redis at {target} not reachable ({e}); retrying every {delay:?} up to 5s (is redis-server running? does it expect TLS, or not?)"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
                }
            }
            Err(e) => return Err(cannot_connect(e, target)),
        }
    }
}

/// Whether to log a failed attempt: the first and every 20th.
fn worth_logging(backoff: &Backoff) -> bool {
    backoff.attempts() == 1 || backoff.attempts().is_multiple_of(20)
}

/// What a sink does with the records of one command of its pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written.
    Written,
    /// Not written this time (connection lost, LOADING, OOM...): write again.
    Retry(String),
    /// Redis will never take it (WRONGTYPE...).
    Refuse(String),
}

impl Verdict {
    /// Whether the records were written.
    pub fn is_written(&self) -> bool {
        *self == Verdict::Written
    }

    /// Marks record `i` of the batch in `outcomes`.
    pub fn mark(&self, outcomes: &mut Outcomes, i: usize) {
        match self {
            Verdict::Written => {}
            Verdict::Retry(why) => outcomes.retry(i, why.as_str()),
            Verdict::Refuse(why) => outcomes.refuse(i, why.as_str()),
        }
    }
}

/// `verdicts` of commands whose order matters (XADDs to one stream): from the first
/// [`Verdict::Retry`] on, every record is written again, after the ones before it.
pub fn in_order(mut verdicts: Vec<Verdict>) -> Vec<Verdict> {
    if let Some(first) = verdicts.iter().position(|v| matches!(v, Verdict::Retry(_))) {
        let again = verdicts[first].clone();
        verdicts[first..].fill(again);
    }
    verdicts
}

/// A Redis connection opened again after it broke. `generation` counts the connections:
/// a caller that must redo something after a reconnect (re-read its pending entries)
/// compares it with the value it saw last.
pub struct Redis {
    config: RedisConfig,
    ctx: Context,
    conn: Option<MultiplexedConnection>,
    /// A second connection for blocking commands (XREADGROUP BLOCK), so that they do not
    /// hold up the others; opened with the first when wanted.
    blocking: Option<MultiplexedConnection>,
    wants_blocking: bool,
    outage: Outage,
    generation: u64,
    backoff: Backoff,
}

impl Redis {
    /// A connection to `config` (opened on first use).
    pub fn new(config: RedisConfig, ctx: &Context) -> Redis {
        Redis {
            outage: Outage::new(ctx),
            config,
            ctx: ctx.clone(),
            conn: None,
            blocking: None,
            wants_blocking: false,
            generation: 0,
            backoff: Backoff::default(),
        }
    }

    /// Also opens a connection for blocking commands ([`Redis::blocking_connection`]).
    pub fn with_blocking(mut self) -> Redis {
        self.wants_blocking = true;
        self
    }

    /// `host:port/db`.
    pub fn target(&self) -> &str {
        &self.config.target
    }

    /// Bumped on every new connection.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// One attempt at opening the connection(s) when there is none.
    async fn open(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let pair = open_all(self.config.clone(), self.wants_blocking).await?;
        Ok(self.connected(pair))
    }

    fn connected(
        &mut self,
        (c, blocking): (MultiplexedConnection, Option<MultiplexedConnection>),
    ) -> MultiplexedConnection {
        match self.outage.restored() {
            Some(down) => tracing::warn!(
                "reconnected to Redis at {} after {:.1}s",
                self.config.target,
                down.as_secs_f64()
            ),
            None => tracing::info!("connected to Redis at {}", self.config.target),
        }
        self.generation += 1;
        self.backoff.reset();
        self.blocking = blocking;
        self.conn = Some(c.clone());
        c
    }

    /// The connection, waiting with back-off while Redis is unreachable (until shutdown:
    /// [`ShuttingDown`]); a permanent error (password, TLS) is returned.
    pub async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let (config, blocking) = (self.config.clone(), self.wants_blocking);
        let pair = connect_with_backoff(&self.ctx, &config.target, &mut self.backoff, || {
            open_all(config.clone(), blocking)
        })
        .await?;
        Ok(self.connected(pair))
    }

    /// The connection for blocking commands (see [`Redis::with_blocking`]).
    pub async fn blocking_connection(&mut self) -> Result<MultiplexedConnection> {
        let c = self.connection().await?;
        Ok(self.blocking.clone().unwrap_or(c))
    }

    /// Notes that a command sent on connection `generation` failed with `e`: a broken
    /// connection is dropped (opened again on next use), once.
    pub fn failed(&mut self, e: &RedisError, generation: u64) {
        let broken = matches!(e.kind(), ErrorKind::Io | ErrorKind::Parse);
        if broken && generation == self.generation && self.conn.is_some() {
            tracing::warn!(
                "lost the connection to Redis at {}: {e}",
                self.config.target
            );
            self.conn = None;
            self.blocking = None;
            self.outage.lost();
        }
    }

    /// A command succeeded: the next failure waits the shortest delay again.
    pub fn reset_backoff(&mut self) {
        self.backoff.reset();
    }

    /// Waits the next back-off delay after `e` (logged on the first attempt and every
    /// 20th); [`ShuttingDown`] on shutdown.
    pub async fn pause(&mut self, e: &RedisError) -> Result<()> {
        let delay = self.backoff.next_delay();
        if worth_logging(&self.backoff) {
            tracing::warn!(
                "Redis at {} is not ready ({e}); retrying in {delay:?}",
                self.config.target
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.ctx.shutdown.cancelled() => Err(ShuttingDown.into()),
        }
    }

    /// Runs `cmd`, waiting and retrying through transient failures (for commands that are
    /// safe to repeat); permanent errors come back as a [`RedisError`] inside the
    /// `anyhow::Error` (see [`code_of`]).
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        loop {
            let mut conn = self.connection().await?;
            let generation = self.generation;
            match cmd.query_async::<T>(&mut conn).await {
                Ok(v) => {
                    self.backoff.reset();
                    return Ok(v);
                }
                Err(e) if is_transient(&e) => {
                    self.failed(&e, generation);
                    self.pause(&e).await?;
                }
                Err(e) => return Err(permanent(e)),
            }
        }
    }

    /// Connects once (a sink's start): a permanent error (password, TLS) stops the sink at
    /// once; Redis not reachable is logged and left to the writes.
    pub async fn probe(&mut self) -> Result<()> {
        match self.open().await {
            Ok(_) => Ok(()),
            Err(e) if retryable(&e) => {
                tracing::warn!(
                    "Redis at {} not reachable yet ({e}); writes are retried until it is",
                    self.config.target
                );
                Ok(())
            }
            Err(e) => Err(cannot_connect(e, &self.config.target)),
        }
    }

    /// Runs a sink's pipeline once and returns one [`Verdict`] per command: a connection
    /// that cannot be opened now or breaks gives [`Verdict::Retry`] for every command, as
    /// does a transient error reply; WRONGTYPE and other error replies about the data give
    /// [`Verdict::Refuse`] (`wrong_type` is the reason for WRONGTYPE). An error no record
    /// can avoid (TLS refused, wrong password, no permission) is returned: the sink stops.
    pub async fn write_once(
        &mut self,
        mut pipe: redis::Pipeline,
        wrong_type: &str,
    ) -> Result<Vec<Verdict>> {
        let n = pipe.len();
        let retry_all = |why: String| vec![Verdict::Retry(why); n];
        let mut conn = match self.open().await {
            Ok(c) => c,
            Err(e) if retryable(&e) => {
                return Ok(retry_all(format!(
                    "Redis at {} not reachable: {e}",
                    self.config.target
                )))
            }
            Err(e) => return Err(cannot_connect(e, &self.config.target)),
        };
        let generation = self.generation;
        let replies = match pipe
            .ignore_errors()
            .query_async::<Vec<RedisResult<Value>>>(&mut conn)
            .await
        {
            Ok(r) => r,
            Err(e) if is_transient(&e) => {
                self.failed(&e, generation);
                return Ok(retry_all(format!("Redis at {}: {e}", self.config.target)));
            }
            Err(e) => return Err(permanent(e)),
        };
        if replies.len() != n {
            bail!("Redis answered {} replies to {n} commands", replies.len());
        }
        replies
            .into_iter()
            .map(|r| match r {
                Ok(_) => Ok(Verdict::Written),
                Err(e) if is_transient(&e) => Ok(Verdict::Retry(e.to_string())),
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    Ok(Verdict::Refuse(wrong_type.to_string()))
                }
                Err(e) if matches!(e.code(), Some("NOAUTH" | "NOPERM")) => Err(permanent(e)),
                Err(e) => Ok(Verdict::Refuse(format!("Redis refused it: {e}"))),
            })
            .collect()
    }
}

/// Opens a connection, and a second one for blocking commands when `blocking`.
async fn open_all(
    config: RedisConfig,
    blocking: bool,
) -> RedisResult<(MultiplexedConnection, Option<MultiplexedConnection>)> {
    let c = config.open().await?;
    let b = match blocking {
        true => Some(config.open().await?),
        false => None,
    };
    Ok((c, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn transient_errors() {
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(is_transient(&io));
        assert!(retryable(&io));
        let wrong: RedisError = (ErrorKind::Client, "bad").into();
        assert!(!is_transient(&wrong));
    }

    #[test]
    fn in_order_writes_everything_after_a_retry_again() {
        let (w, r, x) = (
            Verdict::Written,
            Verdict::Retry("oom".into()),
            Verdict::Refuse("bad".into()),
        );
        let v = in_order(vec![w.clone(), x.clone(), r.clone(), w.clone(), x]);
        assert_eq!(
            v,
            vec![
                w.clone(),
                Verdict::Refuse("bad".into()),
                r.clone(),
                r.clone(),
                r
            ]
        );
        assert_eq!(in_order(vec![w.clone(), w.clone()]), vec![w.clone(), w]);
    }
}
