//! End-to-end acknowledgement tracking for source streams.
//!
//! Every source stream (global across connections, so a reconnecting connector finds its
//! stream again) keeps its last processed id (for de-duplication), its last fully done id
//! (the NOTIFY_ACK answer) and a queue of *marks*: one per batch, saying "messages up to
//! `id` are done once every sink has acknowledged up to `wm[sink]` and the checkpoint
//! `epoch` is durable". Acks are therefore tracked per batch, not per message.

use std::collections::VecDeque;
use std::time::Instant;

use framing::NOTHING_PROCESSED;
use rustc_hash::FxHashMap;
use telemetry::Histogram;

use crate::sink_buffer::SinkOut;

/// Identifies one source connection for the life of the engine.
pub(crate) type ConnId = u64;

/// One batch of progress on a stream.
#[derive(Debug)]
struct Mark {
    id: u64,
    count: u64,
    /// Frame bytes of those messages, and the source connector they came from.
    bytes: u64,
    source: usize,
    epoch: u64,
    wm: Box<[u64]>,
    /// When the batch came in (for the delivery latency).
    at: Instant,
}

/// What the engine knows about one source stream.
#[derive(Debug)]
pub(crate) struct StreamRec {
    name: String,
    owner: Option<ConnId>,
    /// Highest id processed (messages at or below are dropped as replays).
    pub last_processed: Option<u64>,
    /// Highest id done end to end (and checkpointed when resilient).
    pub done: Option<u64>,
    marks: VecDeque<Mark>,
    /// Highest id received on the owning connection (ACKs never go past it).
    conn_max_received: Option<u64>,
    /// Last point sent to the owning connection (ACKs never go backwards).
    conn_last_acked: Option<u64>,
    /// Whether an ACK pair for this stream went out on the owning connection.
    conn_pair_sent: bool,
    eos: bool,
    /// Stream scope: the last epoch whose slice of this stream is durable.
    durable_epoch: u64,
    /// Stream scope: the EOS waits for the stream's final (released) slice.
    eos_hold: bool,
    /// Stream scope: another engine took the stream over; what still comes is dropped
    /// and never acknowledged, and an EOS is answered at once.
    fenced: bool,
}

/// Result of a NOTIFY.
pub(crate) struct NotifyResult {
    pub success: bool,
    pub point: u64,
}

/// Why a MESSAGE or EOS was refused.
pub(crate) enum AcceptError {
    NotNotified(u64),
}

impl std::fmt::Display for AcceptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptError::NotNotified(id) => write!(
                f,
                "MESSAGE or EOS on stream {id} without a successful NOTIFY on this connection"
            ),
        }
    }
}

/// All source streams and their pending marks.
#[derive(Default)]
pub(crate) struct AckTracker {
    streams: FxHashMap<u64, StreamRec>,
    /// Source messages processed but not yet acknowledged.
    pub in_flight: u64,
    /// Frame bytes of those messages, per source connector (index).
    in_flight_bytes: Vec<u64>,
    /// Source messages acknowledged so far (for metrics).
    pub acked_total: u64,
    /// Time from MESSAGE in to every sink's acknowledgement, per message.
    pub latency: Histogram,
}

impl AckTracker {
    /// A tracker timing each acknowledged message into `latency`.
    pub fn new(latency: Histogram) -> Self {
        AckTracker {
            latency,
            ..AckTracker::default()
        }
    }

    /// Restores a stream's durable point from a snapshot.
    pub fn restore(&mut self, stream_id: u64, name: String, point: u64) {
        self.streams.insert(
            stream_id,
            StreamRec {
                name,
                owner: None,
                last_processed: Some(point),
                done: Some(point),
                marks: VecDeque::new(),
                conn_max_received: None,
                conn_last_acked: None,
                conn_pair_sent: false,
                eos: false,
                durable_epoch: 0,
                eos_hold: false,
                fenced: false,
            },
        );
    }

    /// Stream scope: the EOS of `stream_id` is answered only after [`AckTracker::release_eos`].
    pub fn hold_eos(&mut self, stream_id: u64) {
        if let Some(r) = self.streams.get_mut(&stream_id) {
            r.eos_hold = true;
        }
    }

    /// Stream scope: the final slice of `stream_id` is durable; its EOS may be answered.
    pub fn release_eos(&mut self, stream_id: u64) {
        if let Some(r) = self.streams.get_mut(&stream_id) {
            r.eos_hold = false;
        }
    }

    /// Whether `stream_id` ended (EOS) and waits for its final slice.
    pub fn eos_held(&self, stream_id: u64) -> bool {
        self.streams
            .get(&stream_id)
            .is_some_and(|r| r.eos && r.eos_hold)
    }

    /// Stream scope: another engine owns `stream_id` now. Its pending marks are dropped
    /// unacknowledged (the new owner processes those messages again); while a connection
    /// still sends it, its messages are dropped and its EOS answered at once. A stream no
    /// connection owns is forgotten.
    pub fn fence(&mut self, stream_id: u64) {
        if self.owner(stream_id).is_none() {
            self.forget(stream_id);
            return;
        }
        let Some(rec) = self.streams.get_mut(&stream_id) else {
            return;
        };
        let marks = std::mem::take(&mut rec.marks);
        rec.fenced = true;
        rec.eos_hold = false;
        self.uncount(&marks);
    }

    /// Takes dropped (never acknowledged) marks out of the in-flight counts.
    fn uncount(&mut self, marks: &VecDeque<Mark>) {
        for m in marks {
            self.in_flight -= m.count;
            if let Some(b) = self.in_flight_bytes.get_mut(m.source) {
                *b -= m.bytes;
            }
        }
    }

    /// Stream scope: the slice of `stream_id` taken in `epoch` is durable.
    pub fn set_stream_durable(&mut self, stream_id: u64, epoch: u64) {
        if let Some(r) = self.streams.get_mut(&stream_id) {
            r.durable_epoch = r.durable_epoch.max(epoch);
        }
    }

    /// Stream name and last processed id of `stream_id` (what its slice records).
    pub fn stream_point(&self, stream_id: u64) -> Option<(&str, Option<u64>)> {
        self.streams
            .get(&stream_id)
            .map(|r| (r.name.as_str(), r.last_processed))
    }

    /// The connection that owns `stream_id`, if any.
    pub fn owner(&self, stream_id: u64) -> Option<ConnId> {
        self.streams.get(&stream_id).and_then(|r| r.owner)
    }

    /// Forgets `stream_id` entirely (its state moved to another engine): its pending marks
    /// are dropped unacknowledged, so their messages are processed again by the stream's
    /// next owner. Returns the connection that owned it.
    pub fn forget(&mut self, stream_id: u64) -> Option<ConnId> {
        let rec = self.streams.remove(&stream_id)?;
        self.uncount(&rec.marks);
        rec.owner
    }

    /// `(stream_id, name, last processed id)` of every stream that processed something: what
    /// a checkpoint records.
    pub fn processed_points(&self) -> Vec<(u64, String, u64)> {
        self.streams
            .iter()
            .filter_map(|(id, s)| s.last_processed.map(|p| (*id, s.name.clone(), p)))
            .collect()
    }

    /// Handles NOTIFY from connection `conn`, which announced the stream with `asked` as
    /// its point of reference.
    ///
    /// The answer is the last durably processed message id. When nothing of the stream was
    /// processed, it depends on the connector's own convention, told by `asked`: our
    /// connectors announce `u64::MAX` and get `u64::MAX` ("nothing processed") back, so
    /// that message id 0 stays usable (Kafka offsets); Wallaroo's Python client announces
    /// its position (a byte offset) and seeks to whatever point comes back, so it gets 0,
    /// the start, which is what Wallaroo itself answered.
    pub fn notify(&mut self, conn: ConnId, stream_id: u64, name: &str, asked: u64) -> NotifyResult {
        let rec = self.streams.entry(stream_id).or_insert_with(|| StreamRec {
            name: name.to_string(),
            owner: None,
            last_processed: None,
            done: None,
            marks: VecDeque::new(),
            conn_max_received: None,
            conn_last_acked: None,
            conn_pair_sent: false,
            eos: false,
            durable_epoch: 0,
            eos_hold: false,
            fenced: false,
        });
        let nothing = if asked == NOTHING_PROCESSED {
            NOTHING_PROCESSED
        } else {
            0
        };
        let point = rec.done.unwrap_or(nothing);
        if matches!(rec.owner, Some(o) if o != conn) {
            return NotifyResult {
                success: false,
                point,
            };
        }
        rec.owner = Some(conn);
        rec.eos = false;
        rec.eos_hold = false;
        rec.fenced = false;
        rec.conn_max_received = None;
        rec.conn_last_acked = rec.done;
        rec.conn_pair_sent = false;
        NotifyResult {
            success: true,
            point,
        }
    }

    /// Handles a MESSAGE id: `Ok(true)` when fresh, `Ok(false)` for a replay to drop.
    #[inline]
    pub fn accept(&mut self, conn: ConnId, stream_id: u64, id: u64) -> Result<bool, AcceptError> {
        let rec = match self.streams.get_mut(&stream_id) {
            Some(r) if r.owner == Some(conn) && !r.eos => r,
            _ => return Err(AcceptError::NotNotified(stream_id)),
        };
        if rec.fenced {
            return Ok(false);
        }
        if !matches!(rec.conn_max_received, Some(m) if id <= m) {
            rec.conn_max_received = Some(id);
        }
        match rec.last_processed {
            Some(last) if id <= last => Ok(false),
            _ => {
                rec.last_processed = Some(id);
                Ok(true)
            }
        }
    }

    /// Handles EOS: the stream is freed once its last message is acknowledged.
    pub fn eos(&mut self, conn: ConnId, stream_id: u64) -> Result<(), AcceptError> {
        match self.streams.get_mut(&stream_id) {
            Some(r) if r.owner == Some(conn) && !r.eos => {
                r.eos = true;
                Ok(())
            }
            _ => Err(AcceptError::NotNotified(stream_id)),
        }
    }

    /// Records a batch of `count` fresh messages (`bytes` of frames from source connector
    /// `source`) ending at `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn push_mark(
        &mut self,
        stream_id: u64,
        id: u64,
        count: u64,
        bytes: u64,
        source: usize,
        epoch: u64,
        wm: Box<[u64]>,
    ) {
        if let Some(rec) = self.streams.get_mut(&stream_id) {
            rec.marks.push_back(Mark {
                id,
                count,
                bytes,
                source,
                epoch,
                wm,
                at: Instant::now(),
            });
            self.in_flight += count;
            if self.in_flight_bytes.len() <= source {
                self.in_flight_bytes.resize(source + 1, 0);
            }
            self.in_flight_bytes[source] += bytes;
        }
    }

    /// Frame bytes from source connector `source` processed but not yet acknowledged.
    pub fn in_flight_bytes(&self, source: usize) -> u64 {
        self.in_flight_bytes.get(source).copied().unwrap_or(0)
    }

    /// Whether `conn` owns a stream that ended with EOS and still waits for its final ACK.
    pub fn eos_pending(&self, conn: ConnId) -> bool {
        self.streams
            .values()
            .any(|r| r.owner == Some(conn) && r.eos)
    }

    /// Releases every stream owned by a closed connection (marks stay: a reconnecting
    /// connector is acknowledged once they resolve); returns their ids.
    pub fn release(&mut self, conn: ConnId) -> Vec<u64> {
        let mut released = Vec::new();
        for (id, rec) in self.streams.iter_mut() {
            if rec.owner == Some(conn) {
                rec.owner = None;
                rec.eos = false;
                rec.eos_hold = false;
                released.push(*id);
            }
        }
        released
    }

    /// Pops every resolved mark and appends `(conn, stream_id, point)` for each ACK pair
    /// to send, and to `ended` the streams whose EOS was answered. `durable_epoch` is
    /// `None` when the engine runs without checkpoints (a stream's own durable epoch counts
    /// too, in stream scope).
    pub fn resolve(
        &mut self,
        sinks: &[SinkOut],
        durable_epoch: Option<u64>,
        out: &mut Vec<(ConnId, u64, u64)>,
        ended: &mut Vec<u64>,
    ) {
        for (sid, rec) in self.streams.iter_mut() {
            while let Some(m) = rec.marks.front() {
                let durable =
                    !matches!(durable_epoch, Some(d) if m.epoch > d.max(rec.durable_epoch));
                let delivered = m.wm.iter().zip(sinks).all(|(w, s)| s.acked() >= *w);
                if !(durable && delivered) {
                    break;
                }
                rec.done = Some(m.id);
                self.in_flight -= m.count;
                if let Some(b) = self.in_flight_bytes.get_mut(m.source) {
                    *b -= m.bytes;
                }
                self.acked_total += m.count;
                self.latency.observe_n(m.at.elapsed(), m.count);
                rec.marks.pop_front();
            }
            let Some(conn) = rec.owner else { continue };
            // Never past what this connection sent, never backwards, never u64::MAX.
            if let (Some(done), Some(max)) = (rec.done, rec.conn_max_received) {
                let point = done.min(max);
                if !matches!(rec.conn_last_acked, Some(l) if point <= l) {
                    rec.conn_last_acked = Some(point);
                    rec.conn_pair_sent = true;
                    out.push((conn, *sid, point));
                }
            }
            if rec.eos
                && !rec.eos_hold
                && rec.marks.is_empty()
                && (rec.fenced || rec.conn_last_acked >= rec.conn_max_received)
            {
                // EOS is answered with the final point. When an ACK pair already carried
                // it, not again: the connector may have sent EOS before that ACK reached it
                // and close the stream on it (Wallaroo's client then fails on a second
                // one). When none did (EOS right after NOTIFY, the point known from
                // NOTIFY_ACK), the connector still waits for it.
                if let (false, Some(last)) = (rec.conn_pair_sent, rec.conn_last_acked) {
                    out.push((conn, *sid, last));
                }
                rec.owner = None;
                rec.eos = false;
                ended.push(*sid);
            }
        }
    }
}
