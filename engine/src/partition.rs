//! Keyed state: the partitioner and the partitioned per-key state store.
//!
//! Every key is hashed onto one of N partitions (default: the number of cores). A partition
//! is the unit of state ownership: a key always lands on the same partition, so its
//! messages are applied in order and never concurrently. Snapshots list every (key, state)
//! pair; restoring re-partitions, so the partition count may change between runs.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};
use serde::de::DeserializeOwned;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// A key of keyed state: hashable, comparable, cloneable and serializable (`Send + Sync`
/// so that partitions can be serialized in parallel during a checkpoint).
pub trait Key: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Key for T {}

/// A per-key state: created with `Default` on a key's first message, serialized with serde
/// (bincode, variable-length integers) into checkpoints.
pub trait State: Default + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Default + Serialize + DeserializeOwned + Send + Sync + 'static> State for T {}

fn codec() -> impl bincode::Options + Copy {
    bincode::DefaultOptions::new()
}

/// The partition of `key` among `partitions` (stable for a given build: FxHash with a
/// final avalanche step, mapped onto the range by multiply-shift).
pub fn partition_of<K: Hash + ?Sized>(key: &K, partitions: usize) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    let mut x = h.finish();
    // splitmix64 finalizer: every input bit affects the high bits used below.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((u128::from(x) * partitions.max(1) as u128) >> 64) as usize
}

/// Per-key state spread over partitions (engine scope), or one map per source stream
/// (stream scope: `state_scope = "stream"`).
pub struct Partitioned<K, S> {
    name: String,
    parts: Vec<FxHashMap<K, S>>,
    /// Stream scope: the keys of each source stream (by stream id), apart.
    streams: Option<FxHashMap<u64, FxHashMap<K, S>>>,
}

impl<K: Key, S: State> Partitioned<K, S> {
    /// An empty store with `partitions` partitions.
    pub fn new(name: String, partitions: usize) -> Self {
        Partitioned {
            name,
            parts: (0..partitions.max(1))
                .map(|_| FxHashMap::default())
                .collect(),
            streams: None,
        }
    }

    /// The state of `key` as seen from source stream `stream`: per stream in stream scope,
    /// shared by every stream otherwise; created with `S::default()` on first use.
    #[inline]
    pub fn get_or_default_in(&mut self, stream: u64, key: K) -> &mut S {
        match self.streams {
            Some(ref mut m) => m.entry(stream).or_default().entry(key).or_default(),
            None => {
                let p = partition_of(&key, self.parts.len());
                self.parts[p].entry(key).or_default()
            }
        }
    }

    /// The state of `key`, created with `S::default()` on first use.
    #[inline]
    pub fn get_or_default(&mut self, key: K) -> &mut S {
        let p = partition_of(&key, self.parts.len());
        self.parts[p].entry(key).or_default()
    }

    /// The state of `key`, if any.
    pub fn get(&self, key: &K) -> Option<&S> {
        self.parts[partition_of(key, self.parts.len())].get(key)
    }

    /// Number of keys (of every stream, in stream scope).
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum::<usize>()
            + self
                .streams
                .as_ref()
                .map_or(0, |m| m.values().map(|p| p.len()).sum())
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of keys in each partition.
    pub fn partition_sizes(&self) -> Vec<usize> {
        self.parts.iter().map(|p| p.len()).collect()
    }

    fn repartition(&mut self, n: usize) {
        let old = std::mem::take(&mut self.parts);
        self.parts = (0..n.max(1)).map(|_| FxHashMap::default()).collect();
        for (k, s) in old.into_iter().flatten() {
            let p = partition_of(&k, self.parts.len());
            self.parts[p].insert(k, s);
        }
    }
}

struct Pairs<'a, K, S>(&'a FxHashMap<K, S>);

impl<K: Serialize, S: Serialize> Serialize for Pairs<'_, K, S> {
    fn serialize<Z: Serializer>(&self, ser: Z) -> Result<Z::Ok, Z::Error> {
        let mut seq = ser.serialize_seq(Some(self.0.len()))?;
        for pair in self.0.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

/// Partitions with at least this many keys in all are serialized on parallel threads.
const PARALLEL_KEYS: usize = 50_000;

/// Serializes every partition as one chunk: `u32 chunks`, then per chunk `u64 length` +
/// bincode of `[(key, state)]`. Large stores use one thread per partition.
fn serialize_parts<K: Key, S: State>(
    parts: &[FxHashMap<K, S>],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use bincode::Options;
    out.extend_from_slice(&(parts.len() as u32).to_be_bytes());
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total < PARALLEL_KEYS || parts.len() < 2 {
        for p in parts {
            let at = out.len();
            out.extend_from_slice(&0u64.to_be_bytes());
            codec()
                .serialize_into(&mut *out, &Pairs(p))
                .map_err(|e| e.to_string())?;
            let n = (out.len() - at - 8) as u64;
            out[at..at + 8].copy_from_slice(&n.to_be_bytes());
        }
        return Ok(());
    }
    let chunks: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|p| {
                scope.spawn(move || {
                    let mut v = Vec::with_capacity(p.len() * 16);
                    codec()
                        .serialize_into(&mut v, &Pairs(p))
                        .map_err(|e| e.to_string())?;
                    Ok(v)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("serializer thread panicked".into()))
            })
            .collect()
    });
    for c in chunks {
        let c = c?;
        out.extend_from_slice(&(c.len() as u64).to_be_bytes());
        out.extend_from_slice(&c);
    }
    Ok(())
}

/// What the checkpointer needs from a state store, whatever its key and state types.
pub(crate) trait StateStore {
    fn name(&self) -> String;
    fn set_partitions(&self, n: usize);
    /// Switches to stream scope: one map of keys per source stream.
    fn scope_per_stream(&self);
    fn snapshot_into(&self, out: &mut Vec<u8>) -> Result<(), String>;
    fn restore(&self, bytes: &[u8]) -> Result<(), String>;
    fn keys(&self) -> usize;
    /// Stream scope: serializes the keys of `stream` (the format of [`decode_pairs`]).
    fn snapshot_stream_into(&self, stream: u64, out: &mut Vec<u8>) -> Result<(), String>;
    /// Stream scope: replaces the keys of `stream` with those in `bytes`.
    fn restore_stream(&self, stream: u64, bytes: &[u8]) -> Result<(), String>;
    /// Stream scope: drops the keys of `stream` (another engine owns it now).
    fn forget_stream(&self, stream: u64);
    /// Stream scope: number of keys of `stream`.
    fn stream_keys(&self, stream: u64) -> usize;
}

impl<K: Key, S: State> StateStore for RefCell<Partitioned<K, S>> {
    fn name(&self) -> String {
        self.borrow().name.clone()
    }
    fn set_partitions(&self, n: usize) {
        self.borrow_mut().repartition(n);
    }
    fn snapshot_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        serialize_parts(&self.borrow().parts, out)
    }
    fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let pairs: Vec<(K, S)> = decode_pairs(bytes)?;
        let mut me = self.borrow_mut();
        for (k, s) in pairs {
            let p = partition_of(&k, me.parts.len());
            me.parts[p].insert(k, s);
        }
        Ok(())
    }
    fn keys(&self) -> usize {
        self.borrow().len()
    }
    fn scope_per_stream(&self) {
        self.borrow_mut()
            .streams
            .get_or_insert_with(FxHashMap::default);
    }
    fn snapshot_stream_into(&self, stream: u64, out: &mut Vec<u8>) -> Result<(), String> {
        let me = self.borrow();
        let empty = FxHashMap::default();
        let keys = me
            .streams
            .as_ref()
            .and_then(|m| m.get(&stream))
            .unwrap_or(&empty);
        serialize_parts(std::slice::from_ref(keys), out)
    }
    fn restore_stream(&self, stream: u64, bytes: &[u8]) -> Result<(), String> {
        let pairs: Vec<(K, S)> = decode_pairs(bytes)?;
        let mut me = self.borrow_mut();
        let map: FxHashMap<K, S> = pairs.into_iter().collect();
        me.streams
            .get_or_insert_with(FxHashMap::default)
            .insert(stream, map);
        Ok(())
    }
    fn forget_stream(&self, stream: u64) {
        if let Some(m) = self.borrow_mut().streams.as_mut() {
            m.remove(&stream);
        }
    }
    fn stream_keys(&self, stream: u64) -> usize {
        let me = self.borrow();
        me.streams
            .as_ref()
            .and_then(|m| m.get(&stream))
            .map_or(0, |k| k.len())
    }
}

/// Decodes the (key, state) pairs of one state store from its snapshot bytes.
pub fn decode_pairs<K: DeserializeOwned, S: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Vec<(K, S)>, String> {
    use bincode::Options;
    let bad = |w: &str| format!("cannot decode state: {w}");
    if bytes.len() < 4 {
        return Err(bad("truncated"));
    }
    let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut rest = &bytes[4..];
    let mut all = Vec::new();
    for _ in 0..n {
        if rest.len() < 8 {
            return Err(bad("truncated chunk header"));
        }
        let len = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default()) as usize;
        rest = &rest[8..];
        if rest.len() < len {
            return Err(bad("truncated chunk"));
        }
        let mut v: Vec<(K, S)> = codec()
            .deserialize(&rest[..len])
            .map_err(|e| bad(&e.to_string()))?;
        all.append(&mut v);
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_always_lands_on_one_partition() {
        for i in 0..10_000u64 {
            let k = format!("user-{i}");
            let p = partition_of(&k, 8);
            for _ in 0..3 {
                assert_eq!(partition_of(&k, 8), p);
            }
            assert_eq!(partition_of(&k.clone(), 8), p);
        }
    }

    #[test]
    fn a_million_random_keys_spread_within_5_percent_over_8_partitions() {
        // xorshift: deterministic "random" keys
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut counts = [0usize; 8];
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            counts[partition_of(&format!("k{x}"), 8)] += 1;
        }
        let even = 1_000_000.0 / 8.0;
        for c in counts {
            let dev = (c as f64 - even).abs() / even;
            assert!(dev < 0.05, "partition counts {counts:?} deviate {dev}");
        }
        let mut counts = [0usize; 8];
        for i in 0..1_000_000u64 {
            counts[partition_of(&i, 8)] += 1;
        }
        let even = 1_000_000.0 / 8.0;
        for c in counts {
            assert!((c as f64 - even).abs() / even < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn large_store_serializes_in_parallel_and_restores() {
        let a: RefCell<Partitioned<String, i64>> = RefCell::new(Partitioned::new("s".into(), 4));
        for i in 0..120_000i64 {
            *a.borrow_mut().get_or_default(format!("user{i}")) = -i;
        }
        let mut bytes = Vec::new();
        a.snapshot_into(&mut bytes).unwrap();
        let b: RefCell<Partitioned<String, i64>> = RefCell::new(Partitioned::new("s".into(), 2));
        b.restore(&bytes).unwrap();
        assert_eq!(b.keys(), 120_000);
        assert_eq!(b.borrow().get(&"user777".to_string()), Some(&-777));
    }

    #[test]
    fn store_snapshot_restores_into_other_partition_count() {
        let a: RefCell<Partitioned<String, i64>> = RefCell::new(Partitioned::new("s".into(), 4));
        for i in 0..1000 {
            *a.borrow_mut().get_or_default(format!("u{}", i % 100)) += i;
        }
        let mut bytes = Vec::new();
        a.snapshot_into(&mut bytes).unwrap();
        let b: RefCell<Partitioned<String, i64>> = RefCell::new(Partitioned::new("s".into(), 3));
        b.restore(&bytes).unwrap();
        assert_eq!(b.keys(), 100);
        for i in 0..100 {
            let k = format!("u{i}");
            assert_eq!(a.borrow().get(&k), b.borrow().get(&k));
        }
        assert!(b.restore(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn stream_scope_keeps_each_stream_apart() {
        let a: RefCell<Partitioned<String, i64>> = RefCell::new(Partitioned::new("s".into(), 2));
        a.scope_per_stream();
        *a.borrow_mut().get_or_default_in(1, "k".into()) += 5;
        *a.borrow_mut().get_or_default_in(2, "k".into()) += 7;
        *a.borrow_mut().get_or_default_in(1, "k".into()) += 1;
        assert_eq!((a.keys(), a.stream_keys(1), a.stream_keys(3)), (2, 1, 0));
        let mut bytes = Vec::new();
        a.snapshot_stream_into(1, &mut bytes).unwrap();
        let pairs: Vec<(String, i64)> = decode_pairs(&bytes).unwrap();
        assert_eq!(pairs, vec![("k".to_string(), 6)]);
        a.forget_stream(1);
        assert_eq!(a.stream_keys(1), 0);
        a.restore_stream(9, &bytes).unwrap();
        assert_eq!(*a.borrow_mut().get_or_default_in(9, "k".into()), 6);
        assert_eq!(*a.borrow_mut().get_or_default_in(2, "k".into()), 7);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p engine --lib -- --ignored --nocapture snapshot_timing`
    #[test]
    #[ignore]
    fn snapshot_timing() {
        for parts in [1, 2, 4] {
            let a: RefCell<Partitioned<String, i64>> =
                RefCell::new(Partitioned::new("s".into(), parts));
            for i in 0..1_000_000i64 {
                *a.borrow_mut()
                    .get_or_default(format!("user{}", i * 7919 % 1_000_000)) = i;
            }
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let mut bytes = Vec::with_capacity(16 << 20);
                a.snapshot_into(&mut bytes).unwrap();
                println!(
                    "{parts} partitions: {} bytes in {:?}",
                    bytes.len(),
                    t.elapsed()
                );
            }
        }
    }
}
