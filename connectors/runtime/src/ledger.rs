//! The one record of what a source has sent and the engine has not acknowledged yet.
//!
//! Per stream, in the order sent: the message id, its encoded MESSAGE frame (replayed after a
//! reconnect) and the connector's upstream commit token (handed back once the engine
//! acknowledged the message). An entry without a frame (a record set aside in the dead-letter
//! directory, or one the engine had already processed) needs no acknowledgement: its token is
//! released as soon as everything before it is.

use std::collections::VecDeque;

use bytes::Bytes;

/// One sent record.
#[derive(Debug)]
struct Entry<T> {
    id: u64,
    /// `None`: nothing to wait for (set aside, or already processed by the engine).
    frame: Option<Bytes>,
    token: T,
}

/// Unacknowledged records of one stream, oldest first.
#[derive(Debug)]
pub struct Ledger<T> {
    entries: VecDeque<Entry<T>>,
    /// Entries that carry a frame (the ones the engine still has to acknowledge).
    waiting: usize,
    /// Highest id the engine acknowledged on this stream.
    acked: Option<u64>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            entries: VecDeque::new(),
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

    /// Records a sent message (`frame`) or one that needs no acknowledgement (`None`).
    pub fn push(&mut self, id: u64, frame: Option<Bytes>, token: T) {
        self.waiting += usize::from(frame.is_some());
        self.entries.push_back(Entry { id, frame, token });
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
        framed
    }

    /// Highest id the engine acknowledged.
    pub fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// Frames still waiting for the engine, oldest first (to replay after a reconnect).
    pub fn unacked_frames(&self) -> impl Iterator<Item = &Bytes> {
        self.entries.iter().filter_map(|e| e.frame.as_ref())
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

    #[test]
    fn tokens_come_back_in_order_and_only_up_to_the_point() {
        let mut l = Ledger::new(None);
        for id in 1..=4 {
            l.push(id, Some(Bytes::from_static(b"f")), id * 10);
        }
        let mut out = Vec::new();
        assert_eq!(l.ack(2, &mut out), 2);
        assert_eq!(out, vec![10, 20]);
        assert_eq!(l.waiting(), 2);
        assert_eq!(l.unacked_frames().count(), 2);
        out.clear();
        assert_eq!(l.ack(1, &mut out), 0, "an older point changes nothing");
        assert!(out.is_empty());
        assert_eq!(l.acked(), Some(2));
    }

    #[test]
    fn entries_without_a_frame_wait_only_for_those_before_them() {
        let mut l = Ledger::new(None);
        l.push(1, Some(Bytes::from_static(b"f")), 'a');
        l.push(2, None, 'b');
        l.push(3, Some(Bytes::from_static(b"f")), 'c');
        let mut out = Vec::new();
        assert_eq!(l.release(&mut out), 0);
        assert!(
            out.is_empty(),
            "the set-aside record waits for the one before it"
        );
        l.ack(1, &mut out);
        assert_eq!(out, vec!['a', 'b']);
        l.push(4, None, 'd');
        out.clear();
        l.ack(3, &mut out);
        assert_eq!(out, vec!['c', 'd']);
        assert!(l.is_empty());
        assert_eq!(l.waiting(), 0);
    }
}
