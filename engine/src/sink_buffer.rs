//! The bounded buffer of one sink's outputs: encoded MESSAGE frames kept until the sink
//! acknowledges them, sent within the sink's credits, resent after a reconnect, saved in
//! checkpoints.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use application::Endpoint;
use bytes::{Bytes, BytesMut};
use framing::NOTHING_PROCESSED;
use tokio::sync::Notify;

/// Size of a fresh output buffer.
pub(crate) const CHUNK: usize = 256 * 1024;

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

/// Byte offset just after `n` frames starting at `off`.
fn skip_frames(b: &[u8], mut off: usize, n: u64) -> usize {
    for _ in 0..n {
        let len = u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
        off += 4 + len;
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
    pub pending: BytesMut,
    pending_first: u64,
    /// Next output id to assign (ids start at 1).
    pub next_id: u64,
    chunks: VecDeque<Chunk>,
    chunk_bytes: usize,
    /// Last id written on the current connection.
    pub(crate) sent: u64,
    /// Last id the sink acknowledged.
    pub acked: u64,
    /// Credits the sink currently grants.
    pub(crate) credits: u64,
    /// Wakes the writer task.
    pub wake: Rc<Notify>,
    pool: Pool,
}

impl SinkOut {
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
        }
    }

    /// Bytes held for this sink (the bound that makes back-pressure).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.chunk_bytes
    }

    fn seal(&mut self) {
        if !self.pending.is_empty() {
            let fresh = self
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(CHUNK));
            let full = std::mem::replace(&mut self.pending, fresh);
            let bytes = Bytes::from_owner(Pooled {
                buf: full,
                pool: self.pool.clone(),
            });
            self.chunk_bytes += bytes.len();
            self.chunks.push_back(Chunk {
                first: self.pending_first,
                count: self.next_id - self.pending_first,
                bytes,
            });
            self.pending_first = self.next_id;
        }
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
        let mut off = 0;
        let mut n = 0;
        while off < frames.len() {
            let rest = &frames[off..];
            if rest.len() < 4 {
                return Err("truncated output frame".into());
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let body = rest.get(4..4 + len).ok_or("truncated output frame")?;
            if body.len() < 27 || body[0] != framing::Tag::Message as u8 {
                return Err("saved output is not a MESSAGE frame".into());
            }
            let event_time = i64::from_be_bytes(body[17..25].try_into().unwrap_or_default());
            let klen = u16::from_be_bytes([body[25], body[26]]) as usize;
            let key = body.get(27..27 + klen).ok_or("truncated output key")?;
            let payload = &body[27 + klen..];
            framing::encode_message(
                &mut self.pending,
                self.stream_id,
                self.next_id,
                event_time,
                key,
                payload,
            )
            .map_err(|e| e.to_string())?;
            self.next_id += 1;
            n += 1;
            off += 4 + len;
        }
        Ok(n)
    }

    /// Applies a sink acknowledgement (never beyond what was produced, never backwards).
    pub(crate) fn on_ack(&mut self, point: u64) {
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
    use bytes::Buf;

    fn sink() -> SinkOut {
        SinkOut::new(
            "s".into(),
            Endpoint::Unix("/nonexistent".into()),
            "app/s@1".into(),
        )
    }

    fn emit(s: &mut SinkOut, payload: &[u8]) {
        framing::encode_message(&mut s.pending, s.stream_id, s.next_id, 0, b"", payload).unwrap();
        s.next_id += 1;
    }

    fn ids(slices: &[Bytes]) -> Vec<u64> {
        let mut v = Vec::new();
        for b in slices {
            let mut b = b.clone();
            while b.has_remaining() {
                let len = b.get_u32() as usize;
                let f = b.split_to(len);
                v.push(u64::from_be_bytes(f[9..17].try_into().unwrap()));
            }
        }
        v
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
        let payloads: Vec<u8> = out
            .iter()
            .flat_map(|b| {
                let mut b = b.clone();
                let mut v = Vec::new();
                while b.has_remaining() {
                    let len = b.get_u32() as usize;
                    v.push(b.split_to(len)[27]);
                }
                v
            })
            .collect();
        assert_eq!(payloads, vec![2, 3, 4, 5, 6]);
        assert!(t.replay_frames(&saved[..saved.len() - 1]).is_err());
    }
}
