//! The source client: what a source connector uses to hand messages to the engine.
//!
//! ```text
//! let stream = source.notify("topic/0", None).await?;    // resume point in stream.resume
//! source.write(stream.id, offset, key, payload).await?;  // waits for credits, buffers
//! source.flush().await?;                                 // when upstream has nothing ready
//! for a in acks.next().await { commit_upstream(a.stream_id, a.point) }
//! ```
//!
//! Every message stays in a replay buffer until the engine acknowledges it. When the
//! connection drops (or the engine sends RESTART), the client reconnects with back-off,
//! says HELLO, NOTIFYs every open stream again and resends what the engine has not processed,
//! so a connector never has to rewind its upstream for an engine restart. With `--to stdout`
//! the same calls write records to standard output instead, acknowledged once written.

use std::collections::VecDeque;

use framing::StreamMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use application::Endpoint;
use bytes::{Bytes, BytesMut};
use framing::{encode_message, stream_id_for, Frame, Hello, ProtocolCodec, NOTHING_PROCESSED};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::deadletter::DeadLetters;
use crate::format::Format;
use crate::metrics::ConnectorMetrics;
use crate::transport::{self, BoxRead, BoxWrite};

/// Write buffer size at which `write` flushes on its own.
const FLUSH_AT: usize = 256 * 1024;

pub use crate::client::{OutputClosed, ShuttingDown};

pub use crate::client::StreamHandle;

/// One acknowledgement: every message of `stream_id` with id <= `point` is safely processed
/// and may be committed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The stream.
    pub stream_id: u64,
    /// The highest acknowledged message id.
    pub point: u64,
}

#[derive(Default)]
struct AckBoard {
    /// Latest acknowledged point per stream, not yet handed to the connector.
    fresh: Mutex<StreamMap<u64>>,
    wake: Notify,
}

impl AckBoard {
    fn post(&self, stream_id: u64, point: u64) {
        let mut m = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(stream_id).or_insert(point);
        *e = (*e).max(point);
        drop(m);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Acked> {
        let mut m = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        m.drain()
            .map(|(stream_id, point)| Acked { stream_id, point })
            .collect()
    }
}

/// The acknowledgements of a [`Source`], as a separate handle so a connector can wait for
/// them while it also waits for upstream data (`tokio::select!`).
#[derive(Clone)]
pub struct Acks {
    board: Arc<AckBoard>,
}

impl Acks {
    /// Waits until at least one acknowledgement is available and returns all of them,
    /// the latest point per stream.
    pub async fn next(&mut self) -> Vec<Acked> {
        loop {
            let got = self.board.take();
            if !got.is_empty() {
                return got;
            }
            self.board.wake.notified().await;
        }
    }

    /// Returns whatever acknowledgements are available now, without waiting.
    pub fn try_next(&mut self) -> Vec<Acked> {
        self.board.take()
    }
}

/// How often a source with nothing to send should call [`Source::flush`] (or
/// [`Source::keep_alive`]) so that it notices a lost engine connection and resends what the
/// engine had not acknowledged, without waiting for new upstream data.
pub const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// What became of a record handed to [`Source::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// On its way to the engine: it is acknowledged through [`Acks`] like every other.
    Sent,
    /// The protocol cannot carry it and it was written to `--dead-letter DIR`: the engine
    /// never acknowledges it, so commit it upstream yourself if your upstream needs that.
    SetAside,
}

/// The connection to the engine (or standard output) through which a source connector
/// sends its messages.
pub struct Source {
    inner: Inner,
    acks: Arc<AckBoard>,
    metrics: ConnectorMetrics,
    /// Where records the protocol cannot carry go (`--dead-letter DIR`).
    dead_letters: Option<DeadLetters>,
}

enum Inner {
    Engine(Box<EngineLink>),
    Stdout(StdoutLink),
}

impl Source {
    /// Connects to the engine at `endpoint` (retrying with back-off) and says HELLO.
    pub async fn connect_engine(
        endpoint: Endpoint,
        hello: Hello,
        max_frame: usize,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
    ) -> Result<Source> {
        let mut source = Source::engine(endpoint, hello, max_frame, metrics, shutdown);
        if let Inner::Engine(l) = &mut source.inner {
            l.reconnect().await?;
        }
        Ok(source)
    }

    /// A source for the engine at `endpoint` that connects (and says HELLO) on its first
    /// [`Source::notify`]: the connector checks its own settings and upstream before it
    /// waits for the engine, so a bad parameter is reported at once.
    pub fn engine(
        endpoint: Endpoint,
        hello: Hello,
        max_frame: usize,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
    ) -> Source {
        let acks = Arc::new(AckBoard::default());
        let link = EngineLink {
            endpoint,
            hello,
            max_frame,
            metrics: metrics.clone(),
            shutdown,
            acks: acks.clone(),
            sent_log: SentLog::new(metrics.clone()),
            conn: None,
            buf: BytesMut::new(),
            pending: Vec::new(),
            credits: 0,
            streams: StreamMap::default(),
            last_stream: None,
        };
        Source {
            inner: Inner::Engine(Box::new(link)),
            acks,
            metrics,
            dead_letters: None,
        }
    }

    /// Writes records to standard output in `format`; each record is acknowledged once
    /// written.
    pub fn stdout(format: Format, metrics: ConnectorMetrics) -> Source {
        Source {
            inner: Inner::Stdout(StdoutLink {
                format,
                out: tokio::io::stdout(),
                buf: BytesMut::new(),
                last: StreamMap::default(),
                records: 0,
            }),
            acks: Arc::new(AckBoard::default()),
            metrics,
            dead_letters: None,
        }
    }

    /// Sets records the engine cannot be sent aside in `dead_letters` instead of failing.
    pub(crate) fn set_dead_letters(&mut self, dead_letters: Option<DeadLetters>) {
        self.dead_letters = dead_letters;
    }

    /// The acknowledgement handle (clone it once, before the main loop).
    pub fn acks(&self) -> Acks {
        Acks {
            board: self.acks.clone(),
        }
    }

    /// Announces a stream. `resume_hint` is the last id this connector knows was committed
    /// upstream (if any). The returned handle carries the engine's resume point.
    pub async fn notify(
        &mut self,
        stream_name: &str,
        resume_hint: Option<u64>,
    ) -> Result<StreamHandle> {
        match &mut self.inner {
            Inner::Engine(l) => l.notify(stream_name, resume_hint).await,
            Inner::Stdout(_) => Ok(StreamHandle {
                id: stream_id_for(stream_name),
                name: stream_name.to_string(),
                resume: None,
            }),
        }
    }

    /// Sends one message (waits for a credit when none is left). Message ids must increase
    /// within a stream. Buffered: call [`Source::flush`] when upstream has nothing ready.
    pub async fn write(
        &mut self,
        stream_id: u64,
        message_id: u64,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Written> {
        self.write_at(stream_id, message_id, 0, key, payload).await
    }

    /// [`Source::write`] with an event time (milliseconds since the epoch by convention).
    pub async fn write_at(
        &mut self,
        stream_id: u64,
        message_id: u64,
        event_time: i64,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Written> {
        if let Inner::Engine(l) = &self.inner {
            if let Some(reason) = unsendable(key.len(), payload.len(), l.max_frame) {
                self.set_aside(stream_id, message_id, key, payload, &reason)
                    .await?;
                return Ok(Written::SetAside);
            }
        }
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.add(payload.len() as u64);
        match &mut self.inner {
            Inner::Engine(l) => {
                l.write(stream_id, message_id, event_time, key, payload)
                    .await?;
                Ok(Written::Sent)
            }
            Inner::Stdout(s) => {
                let r = s
                    .write(
                        stream_id,
                        message_id,
                        key,
                        payload,
                        &self.acks,
                        &self.metrics,
                    )
                    .await;
                self.metrics.in_flight.set(s.records as i64);
                r.map(|()| Written::Sent)
            }
        }
    }

    /// A record the protocol cannot carry: into the dead-letter directory when there is one
    /// (the stream goes on past it), else an error naming it and the way out. What was
    /// written before it is sent first either way.
    async fn set_aside(
        &mut self,
        stream_id: u64,
        message_id: u64,
        key: &[u8],
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        self.metrics.error("refused");
        let stream = match &self.inner {
            Inner::Engine(l) => l.streams.get(&stream_id).map(|s| s.name.clone()),
            Inner::Stdout(_) => None,
        }
        .unwrap_or_else(|| stream_id.to_string());
        self.flush().await?;
        let Some(d) = &self.dead_letters else {
            bail!(
                "message {message_id} of stream `{stream}` cannot be sent to the engine: {reason}; pass --dead-letter DIR to set such records aside and go on"
            );
        };
        d.write(stream_id, message_id, key, payload, reason).await?;
        self.metrics.dead_letters.inc();
        tracing::warn!(
            "message {message_id} of stream `{stream}` set aside in the dead-letter directory: {reason}"
        );
        Ok(())
    }

    /// Sends everything buffered. When the engine connection was lost meanwhile (the engine
    /// restarted, say), this reconnects and resends what the engine has not acknowledged,
    /// so a source that flushes on an idle timer recovers without new upstream data.
    pub async fn flush(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Engine(l) => l.flush().await,
            Inner::Stdout(s) => s.flush(&self.acks, &self.metrics).await,
        }
    }

    /// Ends a stream (EOS). Its unacknowledged messages are no longer replayed by this
    /// client; the upstream re-delivers them on the next start since they were not committed.
    pub async fn eos(&mut self, stream_id: u64) -> Result<()> {
        match &mut self.inner {
            Inner::Engine(l) => l.eos(stream_id).await,
            Inner::Stdout(s) => s.flush(&self.acks, &self.metrics).await,
        }
    }

    /// Flushes and waits until the engine acknowledged everything sent, or `timeout`.
    /// Returns the number of messages still unacknowledged.
    pub async fn drain(&mut self, timeout: Duration) -> Result<usize> {
        match &mut self.inner {
            Inner::Engine(l) => l.drain(timeout).await,
            Inner::Stdout(s) => s.flush(&self.acks, &self.metrics).await.map(|_| 0),
        }
    }

    /// Ends a stream cleanly: flushes, waits up to `timeout` for the engine to acknowledge
    /// everything sent on it, then sends EOS. Acknowledgements arrive through [`Acks`].
    pub async fn finish(&mut self, stream_id: u64, timeout: Duration) -> Result<()> {
        let left = self.drain(timeout).await?;
        if left > 0 {
            tracing::warn!("{left} messages were not acknowledged within {timeout:?}");
        }
        self.eos(stream_id).await
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Engine(l) => l.unacked(),
            Inner::Stdout(s) => s.records as usize,
        }
    }

    /// Checks the engine connection without waiting: when it failed (closed, RESTART), this
    /// reconnects and resends what the engine has not acknowledged; otherwise it flushes.
    /// The same as [`Source::flush`], under the name that says why an idle source calls it
    /// on a timer: without such a call a lost engine connection is only noticed at the next
    /// write, which may not come for a long time (RabbitMQ's prefetch, a quiet topic).
    pub async fn keep_alive(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Engine(l) => l.keep_alive().await,
            Inner::Stdout(s) => s.flush(&self.acks, &self.metrics).await,
        }
    }
}

/// Standard-output mode.
struct StdoutLink {
    format: Format,
    out: tokio::io::Stdout,
    buf: BytesMut,
    last: StreamMap<u64>,
    /// Records in `buf`.
    records: u64,
}

impl StdoutLink {
    async fn write(
        &mut self,
        stream_id: u64,
        message_id: u64,
        key: &[u8],
        payload: &[u8],
        acks: &AckBoard,
        metrics: &ConnectorMetrics,
    ) -> Result<()> {
        self.format.encode(key, payload, &mut self.buf);
        self.last.insert(stream_id, message_id);
        self.records += 1;
        if self.buf.len() >= 64 * 1024 {
            self.flush(acks, metrics).await?;
        }
        Ok(())
    }

    /// Writes the buffer; only once all of it is written are its records acknowledged
    /// (a closed stdout leaves them unacknowledged, so they are not committed upstream).
    async fn flush(&mut self, acks: &AckBoard, metrics: &ConnectorMetrics) -> Result<()> {
        if !self.buf.is_empty() {
            let r = async {
                self.out.write_all(&self.buf).await?;
                self.out.flush().await
            }
            .await;
            if let Err(e) = r {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Err(OutputClosed.into());
                }
                return Err(anyhow!("cannot write to standard output: {e}"));
            }
            self.buf.clear();
        }
        for (s, p) in self.last.drain() {
            acks.post(s, p);
        }
        metrics.acked.add(self.records);
        self.records = 0;
        metrics.in_flight.set(0);
        Ok(())
    }
}

use crate::batch::unsendable;

/// Ids sent to the engine and not yet acknowledged, per stream. The reader task counts
/// acknowledgements against it as they arrive, so `connector_acked_total` and
/// `connector_in_flight` are current even while the connector waits for upstream data.
struct SentLog {
    ids: Mutex<StreamMap<VecDeque<u64>>>,
    metrics: ConnectorMetrics,
}

impl SentLog {
    fn new(metrics: ConnectorMetrics) -> Arc<SentLog> {
        Arc::new(SentLog {
            ids: Mutex::default(),
            metrics,
        })
    }

    /// Records sent ids (`in_flight` grows by their number).
    fn sent(&self, ids: impl Iterator<Item = (u64, u64)>) {
        let mut l = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0i64;
        for (sid, mid) in ids {
            l.entry(sid).or_default().push_back(mid);
            n += 1;
        }
        drop(l);
        self.metrics.in_flight.add(n);
    }

    /// Counts the ids up to each stream's point as acknowledged.
    fn ack(&self, acks: &[(u64, u64)]) {
        let mut l = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0u64;
        for (sid, point) in acks {
            if let Some(q) = l.get_mut(sid) {
                while q.front().is_some_and(|id| id <= point) {
                    q.pop_front();
                    n += 1;
                }
            }
        }
        drop(l);
        if n > 0 {
            self.metrics.acked.add(n);
            self.metrics.in_flight.add(-(n as i64));
        }
    }

    /// Forgets a stream ended with EOS: its unacknowledged ids are no longer in flight.
    fn forget(&self, stream_id: u64) {
        let mut l = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = l.remove(&stream_id) {
            self.metrics.in_flight.add(-(q.len() as i64));
        }
    }
}

/// What the reader task reports to the writer.
enum Control {
    NotifyAck {
        success: bool,
        stream_id: u64,
        point: u64,
    },
    Restart(String),
    Lost(String),
    Refused(String),
}

/// One live connection: the write half plus the reader task's reports.
struct Conn {
    writer: BoxWrite,
    control: mpsc::UnboundedReceiver<Control>,
    granted: Arc<AtomicU64>,
    wake: Arc<Notify>,
    acked: Arc<Mutex<StreamMap<u64>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct OpenStream {
    name: String,
    /// Encoded MESSAGE frames not yet acknowledged, oldest first.
    unacked: VecDeque<(u64, Bytes)>,
    acked: Option<u64>,
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

/// Engine mode: the protocol client with its replay buffer.
struct EngineLink {
    endpoint: Endpoint,
    hello: Hello,
    max_frame: usize,
    metrics: ConnectorMetrics,
    shutdown: CancellationToken,
    acks: Arc<AckBoard>,
    sent_log: Arc<SentLog>,
    conn: Option<Conn>,
    /// Encoded frames not yet written.
    buf: BytesMut,
    /// MESSAGE frames in `buf`: (stream id, message id, start, end).
    pending: Vec<(u64, u64, usize, usize)>,
    credits: u64,
    streams: StreamMap<OpenStream>,
    last_stream: Option<u64>,
}

impl EngineLink {
    fn unacked(&self) -> usize {
        self.streams
            .values()
            .map(|s| s.unacked.len())
            .sum::<usize>()
            + self.pending.len()
    }

    /// Connects (retrying forever with back-off until shutdown), says HELLO, re-announces
    /// every open stream and resends what the engine has not processed.
    async fn reconnect(&mut self) -> Result<()> {
        self.stash_pending();
        let first = self.conn.is_none() && self.streams.is_empty();
        if !first {
            self.metrics.error("engine_connection");
        }
        self.drop_conn();
        let mut backoff = Backoff::default();
        loop {
            if self.shutdown.is_cancelled() {
                return Err(ShuttingDown.into());
            }
            match self.try_connect().await {
                Ok(()) => {}
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 || backoff.attempts() % 20 == 0 {
                        tracing::warn!(
                            "engine at {} not reachable ({why}); retrying every {:?} (is the engine running?)",
                            self.endpoint,
                            delay
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Err(ShuttingDown.into()),
                    }
                    continue;
                }
            }
            if !first {
                self.metrics.reconnects.inc();
            }
            match self.resume_streams().await {
                Ok(()) => {
                    tracing::info!("connected to engine at {}", self.endpoint);
                    return Ok(());
                }
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    tracing::warn!("lost the engine connection while resuming streams: {why}");
                    self.drop_conn();
                    backoff.wait().await;
                }
            }
        }
    }

    async fn try_connect(&mut self) -> Result<(), LinkError> {
        let (read, mut writer) = transport::connect(&self.endpoint).await?;
        let mut hello = BytesMut::new();
        Frame::Hello(self.hello.clone())
            .encode(&mut hello)
            .map_err(|e| LinkError::Fatal(e.into()))?;
        writer.write_all(&hello).await?;
        let mut framed =
            FramedRead::with_capacity(read, ProtocolCodec::new(self.max_frame), 256 * 1024);
        let reply = tokio::time::timeout(Duration::from_secs(10), framed.next())
            .await
            .map_err(|_| LinkError::Lost("no answer to HELLO within 10 s".into()))?;
        let initial = match reply {
            Some(Ok(Frame::Ok { initial_credits })) => initial_credits,
            Some(Ok(Frame::Error { message })) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {} refused this connector: {message}",
                    self.endpoint
                )))
            }
            Some(Ok(other)) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {} answered HELLO with {:?} instead of OK; is that address really the engine's source listener?",
                    self.endpoint,
                    other.tag()
                )))
            }
            Some(Err(framing::FrameError::Io(e))) => {
                return Err(LinkError::Lost(format!("reading the answer to HELLO: {e}")))
            }
            Some(Err(e)) => {
                return Err(LinkError::Fatal(anyhow!(
                    "engine at {} answered HELLO with a frame this connector cannot read ({e}); are the engine and this connector from the same release?",
                    self.endpoint
                )))
            }
            None => return Err(LinkError::Lost("engine closed the connection after HELLO".into())),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let granted = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let acked = Arc::new(Mutex::new(StreamMap::default()));
        let reader = tokio::spawn(read_loop(
            framed,
            tx,
            granted.clone(),
            wake.clone(),
            acked.clone(),
            self.acks.clone(),
            self.sent_log.clone(),
        ));
        self.credits = u64::from(initial);
        self.metrics.credits.set(self.credits as i64);
        self.conn = Some(Conn {
            writer,
            control: rx,
            granted,
            wake,
            acked,
            reader,
        });
        Ok(())
    }

    /// After a (re)connect: NOTIFY every open stream, then resend unacknowledged messages
    /// above the engine's resume point.
    async fn resume_streams(&mut self) -> Result<(), LinkError> {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            let (name, hint) = match self.streams.get(&id) {
                Some(s) => (s.name.clone(), s.acked),
                None => continue,
            };
            let point = self.notify_raw(id, &name, hint).await?;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if let Some(p) = point {
                // Processed by the engine before the connection dropped: acknowledged.
                self.sent_log.ack(&[(id, p)]);
                while s.unacked.front().is_some_and(|(mid, _)| *mid <= p) {
                    s.unacked.pop_front();
                }
                if s.acked.is_none_or(|a| a < p) {
                    s.acked = Some(p);
                    self.acks.post(id, p);
                }
            }
            let replay: Vec<Bytes> = s.unacked.iter().map(|(_, f)| f.clone()).collect();
            for frame in replay {
                self.spend_credit().await?;
                self.buf.extend_from_slice(&frame);
                if self.buf.len() >= FLUSH_AT {
                    self.write_buf().await?;
                }
            }
        }
        self.write_buf().await
    }

    /// Moves MESSAGE frames still in `buf` into the replay buffers (before a reconnect).
    fn stash_pending(&mut self) {
        if self.pending.is_empty() {
            self.buf.clear();
            return;
        }
        let chunk = self.buf.split().freeze();
        self.log_pending();
        for (sid, mid, a, b) in self.pending.drain(..) {
            if let Some(s) = self.streams.get_mut(&sid) {
                s.unacked.push_back((mid, chunk.slice(a..b)));
            }
        }
    }

    /// Records the MESSAGE frames in `buf` as sent (for the acked/in-flight metrics), before
    /// they are written: an acknowledgement can only follow the write.
    fn log_pending(&self) {
        let ids = self.pending.iter().map(|(sid, mid, _, _)| (*sid, *mid));
        self.sent_log.sent(ids);
    }

    /// Writes `buf` to the connection as is.
    async fn write_buf(&mut self) -> Result<(), LinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| LinkError::Lost("not connected".into()))?;
        let chunk = self.buf.split().freeze();
        conn.writer.write_all(&chunk).await?;
        Ok(())
    }

    /// Waits for and spends one credit on the current connection.
    async fn spend_credit(&mut self) -> Result<(), LinkError> {
        if self.credits > 0 {
            self.credits -= 1;
            self.metrics.credits.set(self.credits as i64);
            return Ok(());
        }
        loop {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| LinkError::Lost("not connected".into()))?;
            let g = conn.granted.swap(0, Ordering::AcqRel);
            if g > 0 {
                self.credits = g - 1;
                self.metrics.credits.set(self.credits as i64);
                return Ok(());
            }
            self.flush_conn().await?;
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| LinkError::Lost("not connected".into()))?;
            let wake = conn.wake.clone();
            tokio::select! {
                _ = wake.notified() => {}
                c = conn.control.recv() => handle_control(c)?,
                _ = self.shutdown.cancelled() => return Err(LinkError::Fatal(ShuttingDown.into())),
            }
        }
    }

    /// Writes `buf`, moving its MESSAGE frames into the replay buffers, and prunes what the
    /// engine acknowledged.
    async fn flush_conn(&mut self) -> Result<(), LinkError> {
        // A connection that died while the connector was idle (the reader task saw it close,
        // or the engine sent RESTART) is noticed here, before writing into it: the caller
        // reconnects and replays. Writing into a dead TCP connection often "succeeds", which
        // would leave these messages waiting until the next write.
        if let Some(conn) = self.conn.as_mut() {
            match conn.control.try_recv() {
                Ok(c) => handle_control(Some(c))?,
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => handle_control(None)?,
            }
        }
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.log_pending();
            for (sid, mid, a, b) in self.pending.drain(..) {
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.unacked.push_back((mid, chunk.slice(a..b)));
                }
            }
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| LinkError::Lost("not connected".into()))?;
            conn.writer.write_all(&chunk).await?;
        }
        self.prune();
        Ok(())
    }

    /// Forgets the connection, keeping what it acknowledged: ACKs that arrived while the
    /// connector was idle are applied first, so they are not replayed to the next engine.
    fn drop_conn(&mut self) {
        self.prune();
        self.conn = None;
    }

    /// Drops acknowledged frames from the replay buffers.
    fn prune(&mut self) {
        let Some(conn) = &self.conn else { return };
        let acked: Vec<(u64, u64)> = {
            let mut m = conn.acked.lock().unwrap_or_else(|p| p.into_inner());
            m.drain().collect()
        };
        // The acked/in-flight metrics were counted by the reader task when the ACK arrived.
        for (sid, p) in acked {
            if let Some(s) = self.streams.get_mut(&sid) {
                while s.unacked.front().is_some_and(|(mid, _)| *mid <= p) {
                    s.unacked.pop_front();
                }
                s.acked = Some(s.acked.map_or(p, |a| a.max(p)));
            }
        }
    }

    async fn notify_raw(
        &mut self,
        id: u64,
        name: &str,
        hint: Option<u64>,
    ) -> Result<Option<u64>, LinkError> {
        self.spend_credit().await?;
        Frame::Notify {
            stream_id: id,
            stream_name: name.to_string(),
            // No hint: u64::MAX, so that the engine answers u64::MAX ("nothing processed")
            // for a stream it never saw, not 0 (which Wallaroo-style clients get).
            point_of_ref: hint.unwrap_or(NOTHING_PROCESSED),
        }
        .encode(&mut self.buf)
        .map_err(|e| LinkError::Fatal(e.into()))?;
        self.flush_conn().await?;
        loop {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| LinkError::Lost("not connected".into()))?;
            let c = tokio::select! {
                c = conn.control.recv() => c,
                _ = self.shutdown.cancelled() => return Err(LinkError::Fatal(ShuttingDown.into())),
            };
            match c {
                Some(Control::NotifyAck {
                    success,
                    stream_id,
                    point,
                }) if stream_id == id => {
                    if !success {
                        return Err(LinkError::Fatal(anyhow!(
                            "engine refused stream `{name}` (id {id}): it is active on another connection"
                        )));
                    }
                    return Ok((point != NOTHING_PROCESSED).then_some(point));
                }
                Some(Control::NotifyAck { .. }) => continue,
                other => handle_control(other)?,
            }
        }
    }

    async fn notify(&mut self, name: &str, hint: Option<u64>) -> Result<StreamHandle> {
        let id = stream_id_for(name);
        if self.streams.contains_key(&id) {
            bail!("stream `{name}` is already open");
        }
        if self.conn.is_none() && self.streams.is_empty() {
            // The first stream: connect now (see `Source::engine`).
            self.reconnect().await?;
        }
        loop {
            match self.notify_raw(id, name, hint).await {
                Ok(point) => {
                    self.streams.insert(
                        id,
                        OpenStream {
                            name: name.to_string(),
                            unacked: VecDeque::new(),
                            acked: point,
                        },
                    );
                    return Ok(StreamHandle {
                        id,
                        name: name.to_string(),
                        resume: point,
                    });
                }
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    tracing::warn!("lost the engine connection: {why}; reconnecting");
                    self.reconnect().await?;
                }
            }
        }
    }

    async fn write(
        &mut self,
        stream_id: u64,
        message_id: u64,
        event_time: i64,
        key: &[u8],
        payload: &[u8],
    ) -> Result<()> {
        if self.last_stream != Some(stream_id) {
            if !self.streams.contains_key(&stream_id) {
                bail!("write on stream {stream_id} before notify()");
            }
            self.last_stream = Some(stream_id);
        }
        loop {
            match self.spend_credit().await {
                Ok(()) => break,
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    tracing::warn!("lost the engine connection: {why}; reconnecting");
                    self.reconnect().await?;
                }
            }
        }
        let start = self.buf.len();
        if self.buf.capacity() - start < 64 + key.len() + payload.len() {
            self.buf
                .reserve(FLUSH_AT.max(64 + key.len() + payload.len()));
        }
        encode_message(
            &mut self.buf,
            stream_id,
            message_id,
            event_time,
            key,
            payload,
        )?;
        self.pending
            .push((stream_id, message_id, start, self.buf.len()));
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        loop {
            match self.flush_conn().await {
                Ok(()) => return Ok(()),
                Err(LinkError::Fatal(e)) => return Err(e),
                Err(LinkError::Lost(why)) => {
                    tracing::warn!("lost the engine connection: {why}; reconnecting");
                    self.reconnect().await?;
                }
            }
        }
    }

    async fn eos(&mut self, stream_id: u64) -> Result<()> {
        Frame::Eos { stream_id }.encode(&mut self.buf)?;
        self.flush().await?;
        self.streams.remove(&stream_id);
        self.sent_log.forget(stream_id);
        if self.last_stream == Some(stream_id) {
            self.last_stream = None;
        }
        Ok(())
    }

    async fn keep_alive(&mut self) -> Result<()> {
        let lost = match self.conn.as_mut() {
            // Not connected yet: the first notify connects.
            None if self.streams.is_empty() => return Ok(()),
            None => Some("not connected".to_string()),
            Some(conn) => loop {
                match conn.control.try_recv() {
                    Ok(c) => match handle_control(Some(c)) {
                        Ok(()) => {}
                        Err(LinkError::Fatal(e)) => return Err(e),
                        Err(LinkError::Lost(why)) => break Some(why),
                    },
                    Err(mpsc::error::TryRecvError::Empty) => break None,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        break Some("engine connection closed".to_string())
                    }
                }
            },
        };
        match lost {
            None => self.flush().await,
            Some(why) => {
                tracing::warn!("lost the engine connection: {why}; reconnecting");
                self.reconnect().await
            }
        }
    }

    async fn drain(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.flush().await?;
        loop {
            self.prune();
            let left = self.unacked();
            if left == 0 {
                return Ok(0);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Ok(left);
            };
            let wake = conn.wake.clone();
            tokio::select! {
                _ = wake.notified() => {}
                c = conn.control.recv() => match handle_control(c) {
                    Ok(()) => {}
                    Err(LinkError::Fatal(e)) => return Err(e),
                    Err(LinkError::Lost(why)) => {
                        tracing::warn!("lost the engine connection while draining: {why}; reconnecting");
                        tokio::select! {
                            r = self.reconnect() => r?,
                            _ = tokio::time::sleep_until(deadline) => return Ok(left),
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(left),
            }
        }
    }
}

fn handle_control(c: Option<Control>) -> Result<(), LinkError> {
    match c {
        None => Err(LinkError::Lost("engine connection closed".into())),
        Some(Control::Lost(why)) => Err(LinkError::Lost(why)),
        Some(Control::Restart(addr)) => Err(LinkError::Lost(format!(
            "engine asked to reconnect (RESTART{})",
            if addr.is_empty() {
                String::new()
            } else {
                format!(" to {addr}")
            }
        ))),
        Some(Control::Refused(msg)) => {
            Err(LinkError::Fatal(anyhow!("engine reported an error: {msg}")))
        }
        Some(Control::NotifyAck { .. }) => Ok(()),
    }
}

/// Reads frames from the engine: credits and acknowledgements are applied directly,
/// everything else is reported to the writer.
async fn read_loop(
    mut framed: FramedRead<BoxRead, ProtocolCodec>,
    control: mpsc::UnboundedSender<Control>,
    granted: Arc<AtomicU64>,
    wake: Arc<Notify>,
    acked: Arc<Mutex<StreamMap<u64>>>,
    board: Arc<AckBoard>,
    sent_log: Arc<SentLog>,
) {
    let why = loop {
        match framed.next().await {
            Some(Ok(Frame::Ack { credits, acks })) => {
                if !acks.is_empty() {
                    let mut m = acked.lock().unwrap_or_else(|p| p.into_inner());
                    for (s, p) in &acks {
                        let e = m.entry(*s).or_insert(*p);
                        *e = (*e).max(*p);
                    }
                    drop(m);
                    sent_log.ack(&acks);
                    for (s, p) in acks {
                        board.post(s, p);
                    }
                }
                if credits > 0 {
                    granted.fetch_add(u64::from(credits), Ordering::AcqRel);
                }
                wake.notify_one();
            }
            Some(Ok(Frame::NotifyAck {
                success,
                stream_id,
                point_of_ref,
            })) => {
                let _ = control.send(Control::NotifyAck {
                    success,
                    stream_id,
                    point: point_of_ref,
                });
            }
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
        }
    };
    let _ = control.send(Control::Lost(why));
    wake.notify_one();
}
