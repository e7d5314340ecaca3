//! The engine's shared state on its single data thread: source connections, source
//! streams (ack tracker), sink buffers, pipelines and the checkpoint epoch.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use framing::{Credits, Frame};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::acks::{AckTracker, ConnId};
use crate::metrics::Metrics;
use crate::pipeline::Runner;
use crate::sink::SinkOut;

/// The write side of one source connection.
pub(crate) struct ConnOut {
    /// Frames waiting to be written.
    pub out: BytesMut,
    /// Wakes the connection's writer task.
    pub wake: Rc<Notify>,
    /// The connector's credit balance as the engine sees it.
    pub credits: Credits,
    /// Set once the connection must be closed after `out` is flushed.
    pub closing: bool,
    /// Handshake done: ACKs may be sent.
    pub ready: bool,
}

/// A pipeline bound to its source and sinks.
pub(crate) struct BoundPipeline {
    pub runner: Runner,
    pub targets: Vec<usize>,
}

/// A source connector and what runs on its messages.
pub(crate) struct SourceDef {
    pub name: String,
    pub max_credits: u32,
    pub refill_mark: u32,
    pub pipelines: Vec<BoundPipeline>,
    /// Sinks any of its pipelines write to (for batch marks).
    pub targets: Vec<usize>,
}

/// Everything the data path shares, behind one `Rc<RefCell<_>>` (single thread).
pub(crate) struct Core {
    pub app_name: String,
    pub worker_name: String,
    pub cookie: String,
    pub max_frame: usize,
    pub sources: Vec<SourceDef>,
    pub sinks: Vec<SinkOut>,
    pub conns: FxHashMap<ConnId, ConnOut>,
    pub next_conn: ConnId,
    pub tracker: AckTracker,
    /// Checkpoint epoch that changes made now belong to.
    pub epoch: u64,
    /// Last epoch known durable; `None` when running in memory (no checkpoints).
    pub durable_epoch: Option<u64>,
    /// Whether anything was processed since the last checkpoint.
    pub dirty: bool,
    pub sink_buffer_bytes: usize,
    pub max_in_flight: u64,
    pub metrics: Metrics,
    scratch: Vec<(ConnId, u64, u64)>,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app_name: String,
        worker_name: String,
        cookie: String,
        max_frame: usize,
        sources: Vec<SourceDef>,
        sinks: Vec<SinkOut>,
        resilient: bool,
        sink_buffer_bytes: usize,
        max_in_flight: u64,
        metrics: Metrics,
    ) -> Self {
        Core {
            app_name,
            worker_name,
            cookie,
            max_frame,
            sources,
            sinks,
            conns: FxHashMap::default(),
            next_conn: 1,
            tracker: AckTracker::default(),
            epoch: 1,
            durable_epoch: resilient.then_some(0),
            dirty: false,
            sink_buffer_bytes,
            max_in_flight,
            metrics,
            scratch: Vec::new(),
        }
    }

    /// Whether the engine may take more input: every sink buffer under its bound and the
    /// number of unacknowledged source messages under its bound. When false, credits are
    /// not refilled: that is the back-pressure.
    pub fn has_capacity(&self) -> bool {
        self.tracker.in_flight < self.max_in_flight
            && self
                .sinks
                .iter()
                .all(|s| s.buffered() < self.sink_buffer_bytes)
    }

    /// Registers a new source connection.
    pub fn open_conn(&mut self, source: usize) -> (ConnId, Rc<Notify>) {
        let id = self.next_conn;
        self.next_conn += 1;
        let wake = Rc::new(Notify::new());
        let s = &self.sources[source];
        self.conns.insert(
            id,
            ConnOut {
                out: BytesMut::with_capacity(4096),
                wake: wake.clone(),
                credits: Credits::receiver(s.max_credits, s.refill_mark),
                closing: false,
                ready: false,
            },
        );
        (id, wake)
    }

    /// Queues a frame on a connection (control frames only).
    pub fn send(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let _ = frame.encode(&mut c.out);
            c.wake.notify_one();
        }
    }

    /// Resolves marks and sends one ACK per connection that has progress to report or
    /// credits to refill (when the engine has capacity).
    pub fn flush_acks(&mut self) {
        let cap = self.has_capacity();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let before = self.tracker.acked_total;
        self.tracker
            .resolve(&self.sinks, self.durable_epoch, &mut scratch);
        self.metrics.acked.add(self.tracker.acked_total - before);
        self.metrics.in_flight.set(self.tracker.in_flight as i64);
        scratch.sort_unstable_by_key(|x| x.0);
        for (id, c) in self.conns.iter_mut() {
            if c.closing || !c.ready {
                continue;
            }
            let lo = scratch.partition_point(|x| x.0 < *id);
            let hi = scratch.partition_point(|x| x.0 <= *id);
            let pairs = &scratch[lo..hi];
            let credits = if cap {
                c.credits.refill().unwrap_or(0)
            } else {
                0
            };
            if pairs.is_empty() && credits == 0 {
                continue;
            }
            self.metrics.credits_granted.add(u64::from(credits));
            let out = &mut c.out;
            out.reserve(13 + 16 * pairs.len());
            out.put_u32((1 + 4 + 4 + 16 * pairs.len()) as u32);
            out.put_u8(framing::Tag::Ack as u8);
            out.put_u32(credits);
            out.put_u32(pairs.len() as u32);
            for (_, s, p) in pairs {
                out.put_u64(*s);
                out.put_u64(*p);
            }
            c.wake.notify_one();
        }
        self.scratch = scratch;
    }
}
