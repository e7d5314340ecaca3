//! The engine's shared state on its single data thread: source connections, source
//! streams (ack tracker), sink buffers, pipelines and the checkpoint epoch.
//!
//! [`Core`] keeps its fields to itself: the source sessions, the sink clients, the
//! checkpointer and the wiring use the methods below, so that each invariant (credits,
//! marks, epochs, connection life cycle) is maintained in one place.

use std::rc::Rc;

use bytes::BytesMut;
use framing::{check_hello, Credits, Frame, Hello, PROTOCOL_VERSION};
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::acks::{AcceptError, AckTracker, ConnId};
use crate::handoff::{Owned, StreamScope, TakeOver};
use crate::metrics::Metrics;
use crate::partition::StateStore;
use crate::pipeline::{Emitter, Input, Runner};
use crate::sink_buffer::SinkOut;
use crate::slice::Slice;
use crate::store::Expect;

/// The write side of one source connection.
struct ConnOut {
    /// Frames waiting to be written.
    out: BytesMut,
    /// Wakes the connection's writer task.
    wake: Rc<Notify>,
    /// The connector's credit balance as the engine sees it.
    credits: Credits,
    /// Set once the connection must be closed after `out` is flushed.
    closing: bool,
    /// Handshake done: ACKs may be sent.
    ready: bool,
    /// The source connector it belongs to.
    source: usize,
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
    /// Bound of its unacknowledged frame bytes (`in_flight_bytes` in the application file).
    pub in_flight_bytes: u64,
    pub pipelines: Vec<BoundPipeline>,
    /// Sinks any of its pipelines write to (for batch marks).
    pub targets: Vec<usize>,
}

/// Outputs of the pipelines over a batch: counted into the metrics once per batch.
#[derive(Debug, Default)]
pub(crate) struct Emitted {
    /// Outputs encoded (one per sink written to).
    pub count: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Outputs that could not be encoded (key too long).
    pub errors: u64,
}

/// Everything the data path shares, behind one `Rc<RefCell<_>>` (single thread).
pub(crate) struct Core {
    app_name: String,
    worker_name: String,
    cookie: String,
    max_frame: usize,
    sources: Vec<SourceDef>,
    sinks: Vec<SinkOut>,
    conns: FxHashMap<ConnId, ConnOut>,
    next_conn: ConnId,
    tracker: AckTracker,
    /// Checkpoint epoch that changes made now belong to.
    epoch: u64,
    /// Last epoch known durable; `None` when running in memory (no checkpoints).
    durable_epoch: Option<u64>,
    /// Whether anything was processed since the last checkpoint.
    dirty: bool,
    max_in_flight: u64,
    metrics: Metrics,
    scratch: Vec<(ConnId, u64, u64)>,
    /// The application's keyed state stores.
    stores: Vec<Rc<dyn StateStore>>,
    /// Stream scope (`state_scope = "stream"`): per-stream slices and hand-off.
    scope: Option<StreamScope>,
}

impl Core {
    /// The data path's state for `sources` and `sinks`; `resilient` when checkpoints are
    /// taken (acknowledgements then wait for the checkpoint of their epoch).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app_name: String,
        worker_name: String,
        cookie: String,
        max_frame: usize,
        sources: Vec<SourceDef>,
        sinks: Vec<SinkOut>,
        resilient: bool,
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
            tracker: AckTracker::new(metrics.latency.clone()),
            epoch: 1,
            durable_epoch: resilient.then_some(0),
            dirty: false,
            max_in_flight,
            metrics,
            scratch: Vec::new(),
            stores: Vec::new(),
            scope: None,
        }
    }

    /// The application's keyed state stores (to forget or restore one stream's keys).
    pub fn set_stores(&mut self, stores: Vec<Rc<dyn StateStore>>) {
        self.stores = stores;
    }

    /// Scopes keyed state per source stream, with hand-off through `scope.store`.
    pub fn set_stream_scope(&mut self, scope: StreamScope) {
        for s in &self.stores {
            s.scope_per_stream();
        }
        self.scope = Some(scope);
    }

    /// What wakes the stream-scope checkpointer early (after an EOS).
    pub fn checkpoint_now(&self) -> Rc<Notify> {
        self.scope
            .as_ref()
            .map(|s| s.checkpoint_now.clone())
            .unwrap_or_default()
    }

    /// Whether NOTIFYs load the stream's slice from a checkpoint store first.
    pub fn hands_off(&self) -> bool {
        self.scope.as_ref().is_some_and(|s| s.store.is_some())
    }

    /// Handles a NOTIFY in stream scope: refused at once when another connection owns the
    /// stream, else queued for the take-over task, which answers it.
    pub fn request_takeover(&mut self, conn: ConnId, stream: u64, name: &str, asked: u64) {
        if matches!(self.tracker.owner(stream), Some(o) if o != conn) {
            self.notify_stream(conn, stream, name, asked);
            return;
        }
        if let Some(scope) = &self.scope {
            let _ = scope.requests.send(TakeOver {
                conn,
                stream,
                name: name.to_string(),
                asked,
            });
        }
    }

    /// The store ownership this engine holds on `stream`.
    pub fn owned(&self, stream: u64) -> Option<&Owned> {
        self.scope.as_ref().and_then(|s| s.owned.get(&stream))
    }

    /// Records that this engine claimed `stream` in the store.
    pub fn own(&mut self, stream: u64, owned: Owned) {
        if let Some(s) = &mut self.scope {
            s.owned.insert(stream, owned);
        }
    }

    /// How long a take-over waits for the previous owner to release the stream.
    pub fn takeover_wait(&self) -> std::time::Duration {
        self.scope
            .as_ref()
            .map(|s| s.takeover_wait)
            .unwrap_or_default()
    }

    /// Whether a take-over already waited in vain for a release by `owner`.
    pub fn gave_up_on(&self, owner: &str) -> bool {
        self.scope.as_ref().is_some_and(|s| s.gone.contains(owner))
    }

    /// Records that `owner` did not release a stream within `--takeover-wait`.
    pub fn give_up_on(&mut self, owner: &str) {
        if let Some(s) = &mut self.scope {
            s.gone.insert(owner.to_string());
        }
    }

    /// The owner name written into this engine's slices.
    pub fn stream_owner_name(&self) -> String {
        self.scope
            .as_ref()
            .map(|s| s.owner.clone())
            .unwrap_or_default()
    }

    /// Drops everything this engine holds of `stream` (keys, progress, ownership); returns
    /// the connection that was sending it.
    pub fn forget_stream(&mut self, stream: u64) -> Option<ConnId> {
        self.drop_stream_state(stream);
        let owner = self.tracker.forget(stream);
        self.metrics.in_flight.set(self.tracker.in_flight as i64);
        owner
    }

    /// Drops the keys of `stream` and this engine's claim on it (not its progress).
    fn drop_stream_state(&mut self, stream: u64) {
        for s in &self.stores {
            s.forget_stream(stream);
        }
        if let Some(s) = &mut self.scope {
            s.owned.remove(&stream);
            s.dirty.remove(&stream);
            s.ending.remove(&stream);
        }
    }

    /// Loads a slice's keys and resume point as `stream`'s.
    pub fn restore_slice(&mut self, stream: u64, slice: &Slice) -> Result<(), String> {
        for s in &self.stores {
            if let Some((_, bytes)) = slice.states.iter().find(|(n, _)| *n == s.name()) {
                s.restore_stream(stream, bytes)
                    .map_err(|e| format!("state `{}`: {e}", s.name()))?;
            }
        }
        for (name, _) in &slice.states {
            if !self.stores.iter().any(|s| s.name() == *name) {
                tracing::warn!(
                    "stream `{}`: its slice holds state `{name}`, which the application no longer declares: dropped",
                    slice.stream
                );
            }
        }
        if slice.point != framing::NOTHING_PROCESSED {
            self.tracker
                .restore(stream, slice.stream.clone(), slice.point);
        }
        Ok(())
    }

    /// Forgets a stream whose final slice is in the store, saying why in the log.
    fn forget_released(&mut self, stream: u64, why: &str) {
        let keys = self.stream_keys(stream);
        let name = self
            .tracker
            .stream_point(stream)
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        self.forget_stream(stream);
        tracing::info!(
            "stream `{name}` {why}: its final slice is in the store; its {keys} key(s) dropped here"
        );
    }

    /// Number of keys `stream` holds in every store.
    pub fn stream_keys(&self, stream: u64) -> usize {
        self.stores.iter().map(|s| s.stream_keys(stream)).sum()
    }

    /// Takes a slice of every owned stream that processed something since its last one
    /// (between batches, so consistent), with the condition of its write.
    pub fn take_stream_slices(&mut self) -> Result<Vec<(u64, Slice, Expect)>, String> {
        let Some(scope) = &mut self.scope else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(scope.dirty.len() + scope.ending.len());
        let ending = scope.ending.iter().filter(|s| !scope.dirty.contains(s));
        for &stream in scope.dirty.iter().chain(ending) {
            let (Some(owned), Some((name, last))) =
                (scope.owned.get(&stream), self.tracker.stream_point(stream))
            else {
                continue;
            };
            // Final when the stream ended, nobody sends it any more or the engine stops.
            let released = scope.stopping
                || self.tracker.eos_held(stream)
                || self.tracker.owner(stream).is_none();
            let mut states = Vec::with_capacity(self.stores.len());
            for s in &self.stores {
                let mut b = Vec::new();
                s.snapshot_stream_into(stream, &mut b)?;
                states.push((s.name(), b));
            }
            let slice = Slice {
                stream: name.to_string(),
                point: last.unwrap_or(framing::NOTHING_PROCESSED),
                generation: owned.generation,
                released,
                owner: scope.owner.clone(),
                states,
            };
            out.push((stream, slice, Expect::Version(owned.version.clone())));
        }
        scope.dirty.clear();
        Ok(out)
    }

    /// The slice of `stream` taken in `epoch` under `generation` is written at `version`;
    /// a `released` (final) one lets its EOS be answered.
    pub fn slice_written(
        &mut self,
        stream: u64,
        generation: u64,
        version: String,
        epoch: u64,
        released: bool,
    ) {
        let Some(scope) = &mut self.scope else { return };
        match scope.owned.get_mut(&stream) {
            Some(o) if o.generation == generation => o.version = version,
            _ => return,
        }
        self.tracker.set_stream_durable(stream, epoch);
        if !released {
            return;
        }
        if self.tracker.eos_held(stream) {
            scope.ending.remove(&stream);
            self.tracker.release_eos(stream);
        } else if self.tracker.owner(stream).is_none() {
            // Its connection is gone: the next owner, or its own reconnecting connector,
            // takes it from the store.
            self.forget_released(stream, "released (its connection closed)");
        }
    }

    /// The engine stops: every owned stream's next slice is its final (released) one.
    /// Returns how many streams that is.
    pub fn release_all(&mut self) -> usize {
        let Some(scope) = &mut self.scope else {
            return 0;
        };
        scope.stopping = true;
        let owned: Vec<u64> = scope.owned.keys().copied().collect();
        scope.ending.extend(owned);
        scope.owned.len()
    }

    /// The slice of `stream` could not be written: take it again next time.
    pub fn slice_failed(&mut self, stream: u64) {
        if let Some(scope) = &mut self.scope {
            if scope.owned.contains_key(&stream) {
                scope.dirty.insert(stream);
            }
        }
    }

    /// The store refused this engine's slice of `stream` (generation `generation`): another
    /// engine took it over. Drops the stream's keys and unacknowledged progress here; a
    /// connection still sending it has its messages dropped and its EOS answered at once.
    pub fn fence(&mut self, stream: u64, name: &str, generation: u64, store: &str) {
        if !matches!(self.owned(stream), Some(o) if o.generation == generation) {
            return;
        }
        self.metrics.fenced.inc();
        tracing::error!(
            "fenced out: stream `{name}` was taken over by another engine: its slice in {store} is no longer the one this engine (generation {generation}) wrote, so this engine's newer state of it is refused and dropped; the new owner processes those messages again from its slice"
        );
        self.drop_stream_state(stream);
        self.tracker.fence(stream);
        self.metrics.in_flight.set(self.tracker.in_flight as i64);
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The frame size limit of every connection.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Name of source connector `source`.
    pub fn source_name(&self, source: usize) -> &str {
        &self.sources[source].name
    }

    /// Sink `idx`'s output buffer.
    pub fn sink(&self, idx: usize) -> &SinkOut {
        &self.sinks[idx]
    }

    /// Sink `idx`'s output buffer, to apply what its connection reports.
    pub fn sink_mut(&mut self, idx: usize) -> &mut SinkOut {
        &mut self.sinks[idx]
    }

    /// Every sink's output buffer (in the order of the application file).
    pub fn sinks(&self) -> &[SinkOut] {
        &self.sinks
    }

    /// The output buffer of the sink connector called `name`.
    pub fn sink_named_mut(&mut self, name: &str) -> Option<&mut SinkOut> {
        self.sinks.iter_mut().find(|s| s.name == name)
    }

    /// The HELLO the engine sends to its sinks.
    pub fn sink_hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION.to_string(),
            cookie: self.cookie.clone(),
            program_name: self.app_name.clone(),
            instance_name: self.worker_name.clone(),
        }
    }

    /// Whether the engine may take more input from source connector `source`: its
    /// unacknowledged frame bytes under its `in_flight_bytes`, the buffer of every sink it
    /// writes to under that sink's bound, and the number of unacknowledged source messages
    /// under its bound. When false, its credits are not refilled: that is the back-pressure.
    fn has_capacity(&self, source: usize) -> bool {
        let def = &self.sources[source];
        self.tracker.in_flight < self.max_in_flight
            && self.tracker.in_flight_bytes(source) < def.in_flight_bytes
            && def
                .targets
                .iter()
                .all(|&t| self.sinks[t].buffered() < self.sinks[t].limit())
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
                source,
            },
        );
        (id, wake)
    }

    /// Whether connection `conn` is still registered (its writer has not given up).
    pub fn conn_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Checks a source connector's HELLO; when it is accepted, queues OK with the initial
    /// credits of `source` and lets ACKs flow on the connection. The error is for an ERROR
    /// frame and the log.
    pub fn accept_hello(
        &mut self,
        conn: ConnId,
        source: usize,
        hello: &Hello,
    ) -> Result<(), String> {
        check_hello(hello, &self.cookie)?;
        let credits = self.sources[source].max_credits;
        self.send(
            conn,
            &Frame::Ok {
                initial_credits: credits,
            },
        );
        if let Some(co) = self.conns.get_mut(&conn) {
            co.ready = true;
        }
        Ok(())
    }

    /// Spends one of the connector's credits (for a NOTIFY or MESSAGE); `false` when it had
    /// none left (or the connection is gone).
    #[inline]
    pub fn spend_credit(&mut self, conn: ConnId) -> bool {
        self.conns
            .get_mut(&conn)
            .is_some_and(|co| co.credits.spend())
    }

    /// Queues a frame on a connection (control frames only).
    pub fn send(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let _ = frame.encode(&mut c.out);
            c.wake.notify_one();
        }
    }

    /// Takes the bytes queued for connection `conn`, and whether it must be closed once
    /// they are written; `None` once the connection is removed.
    pub fn take_output(&mut self, conn: ConnId) -> Option<(BytesMut, bool)> {
        self.conns
            .get_mut(&conn)
            .map(|co| (co.out.split(), co.closing))
    }

    /// Closes connection `conn` once its queued frames are written: releases its streams
    /// (for a reconnecting connector) and queues an ERROR frame first when `error` is given.
    pub fn close_conn(&mut self, conn: ConnId, error: Option<String>) {
        let released = self.tracker.release(conn);
        if let Some(scope) = &mut self.scope {
            // Nobody sends them any more: write their final slice (released), so the next
            // owner need not wait for this engine.
            if scope.store.is_some() {
                let owned: Vec<u64> = released
                    .into_iter()
                    .filter(|s| scope.owned.contains_key(s))
                    .collect();
                if !owned.is_empty() {
                    scope.ending.extend(owned);
                    scope.checkpoint_now.notify_one();
                }
            }
        }
        if let Some(message) = error {
            self.send(conn, &Frame::error(message));
        }
        if let Some(co) = self.conns.get_mut(&conn) {
            co.closing = true;
            co.wake.notify_one();
        }
    }

    /// Forgets connection `conn` (its writer finished).
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Whether connection `conn` is still open and owns a stream that ended with EOS and
    /// waits for its final ACK.
    pub fn eos_pending(&self, conn: ConnId) -> bool {
        self.tracker.eos_pending(conn) && self.conns.contains_key(&conn)
    }

    /// Handles NOTIFY on connection `conn`: registers the stream and queues the NOTIFY_ACK.
    /// Returns whether the stream was accepted (refused when another connection owns it).
    pub fn notify_stream(
        &mut self,
        conn: ConnId,
        stream_id: u64,
        stream_name: &str,
        point_of_ref: u64,
    ) -> bool {
        let r = self
            .tracker
            .notify(conn, stream_id, stream_name, point_of_ref);
        if let (true, Some(scope)) = (r.success, &mut self.scope) {
            scope.ending.remove(&stream_id);
        }
        self.send(
            conn,
            &Frame::NotifyAck {
                success: r.success,
                stream_id,
                point_of_ref: r.point,
            },
        );
        r.success
    }

    /// Handles a MESSAGE id: `Ok(true)` when fresh, `Ok(false)` for a replay to drop.
    #[inline]
    pub fn accept_message(
        &mut self,
        conn: ConnId,
        stream_id: u64,
        message_id: u64,
    ) -> Result<bool, AcceptError> {
        self.tracker.accept(conn, stream_id, message_id)
    }

    /// Handles EOS: the stream is freed once its last message is acknowledged (in stream
    /// scope, once its final slice is written: the checkpointer is woken for it).
    pub fn end_stream(&mut self, conn: ConnId, stream_id: u64) -> Result<(), AcceptError> {
        self.tracker.eos(conn, stream_id)?;
        if let Some(scope) = &mut self.scope {
            if scope.store.is_some() && scope.owned.contains_key(&stream_id) {
                self.tracker.hold_eos(stream_id);
                scope.ending.insert(stream_id);
                scope.checkpoint_now.notify_one();
            }
        }
        Ok(())
    }

    /// Runs every pipeline of `source` on one message; outputs go into the sinks' buffers
    /// and are counted into `out`.
    #[inline]
    pub fn run_pipelines(&mut self, source: usize, input: &Input<'_>, out: &mut Emitted) {
        let Core { sources, sinks, .. } = self;
        for p in sources[source].pipelines.iter_mut() {
            let mut em = Emitter {
                sinks: sinks.as_mut_slice(),
                targets: &p.targets,
                event_time: input.event_time,
                count: 0,
                bytes: 0,
                errors: 0,
            };
            (p.runner)(input, &mut em);
            out.count += em.count;
            out.bytes += em.bytes;
            out.errors += em.errors;
        }
    }

    /// Ends a batch of `source`: records one mark per touched stream (`(stream_id, last
    /// fresh id, fresh count, their frame bytes)`) with the sinks' current output ids, marks
    /// the state dirty for the next checkpoint and wakes the sinks that have outputs to write.
    pub fn record_batch(&mut self, source: usize, touched: &[(u64, u64, u64, u64)]) {
        if touched.is_empty() {
            return;
        }
        let targets = &self.sources[source].targets;
        let mut wm = vec![0u64; self.sinks.len()];
        for &t in targets {
            wm[t] = self.sinks[t].last_id();
        }
        let wm: Box<[u64]> = wm.into_boxed_slice();
        for &(sid, last, count, bytes) in touched {
            self.tracker
                .push_mark(sid, last, count, bytes, source, self.epoch, wm.clone());
            if let Some(scope) = &mut self.scope {
                scope.dirty.insert(sid);
            }
        }
        self.dirty = true;
        for &t in targets {
            self.sinks[t].wake_if_pending();
        }
    }

    /// Restores a source stream's durable point from a snapshot.
    pub fn restore_stream(&mut self, stream_id: u64, name: String, point: u64) {
        self.tracker.restore(stream_id, name, point);
    }

    /// After restoring snapshot `epoch`: it is durable, and changes from now on belong to
    /// the next epoch.
    pub fn restored_epoch(&mut self, epoch: u64) {
        self.epoch = epoch + 1;
        self.durable_epoch = Some(epoch);
    }

    /// Whether anything was processed since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The checkpoint epoch that changes made now belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `(stream_id, name, last processed id)` of every source stream that processed
    /// something: what a checkpoint records.
    pub fn processed_points(&self) -> Vec<(u64, String, u64)> {
        self.tracker.processed_points()
    }

    /// Closes the current epoch once its snapshot is taken: changes from now on belong to
    /// the next one, and nothing is dirty.
    pub fn close_epoch(&mut self) {
        self.epoch += 1;
        self.dirty = false;
    }

    /// Records that the snapshot of `epoch` is durable; [`Core::flush_acks`] then releases
    /// the acknowledgements that waited for it.
    pub fn set_durable(&mut self, epoch: u64) {
        self.durable_epoch = Some(epoch);
    }

    /// A snapshot could not be written: the next checkpoint must be taken even if nothing
    /// else changes.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Resolves marks and sends one ACK per connection that has progress to report or
    /// credits to refill (when the engine has capacity).
    pub fn flush_acks(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let before = self.tracker.acked_total;
        let mut ended = Vec::new();
        self.tracker
            .resolve(&self.sinks, self.durable_epoch, &mut scratch, &mut ended);
        if self.hands_off() {
            // Their final slice is in the store: the next owner takes it from there.
            for stream in ended {
                self.forget_released(stream, "ended");
            }
        }
        self.metrics.acked.add(self.tracker.acked_total - before);
        self.metrics.in_flight.set(self.tracker.in_flight as i64);
        // After resolving: what was just acknowledged makes room.
        let cap: Vec<bool> = (0..self.sources.len())
            .map(|s| self.has_capacity(s))
            .collect();
        scratch.sort_unstable_by_key(|x| x.0);
        for (id, c) in self.conns.iter_mut() {
            if c.closing || !c.ready {
                continue;
            }
            let lo = scratch.partition_point(|x| x.0 < *id);
            let hi = scratch.partition_point(|x| x.0 <= *id);
            let pairs = &scratch[lo..hi];
            let credits = if cap[c.source] {
                c.credits.refill().unwrap_or(0)
            } else {
                0
            };
            if pairs.is_empty() && credits == 0 {
                continue;
            }
            self.metrics.credits_granted.add(u64::from(credits));
            framing::encode_ack(&mut c.out, credits, pairs.iter().map(|&(_, s, p)| (s, p)));
            c.wake.notify_one();
        }
        self.scratch = scratch;
    }
}
