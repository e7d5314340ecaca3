//! Slices: the checkpoint of one source stream when keyed state is scoped per stream
//! (`state_scope = "stream"`): that stream's keyed state and its resume point, owned by one
//! engine at a time.
//!
//! Object `streams/<stream name, percent-encoded>.slice` in the checkpoint store:
//!
//! ```text
//! magic "ENGSLICE" (8) | u32 format version | u64 generation | u64 body length | body | u32 CRC-32
//! body = u16 name length, stream name | u64 point | u8 flags (1 = released)
//!        u16 owner length, owner
//!        u32 n_states, n x (u16 name length, name, u64 length, bincode of [(key, state)])
//! ```
//!
//! `point` is the last message id whose effects the state holds (`u64::MAX`: none yet).
//! `released` marks the final slice an engine wrote when the stream ended (EOS): the next
//! owner may take it at once; an unreleased slice may still be followed by a newer one from
//! its owner, so a take-over first waits a while for its release.
//! `generation` grows by one each time an engine takes the stream over: the store's
//! conditional writes make sure an engine that lost the stream cannot overwrite the slice
//! of the one that took it (see [`crate::store`]). `owner` names the engine that wrote it,
//! for log lines. The CRC covers everything before it.

use serde::de::DeserializeOwned;

use crate::checkpoint::{find_state, put_short, Envelope};

/// Current slice format version.
pub const SLICE_VERSION: u32 = 1;
const SLICE: Envelope = Envelope {
    magic: b"ENGSLICE",
    version: SLICE_VERSION,
    what: "stream slice",
};

/// A decoded slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice {
    /// Name of the source stream (e.g. `orders/3` for a Kafka partition).
    pub stream: String,
    /// Last message id the state includes (`u64::MAX`: nothing processed yet).
    pub point: u64,
    /// Ownership generation: one more than the slice it replaced when it changed hands.
    pub generation: u64,
    /// Written when the stream ended on its owner: nothing newer will come from it.
    pub released: bool,
    /// The engine that wrote it (`worker@host pid N`), for log lines.
    pub owner: String,
    /// `(store name, bytes of its (key, state) pairs)`, as in engine snapshots.
    pub states: Vec<(String, Vec<u8>)>,
}

impl Slice {
    /// The pairs of state store `name` (e.g. `"transactions#0"`), decoded.
    pub fn state<K: DeserializeOwned, S: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Option<Result<Vec<(K, S)>, String>> {
        find_state(&self.states, name)
    }

    /// Encodes the slice (header, body, CRC).
    pub fn encode(&self) -> Vec<u8> {
        let states: usize = self
            .states
            .iter()
            .map(|(n, b)| n.len() + b.len() + 10)
            .sum();
        let mut buf = SLICE.begin(self.generation, 64 + self.stream.len() + states);
        put_short(&mut buf, &self.stream);
        buf.extend_from_slice(&self.point.to_be_bytes());
        buf.push(u8::from(self.released));
        put_short(&mut buf, &self.owner);
        buf.extend_from_slice(&(self.states.len() as u32).to_be_bytes());
        for (name, bytes) in &self.states {
            put_short(&mut buf, name);
            buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            buf.extend_from_slice(bytes);
        }
        SLICE.seal(&mut buf);
        buf
    }

    /// Decodes and verifies a slice's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Slice, String> {
        let (generation, mut c) = SLICE.open(bytes)?;
        let stream = c.short("stream name")?;
        let point = c.u64("point")?;
        let released = c.take(1, "flags")?[0] & 1 == 1;
        let owner = c.short("owner")?;
        let states = c.sections("state")?;
        if !c.0.is_empty() {
            return Err(format!("{} unexpected bytes after the states", c.0.len()));
        }
        Ok(Slice {
            stream,
            point,
            generation,
            released,
            owner,
            states,
        })
    }
}

/// The store key of stream `name`'s slice: `streams/<name>.slice`, every byte outside
/// `[A-Za-z0-9._-]` written as `%XX` (so `orders/3` is `streams/orders%2F3.slice`).
pub fn slice_key(name: &str) -> String {
    let mut k = String::with_capacity(name.len() + 16);
    k.push_str("streams/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            k.push(b as char);
        } else {
            k.push_str(&format!("%{b:02X}"));
        }
    }
    k.push_str(".slice");
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Slice {
        let store: std::cell::RefCell<crate::partition::Partitioned<String, i64>> =
            std::cell::RefCell::new(crate::partition::Partitioned::new("a#0".into(), 1));
        *store.borrow_mut().get_or_default("k".into()) = 5;
        let mut bytes = Vec::new();
        use crate::partition::StateStore;
        store.snapshot_into(&mut bytes).unwrap();
        Slice {
            stream: "orders/3".into(),
            point: 41,
            generation: 7,
            released: true,
            owner: "w@h pid 1".into(),
            states: vec![("a#0".into(), bytes)],
        }
    }

    #[test]
    fn round_trip_and_state() {
        let s = sample();
        let d = Slice::decode(&s.encode()).unwrap();
        assert_eq!(d, s);
        let st: Vec<(String, i64)> = d.state("a#0").unwrap().unwrap();
        assert_eq!(st, vec![("k".to_string(), 5)]);
        assert!(d.state::<String, i64>("b#0").is_none());
    }

    #[test]
    fn corruption_and_truncation_are_named() {
        let b = sample().encode();
        let mut c = b.clone();
        let mid = c.len() / 2;
        c[mid] ^= 1;
        assert!(Slice::decode(&c).unwrap_err().contains("checksum"));
        assert!(Slice::decode(&b[..b.len() - 3])
            .unwrap_err()
            .contains("truncated"));
        assert!(Slice::decode(b"ENGSNAP\0xxxxxxxxxxxxxxxxxxxxxxxxxxx")
            .unwrap_err()
            .contains("magic"));
    }

    #[test]
    fn keys_escape_everything_but_safe_bytes() {
        assert_eq!(slice_key("orders/3"), "streams/orders%2F3.slice");
        assert_eq!(slice_key("a b.c_d-E9"), "streams/a%20b.c_d-E9.slice");
        assert_eq!(slice_key("é"), "streams/%C3%A9.slice");
    }
}
