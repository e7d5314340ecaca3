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

use bytes::Bytes;

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
    /// Written chunks still holding frames of `entries`, with their numbers.
    chunks: VecDeque<(u64, Bytes)>,
    /// Entries that carry a frame (the ones the engine still has to acknowledge).
    waiting: usize,
    /// Highest id the engine acknowledged on this stream.
    acked: Option<u64>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
            chunks: VecDeque::new(),
            waiting: 0,
            acked: None,
        }
    }
}

impl<T> Ledger<T> {
    /// A ledger for a stream the engine has processed up to `acked`.
    pub fn new(acked: Option<u64>) -> Self {
        Ledger {
            acked,
            ..Ledger::default()
        }
    }

    /// Records a message sent as bytes `start..start + len` of `chunk`, the written chunk
    /// number `chunk_no` (numbers increase; one chunk may hold frames of several streams).
    pub fn push_sent(
        &mut self,
        id: u64,
        chunk_no: u64,
        chunk: &Bytes,
        start: usize,
        len: usize,
        token: T,
    ) {
        if self.chunks.back().is_none_or(|(n, _)| *n != chunk_no) {
            self.chunks.push_back((chunk_no, chunk.clone()));
        }
        self.waiting += 1;
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
        while let Some(e) = self.entries.front() {
            let done = e.frame.is_none() || self.acked.is_some_and(|a| e.id <= a);
            if !done {
                break;
            }
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            if e.frame.is_some() {
                framed += 1;
            }
            out.push(e.token);
        }
        self.waiting -= framed;
        // Chunks before the first frame still waiting are no longer needed.
        let keep_from = self
            .entries
            .iter()
            .find_map(|e| e.frame.map(|f| f.chunk))
            .unwrap_or(u64::MAX);
        while self.chunks.front().is_some_and(|(n, _)| *n < keep_from) {
            self.chunks.pop_front();
        }
        framed
    }

    /// Highest id the engine acknowledged.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// Frames still waiting for the engine, oldest first (to replay after a reconnect).
    pub fn unacked_frames(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.entries.iter().filter_map(|e| {
            let f = e.frame?;
            let (_, chunk) = self.chunks.iter().find(|(n, _)| *n == f.chunk)?;
            let start = f.start as usize;
            Some(chunk.slice(start..start + f.len as usize))
        })
    }

    /// Messages sent and not acknowledged.
    pub fn waiting(&self) -> usize {
        self.waiting
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
            l.push_sent(id, chunk_no, &chunk, at, 1, id * 10);
        }
    }

    #[test]
    fn tokens_come_back_in_order_and_only_up_to_the_point() {
        let mut l = Ledger::new(None);
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
    fn chunks_are_kept_while_one_of_their_frames_waits() {
        let mut l = Ledger::new(None);
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
        l.ack(4, &mut out);
        assert!(l.chunks.is_empty() && l.is_empty());
    }

    #[test]
    fn entries_without_a_frame_wait_only_for_those_before_them() {
        let mut l = Ledger::new(None);
        let chunk = Bytes::from_static(b"ab");
        l.push_sent(1, 0, &chunk, 0, 1, 'a');
        l.push_done(2, 'b');
        l.push_sent(3, 0, &chunk, 1, 1, 'c');
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
