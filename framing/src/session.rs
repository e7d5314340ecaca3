//! I/O-free protocol state shared by both ends: handshake checks, credit accounting and
//! the per-stream registry with de-duplication of replayed message ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::frame::{Hello, PROTOCOL_VERSION};

/// A hasher for stream ids (and other u64 ids): they are already well mixed (FNV hashes of
/// names), so one multiply is enough. Per-message lookups stay a few nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

/// A map keyed by stream id (or another u64 id) with the cheap [`StreamIdHasher`].
pub type StreamMap<V> = HashMap<u64, V, BuildHasherDefault<StreamIdHasher>>;

/// The `point_of_ref` that means "nothing processed yet" in NOTIFY_ACK, and "no point" in a
/// NOTIFY (the engine then answers it for a stream it processed nothing of; a NOTIFY with
/// any other point gets 0, as Wallaroo answered: see the engine's `AckTracker::notify`).
pub const NOTHING_PROCESSED: u64 = u64::MAX;

/// Checks a received HELLO against the expected version and cookie.
/// The error text is meant for an ERROR frame and a log line.
pub fn check_hello(hello: &Hello, expected_cookie: &str) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: expected \"{PROTOCOL_VERSION}\", got \"{}\"",
            hello.version
        ));
    }
    if hello.cookie != expected_cookie {
        return Err(format!(
            "wrong cookie from {} ({}): check the `cookie` in the application file on both sides",
            hello.program_name, hello.instance_name
        ));
    }
    Ok(())
}

/// A stable 64-bit id for a stream name (FNV-1a), so a stream keeps its id across
/// restarts and processes without any coordination.
pub fn stream_id_for(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Credit accounting for both roles.
///
/// The data sender spends a credit per NOTIFY or MESSAGE and waits when it has none; the
/// data receiver tracks the sender's balance and decides when to refill it.
#[derive(Debug, Clone)]
pub struct Credits {
    balance: u64,
    max: u64,
    refill_mark: u64,
}

impl Credits {
    /// Receiver side: a budget of `max` credits, refilled back to `max` whenever the
    /// balance falls to `refill_mark` or below.
    pub fn receiver(max: u32, refill_mark: u32) -> Self {
        Credits {
            balance: u64::from(max),
            max: u64::from(max),
            refill_mark: u64::from(refill_mark.min(max)),
        }
    }

    /// Sender side: starts with the credits granted in OK.
    pub fn sender(initial: u32) -> Self {
        Credits {
            balance: u64::from(initial),
            max: u64::MAX,
            refill_mark: 0,
        }
    }

    /// Current balance.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// Spends one credit; `false` when none is left (for a receiver: the peer overspent).
    pub fn spend(&mut self) -> bool {
        if self.balance == 0 {
            return false;
        }
        self.balance -= 1;
        true
    }

    /// Adds credits granted by an ACK (sender side).
    pub fn grant(&mut self, n: u32) {
        self.balance = self.balance.saturating_add(u64::from(n));
    }

    /// Receiver side: when the balance is at or below the refill mark, returns the credits
    /// to send in an ACK and counts them as granted.
    pub fn refill(&mut self) -> Option<u32> {
        if self.balance <= self.refill_mark && self.balance < self.max {
            let n = self.max - self.balance;
            self.balance = self.max;
            Some(n as u32)
        } else {
            None
        }
    }
}

/// Why a MESSAGE or NOTIFY was refused by a [`StreamTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// MESSAGE or EOS on a stream that was never announced on this connection.
    NotNotified(u64),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::NotNotified(id) => write!(
                f,
                "MESSAGE/EOS on stream {id} without a successful NOTIFY first"
            ),
        }
    }
}

/// State of one stream on the receiving side.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Name announced in NOTIFY.
    pub name: String,
    /// Highest message id seen (accepted) on this stream, if any.
    pub last_seen: Option<u64>,
}

/// The streams announced on one connection, with de-duplication of message ids.
#[derive(Debug, Default)]
pub struct StreamTable {
    streams: StreamMap<StreamState>,
}

impl StreamTable {
    /// Registers a stream after a successful NOTIFY; `resume` is the point already processed
    /// (messages at or below it are dropped as replays).
    pub fn open(&mut self, stream_id: u64, name: String, resume: Option<u64>) {
        self.streams.insert(
            stream_id,
            StreamState {
                name,
                last_seen: resume,
            },
        );
    }

    /// Returns `Ok(true)` for a fresh message, `Ok(false)` for a replayed one (id not above
    /// the last seen), or an error when the stream was never announced.
    pub fn accept(&mut self, stream_id: u64, message_id: u64) -> Result<bool, StreamError> {
        let s = self
            .streams
            .get_mut(&stream_id)
            .ok_or(StreamError::NotNotified(stream_id))?;
        match s.last_seen {
            Some(last) if message_id <= last => Ok(false),
            _ => {
                s.last_seen = Some(message_id);
                Ok(true)
            }
        }
    }

    /// Closes a stream (EOS), returning its final state.
    pub fn close(&mut self, stream_id: u64) -> Result<StreamState, StreamError> {
        self.streams
            .remove(&stream_id)
            .ok_or(StreamError::NotNotified(stream_id))
    }

    /// Looks a stream up.
    pub fn get(&self, stream_id: u64) -> Option<&StreamState> {
        self.streams.get(&stream_id)
    }

    /// Ids of every open stream.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.streams.keys().copied()
    }
}
