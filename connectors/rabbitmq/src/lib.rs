//! Code shared by `rabbitmq_source` and `rabbitmq_sink`: checking parameters, telling
//! configuration errors (stop) from outages (reconnect), the broker connection that is opened
//! again after it was lost ([`Link`]), and matching messages the broker returned. The
//! consuming side is in [`source`], the publishing side in [`sink`].

use std::future::Future;

use connector_runtime::prelude::*;
use connector_runtime::{External, ShuttingDown};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod sink;
pub mod source;

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
                        "it does not exist: create it (rabbitmq_source can declare its queue with --NAME-declare true)",
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

/// A connector's broker connection, opened again after it was lost.
///
/// Safe to drive from a `read` the runtime may drop at any `.await`: an open in progress runs
/// in its own task (a dropped call leaves it running, the next call picks it up) and the
/// session is replaced only once an open completed. Every completed open starts a new epoch,
/// so what belongs to a closed channel (delivery tags) can be told apart.
///
/// Pacing: failed attempts wait 0.2 s doubling to 5 s (logged on the first and every 10th);
/// a connection lost soon after it was opened makes the next attempt wait longer, doubling
/// from 0.2 s to 5 s, so a reconnect loop never spins; a connection that lasted a minute
/// starts over at 0.2 s.
pub struct Link<S> {
    what: String,
    session: Option<S>,
    opening: Option<JoinHandle<Result<S, Failure>>>,
    epoch: u64,
    failures: Backoff,
    pacing: Backoff,
    retry_at: Option<Instant>,
    opened_at: Instant,
    down_since: Option<Instant>,
    /// The broker's part of `/ready` (known once `open` was called with the context).
    external: Option<External>,
}

impl<S: AsRef<Connection> + Send + 'static> Link<S> {
    /// A link with no session yet; `what` names the broker in logs ("RabbitMQ at URL").
    pub fn new(what: String) -> Self {
        let backoff = || Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        Link {
            what,
            session: None,
            opening: None,
            epoch: 0,
            failures: backoff(),
            pacing: backoff(),
            retry_at: None,
            opened_at: Instant::now(),
            down_since: None,
            external: None,
        }
    }

    /// The epoch of the current (or last) session: 1 for the first, +1 per reopen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The open session, if any.
    pub fn session(&mut self) -> Option<&mut S> {
        self.session.as_mut()
    }

    /// Waits until the next attempt is due (cancel safe).
    pub async fn due(&self) {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Returns the session, opening one with `open(epoch)` when there is none (one attempt,
    /// without waiting for [`Link::due`]). `Ok(None)` after a failure that may pass (logged,
    /// next attempt scheduled); `Err` when the broker rejects the configuration.
    pub async fn open<F, Fut>(&mut self, ctx: &Context, open: F) -> Result<Option<&mut S>>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<S, Failure>> + Send + 'static,
    {
        if self.session.is_none() {
            let epoch = self.epoch + 1;
            let task = self
                .opening
                .get_or_insert_with(|| tokio::spawn(open(epoch)));
            let done = task.await;
            self.opening = None;
            match done.map_err(|e| anyhow!("connecting to {} failed: {e}", self.what))? {
                Ok(session) => self.opened(ctx, session),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(why)) => {
                    ctx.external()
                        .down(format!("{}: {why}; retrying", self.what));
                    let delay = self.failures.next_delay();
                    self.retry_at = Some(Instant::now() + delay);
                    self.down_since.get_or_insert_with(Instant::now);
                    ctx.metrics.error("broker");
                    let n = self.failures.attempts();
                    if n == 1 || n.is_multiple_of(10) {
                        tracing::warn!(
                            "{}: {why}; retrying every {delay:?} (is RabbitMQ running?)",
                            self.what
                        );
                    }
                }
            }
        }
        Ok(self.session.as_mut())
    }

    fn opened(&mut self, ctx: &Context, session: S) {
        let external = self.external.get_or_insert_with(|| ctx.external());
        external.up();
        if let Some(since) = self.down_since.take() {
            if self.epoch > 0 {
                ctx.metrics.reconnects.inc();
            }
            let secs = since.elapsed().as_secs_f64();
            tracing::warn!("{}: connected again after {secs:.1} s", self.what);
        }
        self.epoch += 1;
        self.session = Some(session);
        self.failures.reset();
        self.retry_at = None;
        self.opened_at = Instant::now();
    }

    /// Opens the first session, waiting for the broker as long as it is unreachable. A
    /// configuration error is returned; shutdown meanwhile is [`ShuttingDown`] (exit 0).
    pub async fn first<F, Fut>(&mut self, ctx: &Context, open: F) -> Result<()>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<S, Failure>> + Send + 'static,
    {
        let shutdown = ctx.shutdown.clone();
        loop {
            let attempt = async {
                self.due().await;
                Ok::<_, anyhow::Error>(self.open(ctx, &open).await?.is_some())
            };
            tokio::select! {
                r = attempt => if r? { return Ok(()) },
                _ = shutdown.cancelled() => return Err(ShuttingDown.into()),
            }
        }
    }

    /// The connection failed (`why`): drop it (the broker takes back what it handed out) and
    /// schedule the reconnect; `then` says what happens to the connector's work meanwhile.
    pub fn lost(&mut self, why: &str, then: &str) {
        tracing::warn!("lost the broker connection ({why}); {then}");
        if let Some(external) = &self.external {
            external.down(format!("lost the broker connection ({why}); reconnecting"));
        }
        self.session = None;
        if self.opened_at.elapsed() >= Duration::from_secs(60) {
            self.pacing.reset();
        }
        self.retry_at = Some(Instant::now() + self.pacing.next_delay());
        self.down_since = Some(Instant::now());
    }

    /// Closes the session (if any) for good.
    pub async fn close(&mut self, why: &str) {
        if let Some(task) = self.opening.take() {
            task.abort();
        }
        if let Some(session) = self.session.take() {
            close_quietly(session.as_ref(), why).await;
        }
    }
}

/// Resolves once `conn` is no longer connected (checked twice a second): an operation queued
/// just as lapin's connection died may never be answered, so long waits race this.
pub async fn closed(conn: &Connection) {
    while conn.status().connected() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One connection attempt for `--check`: a failure of any kind is the check's reason.
pub async fn probe<S: AsRef<Connection>>(
    open: impl Future<Output = Result<S, Failure>>,
) -> Result<()> {
    let session = open.await.map_err(|f| match f {
        Failure::Fatal(e) => e,
        Failure::Transient(why) => anyhow!("{why}"),
    })?;
    close_quietly(session.as_ref(), "check done").await;
    Ok(())
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
