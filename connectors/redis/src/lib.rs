//! Code shared by the Redis connectors (`redis_subscriber_source`, `redis_stream_source`,
//! `redis_hash_sink`, `redis_stream_sink`):
//!
//! - the connection parameters every binary takes ([`CONNECTION_PARAMS`]) and
//!   [`RedisConfig`], built from them;
//! - [`Redis`]: a connection that reconnects with back-off after a server restart or a
//!   network error, retries the command that failed, counts reconnects and how long Redis
//!   was unreachable, and returns only permanent errors;
//! - [`is_transient`]: which Redis errors are worth retrying;
//! - stream helpers: [`EntryId`] and its mapping to message ids, parsing of XREADGROUP and
//!   XAUTOCLAIM replies into [`Entry`], and [`InFlight`], the entries sent to the engine and
//!   not yet acknowledged.

#![warn(missing_docs)]

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use connector_runtime::source::ShuttingDown;
use connector_runtime::{Backoff, Context, Param};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, ServerErrorKind, Value,
};
use telemetry::Counter;

/// `url`: a full Redis URL; overrides the other connection parameters when given.
pub const URL: Param = Param::optional(
    "url",
    "Redis URL redis://[user:password@]host:port/db (rediss:// for TLS); overrides host, port, username, password, db and tls",
);
/// `host`: the Redis server's host name or address.
pub const HOST: Param = Param::with_default("host", "Redis host", "127.0.0.1");
/// `port`: the Redis server's port.
pub const PORT: Param = Param::with_default("port", "Redis port", "6379");
/// `username`: ACL user (Redis 6+).
pub const USERNAME: Param =
    Param::optional("username", "ACL user name (Redis 6+), used with password");
/// `password`: AUTH password (better given as the NAME_PASSWORD environment variable).
pub const PASSWORD: Param = Param::optional(
    "password",
    "AUTH password (prefer the NAME_PASSWORD environment variable: arguments are visible in ps)",
);
/// `db`: the logical database number.
pub const DB: Param = Param::with_default("db", "Database number (SELECT)", "0");
/// `tls`: connect with TLS.
pub const TLS: Param = Param::with_default(
    "tls",
    "Connect with TLS (like a rediss:// URL); the server certificate is checked against the system's roots or tls_ca",
    "false",
);
/// `tls_ca`: PEM file with the CA certificate(s) to trust instead of the system's roots.
pub const TLS_CA: Param = Param::optional(
    "tls_ca",
    "PEM file of the CA certificate(s) to trust for the server instead of the system's roots",
);
/// `tls_insecure`: accept any server certificate.
pub const TLS_INSECURE: Param = Param::with_default(
    "tls_insecure",
    "Accept any server certificate and host name (tests only: no protection against a man in the middle)",
    "false",
);

/// Every connection parameter.
pub const CONNECTION_PARAMS: [Param; 9] = [
    URL,
    HOST,
    PORT,
    USERNAME,
    PASSWORD,
    DB,
    TLS,
    TLS_CA,
    TLS_INSECURE,
];

/// `&[connection params..., your params...]` for a binary's `ConnectorSpec::params`.
#[macro_export]
macro_rules! with_connection_params {
    ($($p:expr),* $(,)?) => {
        &[
            $crate::URL,
            $crate::HOST,
            $crate::PORT,
            $crate::USERNAME,
            $crate::PASSWORD,
            $crate::DB,
            $crate::TLS,
            $crate::TLS_CA,
            $crate::TLS_INSECURE,
            $($p),*
        ]
    };
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
    /// Reads `url` or `host`/`port`/`username`/`password`/`db`/`tls`/`tls_ca`/`tls_insecure`.
    pub fn from_context(ctx: &Context) -> Result<RedisConfig> {
        let p = &ctx.params;
        let flag = |name: &str| format!("--{}-{name}", ctx.connector);
        let insecure = p.flag("tls_insecure")?;
        let mut info = match p.get("url") {
            Some(url) => url.into_connection_info().map_err(|e| {
                anyhow!(
                    "invalid {} {:?}: {e} (expected redis://[user:password@]host:port/db or rediss://...)",
                    flag("url"),
                    redact(url)
                )
            })?,
            None => {
                let host = p.required("host")?.to_string();
                let port: u16 = p.parse_or("port", 6379)?;
                let db: i64 = p.parse_or("db", 0)?;
                let addr = if p.flag("tls")? {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                };
                let mut redis = RedisConnectionInfo::default().set_db(db);
                if let Some(user) = p.get("username") {
                    redis = redis.set_username(user);
                }
                if let Some(pass) = p.get("password") {
                    redis = redis.set_password(pass);
                }
                addr.into_connection_info()?.set_redis_settings(redis)
            }
        };
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if tls && insecure {
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
        let ca = p.get("tls_ca");
        let client = if tls {
            tls_client(info, ca).with_context(|| format!("TLS setup for Redis at {target}"))?
        } else {
            if ca.is_some() || insecure {
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
    pub async fn open(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
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

/// Tracks outages of a connection: reconnects and the time spent disconnected, as metrics.
pub struct Outage {
    since: Option<Instant>,
    ever_connected: bool,
    reconnects: Counter,
    down_ms: Counter,
}

impl Outage {
    /// Registers `redis_disconnected_milliseconds_total` beside the standard reconnect counter.
    pub fn new(ctx: &Context) -> Outage {
        Outage {
            since: None,
            ever_connected: false,
            reconnects: ctx.metrics.reconnects.clone(),
            down_ms: ctx.metrics.registry.counter(
                "redis_disconnected_milliseconds_total",
                "Time spent without a Redis connection after the first one.",
                &[],
            ),
        }
    }

    /// The connection was lost (keeps the earliest time of an ongoing outage).
    pub fn lost(&mut self) {
        if self.ever_connected && self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Connected again: counts a reconnect and returns how long the outage lasted (`None`
    /// for the first connection).
    pub fn restored(&mut self) -> Option<Duration> {
        let first = !self.ever_connected;
        self.ever_connected = true;
        let down = self.since.take().map(|t| t.elapsed());
        if first {
            return None;
        }
        self.reconnects.inc();
        let down = down.unwrap_or_default();
        self.down_ms.add(down.as_millis() as u64);
        Some(down)
    }
}

/// Calls `open` until it succeeds, waiting with back-off after transient failures (logged on
/// the first attempt and every 20th). A permanent error (wrong password, bad database
/// number, TLS refused) is returned at once; shutdown ends the wait with [`ShuttingDown`].
pub async fn connect_with_backoff<T, F, Fut>(ctx: &Context, target: &str, mut open: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match open().await {
            Ok(c) => return Ok(c),
            Err(e) if is_transient(&e) && !is_tls_refusal(&e) => {
                let delay = backoff.next_delay();
                if backoff.attempts() == 1 || backoff.attempts() % 20 == 0 {
                    tracing::warn!(
                        "Redis at {target} not reachable ({e}); retrying every {delay:?} up to 5s (is redis-server running? does it expect TLS, or not?)"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot connect to Redis at {target} (check host, port, password, db and TLS settings)"
                )))
            }
        }
    }
}

enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// A multiplexed connection that reconnects: [`Redis::query`] and [`Redis::pipe`] retry
/// transient failures (after reconnecting when the connection broke) until they succeed, so
/// only use them for commands that are safe to repeat.
pub struct Redis {
    config: RedisConfig,
    ctx: Context,
    conn: Option<MultiplexedConnection>,
    outage: Outage,
    generation: u64,
}

impl Redis {
    /// Connects (retrying transient failures with back-off until shutdown).
    pub async fn connect(config: RedisConfig, ctx: &Context) -> Result<Redis> {
        let mut r = Redis {
            outage: Outage::new(ctx),
            config,
            ctx: ctx.clone(),
            conn: None,
            generation: 0,
        };
        r.connection().await?;
        Ok(r)
    }

    /// `host:port/db`.
    pub fn target(&self) -> &str {
        &self.config.target
    }

    /// Bumped on every new connection: a caller that must redo something after a reconnect
    /// (re-read its pending entries) compares it with the value it saw last.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = self.config.clone();
        let c = connect_with_backoff(&self.ctx, &config.target, || config.open()).await?;
        if let Some(down) = self.outage.restored() {
            tracing::warn!(
                "reconnected to Redis at {} after {:.1}s",
                self.config.target,
                down.as_secs_f64()
            );
        } else {
            tracing::info!("connected to Redis at {}", self.config.target);
        }
        self.generation += 1;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Runs `cmd`, retrying transient failures; permanent errors come back as a
    /// [`RedisError`] inside the `anyhow::Error` (see [`code_of`]).
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        self.run(Request::Cmd(cmd)).await
    }

    /// Runs a pipeline, retrying the whole pipeline on transient failures.
    pub async fn pipe<T: FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T> {
        self.run(Request::Pipe(pipe)).await
    }

    async fn run<T: FromRedisValue>(&mut self, req: Request<'_>) -> Result<T> {
        let mut backoff = Backoff::default();
        loop {
            let mut conn = self.connection().await?;
            let r = match req {
                Request::Cmd(c) => c.query_async::<T>(&mut conn).await,
                Request::Pipe(p) => p.query_async::<T>(&mut conn).await,
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    if matches!(e.kind(), ErrorKind::Io | ErrorKind::Parse) {
                        tracing::warn!(
                            "lost the connection to Redis at {}: {e}",
                            self.config.target
                        );
                        self.conn = None;
                        self.outage.lost();
                    } else {
                        tracing::warn!(
                            "Redis at {} is not ready ({e}); retrying",
                            self.config.target
                        );
                    }
                    if self.ctx.shutdown.is_cancelled() {
                        return Err(ShuttingDown.into());
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.ctx.shutdown.cancelled() => return Err(ShuttingDown.into()),
                    }
                }
                Err(e) => {
                    let hint = match error_codes(&e).first().map(String::as_str) {
                        Some("NOAUTH") => Some("Redis requires a password: set the password parameter (or the NAME_PASSWORD environment variable)"),
                        Some("NOPERM") => Some("the Redis (ACL) user may not run this command"),
                        _ => None,
                    };
                    let e = anyhow::Error::new(e);
                    return Err(match hint {
                        Some(h) => e.context(h),
                        None => e,
                    });
                }
            }
        }
    }
}

/// Bits of a message id that hold the entry id's sequence number.
pub const SEQ_BITS: u32 = 20;

/// A stream entry id `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// Parses `ms-seq` (or `ms`, sequence 0).
    pub fn parse(b: &[u8]) -> Option<EntryId> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The message id `ms << 20 | seq`, which orders like the entry ids; `None` when the
    /// entry id does not fit (sequence >= 2^20, or milliseconds >= 2^44, i.e. after the
    /// year 2527): such entries get the next id up instead (see [`next_message_id`]).
    pub fn message_id(self) -> Option<u64> {
        self.unfit()
            .is_none()
            .then_some((self.ms << SEQ_BITS) | self.seq)
    }

    /// Why the entry id does not fit a message id ([`EntryId::message_id`] is `None`), or
    /// `None` when it fits.
    pub fn unfit(self) -> Option<&'static str> {
        if self.ms >= 1 << (64 - SEQ_BITS) {
            Some("milliseconds >= 2^44, after the year 2527")
        } else if self.seq >= 1 << SEQ_BITS {
            Some("sequence >= 2^20")
        } else {
            None
        }
    }

    /// The entry id a message id made by [`EntryId::message_id`] came from.
    pub fn from_message_id(id: u64) -> EntryId {
        EntryId {
            ms: id >> SEQ_BITS,
            seq: id & ((1 << SEQ_BITS) - 1),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg_fmt(self);
    }
}

/// The message id for `entry` when the last id sent on the stream was `last`: the entry's
/// own id ([`EntryId::message_id`]) when that is above `last`, else `last + 1`. Ids stay
/// strictly increasing even for entries re-delivered or claimed behind newer ones.
pub fn next_message_id(last: u64, entry: EntryId) -> u64 {
    entry
        .message_id()
        .filter(|&m| m > last)
        .unwrap_or(last.saturating_add(1))
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id.
    pub id: EntryId,
    /// Field/value pairs in stream order; `None` for a pending entry that was deleted from
    /// the stream (XDEL/trimming) before it was acknowledged.
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

impl Entry {
    /// The first value of field `name`.
    pub fn field(&self, name: &[u8]) -> Option<&Bytes> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(f, _)| f.as_ref() == name)
            .map(|(_, v)| v)
    }

    /// The message key (the `key_field` value, empty when absent) and payload (the
    /// `payload_field` value, or, when the entry has no such field, a JSON object of all its
    /// fields, values as strings with invalid UTF-8 replaced).
    pub fn key_and_payload(&self, key_field: &[u8], payload_field: &[u8]) -> (Bytes, Bytes) {
        let key = self.field(key_field).cloned().unwrap_or_default();
        if let Some(p) = self.field(payload_field) {
            return (key, p.clone());
        }
        let mut obj = serde_json::Map::new();
        for (f, v) in self.fields.iter().flatten() {
            obj.insert(
                String::from_utf8_lossy(f).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            );
        }
        let json = serde_json::Value::Object(obj).to_string();
        (key, Bytes::from(json))
    }
}

fn bulk(v: Value) -> Result<Bytes> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        Value::Int(i) => Ok(Bytes::from(i.to_string())),
        other => bail!("expected a string in the stream reply, got {other:?}"),
    }
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => bail!("expected an array in the stream reply, got {other:?}"),
    }
}

fn entry_id(v: Value) -> Result<EntryId> {
    let b = bulk(v)?;
    EntryId::parse(&b)
        .ok_or_else(|| anyhow!("bad stream entry id {:?}", String::from_utf8_lossy(&b)))
}

/// Parses a list of entries `[[id, [field, value, ...]], ...]` (a nil field list marks a
/// deleted pending entry).
pub fn parse_entries(v: Value) -> Result<Vec<Entry>> {
    array(v)?
        .into_iter()
        .map(|e| {
            let mut parts = array(e)?.into_iter();
            let id = entry_id(parts.next().ok_or_else(|| anyhow!("empty stream entry"))?)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Map(m)) => Some(
                    m.into_iter()
                        .map(|(f, v)| Ok((bulk(f)?, bulk(v)?)))
                        .collect::<Result<Vec<_>>>()?,
                ),
                Some(list) => {
                    let mut flat = array(list)?.into_iter();
                    let mut fields = Vec::new();
                    while let Some(f) = flat.next() {
                        let v = flat
                            .next()
                            .ok_or_else(|| anyhow!("odd field list in entry {id}"))?;
                        fields.push((bulk(f)?, bulk(v)?));
                    }
                    Some(fields)
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// Parses an XREADGROUP/XREAD reply for one stream (nil = nothing within BLOCK).
pub fn parse_xread(v: Value) -> Result<Vec<Entry>> {
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.into_iter().map(|(_, entries)| entries).collect(),
        other => array(other)?
            .into_iter()
            .map(|s| {
                let mut parts = array(s)?.into_iter();
                parts.next();
                Ok(parts.next().unwrap_or(Value::Nil))
            })
            .collect::<Result<_>>()?,
    };
    let mut out = Vec::new();
    for s in streams {
        out.extend(parse_entries(s)?);
    }
    Ok(out)
}

/// An XAUTOCLAIM reply: the cursor to continue from (`0-0` when the scan is complete), the
/// claimed entries, and the ids of pending entries that no longer exist in the stream
/// (Redis removed them from the pending list).
pub fn parse_xautoclaim(v: Value) -> Result<(EntryId, Vec<Entry>, Vec<EntryId>)> {
    let mut parts = array(v)?.into_iter();
    let cursor = entry_id(
        parts
            .next()
            .ok_or_else(|| anyhow!("empty XAUTOCLAIM reply"))?,
    )?;
    let entries = parse_entries(parts.next().unwrap_or(Value::Nil))?;
    let deleted = match parts.next() {
        Some(v) => array(v)?.into_iter().map(entry_id).collect::<Result<_>>()?,
        None => Vec::new(),
    };
    Ok((cursor, entries, deleted))
}

/// What XINFO GROUPS says about one consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries not yet delivered to the group (Redis 7+; `None` when unknown).
    pub lag: Option<i64>,
    /// The last entry id delivered to any consumer of the group.
    pub last_delivered: Option<EntryId>,
}

/// Finds consumer group `group` in an XINFO GROUPS reply.
pub fn group_info(v: Value, group: &str) -> Option<GroupInfo> {
    for g in array(v).ok()? {
        let pairs: Vec<(Value, Value)> = match g {
            Value::Map(m) => m,
            other => {
                let mut flat = array(other).ok()?.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
        };
        let mut name = None;
        let mut info = GroupInfo::default();
        for (k, v) in pairs {
            match bulk(k).ok()?.as_ref() {
                b"name" => name = bulk(v).ok(),
                b"lag" => info.lag = if let Value::Int(i) = v { Some(i) } else { None },
                b"last-delivered-id" => info.last_delivered = entry_id(v).ok(),
                _ => {}
            }
        }
        if name.as_deref() == Some(group.as_bytes()) {
            return Some(info);
        }
    }
    None
}

/// Entries sent to the engine and not yet acknowledged, in the order sent, with the message
/// id each was sent as.
#[derive(Debug, Default)]
pub struct InFlight {
    order: VecDeque<(u64, EntryId)>,
    ids: HashSet<EntryId>,
}

impl InFlight {
    /// Records `entry`, sent as `message_id`.
    pub fn push(&mut self, message_id: u64, entry: EntryId) {
        self.order.push_back((message_id, entry));
        self.ids.insert(entry);
    }

    /// Whether `entry` is in flight (sent, not acknowledged).
    pub fn contains(&self, entry: &EntryId) -> bool {
        self.ids.contains(entry)
    }

    /// Removes and returns every entry sent with a message id <= `point` (what the engine
    /// acknowledged).
    pub fn release(&mut self, point: u64) -> Vec<EntryId> {
        let mut done = Vec::new();
        while let Some(&(m, e)) = self.order.front() {
            if m > point {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&e);
            done.push(e);
        }
        done
    }

    /// Entries in flight.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entry_ids_map_to_ordered_message_ids_and_back() {
        let a = EntryId::parse(b"1700000000000-0").unwrap();
        let b = EntryId::parse(b"1700000000000-7").unwrap();
        let c = EntryId::parse(b"1700000000001-0").unwrap();
        let (ma, mb, mc) = (
            a.message_id().unwrap(),
            b.message_id().unwrap(),
            c.message_id().unwrap(),
        );
        assert!(ma < mb && mb < mc);
        assert_eq!(EntryId::from_message_id(mb), b);
        assert_eq!(b.to_string(), "1700000000000-7");
        assert_eq!(EntryId::parse(b"5"), Some(EntryId { ms: 5, seq: 0 }));
        assert_eq!(EntryId::parse(b"x-1"), None);
        // Out of range: no direct id, the next one up instead.
        let big = EntryId {
            ms: 1,
            seq: 1 << SEQ_BITS,
        };
        assert_eq!(big.message_id(), None);
        assert_eq!(big.unfit(), Some("sequence >= 2^20"));
        assert_eq!(next_message_id(41, big), 42);
        let late = EntryId::parse(b"99999999999999-6").unwrap();
        assert_eq!(late.message_id(), None);
        assert_eq!(
            late.unfit(),
            Some("milliseconds >= 2^44, after the year 2527")
        );
        assert_eq!(a.unfit(), None);
        // Behind the last id sent (claimed or re-delivered): next one up.
        assert_eq!(next_message_id(mc, a), mc + 1);
        assert_eq!(next_message_id(ma, c), mc);
    }

    #[test]
    fn parses_xreadgroup_and_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bs("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bs("1-1"),
                    Value::Array(vec![bs("key"), bs("k1"), bs("payload"), bs("p \x00\n ")]),
                ]),
                Value::Array(vec![bs("1-2"), Value::Nil]),
                Value::Array(vec![
                    bs("1-3"),
                    Value::Array(vec![bs("a"), bs("1"), bs("b"), bs("two")]),
                ]),
            ]),
        ])]);
        let e = parse_xread(reply).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0].key_and_payload(b"key", b"payload"),
            (Bytes::from("k1"), Bytes::from("p \x00\n "))
        );
        assert_eq!(e[1].fields, None);
        let (k, p) = e[2].key_and_payload(b"key", b"payload");
        assert!(k.is_empty());
        let json: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(json, serde_json::json!({"a": "1", "b": "two"}));
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn parses_xautoclaim() {
        let reply = Value::Array(vec![
            bs("0-0"),
            Value::Array(vec![Value::Array(vec![
                bs("3-0"),
                Value::Array(vec![bs("payload"), bs("x")]),
            ])]),
            Value::Array(vec![bs("2-0")]),
        ]);
        let (cursor, entries, deleted) = parse_xautoclaim(reply).unwrap();
        assert_eq!(cursor, EntryId::default());
        assert_eq!(entries[0].id, EntryId { ms: 3, seq: 0 });
        assert_eq!(deleted, vec![EntryId { ms: 2, seq: 0 }]);
    }

    #[test]
    fn group_info_from_xinfo() {
        let reply = Value::Array(vec![
            Value::Array(vec![bs("name"), bs("other"), bs("lag"), Value::Int(9)]),
            Value::Array(vec![
                bs("name"),
                bs("g"),
                bs("last-delivered-id"),
                bs("7-1"),
                bs("lag"),
                Value::Int(3),
            ]),
        ]);
        assert_eq!(
            group_info(reply, "g"),
            Some(GroupInfo {
                lag: Some(3),
                last_delivered: Some(EntryId { ms: 7, seq: 1 })
            })
        );
    }

    #[test]
    fn in_flight_releases_in_send_order() {
        let mut f = InFlight::default();
        let e = |ms| EntryId { ms, seq: 0 };
        f.push(10, e(10));
        f.push(11, e(3)); // a claimed entry sent behind a newer one
        f.push(20, e(20));
        assert!(f.contains(&e(3)));
        assert_eq!(f.release(11), vec![e(10), e(3)]);
        assert!(!f.contains(&e(3)));
        assert_eq!(f.len(), 1);
        assert_eq!(f.release(100), vec![e(20)]);
        assert!(f.is_empty());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn transient_errors() {
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(is_transient(&io));
        let wrong: RedisError = (ErrorKind::Client, "bad").into();
        assert!(!is_transient(&wrong));
    }
}
