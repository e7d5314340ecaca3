//! The bounded buffer of one sink's outputs: encoded MESSAGE frames kept until the sink
//! acknowledges them, sent within the sink's credits, resent after a reconnect, saved in
//! checkpoints.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use application::Endpoint;
use bytes::{Bytes, BytesMut};
use framing::{FrameError, MessageView, NOTHING_PROCESSED};
use tokio::sync::Notify;

/// Size of a fresh output buffer.
const CHUNK: usize = 256 * 1024;

/// Output buffers handed back once the sink acknowledged their frames, so the data path
/// reuses warm memory instead of faulting in fresh pages for every batch.
type Pool = Arc<Mutex<Vec<BytesMut>>>;

/// Owner of a sealed buffer: returns it to the pool when the last slice of it is dropped.
struct Pooled {
    buf: BytesMut,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut b = std::mem::take(&mut self.buf);
        if b.capacity() <= 4 * CHUNK {
            b.clear();
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 64 {
                pool.push(b);
            }
        }
    }
}

/// Encoded MESSAGE frames for consecutive output ids.
struct Chunk {
    first: u64,
    count: u64,
    bytes: Bytes,
}

impl Chunk {
    fn last(&self) -> u64 {
        self.first + self.count - 1
    }
}

/// Byte offset just after `n` frames starting at `off` (the end of `b` if it holds fewer).
fn skip_frames(b: &[u8], mut off: usize, n: u64) -> usize {
    for _ in 0..n {
        match b
            .get(off..)
            .map(|rest| framing::split_frame(rest, usize::MAX))
        {
            Some(Ok(Some((_, used)))) => off += used,
            _ => return b.len(),
        }
    }
    off
}

/// One sink connector's output stream: every output the sink has not acknowledged yet.
pub(crate) struct SinkOut {
    /// Connector name.
    pub name: String,
    /// Where the sink listens.
    pub endpoint: Endpoint,
    /// Output stream id (`stream_id_for(stream_name)`).
    pub stream_id: u64,
    /// Output stream name, unique per engine incarnation.
    pub stream_name: String,
    /// Outputs encoded since the writer last ran (frames for ids `pending_first..next_id`).
    pending: BytesMut,
    pending_first: u64,
    /// Next output id to assign (ids start at 1).
    next_id: u64,
    chunks: VecDeque<Chunk>,
    chunk_bytes: usize,
    /// Last id written on the current connection.
    sent: u64,
    /// Last id the sink acknowledged.
    acked: u64,
    /// Credits the sink currently grants.
    credits: u64,
    /// Wakes the writer task.
    wake: Rc<Notify>,
    pool: Pool,
    /// Bound of [`SinkOut::buffered`]: the sources writing here get no credits at it.
    limit: usize,
}

impl SinkOut {
    /// An empty output stream `stream_name` for sink connector `name` at `endpoint`.
    pub fn new(name: String, endpoint: Endpoint, stream_name: String) -> Self {
        SinkOut {
            name,
            endpoint,
            stream_id: framing::stream_id_for(&stream_name),
            stream_name,
            pending: BytesMut::with_capacity(CHUNK),
            pending_first: 1,
            next_id: 1,
            chunks: VecDeque::new(),
            chunk_bytes: 0,
            sent: 0,
            acked: 0,
            credits: 0,
            wake: Rc::new(Notify::new()),
            pool: Pool::default(),
            limit: application::DEFAULT_IN_FLIGHT_BYTES as usize,
        }
    }

    /// Sets the bound of the buffer (the sink's `in_flight_bytes`).
    pub fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes.max(1);
    }

    /// The bound of the buffer, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held for this sink (the bound that makes back-pressure).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.chunk_bytes
    }

    /// Encodes one output as a MESSAGE frame with the next output id. Fails (and assigns no
    /// id) only when the key is longer than a `short_bytes` field holds.
    #[inline]
    pub fn emit(&mut self, event_time: i64, key: &[u8], payload: &[u8]) -> Result<(), FrameError> {
        let need = framing::message_frame_len(key.len(), payload.len());
        if self.pending.capacity() - self.pending.len() < need {
            self.pending.reserve(need.max(CHUNK));
        }
        framing::encode_message(
            &mut self.pending,
            self.stream_id,
            self.next_id,
            event_time,
            key,
            payload,
        )?;
        self.next_id += 1;
        Ok(())
    }

    /// The last output id assigned (0 before the first output).
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// The last output id the sink acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The notifier that wakes this sink's writer task.
    pub fn waker(&self) -> Rc<Notify> {
        self.wake.clone()
    }

    /// Wakes the writer task.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Wakes the writer task if outputs were encoded since it last ran.
    pub fn wake_if_pending(&self) {
        if !self.pending.is_empty() {
            self.wake.notify_one();
        }
    }

    /// A connection was established: the sink grants `credits` and has durably delivered
    /// up to `point`; everything after it is (re)sent.
    pub fn on_connected(&mut self, credits: u64, point: u64) {
        self.credits = credits;
        self.on_ack(point);
        self.sent = self.acked;
    }

    /// Applies an ACK frame from the sink: its credits, and the points of its pairs that
    /// are for this sink's stream. Wakes the writer; returns the credits now available.
    pub fn on_sink_ack(&mut self, credits: u32, acks: &[(u64, u64)]) -> u64 {
        self.credits += u64::from(credits);
        for &(stream, point) in acks {
            if stream == self.stream_id {
                self.on_ack(point);
            }
        }
        self.wake.notify_one();
        self.credits
    }

    /// The connection was lost: nothing is in flight any more and no credit is left; what
    /// the sink did not acknowledge is resent on the next connection.
    pub fn on_disconnected(&mut self) {
        self.sent = self.acked;
        self.credits = 0;
    }

    fn seal(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = if self.pending.len() <= self.pending.capacity() / 2 {
            // Little was encoded since the writer last ran (a slow sink wakes it often):
            // copied at its size, so that the memory held follows the bytes buffered rather
            // than one whole buffer per wake-up; the buffer is kept for what comes next.
            let bytes = Bytes::copy_from_slice(&self.pending);
            self.pending.clear();
            bytes
        } else {
            let fresh = self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(CHUNK));
            let full = std::mem::replace(&mut self.pending, fresh);
            Bytes::from_owner(Pooled {
                buf: full,
                pool: self.pool.clone(),
            })
        };
        self.chunk_bytes += bytes.len();
        self.chunks.push_back(Chunk {
            first: self.pending_first,
            count: self.next_id - self.pending_first,
            bytes,
        });
        self.pending_first = self.next_id;
    }

    /// Slices of encoded frames to write next: everything after `sent`, within credits.
    pub(crate) fn take_sendable(&mut self, out: &mut Vec<Bytes>) {
        self.seal();
        for c in &self.chunks {
            if self.credits == 0 {
                break;
            }
            if c.last() <= self.sent {
                continue;
            }
            let skip = self.sent.saturating_sub(c.first - 1);
            let start = if skip == 0 {
                0
            } else {
                skip_frames(&c.bytes, 0, skip)
            };
            let left = c.count - skip;
            let n = left.min(self.credits);
            let end = if n == left {
                c.bytes.len()
            } else {
                skip_frames(&c.bytes, start, n)
            };
            out.push(c.bytes.slice(start..end));
            self.sent += n;
            self.credits -= n;
        }
    }

    /// Appends every encoded output the sink has not acknowledged (for a checkpoint).
    pub fn unacked_frames(&self, out: &mut Vec<u8>) {
        for c in &self.chunks {
            if c.last() <= self.acked {
                continue;
            }
            let skip = self.acked.saturating_sub(c.first - 1);
            let start = if skip == 0 {
                0
            } else {
                skip_frames(&c.bytes, 0, skip)
            };
            out.extend_from_slice(&c.bytes[start..]);
        }
        out.extend_from_slice(&self.pending);
    }

    /// Re-emits outputs saved by a checkpoint (MESSAGE frames of an earlier incarnation)
    /// with this incarnation's stream id and fresh ids. Returns how many.
    pub fn replay_frames(&mut self, frames: &[u8]) -> Result<u64, String> {
        let mut rest = frames;
        let mut n = 0;
        while !rest.is_empty() {
            let (body, used) = framing::split_frame(rest, usize::MAX)
                .ok()
                .flatten()
                .ok_or("truncated output frame")?;
            let m = MessageView::from_frame_body(body)
                .map_err(|e| format!("saved output: {e}"))?
                .ok_or("saved output is not a MESSAGE frame")?;
            framing::encode_message(
                &mut self.pending,
                self.stream_id,
                self.next_id,
                m.event_time,
                m.key,
                m.payload,
            )
            .map_err(|e| e.to_string())?;
            self.next_id += 1;
            n += 1;
            rest = &rest[used..];
        }
        Ok(n)
    }

    /// Applies a sink acknowledgement (never beyond what was produced, never backwards).
    fn on_ack(&mut self, point: u64) {
        if point == NOTHING_PROCESSED || point <= self.acked {
            return;
        }
        self.acked = point.min(self.next_id - 1);
        while let Some(c) = self.chunks.front() {
            if c.last() > self.acked {
                break;
            }
            self.chunk_bytes -= c.bytes.len();
            self.chunks.pop_front();
        }
        if self.sent < self.acked {
            self.sent = self.acked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> SinkOut {
        SinkOut::new(
            "s".into(),
            Endpoint::Unix("/nonexistent".into()),
            "app/s@1".into(),
        )
    }

    fn emit(s: &mut SinkOut, payload: &[u8]) {
        s.emit(0, b"", payload).unwrap();
    }

    /// Every MESSAGE in the written slices.
    fn messages(slices: &[Bytes]) -> Vec<MessageView<'_>> {
        let mut v = Vec::new();
        for b in slices {
            let mut rest = &b[..];
            while let Some((body, used)) = framing::split_frame(rest, usize::MAX).unwrap() {
                v.push(MessageView::from_frame_body(body).unwrap().unwrap());
                rest = &rest[used..];
            }
            assert!(rest.is_empty(), "slices hold whole frames");
        }
        v
    }

    fn ids(slices: &[Bytes]) -> Vec<u64> {
        messages(slices).iter().map(|m| m.message_id).collect()
    }

    #[test]
    fn sends_within_credits_and_resends_after_reconnect() {
        let mut s = sink();
        for i in 0..10u8 {
            emit(&mut s, &[i; 3]);
        }
        s.credits = 4;
        let mut out = Vec::new();
        s.take_sendable(&mut out);
        assert_eq!(ids(&out), vec![1, 2, 3, 4]);
        out.clear();
        s.credits = 100;
        s.take_sendable(&mut out);
        assert_eq!(ids(&out), vec![5, 6, 7, 8, 9, 10]);
        s.on_ack(6);
        assert_eq!(s.acked, 6);
        // reconnect: resend from acked
        s.sent = s.acked;
        out.clear();
        s.take_sendable(&mut out);
        assert_eq!(ids(&out), vec![7, 8, 9, 10]);
        s.on_ack(10);
        assert_eq!(s.buffered(), 0);
        s.on_ack(99);
        assert_eq!(s.acked, 10, "never beyond what was produced");
    }

    #[test]
    fn small_and_large_runs_of_outputs_are_sent_alike() {
        let mut s = sink();
        s.credits = u64::MAX;
        let mut out = Vec::new();
        let mut want = Vec::new();
        // Runs under half a buffer are copied at their size, larger ones keep their buffer.
        for run in [3u64, 2000, 1, 1500, 7] {
            for _ in 0..run {
                emit(&mut s, &[7u8; 100]);
                want.push(s.last_id());
            }
            s.take_sendable(&mut out);
        }
        assert_eq!(ids(&out), want);
        assert_eq!(s.chunks.len(), 5);
        assert_eq!(
            s.buffered(),
            out.iter().map(|b| b.len()).sum::<usize>(),
            "buffered counts the bytes held"
        );
        s.on_ack(s.last_id());
        assert_eq!(s.buffered(), 0);
        assert!(s.chunks.is_empty());
    }

    #[test]
    fn unacked_outputs_survive_a_checkpoint_round_trip() {
        let mut s = sink();
        for i in 0..6u8 {
            emit(&mut s, &[i; 5]);
        }
        s.credits = 3;
        let mut out = Vec::new();
        s.take_sendable(&mut out);
        emit(&mut s, &[6; 5]);
        s.on_ack(2);
        let mut saved = Vec::new();
        s.unacked_frames(&mut saved);
        let mut t = SinkOut::new("s".into(), Endpoint::Unix("/x".into()), "app/s@2".into());
        assert_eq!(t.replay_frames(&saved).unwrap(), 5);
        t.credits = 100;
        let mut out = Vec::new();
        t.take_sendable(&mut out);
        assert_eq!(ids(&out), vec![1, 2, 3, 4, 5]);
        let payloads: Vec<u8> = messages(&out).iter().map(|m| m.payload[0]).collect();
        assert_eq!(payloads, vec![2, 3, 4, 5, 6]);
        assert!(t.replay_frames(&saved[..saved.len() - 1]).is_err());
    }
}
