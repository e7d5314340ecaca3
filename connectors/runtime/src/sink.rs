//! The sink server: where the sink driver ([`crate::connector`]) receives the engine's
//! output (`read_batch_linger`) and acknowledges it (`ack_all`) once the connector's `write`
//! settled every record.
//!
//! The server listens on the connector's address from the application file; the engine
//! connects (and reconnects). Each connection is checked (HELLO version and cookie), granted
//! credits, and its messages are delivered in order in batches. An acknowledgement returns
//! the credits of the messages it covers, so at most `max_credits` messages are ever in
//! flight. With `--from stdin` the same calls read records from standard input.

use std::collections::VecDeque;

use framing::StreamMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use application::Endpoint;
use bytes::{Bytes, BytesMut};
use framing::{
    check_hello, encode_ack, frame_len, split_frame, Credits, Frame, MessageView, ProtocolCodec,
    StreamTable, NOTHING_PROCESSED,
};
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::format::Format;
use crate::metrics::ConnectorMetrics;
use crate::transport::{BoxRead, BoxWrite, Listener};

/// Most messages handed over in one batch from a connection.
const MAX_BATCH: usize = 4096;

/// One message from the engine.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    /// The engine's output stream.
    pub stream_id: u64,
    /// Increasing within the stream.
    pub message_id: u64,
    /// Event time carried from the input.
    pub event_time: i64,
    /// The output's key (Kafka key, Redis field, S3 object key, ...); may be empty.
    pub key: Bytes,
    /// The output's value.
    pub payload: Bytes,
    conn: u64,
}

impl SinkMessage {
    /// A message not tied to any engine connection (tests, stdin mode).
    pub fn detached(stream_id: u64, message_id: u64, key: Bytes, payload: Bytes) -> SinkMessage {
        SinkMessage {
            stream_id,
            message_id,
            event_time: 0,
            key,
            payload,
            conn: 0,
        }
    }
}

struct AckCmd {
    points: Vec<(u64, u64)>,
}

type AckRoutes = Arc<Mutex<StreamMap<mpsc::UnboundedSender<AckCmd>>>>;

/// Receives the engine's messages and sends acknowledgements back.
pub struct Sink {
    rx: mpsc::Receiver<Vec<SinkMessage>>,
    ready: VecDeque<SinkMessage>,
    routes: AckRoutes,
    metrics: ConnectorMetrics,
    shutdown: CancellationToken,
    _listener: Option<Arc<Listener>>,
    /// [`Sink::read_batch_linger`] stops lingering once a batch holds this many frame bytes.
    linger_bytes: usize,
}

/// Settings of the protocol server.
#[derive(Debug, Clone)]
pub struct SinkServerConfig {
    /// Where to listen.
    pub endpoint: Endpoint,
    /// Expected cookie.
    pub cookie: String,
    /// Credits granted to the engine (messages in flight at most).
    pub max_credits: u32,
    /// Largest accepted frame.
    pub max_frame: usize,
}

impl Sink {
    /// Binds the connector's address and serves engine connections.
    pub async fn listen(
        config: SinkServerConfig,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
    ) -> Result<Sink> {
        let listener = Arc::new(Listener::bind(&config.endpoint).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} for the engine: {e} (is another sink already running there?)",
                config.endpoint
            )
        })?);
        let (tx, rx) = mpsc::channel(64);
        let routes: AckRoutes = Arc::default();
        let delivered: Arc<Mutex<StreamMap<u64>>> = Arc::default();
        let engines = Arc::new(AtomicUsize::new(0));
        metrics.readiness.not_ready(
            "engine",
            format!("waiting for the engine to connect to {}", config.endpoint),
        );
        let accept = listener.clone();
        let routes2 = routes.clone();
        let metrics2 = metrics.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut next_conn = 1u64;
            loop {
                let accepted = tokio::select! {
                    a = accept.accept() => a,
                    _ = stop.cancelled() => return,
                };
                match accepted {
                    Ok((read, write, peer)) => {
                        let conn = next_conn;
                        next_conn += 1;
                        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
                        routes2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(conn, ack_tx);
                        let session = Session {
                            conn,
                            peer: peer.clone(),
                            config: config.clone(),
                            out: tx.clone(),
                            delivered: delivered.clone(),
                            metrics: metrics2.clone(),
                            engines: engines.clone(),
                        };
                        let routes3 = routes2.clone();
                        tokio::spawn(async move {
                            if let Err(why) = session.run(read, write, ack_rx).await {
                                tracing::warn!("engine connection from {peer} closed: {why}");
                            } else {
                                tracing::info!("engine connection from {peer} ended");
                            }
                            routes3
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&conn);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Sink {
            rx,
            ready: VecDeque::new(),
            routes,
            metrics,
            shutdown,
            _listener: Some(listener),
            linger_bytes: usize::MAX,
        })
    }

    /// Reads records from standard input in `format` (acknowledgements are no-ops) until end
    /// of file; leaves the reason in `error` when the input ends on a record it cannot read
    /// (the runtime then exits non-zero instead of treating it as end of input).
    pub(crate) fn stdin_reporting(
        format: Format,
        max_frame: usize,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
        error: Arc<Mutex<Option<String>>>,
    ) -> Sink {
        let (tx, rx) = mpsc::channel(64);
        let counters = metrics.clone();
        tokio::spawn(async move {
            let mut framed = FramedRead::with_capacity(
                tokio::io::stdin(),
                format.decoder(max_frame),
                256 * 1024,
            );
            let mut id = 0u64;
            let mut batch = Vec::new();
            loop {
                let next = match framed.next().now_or_never() {
                    Some(n) => n,
                    None => {
                        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
                            return;
                        }
                        framed.next().await
                    }
                };
                match next {
                    Some(Ok((key, payload))) => {
                        id += 1;
                        counters.messages_in.inc();
                        counters.bytes_in.add(payload.len() as u64);
                        batch.push(SinkMessage::detached(0, id, key, payload));
                        if batch.len() >= MAX_BATCH
                            && tx.send(std::mem::take(&mut batch)).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        counters.error("decode");
                        *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "standard input, record {}: {e} (is --format {} right?)",
                            id + 1,
                            format.name()
                        ));
                        break;
                    }
                    None => break,
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
        });
        Sink {
            rx,
            ready: VecDeque::new(),
            routes: Arc::default(),
            metrics,
            shutdown,
            _listener: None,
            linger_bytes: usize::MAX,
        }
    }

    /// Waits for at least one message, then returns up to `max` that are ready now.
    /// `None` when the input ended or shutdown was requested.
    pub async fn read_batch(&mut self, max: usize) -> Option<Vec<SinkMessage>> {
        if self.ready.is_empty() {
            let batch = self.recv().await?;
            // Most often one read's batch is all there is: hand it over as it is.
            if batch.len() <= max && self.rx.is_empty() {
                self.metrics.in_flight.add(batch.len() as i64);
                return Some(batch);
            }
            self.ready.extend(batch);
        }
        Some(self.take_ready(max))
    }

    /// The engine holds at most `bytes` of this sink's unacknowledged outputs (the sink's
    /// `in_flight_bytes`): [`Sink::read_batch_linger`] stops lingering at half of that, as
    /// more may never come before the sink acknowledges.
    pub fn set_in_flight_bytes(&mut self, bytes: u64) {
        self.linger_bytes = usize::try_from(bytes / 2).unwrap_or(usize::MAX).max(1);
    }

    /// Like [`Sink::read_batch`], but keeps collecting for up to `linger` (or until `max`
    /// messages, or half the sink's `in_flight_bytes` of frames) after the first one
    /// arrives: fewer, larger writes to the external system.
    pub async fn read_batch_linger(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Option<Vec<SinkMessage>> {
        let mut out = self.read_batch(max).await?;
        if linger.is_zero() {
            return Some(out);
        }
        let frame_bytes = |m: &[SinkMessage]| -> usize {
            m.iter()
                .map(|m| framing::message_frame_len(m.key.len(), m.payload.len()))
                .sum()
        };
        let mut bytes = frame_bytes(&out);
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max && bytes < self.linger_bytes {
            if self.ready.is_empty() {
                let next = tokio::select! {
                    b = self.rx.recv() => b,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.shutdown.cancelled() => break,
                };
                match next {
                    Some(b) => self.ready.extend(b),
                    None => break,
                }
            }
            let more = self.take_ready(max - out.len());
            bytes += frame_bytes(&more);
            out.extend(more);
        }
        Some(out)
    }

    fn take_ready(&mut self, max: usize) -> Vec<SinkMessage> {
        while self.ready.len() < max {
            match self.rx.try_recv() {
                Ok(b) => self.ready.extend(b),
                Err(_) => break,
            }
        }
        let n = self.ready.len().min(max.max(1));
        let out: Vec<SinkMessage> = self.ready.drain(..n).collect();
        self.metrics.in_flight.add(out.len() as i64);
        out
    }

    async fn recv(&mut self) -> Option<Vec<SinkMessage>> {
        tokio::select! {
            b = self.rx.recv() => b,
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Acknowledges every message of `msgs` and every earlier one of their streams (the last
    /// id per stream is what is sent). Only after the external system confirmed the writes.
    pub fn ack_all(&self, msgs: &[SinkMessage]) {
        if msgs.is_empty() {
            return;
        }
        self.metrics.acked.add(msgs.len() as u64);
        self.metrics.in_flight.add(-(msgs.len() as i64));
        let mut per_conn: StreamMap<Vec<(u64, u64)>> = StreamMap::default();
        for m in msgs {
            let points = per_conn.entry(m.conn).or_default();
            match points.iter_mut().find(|(s, _)| *s == m.stream_id) {
                Some(p) => p.1 = p.1.max(m.message_id),
                None => points.push((m.stream_id, m.message_id)),
            }
        }
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for (conn, points) in per_conn {
            if let Some(tx) = routes.get(&conn) {
                let _ = tx.send(AckCmd { points });
            }
        }
    }
}

/// What the frames of one engine connection change.
struct ConnState {
    credits: Credits,
    streams: StreamTable,
    /// Ids delivered to the connector and not yet acknowledged, per stream.
    outstanding: StreamMap<VecDeque<u64>>,
    /// Messages of the current read, for the connector.
    batch: Vec<SinkMessage>,
    /// Frames to write back (NOTIFY_ACK, ACK).
    wbuf: BytesMut,
}

/// One engine connection on the sink server.
struct Session {
    conn: u64,
    peer: String,
    config: SinkServerConfig,
    out: mpsc::Sender<Vec<SinkMessage>>,
    /// Last point acknowledged per stream, across connections (answers NOTIFY).
    delivered: Arc<Mutex<StreamMap<u64>>>,
    metrics: ConnectorMetrics,
    /// Engine connections past HELLO, over all sessions (for `/ready`).
    engines: Arc<AtomicUsize>,
}

/// Counts one engine connection past HELLO while it lives; the last one to go makes the
/// sink not ready.
struct EngineConnected {
    engines: Arc<AtomicUsize>,
    metrics: ConnectorMetrics,
    endpoint: Endpoint,
}

impl EngineConnected {
    fn new(session: &Session) -> Self {
        session.engines.fetch_add(1, Ordering::SeqCst);
        session.metrics.readiness.ready("engine");
        EngineConnected {
            engines: session.engines.clone(),
            metrics: session.metrics.clone(),
            endpoint: session.config.endpoint.clone(),
        }
    }
}

impl Drop for EngineConnected {
    fn drop(&mut self) {
        if self.engines.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.metrics.readiness.not_ready(
                "engine",
                format!(
                    "the engine disconnected; waiting for it to connect to {} again",
                    self.endpoint
                ),
            );
        }
    }
}

impl Session {
    async fn run(
        self,
        read: BoxRead,
        mut write: BoxWrite,
        mut acks: mpsc::UnboundedReceiver<AckCmd>,
    ) -> Result<(), String> {
        let mut framed =
            FramedRead::with_capacity(read, ProtocolCodec::new(self.config.max_frame), 256 * 1024);
        let hello = match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
            Err(_) => return Err("no HELLO within 10 s".into()),
            Ok(Some(Ok(Frame::Hello(h)))) => h,
            Ok(Some(Ok(other))) => {
                let why = format!("expected HELLO as the first frame, got {:?}", other.tag());
                return Err(self.refuse(&mut write, &why).await);
            }
            Ok(Some(Err(e))) => return Err(self.refuse(&mut write, &e.to_string()).await),
            Ok(None) => return Err("closed before HELLO".into()),
        };
        if let Err(why) = check_hello(&hello, &self.config.cookie) {
            return Err(self.refuse(&mut write, &why).await);
        }
        tracing::info!(
            "engine {} ({}) connected from {}",
            hello.program_name,
            hello.instance_name,
            self.peer
        );
        let mut c = ConnState {
            credits: Credits::receiver(self.config.max_credits, self.config.max_credits),
            streams: StreamTable::default(),
            outstanding: StreamMap::default(),
            batch: Vec::new(),
            wbuf: BytesMut::new(),
        };
        Frame::Ok {
            initial_credits: self.config.max_credits,
        }
        .encode(&mut c.wbuf)
        .map_err(|e| e.to_string())?;
        write.write_all(&c.wbuf).await.map_err(|e| e.to_string())?;
        c.wbuf.clear();
        let _connected = EngineConnected::new(&self);
        self.metrics.credits.set(c.credits.balance() as i64);
        // From here on frames are read in place from the connection's buffer.
        let parts = framed.into_parts();
        let (mut rd, mut buf) = (parts.io, parts.read_buf);
        buf.reserve(256 * 1024);
        loop {
            tokio::select! {
                n = rd.read_buf(&mut buf) => {
                    let n = n.map_err(|e| e.to_string())?;
                    // The complete frames at the front of the buffer, read in place.
                    let mut end = 0;
                    let mut bad = None;
                    loop {
                        match frame_len(&buf[end..], self.config.max_frame) {
                            Ok(Some(total)) if end + total <= buf.len() => end += total,
                            Ok(Some(total)) => {
                                buf.reserve(total - (buf.len() - end));
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                bad = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let chunk = buf.split_to(end).freeze();
                    let applied = self.on_chunk(&chunk, &mut c);
                    let batch = std::mem::take(&mut c.batch);
                    if let Some(why) = applied.err().or(bad) {
                        self.deliver(batch).await?;
                        return Err(self.refuse(&mut write, &why).await);
                    }
                    if n == 0 {
                        self.deliver(batch).await?;
                        if !buf.is_empty() {
                            return Err(format!("connection closed inside a frame ({} bytes of it)", buf.len()));
                        }
                        return Ok(());
                    }
                    if buf.capacity() - buf.len() < 64 * 1024 {
                        buf.reserve(256 * 1024);
                    }
                    if !c.wbuf.is_empty() {
                        write.write_all(&c.wbuf).await.map_err(|e| e.to_string())?;
                        c.wbuf.clear();
                    }
                    self.metrics.credits.set(c.credits.balance() as i64);
                    self.deliver(batch).await?;
                }
                cmd = acks.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    let mut all = cmd.points;
                    while let Ok(more) = acks.try_recv() {
                        for (s, p) in more.points {
                            match all.iter_mut().find(|(s2, _)| *s2 == s) {
                                Some(e) => e.1 = e.1.max(p),
                                None => all.push((s, p)),
                            }
                        }
                    }
                    let mut returned = 0u32;
                    {
                        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                        for (s, p) in &all {
                            if let Some(q) = c.outstanding.get_mut(s) {
                                while q.front().is_some_and(|id| id <= p) {
                                    q.pop_front();
                                    returned += 1;
                                }
                            }
                            let e = delivered.entry(*s).or_insert(*p);
                            *e = (*e).max(*p);
                        }
                    }
                    c.credits.grant(returned);
                    self.metrics.credits.set(c.credits.balance() as i64);
                    encode_ack(&mut c.wbuf, returned, all);
                    write.write_all(&c.wbuf).await.map_err(|e| e.to_string())?;
                    c.wbuf.clear();
                }
            }
        }
    }

    /// Applies one frame; the error text goes into an ERROR frame.
    fn on_frame(&self, frame: Frame, c: &mut ConnState) -> Result<(), String> {
        match frame {
            Frame::Notify {
                stream_id,
                stream_name,
                ..
            } => {
                if !c.credits.spend() {
                    return Err("credits overspent: NOTIFY sent with no credit left".into());
                }
                let known = self.delivered(stream_id);
                c.streams.open(stream_id, stream_name, known);
                // A NOTIFY's credit comes straight back: it is not a message to acknowledge.
                c.credits.grant(1);
                let frame = Frame::NotifyAck {
                    success: true,
                    stream_id,
                    point_of_ref: known.unwrap_or(NOTHING_PROCESSED),
                };
                frame.encode(&mut c.wbuf).map_err(|e| e.to_string())?;
                encode_ack(&mut c.wbuf, 1, []);
                Ok(())
            }
            Frame::Message(m) => self.on_message(m.view(), (m.key.clone(), m.payload.clone()), c),
            Frame::Eos { stream_id } => c
                .streams
                .close(stream_id)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => Err(format!(
                "unexpected {:?} frame from the engine",
                other.tag()
            )),
        }
    }

    /// The last point acknowledged on `stream`, over every connection.
    fn delivered(&self, stream: u64) -> Option<u64> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&stream)
            .copied()
    }

    /// Applies one MESSAGE (`data` = its key and payload, sharing the read buffer).
    fn on_message(
        &self,
        m: MessageView<'_>,
        data: (Bytes, Bytes),
        c: &mut ConnState,
    ) -> Result<(), String> {
        if !c.credits.spend() {
            return Err("credits overspent: MESSAGE sent with no credit left".into());
        }
        let fresh = c
            .streams
            .accept(m.stream_id, m.message_id)
            .map_err(|e| e.to_string())?;
        if !fresh {
            // Already delivered: give the credit back and re-acknowledge what we know.
            c.credits.grant(1);
            let acks = self.delivered(m.stream_id).map(|p| (m.stream_id, p));
            encode_ack(&mut c.wbuf, 1, acks);
            return Ok(());
        }
        c.outstanding
            .entry(m.stream_id)
            .or_default()
            .push_back(m.message_id);
        c.batch.push(SinkMessage {
            stream_id: m.stream_id,
            message_id: m.message_id,
            event_time: m.event_time,
            key: data.0,
            payload: data.1,
            conn: self.conn,
        });
        Ok(())
    }

    /// Applies every complete frame of `chunk` (whole frames only); MESSAGE frames are read
    /// in place and their key and payload share `chunk`.
    fn on_chunk(&self, chunk: &Bytes, c: &mut ConnState) -> Result<(), String> {
        let mut at = 0;
        while let Some((body, total)) = split_frame(&chunk[at..], usize::MAX).ok().flatten() {
            at += total;
            match MessageView::from_frame_body(body).map_err(|e| e.to_string())? {
                Some(m) => {
                    let key = if m.key.is_empty() {
                        Bytes::new()
                    } else {
                        chunk.slice_ref(m.key)
                    };
                    self.on_message(m, (key, chunk.slice_ref(m.payload)), c)?;
                }
                None => {
                    let f = Frame::decode(chunk.slice_ref(body)).map_err(|e| e.to_string())?;
                    self.on_frame(f, c)?;
                }
            }
        }
        Ok(())
    }

    /// Counts a protocol error, sends ERROR (best effort) and returns the reason.
    async fn refuse(&self, write: &mut BoxWrite, why: &str) -> String {
        self.metrics.error("protocol");
        send_error(write, why).await
    }

    async fn deliver(&self, batch: Vec<SinkMessage>) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        self.metrics.messages_in.add(batch.len() as u64);
        self.metrics
            .bytes_in
            .add(batch.iter().map(|m| m.payload.len() as u64).sum());
        self.out
            .send(batch)
            .await
            .map_err(|_| "sink connector stopped reading".to_string())
    }
}

/// Sends ERROR (best effort) and returns the reason for the log line.
async fn send_error(write: &mut BoxWrite, why: &str) -> String {
    let mut buf = BytesMut::new();
    if Frame::error(why).encode(&mut buf).is_ok() {
        let _ = write.write_all(&buf).await;
        let _ = write.shutdown().await;
    }
    why.to_string()
}
