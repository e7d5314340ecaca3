//! The source side of the connector protocol: one connection to the engine (or standard
//! output), the ledger of every open stream, credits, reconnect and replay.
//!
//! The driver ([`crate::driver`]) is its only user: it hands over [`Batch`]es, waits on
//! [`SourceClient::next_event`] between reads and takes the released commit tokens. The
//! connection's reader task only forwards what the engine says; every change of state
//! happens here, on the driver's task, so there is one ledger and no lock.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use application::Endpoint;
use bytes::{Buf, Bytes, BytesMut};
use framing::{stream_id_for, Frame, Hello, ProtocolCodec, StreamMap, NOTHING_PROCESSED};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Encoding, Item, Unsendable};
use crate::deadletter::DeadLetters;
use crate::ledger::Ledger;
use crate::metrics::ConnectorMetrics;
use crate::transport::{self, BoxRead, BoxWrite};
use framing::Backoff;

/// Returned (inside `anyhow::Error`) when standard output was closed (`| head`): the
/// runtime treats it as a clean end.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
pub struct OutputClosed;

/// Returned when shutdown was requested while waiting (for credits or the engine).
#[derive(Debug, thiserror::Error)]
#[error("shutting down")]
pub struct ShuttingDown;

/// A stream announced to the engine.
#[derive(Debug, Clone)]
pub struct StreamHandle {
    /// Stable id of the stream (a hash of its name).
    pub id: u64,
    /// The stream's name.
    pub name: String,
    /// Highest message id the engine has durably processed on this stream, if any:
    /// resume upstream right after it.
    pub resume: Option<u64>,
}

/// What the connection's reader task reports.
enum Control {
    Ack {
        credits: u32,
        acks: Vec<(u64, u64)>,
    },
    NotifyAck {
        success: bool,
        stream: u64,
        point: u64,
    },
    Restart(String),
    Lost(String),
    Refused(String),
}

/// Why an operation on the current connection failed.
enum LinkError {
    /// The connection is gone: reconnect and retry.
    Lost(String),
    /// Fatal: report and stop.
    Fatal(anyhow::Error),
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Lost(e.to_string())
    }
}

/// One live connection to the engine.
struct Conn {
    writer: BoxWrite,
    control: mpsc::UnboundedReceiver<Control>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An open stream.
struct OpenStream<T> {
    name: String,
    ledger: Ledger<T>,
    /// Records up to this id were processed by the engine before this stream was opened:
    /// they are not sent again.
    skip_upto: Option<u64>,
}

/// Where records go.
enum Link {
    Engine {
        endpoint: Endpoint,
        hello: Hello,
        max_frame: usize,
        conn: Option<Conn>,
        /// Set when the connection failed: the reason, until [`SourceClient::recover`].
        broken: Option<String>,
        /// Set when the engine sent ERROR: fatal, reported at the next recovery.
        refused: Option<String>,
        credits: u64,
    },
    Stdout(tokio::io::Stdout),
}

/// The protocol client of one source connector.
pub struct SourceClient<T> {
    link: Link,
    streams: StreamMap<OpenStream<T>>,
    /// Streams ended on this client: records still pushed for them are dropped.
    ended: StreamMap<()>,
    /// Tokens released in order, waiting for the connector's `commit`.
    released: Vec<T>,
    metrics: ConnectorMetrics,
    shutdown: CancellationToken,
    dead_letters: Option<DeadLetters>,
    /// The last NOTIFY_ACK seen, for the NOTIFY waiting for it.
    notify_answer: Option<(u64, bool, u64)>,
    skipped: telemetry::Counter,
    /// Chunks written so far (numbers the chunks the ledgers keep for replay).
    chunks_sent: u64,
    /// Most frame bytes sent and not yet acknowledged, over every stream (the connector's
    /// `in_flight_bytes`): the replay copy never holds more, except one frame larger than it.
    max_in_flight_bytes: usize,
}

impl<T> SourceClient<T> {
    /// A client for the engine at `endpoint`; it connects (and says HELLO) on the first
    /// stream it opens, so a connector checks its own settings and upstream first.
    pub fn engine(
        endpoint: Endpoint,
        hello: Hello,
        max_frame: usize,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        metrics.readiness.not_ready(
            "engine",
            format!("not connected to the engine at {endpoint} yet"),
        );
        Self::with_link(
            Link::Engine {
                endpoint,
                hello,
                max_frame,
                conn: None,
                broken: None,
                refused: None,
                credits: 0,
            },
            metrics,
            shutdown,
        )
    }

    /// A client that writes records to standard output, each acknowledged once written.
    pub fn stdout(metrics: ConnectorMetrics, shutdown: CancellationToken) -> Self {
        Self::with_link(Link::Stdout(tokio::io::stdout()), metrics, shutdown)
    }

    fn with_link(link: Link, metrics: ConnectorMetrics, shutdown: CancellationToken) -> Self {
        let skipped = metrics.registry.counter(
            "connector_records_skipped_total",
            "Records not sent because the engine had already processed them.",
            &[],
        );
        SourceClient {
            link,
            streams: StreamMap::default(),
            ended: StreamMap::default(),
            released: Vec::new(),
            metrics,
            shutdown,
            dead_letters: None,
            notify_answer: None,
            skipped,
            chunks_sent: 0,
            max_in_flight_bytes: application::DEFAULT_IN_FLIGHT_BYTES as usize,
        }
    }

    /// Bounds the frame bytes sent and not yet acknowledged (`in_flight_bytes` of the
    /// connector's table in the application file; 16 MiB unless set): sending waits for
    /// the engine's acknowledgements at that bound. A frame larger than the bound is still
    /// sent, alone.
    pub fn set_in_flight_bytes(&mut self, bytes: u64) {
        self.max_in_flight_bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
    }

    /// Frame bytes sent and not acknowledged yet, over every stream.
    pub fn in_flight_bytes(&self) -> usize {
        self.streams.values().map(|s| s.ledger.bytes()).sum()
    }

    /// Where records the protocol cannot carry go (`--dead-letter DIR`); without it such a
    /// record stops the source.
    pub fn set_dead_letters(&mut self, dead_letters: Option<DeadLetters>) {
        self.dead_letters = dead_letters;
    }

    /// An empty batch encoded for this client.
    pub fn batch(&self, format: crate::format::Format) -> Batch<T> {
        let encoding = match &self.link {
            Link::Engine { max_frame, .. } => Encoding::Protocol {
                max_frame: *max_frame,
            },
            Link::Stdout(_) => Encoding::Text(format),
        };
        Batch::new(encoding, self.metrics.clone())
    }

    /// Tokens of records the engine acknowledged since the last call, in order per stream.
    pub fn take_released(&mut self) -> Vec<T> {
        self.poll_control();
        std::mem::take(&mut self.released)
    }

    /// Whether acknowledged tokens wait for a commit.
    pub fn has_released(&self) -> bool {
        !self.released.is_empty()
    }

    /// Messages sent and not acknowledged yet, over every stream.
    pub fn in_flight(&self) -> usize {
        self.streams.values().map(|s| s.ledger.waiting()).sum()
    }

    /// Announces a stream and returns the engine's resume point for it.
    pub async fn open(&mut self, name: &str, hint: Option<u64>) -> Result<StreamHandle> {
        let id = stream_id_for(name);
        if self.streams.contains_key(&id) {
            bail!("stream `{name}` is already open");
        }
        self.ended.remove(&id);
        let resume = match &self.link {
            Link::Stdout(_) => None,
            Link::Engine { conn, .. } => {
                if conn.is_none() && self.streams.is_empty() {
                    self.recover().await?;
                }
                loop {
                    match self.notify(id, name, hint).await {
                        Ok(point) => break point,
                        Err(LinkError::Fatal(e)) => return Err(e),
                        Err(LinkError::Lost(why)) => self.lost(why).await?,
                    }
                }
            }
        };
        self.streams.insert(
            id,
            OpenStream {
                name: name.to_string(),
                ledger: Ledger::new(resume, self.metrics.latency.clone()),
                skip_upto: resume,
            },
        );
        Ok(StreamHandle {
            id,
            name: name.to_string(),
            resume,
        })
    }

    /// Sends the batch's records in order (waiting for credits), moving each into its
    /// stream's ledger. On return the batch holds no records.
    pub async fn send(&mut self, batch: &mut Batch<T>) -> Result<()> {
        batch.count_pushed();
        loop {
            match self.send_some(batch).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => self.lost(why).await?,
            }
        }
    }

    /// Sends as many records as there are credits for, at least one; `true` when the batch
    /// is empty.
    async fn send_some(&mut self, batch: &mut Batch<T>) -> Result<bool, LinkError> {
        self.poll_control();
        if let Link::Engine {
            broken: Some(why), ..
        } = &self.link
        {
            return Err(LinkError::Lost(why.clone()));
        }
        // Leading items that need no frame: set aside, skipped or for an ended stream.
        while let Some(item) = batch.items.front() {
            let (stream, id) = match item {
                Item::Encoded { stream, id, .. } | Item::Unsendable { stream, id, .. } => {
                    (*stream, *id)
                }
            };
            let Some(open) = self.streams.get(&stream) else {
                if !self.ended.contains_key(&stream) {
                    return Err(LinkError::Fatal(anyhow!(
                        "record {id} pushed on stream {stream}, which was never opened: call Batch::open first"
                    )));
                }
                // Ended meanwhile (a revoked partition): its new owner reads it again.
                drop_front(batch);
                continue;
            };
            if open.skip_upto.is_some_and(|s| id <= s) {
                self.skipped.inc();
                let token = drop_front(batch);
                if let (Some(token), Some(open)) = (token, self.streams.get_mut(&stream)) {
                    open.ledger.push_done(id, token);
                    open.ledger.release(&mut self.released);
                }
                continue;
            }
            if matches!(item, Item::Unsendable { .. }) {
                self.set_aside(batch).await.map_err(LinkError::Fatal)?;
                continue;
            }
            break;
        }
        if batch.items.is_empty() {
            return Ok(true);
        }
        let credits = self.wait_for_credit().await?;
        let first = match batch.items.front() {
            Some(Item::Encoded { len, .. }) => *len as usize,
            _ => 0,
        };
        let room = self.wait_for_room(first).await?;
        // The run of encoded records, up to the credits, the room left under
        // `in_flight_bytes` and the next record that needs care.
        let mut n = 0usize;
        let mut bytes = 0usize;
        let mut payload_bytes = 0usize;
        for item in batch.items.iter() {
            if n as u64 >= credits {
                break;
            }
            match item {
                Item::Encoded {
                    stream,
                    id,
                    len,
                    payload,
                    ..
                } => {
                    let plain = self
                        .streams
                        .get(stream)
                        .is_some_and(|s| s.skip_upto.is_none_or(|p| *id > p));
                    if !plain || (n > 0 && bytes + *len as usize > room) {
                        break;
                    }
                    n += 1;
                    bytes += *len as usize;
                    payload_bytes += *payload as usize;
                }
                Item::Unsendable { .. } => break,
            }
        }
        let chunk = batch.buf.split_to(bytes).freeze();
        let stdout = matches!(self.link, Link::Stdout(_));
        let mut written = Vec::new();
        let mut at = 0;
        for item in batch.items.drain(..n) {
            let Item::Encoded {
                stream,
                id,
                len,
                token,
                ..
            } = item
            else {
                continue;
            };
            if stdout {
                written.push(token);
            } else if let Some(open) = self.streams.get_mut(&stream) {
                open.skip_upto = None;
                open.ledger.push_sent(
                    id,
                    self.chunks_sent,
                    &chunk,
                    batch.read_at,
                    at,
                    len as usize,
                    token,
                );
            }
            at += len as usize;
        }
        self.chunks_sent += 1;
        self.metrics.messages_out.add(n as u64);
        self.metrics.bytes_out.add(payload_bytes as u64);
        match &mut self.link {
            Link::Engine { credits: c, .. } => {
                *c -= n as u64;
                self.metrics.credits.set(*c as i64);
                self.metrics.in_flight.add(n as i64);
                self.write(&chunk).await?;
            }
            Link::Stdout(out) => {
                // Only what was written counts as done: a closed pipe releases nothing.
                write_stdout(out, &chunk).await.map_err(LinkError::Fatal)?;
                self.metrics
                    .latency
                    .observe_n(batch.read_at.elapsed(), n as u64);
                self.metrics.acked.add(n as u64);
                self.released.append(&mut written);
            }
        }
        Ok(batch.items.is_empty())
    }

    /// A record the protocol cannot carry: into the dead-letter directory when there is one
    /// (the stream goes on past it), else an error naming it and the way out.
    async fn set_aside(&mut self, batch: &mut Batch<T>) -> Result<()> {
        let Some(Item::Unsendable {
            stream,
            id,
            record,
            token,
        }) = batch.items.pop_front()
        else {
            return Ok(());
        };
        let Unsendable {
            key,
            payload,
            reason,
        } = *record;
        self.metrics.error("refused");
        let name = self
            .streams
            .get(&stream)
            .map_or_else(|| stream.to_string(), |s| s.name.clone());
        let Some(d) = &self.dead_letters else {
            bail!(
                "message {id} of stream `{name}` cannot be sent to the engine: {reason}; pass --dead-letter DIR to set such records aside and go on"
            );
        };
        d.write(stream, id, &key, &payload, &reason).await?;
        self.metrics.dead_letters.inc();
        tracing::warn!(
            "message {id} of stream `{name}` set aside in the dead-letter directory: {reason}"
        );
        if let Some(open) = self.streams.get_mut(&stream) {
            open.ledger.push_done(id, token);
            open.ledger.release(&mut self.released);
        }
        Ok(())
    }

    /// Waits for the next report from the engine and applies it. Returns `true` when the
    /// connection failed: call [`SourceClient::recover`] (outside any `select!`). Cancel
    /// safe; never returns in standard-output mode or before the first connection.
    pub async fn next_event(&mut self) -> bool {
        let Link::Engine {
            conn: Some(conn),
            broken: None,
            ..
        } = &mut self.link
        else {
            if let Link::Engine {
                broken: Some(_), ..
            } = &self.link
            {
                return true;
            }
            return std::future::pending().await;
        };
        let c = conn.control.recv().await;
        self.apply(c);
        self.poll_control();
        matches!(
            self.link,
            Link::Engine {
                broken: Some(_),
                ..
            }
        )
    }

    /// Reconnects after a failure seen by [`SourceClient::next_event`] and replays.
    pub async fn recover(&mut self) -> Result<()> {
        let why = match &mut self.link {
            Link::Engine { broken, conn, .. } => match broken.take() {
                Some(why) => why,
                None if conn.is_none() => String::new(),
                None => return Ok(()),
            },
            Link::Stdout(_) => return Ok(()),
        };
        if why.is_empty() {
            self.reconnect().await
        } else {
            self.lost(why).await
        }
    }

    /// Waits until every record of `stream` (or of every stream) was acknowledged, or
    /// `timeout`; returns how many are still unacknowledged.
    pub async fn drain(&mut self, stream: Option<u64>, timeout: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.poll_control();
            let left = match stream {
                Some(id) => self.streams.get(&id).map_or(0, |s| s.ledger.waiting()),
                None => self.in_flight(),
            };
            if left == 0 || matches!(self.link, Link::Stdout(_)) {
                return Ok(left);
            }
            tokio::select! {
                lost = self.next_event() => if lost {
                    tokio::select! {
                        r = self.recover() => r?,
                        _ = tokio::time::sleep_until(deadline) => return Ok(left),
                    }
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(left),
            }
        }
    }

    /// Ends a stream (EOS). Its unacknowledged records are forgotten: their tokens are never
    /// released, so the upstream delivers them again to whoever reads the stream next.
    pub async fn end(&mut self, stream: u64) -> Result<()> {
        let Some(open) = self.streams.remove(&stream) else {
            return Ok(());
        };
        self.ended.insert(stream, ());
        self.metrics.in_flight.add(-(open.ledger.waiting() as i64));
        if let Link::Engine { conn: Some(_), .. } = &self.link {
            let mut buf = BytesMut::new();
            Frame::Eos { stream_id: stream }.encode(&mut buf)?;
            if let Err(LinkError::Lost(why)) = self.write(&buf.freeze()).await {
                // The engine forgets the stream with the connection anyway.
                tracing::debug!("EOS for `{}` not sent: {why}", open.name);
            }
        }
        Ok(())
    }

    /// Ids of the open streams.
    pub fn stream_ids(&self) -> Vec<u64> {
        self.streams.keys().copied().collect()
    }

    fn poll_control(&mut self) {
        loop {
            let c = match &mut self.link {
                Link::Engine {
                    conn: Some(conn),
                    broken: None,
                    ..
                } => match conn.control.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => return,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
                _ => return,
            };
            self.apply(c);
        }
    }

    /// Applies one report of the reader task.
    fn apply(&mut self, c: Option<Control>) {
        let why = match c {
            Some(Control::Ack { credits, acks }) => {
                if let Link::Engine { credits: c, .. } = &mut self.link {
                    *c += u64::from(credits);
                    self.metrics.credits.set(*c as i64);
                }
                for (stream, point) in acks {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        let n = s.ledger.ack(point, &mut self.released);
                        self.metrics.acked.add(n as u64);
                        self.metrics.in_flight.add(-(n as i64));
                    }
                }
                return;
            }
            Some(Control::NotifyAck {
                success,
                stream,
                point,
            }) => {
                self.notify_answer = Some((stream, success, point));
                return;
            }
            None => "engine connection closed".to_string(),
            Some(Control::Lost(why)) => why,
            Some(Control::Restart(addr)) => format!(
                "engine asked to reconnect (RESTART{})",
                if addr.is_empty() {
                    String::new()
                } else {
                    format!(" to {addr}")
                }
            ),
            Some(Control::Refused(msg)) => {
                if let Link::Engine { refused, .. } = &mut self.link {
                    *refused = Some(msg.clone());
                }
                format!("engine reported an error: {msg}")
            }
        };
        if let Link::Engine { broken, .. } = &mut self.link {
            broken.get_or_insert(why);
        }
    }

    /// Waits for at least one credit; returns how many there are.
    async fn wait_for_credit(&mut self) -> Result<u64, LinkError> {
        loop {
            let (credits, broken) = match &self.link {
                Link::Stdout(_) => return Ok(u64::MAX),
                Link::Engine {
                    credits, broken, ..
                } => (*credits, broken.clone()),
            };
            if let Some(why) = broken {
                return Err(LinkError::Lost(why));
            }
            if credits > 0 {
                return Ok(credits);
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                _ = self.next_event() => {}
                _ = shutdown.cancelled() => return Err(LinkError::Fatal(ShuttingDown.into())),
            }
        }
    }

    /// Waits until a frame of `need` bytes fits under `in_flight_bytes` (or nothing is in
    /// flight); returns the room left. Once at the bound, it waits until a quarter of it is
    /// free again, so that sending resumes in sizeable runs rather than a few frames per
    /// acknowledgement.
    async fn wait_for_room(&mut self, need: usize) -> Result<usize, LinkError> {
        let mut limit = self.max_in_flight_bytes;
        loop {
            match &self.link {
                Link::Stdout(_) => return Ok(usize::MAX),
                Link::Engine {
                    broken: Some(why), ..
                } => return Err(LinkError::Lost(why.clone())),
                Link::Engine { .. } => {}
            }
            let held = self.in_flight_bytes();
            if held == 0 || held + need <= limit {
                return Ok(self.max_in_flight_bytes.saturating_sub(held).max(need));
            }
            limit = self.max_in_flight_bytes - self.max_in_flight_bytes / 4;
            let shutdown = self.shutdown.clone();
            tokio::select! {
                _ = self.next_event() => {}
                _ = shutdown.cancelled() => return Err(LinkError::Fatal(ShuttingDown.into())),
            }
        }
    }

    async fn write(&mut self, chunk: &Bytes) -> Result<(), LinkError> {
        let Link::Engine { conn, .. } = &mut self.link else {
            return Ok(());
        };
        let conn = conn
            .as_mut()
            .ok_or_else(|| LinkError::Lost("not connected".into()))?;
        conn.writer.write_all(chunk).await?;
        Ok(())
    }

    /// The connection failed: log it, reconnect and replay.
    async fn lost(&mut self, why: String) -> Result<()> {
        if let Link::Engine {
            refused: Some(msg), ..
        } = &self.link
        {
            bail!("engine reported an error: {msg}");
        }
        tracing::warn!("lost the engine connection: {why}; reconnecting");
        self.metrics.readiness.not_ready(
            "engine",
            format!("lost the engine connection ({why}); reconnecting"),
        );
        self.metrics.error("engine_connection");
        self.reconnect().await?;
        self.metrics.reconnects.inc();
        Ok(())
    }

    /// Connects (retrying with back-off until shutdown), says HELLO, re-announces every open
    /// stream and resends what the engine has not processed.
    async fn reconnect(&mut self) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            self.poll_control();
            if let Link::Engine { conn, broken, .. } = &mut self.link {
                *conn = None;
                *broken = None;
            }
            if self.shutdown.is_cancelled() {
                return Err(ShuttingDown.into());
            }
            let endpoint = match &self.link {
                Link::Engine { endpoint, .. } => endpoint.clone(),
                Link::Stdout(_) => return Ok(()),
            };
            match self.connect().await {
                Ok(()) => {}
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 || backoff.attempts() % 20 == 0 {
                        tracing::warn!(
                            "engine at {endpoint} not reachable ({why}); retrying every {delay:?} (is the engine running?)"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Err(ShuttingDown.into()),
                    }
                    continue;
                }
            }
            match self.resume_streams().await {
                Ok(()) => {
                    tracing::info!("connected to engine at {endpoint}");
                    self.metrics.readiness.ready("engine");
                    return Ok(());
                }
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    tracing::warn!("lost the engine connection while resuming streams: {why}");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Opens a connection and says HELLO.
    async fn connect(&mut self) -> Result<(), LinkError> {
        let Link::Engine {
            endpoint,
            hello,
            max_frame,
            ..
        } = &self.link
        else {
            return Ok(());
        };
        let (endpoint, max_frame) = (endpoint.clone(), *max_frame);
        let (read, mut writer) = transport::connect(&endpoint).await?;
        let mut buf = BytesMut::new();
        Frame::Hello(hello.clone())
            .encode(&mut buf)
            .map_err(|e| LinkError::Fatal(e.into()))?;
        writer.write_all(&buf).await?;
        let mut framed = FramedRead::with_capacity(read, ProtocolCodec::new(max_frame), 256 * 1024);
        let reply = tokio::time::timeout(Duration::from_secs(10), framed.next())
            .await
            .map_err(|_| LinkError::Lost("no answer to HELLO within 10 s".into()))?;
        let initial = match reply {
            Some(Ok(Frame::Ok { initial_credits })) => initial_credits,
            Some(Ok(Frame::Error { message })) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {endpoint} refused this connector: {message}"
                )))
            }
            Some(Ok(other)) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {endpoint} answered HELLO with {:?} instead of OK; is that address really the engine's source listener?",
                    other.tag()
                )))
            }
            Some(Err(framing::FrameError::Io(e))) => {
                return Err(LinkError::Lost(format!("reading the answer to HELLO: {e}")))
            }
            Some(Err(e)) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {endpoint} answered HELLO with a frame this connector cannot read ({e}); are the engine and this connector from the same release?"
                )))
            }
            None => return Err(LinkError::Lost("engine closed the connection after HELLO".into())),
        };
        let (tx, control) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(framed, tx));
        if let Link::Engine { conn, credits, .. } = &mut self.link {
            *credits = u64::from(initial);
            self.metrics.credits.set(*credits as i64);
            *conn = Some(Conn {
                writer,
                control,
                reader,
            });
        }
        Ok(())
    }

    /// Sends NOTIFY for stream `id` and waits for the answer: the engine's resume point.
    async fn notify(
        &mut self,
        id: u64,
        name: &str,
        hint: Option<u64>,
    ) -> Result<Option<u64>, LinkError> {
        self.wait_for_credit().await?;
        if let Link::Engine { credits, .. } = &mut self.link {
            *credits -= 1;
        }
        let mut buf = BytesMut::new();
        Frame::Notify {
            stream_id: id,
            stream_name: name.to_string(),
            // No hint: u64::MAX, so that the engine answers u64::MAX ("nothing processed")
            // for a stream it never saw, not 0 (which Wallaroo-style clients get).
            point_of_ref: hint.unwrap_or(NOTHING_PROCESSED),
        }
        .encode(&mut buf)
        .map_err(|e| LinkError::Fatal(e.into()))?;
        self.notify_answer = None;
        self.write(&buf.freeze()).await?;
        loop {
            if let Some((stream, success, point)) = self.notify_answer.take() {
                if stream == id {
                    if !success {
                        return Err(LinkError::Fatal(anyhow!(
                            "engine refused stream `{name}` (id {id}): it is active on another connection"
                        )));
                    }
                    return Ok((point != NOTHING_PROCESSED).then_some(point));
                }
            }
            if let Link::Engine {
                broken: Some(why), ..
            } = &self.link
            {
                return Err(LinkError::Lost(why.clone()));
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                _ = self.next_event() => {}
                _ = shutdown.cancelled() => return Err(LinkError::Fatal(ShuttingDown.into())),
            }
        }
    }

    /// After a (re)connect: NOTIFY every open stream, then resend the unacknowledged records
    /// above the engine's resume point.
    async fn resume_streams(&mut self) -> Result<(), LinkError> {
        for id in self.stream_ids() {
            let Some((name, hint)) = self
                .streams
                .get(&id)
                .map(|s| (s.name.clone(), s.ledger.acked()))
            else {
                continue;
            };
            let point = self.notify(id, &name, hint).await?;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if let Some(p) = point {
                // Processed by the engine before the connection dropped: acknowledged.
                let n = s.ledger.ack(p, &mut self.released);
                self.metrics.acked.add(n as u64);
                self.metrics.in_flight.add(-(n as i64));
            }
            let replay: Vec<Bytes> = s.ledger.unacked_frames().collect();
            let mut buf = BytesMut::new();
            for frame in replay {
                // Out of credits: what is buffered must reach the engine first, or it never
                // grants more (more to replay than the engine's credits).
                if !buf.is_empty() && matches!(self.link, Link::Engine { credits: 0, .. }) {
                    self.write(&buf.split().freeze()).await?;
                }
                self.wait_for_credit().await?;
                if let Link::Engine { credits, .. } = &mut self.link {
                    *credits -= 1;
                }
                buf.extend_from_slice(&frame);
                if buf.len() >= 256 * 1024 {
                    self.write(&buf.split().freeze()).await?;
                }
            }
            self.write(&buf.freeze()).await?;
        }
        Ok(())
    }
}

/// Removes the first record of the batch (and its bytes) and returns its token.
fn drop_front<T>(batch: &mut Batch<T>) -> Option<T> {
    match batch.items.pop_front()? {
        Item::Encoded { len, token, .. } => {
            batch.buf.advance(len as usize);
            Some(token)
        }
        Item::Unsendable { token, .. } => Some(token),
    }
}

/// Writes to standard output; a closed pipe is [`OutputClosed`].
async fn write_stdout(out: &mut tokio::io::Stdout, chunk: &[u8]) -> Result<()> {
    let r = async {
        out.write_all(chunk).await?;
        out.flush().await
    }
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        Err(e) => Err(anyhow!("cannot write to standard output: {e}")),
    }
}

/// Reads frames from the engine and forwards what matters to the client.
async fn read_loop(
    mut framed: FramedRead<BoxRead, ProtocolCodec>,
    control: mpsc::UnboundedSender<Control>,
) {
    let why = loop {
        let c = match framed.next().await {
            Some(Ok(Frame::Ack { credits, acks })) => Control::Ack { credits, acks },
            Some(Ok(Frame::NotifyAck {
                success,
                stream_id,
                point_of_ref,
            })) => Control::NotifyAck {
                success,
                stream: stream_id,
                point: point_of_ref,
            },
            Some(Ok(Frame::Restart { address })) => {
                let _ = control.send(Control::Restart(address));
                return;
            }
            Some(Ok(Frame::Error { message })) => {
                let _ = control.send(Control::Refused(message));
                return;
            }
            Some(Ok(other)) => break format!("unexpected {:?} frame from the engine", other.tag()),
            Some(Err(e)) => break format!("bad frame from the engine: {e}"),
            None => break "engine closed the connection".to_string(),
        };
        if control.send(c).is_err() {
            return;
        }
    };
    let _ = control.send(Control::Lost(why));
}
