//! Code shared by `rabbitmq_source` and `rabbitmq_sink`: connecting to the broker with
//! back-off, telling configuration errors (stop) from outages (reconnect), the ledger that
//! maps engine message ids to AMQP delivery tags, and matching messages the broker returned.

use std::collections::VecDeque;

use connector_runtime::prelude::*;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};

/// The `amqpurl` default: RabbitMQ's guest account on loopback, vhost `/`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Checks an AMQP URL before connecting, so a typo is a one-line error instead of a retry
/// loop. Returns the URL with the password masked, for logs.
pub fn check_url(connector: &str, url: &str) -> Result<String> {
    let uri: AMQPUri = url.parse().map_err(|e| {
        anyhow!(
            "invalid --{connector}-amqpurl {url:?}: {e}; expected amqp://USER:PASSWORD@HOST:PORT/VHOST (vhost `/` is %2f)"
        )
    })?;
    Ok(format!(
        "{}://{}@{}:{}/{}",
        if url.starts_with("amqps") {
            "amqps"
        } else {
            "amqp"
        },
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost
    ))
}

/// An AMQP short string (queue, exchange, routing key: at most 255 bytes) from a parameter.
pub fn short(connector: &str, param: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| {
        anyhow!(
            "--{connector}-{param} is {} bytes long; AMQP names are at most 255 bytes",
            value.len()
        )
    })
}

/// What went wrong talking to the broker.
#[derive(Debug)]
pub enum Failure {
    /// The broker went away or refused for now (restart, network, resource alarm):
    /// reconnect with back-off and carry on.
    Transient(String),
    /// Configuration the broker rejects (bad credentials, missing queue or exchange,
    /// conflicting declaration): retrying cannot help, stop with this message.
    Fatal(anyhow::Error),
}

impl Failure {
    /// Classifies a lapin error; `doing` says what was attempted ("consume from queue `q`").
    pub fn from_lapin(e: &lapin::Error, doing: &str) -> Failure {
        match e.kind() {
            ErrorKind::ProtocolError(amqp) => {
                let text = amqp.get_message().as_str();
                let fix = match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Some(
                        "it does not exist: create it, or let the connector declare it (see --help)",
                    ),
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some(
                        "access refused: check the user, password and vhost in amqpurl and the user's permissions",
                    ),
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => Some(
                        "the broker has it with different settings: declare it with the same durable/type/arguments, or delete it",
                    ),
                    AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => Some(
                        "it is used exclusively by another connection",
                    ),
                    AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH) => {
                        Some("the vhost does not exist: fix the path of amqpurl (vhost `/` is %2f)")
                    }
                    _ => None,
                };
                match fix {
                    Some(fix) => Failure::Fatal(anyhow!("cannot {doing}: {fix} (broker said: {text})")),
                    None => Failure::Transient(format!("{doing}: broker said {text}")),
                }
            }
            ErrorKind::AuthProviderError(why) => Failure::Fatal(anyhow!(
                "cannot {doing}: authentication failed ({why}): check the user and password in amqpurl"
            )),
            // lapin drops the whole connection when it cannot parse a frame, before it knows
            // the delivery tag, so the broker hands the same message to every new connection.
            ErrorKind::ParsingError(_) => Failure::Fatal(anyhow!(
                "cannot {doing}: the broker sent a message the AMQP client (lapin) cannot parse, most likely a delivery whose routing key or a header is not UTF-8 ({e}); it would come again on every reconnect: remove it from the queue with another client (or move the messages away with a shovel), then start again"
            )),
            ErrorKind::InvalidProtocolVersion(_) => Failure::Fatal(anyhow!(
                "cannot {doing}: the server does not speak AMQP 0-9-1 (is amqpurl pointing at RabbitMQ?)"
            )),
            _ => Failure::Transient(format!("{doing}: {e}")),
        }
    }
}

impl Failure {
    /// Classifies the error of a connection that was working: only what would fail again on
    /// every new connection (a frame lapin cannot parse) is fatal; anything else is treated as
    /// an outage, and reconnecting tells configuration errors apart.
    pub fn lost(e: &lapin::Error, doing: &str) -> Failure {
        match e.kind() {
            ErrorKind::ParsingError(_) => Failure::from_lapin(e, doing),
            _ => Failure::Transient(format!("{doing}: {e}")),
        }
    }
}

/// Keeps lapin's own log lines (which repeat, at ERROR, conditions the connectors report
/// themselves in one line) out of the default output: when `RUST_LOG` is not set, logs are
/// `warn` for everything but lapin. `RUST_LOG=warn,lapin=info` shows them again.
pub fn quiet_lapin_logs() {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,lapin=off");
    }
}

/// One connection attempt, named `program/connector` in the broker's management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Failure> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    match tokio::time::timeout(Duration::from_secs(30), Connection::connect(url, props)).await {
        Err(_) => Err(Failure::Transient("connect: no answer within 30 s".into())),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => match Failure::from_lapin(&e, "connect") {
            // RabbitMQ closes the socket on bad credentials for clients that do not ask for
            // the reason; a refused login shows up as a closed connection during the handshake.
            Failure::Transient(why) if why.contains("ACCESS_REFUSED") => Err(Failure::Fatal(
                anyhow!("cannot log in: check the user and password in amqpurl ({why})"),
            )),
            f => Err(f),
        },
    }
}

/// Closes a connection that is being replaced or shut down, waiting at most a second (it
/// may already be dead); errors are irrelevant at that point.
pub async fn close_quietly(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(200, why.into())).await;
}

/// Runs `attempt` until it succeeds, retrying transient failures with back-off (logged, and
/// counted in `connector_reconnects_total` when `reconnect` is set). Returns `None` when
/// shutdown was requested while waiting; fatal failures are returned as errors.
pub async fn with_backoff<T, F, Fut>(
    ctx: &Context,
    what: &str,
    reconnect: bool,
    mut attempt: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    loop {
        if ctx.is_shutting_down() {
            return Ok(None);
        }
        let r = tokio::select! {
            r = attempt() => r,
            _ = ctx.shutdown.cancelled() => return Ok(None),
        };
        match r {
            Ok(v) => {
                if reconnect {
                    ctx.metrics.reconnects.inc();
                }
                if backoff.attempts() > 0 || reconnect {
                    tracing::warn!(
                        "{what}: connected again after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(Some(v));
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(why)) => {
                let delay = backoff.next_delay();
                ctx.metrics.error("broker");
                if backoff.attempts() == 1 || backoff.attempts().is_multiple_of(10) {
                    tracing::warn!(
                        "{what}: {why}; retrying every {delay:?} (is RabbitMQ running?)"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => return Ok(None),
                }
            }
        }
    }
}

/// Paces reconnects after a lost connection: a connection lost soon after it was opened (a
/// broker that drops it again at once, for whatever reason) makes the next reconnect wait
/// longer, doubling from 0.2 s to 5 s, so a reconnect loop never spins. A connection that
/// lasted a minute starts over at 0.2 s.
#[derive(Debug)]
pub struct Reconnects {
    backoff: Backoff,
    opened: tokio::time::Instant,
}

impl Default for Reconnects {
    fn default() -> Self {
        Reconnects {
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            opened: tokio::time::Instant::now(),
        }
    }
}

impl Reconnects {
    /// Notes that a connection was (re)opened now.
    pub fn opened(&mut self) {
        self.opened = tokio::time::Instant::now();
    }

    /// Waits before the next reconnect; `false` when shutdown was requested meanwhile.
    pub async fn wait(&mut self, ctx: &Context) -> bool {
        if self.opened.elapsed() >= Duration::from_secs(60) {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = ctx.shutdown.cancelled() => false,
        }
    }
}

/// Nanoseconds since the Unix epoch: the first message id of a run. No process sends a
/// billion messages a second, so ids of a new run start above every id of an earlier run
/// (the engine drops ids that do not increase).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Maps the engine's message ids to AMQP delivery tags.
///
/// Delivery tags restart at 1 on every channel, and a broker restart means a new channel, so
/// tags cannot be message ids. Each delivery gets the next id of one running counter instead,
/// and the ledger remembers `(id, channel epoch, tag)` until the engine acknowledges the id.
#[derive(Debug)]
pub struct Ledger {
    next: u64,
    entries: VecDeque<(u64, u64, u64)>,
}

/// What to do after the engine acknowledged up to a point.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// `basic.ack(tag, multiple = true)` on the current channel, if any delivery of it is covered.
    pub ack_tag: Option<u64>,
    /// Deliveries covered on the current channel.
    pub acked: usize,
    /// Deliveries covered that came from an earlier, closed channel: the broker has already
    /// put them back in the queue and will deliver them again (duplicates downstream).
    pub stale: usize,
}

impl Ledger {
    /// A ledger whose first id is `first_id`.
    pub fn new(first_id: u64) -> Ledger {
        Ledger {
            next: first_id.max(1),
            entries: VecDeque::new(),
        }
    }

    /// Records a delivery of channel `epoch` and returns its message id.
    pub fn record(&mut self, epoch: u64, tag: u64) -> u64 {
        let id = self.next;
        self.next += 1;
        self.entries.push_back((id, epoch, tag));
        id
    }

    /// The engine processed every id <= `point`: forget them and say which tag to acknowledge
    /// on the channel of `epoch`. Tags of one channel arrive in increasing order and get
    /// increasing ids, so the covered deliveries of a channel are exactly its tags up to the
    /// highest covered one: one multiple-ack covers them all.
    pub fn settle(&mut self, point: u64, epoch: u64) -> Settled {
        let mut s = Settled::default();
        while let Some(&(id, e, tag)) = self.entries.front() {
            if id > point {
                break;
            }
            self.entries.pop_front();
            if e == epoch {
                s.ack_tag = Some(tag);
                s.acked += 1;
            } else {
                s.stale += 1;
            }
        }
        s
    }

    /// Deliveries sent to the engine and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting for the engine.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Finds which published messages the broker returned (unroutable with `mandatory`).
///
/// The broker sends `basic.return` right before the confirm of that message, but a confirm
/// may cover many messages (`multiple`), so the client cannot say which message a return
/// belongs to. Returns carry the routing key and body: each return is matched to the first
/// not yet matched message with the same routing key and body (identical messages are
/// interchangeable). `published` is `(routing key, body)` in publish order; the result holds
/// the indexes of returned messages, and returns that match nothing are ignored.
pub fn match_returned(published: &[(&str, &[u8])], returned: &[(String, Vec<u8>)]) -> Vec<usize> {
    let mut taken = vec![false; published.len()];
    let mut out = Vec::new();
    for (rk, body) in returned {
        if let Some(i) = published
            .iter()
            .enumerate()
            .position(|(i, (k, b))| !taken[i] && *k == rk.as_str() && *b == body.as_slice())
        {
            taken[i] = true;
            out.push(i);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_acks_highest_tag_of_current_channel_only() {
        let mut l = Ledger::new(100);
        let a = l.record(1, 1);
        let b = l.record(1, 2);
        assert_eq!((a, b), (100, 101));
        // Channel 1 died; channel 2 starts its tags at 1 again.
        let c = l.record(2, 1);
        let d = l.record(2, 2);
        assert!(c > b && d > c);
        assert_eq!(
            l.settle(c, 2),
            Settled {
                ack_tag: Some(1),
                acked: 1,
                stale: 2
            }
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l.settle(c, 2), Settled::default());
        assert_eq!(l.settle(u64::MAX - 1, 2).ack_tag, Some(2));
        assert!(l.is_empty());
    }

    #[test]
    fn returned_messages_match_by_key_and_body_once_each() {
        let published: Vec<(&str, &[u8])> = vec![
            ("a", b"1"),
            ("nowhere", b"x"),
            ("b", b"2"),
            ("nowhere", b"x"),
        ];
        let one = vec![("nowhere".to_string(), b"x".to_vec())];
        assert_eq!(match_returned(&published, &one), vec![1]);
        let two = vec![
            one[0].clone(),
            one[0].clone(),
            ("zzz".into(), b"?".to_vec()),
        ];
        assert_eq!(match_returned(&published, &two), vec![1, 3]);
    }

    #[test]
    fn url_check_names_the_flag() {
        assert!(check_url("in", DEFAULT_URL).is_ok());
        let e = check_url("in", "amqp://host:notaport")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--in-amqpurl"), "{e}");
    }
}
