//! What a source connector's `read` fills: streams to open, records, streams to end.
//!
//! Records are encoded as they are pushed (MESSAGE frames for the engine, `--format` text
//! for standard output) into one buffer that is written as is: one copy from the upstream
//! client's memory to the socket.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use framing::{encode_message, stream_id_for};

use crate::format::Format;
use crate::metrics::ConnectorMetrics;

/// How pushed records are encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Encoding {
    /// MESSAGE frames, checked against the frame limit.
    Protocol { max_frame: usize },
    /// Standard-output records.
    Text(Format),
}

/// One pushed record, in push order.
pub(crate) enum Item<T> {
    /// Encoded: the next `len` bytes of the buffer (`payload` of them the payload's).
    Encoded {
        stream: u64,
        id: u64,
        len: u32,
        payload: u32,
        token: T,
    },
    /// The protocol cannot carry it: for the dead-letter directory, or a stop. Rare, so its
    /// contents are boxed to keep every item small.
    Unsendable {
        stream: u64,
        id: u64,
        record: Box<Unsendable>,
        token: T,
    },
}

/// What is kept of a record the protocol cannot carry.
pub(crate) struct Unsendable {
    pub(crate) key: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) reason: String,
}

/// Records, stream openings and stream ends from one call of the connector's `read`. The
/// runtime opens the new streams first, then sends the records in order, then ends the
/// streams named by [`Batch::end`].
pub struct Batch<T> {
    encoding: Encoding,
    metrics: ConnectorMetrics,
    pub(crate) buf: BytesMut,
    pub(crate) items: VecDeque<Item<T>>,
    pub(crate) opens: Vec<(String, Option<u64>)>,
    pub(crate) ends: Vec<u64>,
    pub(crate) finished: bool,
    /// Records and payload bytes pushed since the metrics were last updated (counted here,
    /// not per record in the shared counters).
    pushed: (u64, u64),
    /// When the first record now in the batch was pushed: its read, for the delivery
    /// latency (one clock reading per batch, not per record).
    pub(crate) read_at: Instant,
}

impl<T> Batch<T> {
    pub(crate) fn new(encoding: Encoding, metrics: ConnectorMetrics) -> Self {
        Batch {
            encoding,
            metrics,
            buf: BytesMut::with_capacity(256 * 1024),
            items: VecDeque::new(),
            opens: Vec::new(),
            ends: Vec::new(),
            finished: false,
            pushed: (0, 0),
            read_at: Instant::now(),
        }
    }

    /// Announces a stream (a partition, a shard, a queue, a file) and returns its id.
    /// `resume_hint` is the last id committed upstream, if the connector knows it. Once the
    /// engine answered, the runtime calls the connector's `opened` with the engine's resume
    /// point; records with ids up to that point are not sent again (their tokens are
    /// committed in order like the others).
    pub fn open(&mut self, name: &str, resume_hint: Option<u64>) -> u64 {
        self.opens.push((name.to_string(), resume_hint));
        stream_id_for(name)
    }

    /// Adds a record. `id` must increase within the stream; `token` is what the runtime
    /// hands back to `commit` once the engine acknowledged the record.
    pub fn push(&mut self, stream: u64, id: u64, key: &[u8], payload: &[u8], token: T) {
        self.push_at(stream, id, 0, key, payload, token);
    }

    /// [`Batch::push`] with an event time (milliseconds since the epoch by convention).
    pub fn push_at(
        &mut self,
        stream: u64,
        id: u64,
        event_time: i64,
        key: &[u8],
        payload: &[u8],
        token: T,
    ) {
        if self.items.is_empty() {
            self.read_at = Instant::now();
        }
        self.pushed.0 += 1;
        self.pushed.1 += payload.len() as u64;
        let start = self.buf.len();
        match self.encoding {
            Encoding::Protocol { max_frame } => {
                if let Some(reason) = unsendable(key.len(), payload.len(), max_frame) {
                    self.items.push_back(Item::Unsendable {
                        stream,
                        id,
                        record: Box::new(Unsendable {
                            key: Bytes::copy_from_slice(key),
                            payload: Bytes::copy_from_slice(payload),
                            reason,
                        }),
                        token,
                    });
                    return;
                }
                // Checked above: the key fits a short_bytes field.
                let _ = encode_message(&mut self.buf, stream, id, event_time, key, payload);
            }
            Encoding::Text(format) => format.encode(key, payload, &mut self.buf),
        }
        // Both fit: a frame's length is a u32 on the wire.
        let len = (self.buf.len() - start) as u32;
        self.items.push_back(Item::Encoded {
            stream,
            id,
            len,
            payload: payload.len() as u32,
            token,
        });
    }

    /// Adds what was pushed to `connector_messages_total{direction="in"}` and its bytes.
    pub(crate) fn count_pushed(&mut self) {
        let (n, bytes) = std::mem::take(&mut self.pushed);
        if n > 0 {
            self.metrics.messages_in.add(n);
            self.metrics.bytes_in.add(bytes);
        }
    }

    /// Ends a stream (a revoked partition, a finished shard or file): the runtime sends what
    /// was pushed, waits for the engine to acknowledge the stream, commits it and sends EOS.
    pub fn end(&mut self, stream: u64) {
        self.ends.push(stream);
    }

    /// The upstream has nothing more, ever (end of a file or of standard input): the runtime
    /// sends what was pushed, waits for the engine to acknowledge everything, commits, ends
    /// every stream and stops.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Records pushed and not handed to the runtime yet.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was pushed, opened or ended.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.opens.is_empty() && self.ends.is_empty() && !self.finished
    }

    /// Bytes encoded and not handed to the runtime yet (to bound one read's batch).
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Why a record cannot travel in a MESSAGE frame, if it cannot: its key is longer than a
/// `short_bytes` field holds, or the frame would pass the frame limit (`max_frame`, the
/// length field's value) that the engine enforces.
pub(crate) fn unsendable(key: usize, payload: usize, max_frame: usize) -> Option<String> {
    const MESSAGE_HEADER: usize = 1 + 8 + 8 + 8 + 2;
    if key > usize::from(u16::MAX) {
        return Some(format!(
            "its key is {key} bytes; the protocol carries keys of up to 65535 bytes"
        ));
    }
    let frame = MESSAGE_HEADER + key + payload;
    (frame > max_frame).then(|| {
        format!(
            "its frame would be {frame} bytes, over the {max_frame}-byte limit; raise --max-frame-bytes (or max_frame_bytes in the application module) for the engine and this connector"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::unsendable;

    #[test]
    fn keys_over_a_short_bytes_field_and_frames_over_the_limit_are_unsendable() {
        assert_eq!(unsendable(65_535, 10, 1 << 24), None);
        assert!(unsendable(65_536, 10, 1 << 24).is_some_and(|r| r.contains("65535")));
        // MESSAGE body: tag, stream id, message id, event time, key length, key, payload.
        assert_eq!(unsendable(3, 100 - 27 - 3, 100), None);
        assert!(unsendable(3, 100 - 27 - 2, 100).is_some_and(|r| r.contains("101 bytes")));
    }
}
