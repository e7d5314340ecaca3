//! In-order acknowledgement of sink messages whose writes complete out of order.
//!
//! A sink pushes every message in the order it read them, completes them in whatever order the
//! external system confirms them (PutRecords per-record results, parallel S3 uploads), and
//! `release`s: every stream is acknowledged up to its longest completed prefix, never further.

use std::collections::{HashMap, VecDeque};

use connector_runtime::{InOrderAcks, Sink, SinkMessage};

/// A message's place in its stream's order; hand it back to [`SinkAcks::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    stream_id: u64,
    ticket: u64,
}

#[derive(Default)]
struct StreamOrder {
    order: InOrderAcks,
    /// The pushed messages (payload dropped), oldest first, parallel to `order`.
    msgs: VecDeque<SinkMessage>,
}

/// Per-stream [`InOrderAcks`] plus the messages needed to acknowledge them.
#[derive(Default)]
pub struct SinkAcks {
    streams: HashMap<u64, StreamOrder>,
}

impl SinkAcks {
    /// Records `msg` as the next message of its stream (its payload is not kept).
    pub fn push(&mut self, msg: &SinkMessage) -> Ticket {
        let s = self.streams.entry(msg.stream_id).or_default();
        let mut light = msg.clone();
        light.payload = bytes::Bytes::new();
        light.key = bytes::Bytes::new();
        s.msgs.push_back(light);
        Ticket {
            stream_id: msg.stream_id,
            ticket: s.order.push(msg.message_id),
        }
    }

    /// Marks one message as confirmed by the external system (or dead-lettered).
    pub fn complete(&mut self, t: Ticket) {
        if let Some(s) = self.streams.get_mut(&t.stream_id) {
            s.order.complete(t.ticket);
        }
    }

    /// Takes every completed prefix off the books and returns those messages, oldest first.
    pub fn take_released(&mut self) -> Vec<SinkMessage> {
        let mut out = Vec::new();
        for s in self.streams.values_mut() {
            let before = s.order.pending();
            if s.order.advance().is_some() {
                let n = before - s.order.pending();
                out.extend(s.msgs.drain(..n.min(s.msgs.len())));
            }
        }
        self.streams.retain(|_, s| s.order.pending() > 0);
        out
    }

    /// Acknowledges every completed prefix to the engine; returns how many messages that covered.
    pub fn release(&mut self, sink: &Sink) -> usize {
        let done = self.take_released();
        sink.ack_all(&done);
        done.len()
    }

    /// Messages pushed and not yet released.
    pub fn pending(&self) -> usize {
        self.streams.values().map(|s| s.order.pending()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(stream: u64, id: u64) -> SinkMessage {
        SinkMessage::detached(stream, id, Bytes::from("k"), Bytes::from("payload"))
    }

    #[test]
    fn releases_contiguous_prefix_per_stream() {
        let mut a = SinkAcks::default();
        let t1 = a.push(&msg(1, 10));
        let t2 = a.push(&msg(1, 11));
        let t3 = a.push(&msg(2, 5));
        a.complete(t2);
        a.complete(t3);
        let r = a.take_released();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].stream_id, r[0].message_id), (2, 5));
        assert!(r[0].payload.is_empty());
        a.complete(t1);
        let r: Vec<u64> = a.take_released().iter().map(|m| m.message_id).collect();
        assert_eq!(r, vec![10, 11]);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn replayed_ids_are_counted_not_compared() {
        // After an engine reconnect the same ids can arrive again: release by count.
        let mut a = SinkAcks::default();
        let t: Vec<Ticket> = [1, 2, 1, 2].iter().map(|id| a.push(&msg(7, *id))).collect();
        a.complete(t[0]);
        a.complete(t[1]);
        a.complete(t[2]);
        assert_eq!(a.take_released().len(), 3);
        a.complete(t[3]);
        assert_eq!(a.take_released().len(), 1);
    }
}
