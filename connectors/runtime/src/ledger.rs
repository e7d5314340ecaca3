//! The one record of what a source has sent and the engine has not acknowledged yet.
//!
//! Per stream, in the order sent: the message id, where its encoded MESSAGE frame lies (to
//! replay it after a reconnect) and the connector's upstream commit token (handed back once
//! the engine acknowledged the message). Frames are not copied or counted one by one: an
//! entry points into one of the written chunks the ledger keeps until its last entry is
//! released. An entry without a frame (a record set aside in the dead-letter directory, or
//! one the engine had already processed) needs no acknowledgement: its token is released as
//! soon as everything before it is.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use telemetry::Histogram;

/// Where a frame lies: bytes `start..start + len` of chunk number `chunk`.
#[derive(Debug, Clone, Copy)]
struct FrameAt {
    chunk: u64,
    start: u32,
    len: u32,
}

/// One sent record.
#[derive(Debug)]
struct Entry<T> {
    id: u64,
    /// `None`: nothing to wait for (set aside, or already processed by the engine).
    frame: Option<FrameAt>,
    token: T,
}

/// Unacknowledged records of one stream, oldest first.
#[derive(Debug)]
pub struct Ledger<T> {
    entries: VecDeque<Entry<T>>,
    /// Written chunks still holding frames of `entries`, with their numbers and when their
    /// records were read upstream.
    chunks: VecDeque<(u64, Bytes, Instant)>,
    /// Entries that carry a frame (the ones the engine still has to acknowledge).
    waiting: usize,
    /// Bytes of those entries' frames (what `in_flight_bytes` bounds).
    bytes: usize,
    /// Highest id the engine acknowledged on this stream.
    acked: Option<u64>,
    /// Where the time from read to acknowledgement of each released frame goes.
    latency: Histogram,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
            chunks: VecDeque::new(),
            waiting: 0,
            bytes: 0,
            acked: None,
            latency: Histogram::default(),
        }
    }
}

impl<T> Ledger<T> {
    /// A ledger for a stream the engine has processed up to `acked`, recording into
    /// `latency` how long each acknowledged record took from its read.
    pub fn new(acked: Option<u64>, latency: Histogram) -> Self {
        Ledger {
            acked,
            latency,
            ..Ledger::default()
        }
    }

    /// Records a message sent as bytes `start..start + len` of `chunk`, the written chunk
    /// number `chunk_no` (numbers increase; one chunk may hold frames of several streams),
    /// whose records were read upstream at `read_at`.
    #[allow(clippy::too_many_arguments)]
    pub fn push_sent(
        &mut self,
        id: u64,
        chunk_no: u64,
        chunk: &Bytes,
        read_at: Instant,
        start: usize,
        len: usize,
        token: T,
    ) {
        if self.chunks.back().is_none_or(|(n, _, _)| *n != chunk_no) {
            self.chunks.push_back((chunk_no, chunk.clone(), read_at));
        }
        self.waiting += 1;
        self.bytes += len;
        let frame = FrameAt {
            chunk: chunk_no,
            start: start as u32,
            len: len as u32,
        };
        self.entries.push_back(Entry {
            id,
            frame: Some(frame),
            token,
        });
    }

    /// Records a message that needs no acknowledgement (set aside, or already processed).
    pub fn push_done(&mut self, id: u64, token: T) {
        self.entries.push_back(Entry {
            id,
            frame: None,
            token,
        });
    }

    /// The engine acknowledged every id up to `point`: moves the tokens that are now
    /// released (in order) into `out` and returns how many acknowledged frames that was.
    pub fn ack(&mut self, point: u64, out: &mut Vec<T>) -> usize {
        if self.acked.is_none_or(|a| a < point) {
            self.acked = Some(point);
        }
        self.release(out)
    }

    /// Moves the leading entries that need nothing more into `out`; returns how many of
    /// them had been sent with a frame.
    pub fn release(&mut self, out: &mut Vec<T>) -> usize {
        let mut framed = 0;
        // Released frames of one chunk at a time, for the latency histogram.
        let mut run: Option<(u64, u64)> = None;
        while let Some(e) = self.entries.front() {
            let done = e.frame.is_none() || self.acked.is_some_and(|a| e.id <= a);
            if !done {
                break;
            }
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            if let Some(f) = e.frame {
                framed += 1;
                match &mut run {
                    Some((chunk, n)) if *chunk == f.chunk => *n += 1,
                    _ => {
                        self.observe(run);
                        run = Some((f.chunk, 1));
                    }
                }
                self.bytes -= f.len as usize;
            }
            out.push(e.token);
        }
        self.observe(run);
        self.waiting -= framed;
        // Chunks before the first frame still waiting are no longer needed.
        let keep_from = self
            .entries
            .iter()
            .find_map(|e| e.frame.map(|f| f.chunk))
            .unwrap_or(u64::MAX);
        while self.chunks.front().is_some_and(|(n, _, _)| *n < keep_from) {
            self.chunks.pop_front();
        }
        framed
    }

    /// Records the latency of `n` acknowledged frames of chunk `chunk`.
    fn observe(&self, run: Option<(u64, u64)>) {
        let Some((chunk, n)) = run else { return };
        if let Some((_, _, read_at)) = self.chunks.iter().find(|(c, _, _)| *c == chunk) {
            self.latency.observe_n(read_at.elapsed(), n);
        }
    }

    /// Highest id the engine acknowledged.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// Frames still waiting for the engine, oldest first (to replay after a reconnect).
    pub fn unacked_frames(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.entries.iter().filter_map(|e| {
            let f = e.frame?;
            let (_, chunk, _) = self.chunks.iter().find(|(n, _, _)| *n == f.chunk)?;
            let start = f.start as usize;
            Some(chunk.slice(start..start + f.len as usize))
        })
    }

    /// Messages sent and not acknowledged.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Bytes of the frames sent and not acknowledged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is left (no message waiting, no token held back).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(l: &mut Ledger<u64>, ids: std::ops::RangeInclusive<u64>, chunk_no: u64) {
        let chunk = Bytes::from(ids.clone().map(|i| i as u8).collect::<Vec<u8>>());
        for (at, id) in ids.enumerate() {
            l.push_sent(id, chunk_no, &chunk, Instant::now(), at, 1, id * 10);
        }
    }

    #[test]
    fn tokens_come_back_in_order_and_only_up_to_the_point() {
        let mut l = Ledger::new(None, Histogram::default());
        sent(&mut l, 1..=4, 0);
        let mut out = Vec::new();
        assert_eq!(l.ack(2, &mut out), 2);
        assert_eq!(out, vec![10, 20]);
        assert_eq!(l.waiting(), 2);
        let replay: Vec<Bytes> = l.unacked_frames().collect();
        assert_eq!(
            replay,
            vec![Bytes::from_static(&[3]), Bytes::from_static(&[4])]
        );
        out.clear();
        assert_eq!(l.ack(1, &mut out), 0, "an older point changes nothing");
        assert!(out.is_empty());
        assert_eq!(l.acked(), Some(2));
    }

    #[test]
    fn every_acknowledged_frame_is_timed_once() {
        let latency = Histogram::default();
        let mut l = Ledger::new(None, latency.clone());
        sent(&mut l, 1..=3, 0);
        sent(&mut l, 4..=5, 1);
        l.push_done(6, 60);
        let mut out = Vec::new();
        l.ack(4, &mut out);
        assert_eq!(latency.count(), 4);
        l.ack(6, &mut out);
        assert_eq!(latency.count(), 5, "set-aside records are not timed");
    }

    #[test]
    fn chunks_are_kept_while_one_of_their_frames_waits() {
        let mut l = Ledger::new(None, Histogram::default());
        sent(&mut l, 1..=2, 0);
        sent(&mut l, 3..=4, 1);
        let mut out = Vec::new();
        l.ack(1, &mut out);
        assert_eq!(l.chunks.len(), 2);
        l.ack(2, &mut out);
        assert_eq!(l.chunks.len(), 1, "chunk 0 is done");
        let replay: Vec<Bytes> = l.unacked_frames().collect();
        assert_eq!(
            replay,
            vec![Bytes::from_static(&[3]), Bytes::from_static(&[4])]
        );
        assert_eq!(l.bytes(), 2);
        l.ack(4, &mut out);
        assert!(l.chunks.is_empty() && l.is_empty());
        assert_eq!(l.bytes(), 0);
    }

    #[test]
    fn entries_without_a_frame_wait_only_for_those_before_them() {
        let mut l = Ledger::new(None, Histogram::default());
        let chunk = Bytes::from_static(b"ab");
        l.push_sent(1, 0, &chunk, Instant::now(), 0, 1, 'a');
        l.push_done(2, 'b');
        l.push_sent(3, 0, &chunk, Instant::now(), 1, 1, 'c');
        let mut out = Vec::new();
        assert_eq!(l.release(&mut out), 0);
        assert!(
            out.is_empty(),
            "the set-aside record waits for the one before it"
        );
        l.ack(1, &mut out);
        assert_eq!(out, vec!['a', 'b']);
        l.push_done(4, 'd');
        out.clear();
        l.ack(3, &mut out);
        assert_eq!(out, vec!['c', 'd']);
        assert!(l.is_empty());
        assert_eq!(l.waiting(), 0);
    }
}
