//! Checkpoints: consistent snapshots of every state store and of each source stream's last
//! processed id, written atomically (temp file, fsync, rename, fsync of the directory).
//!
//! File `snapshot-<epoch>.ckpt`:
//!
//! ```text
//! magic "ENGSNAP\0" (8) | u32 format version | u64 epoch | u64 body length | body | u32 CRC-32
//! body = u32 n_streams, n x (u64 stream_id, u16 name length, name, u64 point)
//!        u32 n_states,  n x (u16 name length, name, u64 length, bincode of [(key, state)])
//!        u32 n_sinks,   n x (u16 name length, name, u64 length, MESSAGE frames)
//! ```
//!
//! The last section holds, per sink, the outputs the sink had not acknowledged when the
//! snapshot was taken: the snapshot's points say their inputs were processed, so a
//! restarted engine must deliver them itself (they are re-sent before anything else).
//!
//! The CRC covers everything before it. The newest two snapshots are kept; a corrupt or
//! truncated one is reported and the previous good one is used, never silently nothing.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Current snapshot format version.
pub const FORMAT_VERSION: u32 = 1;
const SNAPSHOT: Envelope = Envelope {
    magic: b"ENGSNAP\0",
    version: FORMAT_VERSION,
    what: "snapshot",
};

/// The framing every checkpoint format shares: `magic (8) | u32 format version | u64 field |
/// u64 body length | body | u32 CRC-32 of everything before it`. The field is the
/// snapshot's epoch or the slice's generation.
pub(crate) struct Envelope {
    pub magic: &'static [u8; 8],
    pub version: u32,
    /// What it holds, for error messages ("snapshot", "stream slice").
    pub what: &'static str,
}

/// Bytes before the body.
const HEADER: usize = 8 + 4 + 8 + 8;

impl Envelope {
    /// A buffer holding the header (body length left 0: [`Envelope::seal`] sets it).
    pub fn begin(&self, field: u64, capacity: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(capacity + HEADER + 4);
        buf.extend_from_slice(self.magic);
        buf.extend_from_slice(&self.version.to_be_bytes());
        buf.extend_from_slice(&field.to_be_bytes());
        buf.extend_from_slice(&0u64.to_be_bytes());
        buf
    }

    /// Sets the body length and appends the CRC.
    pub fn seal(&self, buf: &mut Vec<u8>) {
        let body = (buf.len() - HEADER) as u64;
        buf[20..28].copy_from_slice(&body.to_be_bytes());
        let crc = crc32fast::hash(buf);
        buf.extend_from_slice(&crc.to_be_bytes());
    }

    /// Verifies `bytes` (magic, version, length, CRC): the field and a cursor on the body.
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<(u64, Cursor<'a>), String> {
        let what = self.what;
        if bytes.len() < HEADER + 4 {
            return Err(format!("truncated: only {} bytes", bytes.len()));
        }
        if &bytes[..8] != self.magic {
            return Err(format!("not a {what} (bad magic)"));
        }
        let mut c = Cursor(&bytes[8..]);
        let version = c.u32("version")?;
        if version != self.version {
            return Err(format!(
                "{what} format version {version}, this engine reads version {}",
                self.version
            ));
        }
        let field = c.u64("header")?;
        let want = HEADER
            .saturating_add(c.u64("length")? as usize)
            .saturating_add(4);
        if bytes.len() != want {
            return Err(format!(
                "truncated: header announces {want} bytes, the {what} has {}",
                bytes.len()
            ));
        }
        let (data, crc) = bytes.split_at(want - 4);
        if crc32fast::hash(data) != u32::from_be_bytes(crc.try_into().unwrap_or_default()) {
            return Err(format!("checksum mismatch (the {what} is corrupt)"));
        }
        Ok((field, Cursor(&data[HEADER..])))
    }
}

/// A decoded snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Checkpoint number (increases across restarts).
    pub epoch: u64,
    /// `(stream_id, stream name, last processed message id)` of every source stream.
    pub points: Vec<(u64, String, u64)>,
    /// `(store name, bincode bytes of its (key, state) pairs)`.
    pub states: Vec<(String, Vec<u8>)>,
    /// `(sink name, MESSAGE frames not yet acknowledged by that sink)`.
    pub outputs: Vec<(String, Vec<u8>)>,
}

/// The pairs of state store `name` among `(store name, bytes)` sections, decoded.
pub(crate) fn find_state<K: DeserializeOwned, S: DeserializeOwned>(
    states: &[(String, Vec<u8>)],
    name: &str,
) -> Option<Result<Vec<(K, S)>, String>> {
    states
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| crate::partition::decode_pairs(b))
}

impl Snapshot {
    /// The pairs of state store `name` (e.g. `"transactions#0"`), decoded.
    pub fn state<K: DeserializeOwned, S: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Option<Result<Vec<(K, S)>, String>> {
        find_state(&self.states, name)
    }

    /// Loads the newest valid snapshot in `dir`. `Ok(None)` when there is none; an error
    /// when snapshots exist but none is valid. Corrupt ones are reported through `report`.
    pub fn load_latest(
        dir: &Path,
        mut report: impl FnMut(&Path, &str),
    ) -> Result<Option<Snapshot>, String> {
        let files = list(dir).map_err(|e| format!("cannot list: {e}"))?;
        if files.is_empty() {
            return Ok(None);
        }
        for (_, path) in files.iter().rev() {
            match fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b))
            {
                Ok(s) => return Ok(Some(s)),
                Err(e) => report(path, &e),
            }
        }
        Err(format!(
            "all {} snapshot(s) are corrupt or unreadable; refusing to start with an empty state (move them away to start from nothing)",
            files.len()
        ))
    }
}

/// Snapshot files in `dir`, oldest first.
fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("snapshot-")
            .and_then(|r| r.strip_suffix(".ckpt"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Appends a `u16 length, bytes` string (cut at 65535 bytes).
pub(crate) fn put_short(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Starts encoding a snapshot; the body is appended by the caller through
/// [`SnapshotWriter`].
pub(crate) struct SnapshotWriter {
    buf: Vec<u8>,
    states_at: usize,
    n_states: u32,
    outputs_at: Option<usize>,
    n_outputs: u32,
}

impl SnapshotWriter {
    pub fn new(epoch: u64, points: &[(u64, String, u64)], capacity: usize) -> Self {
        let mut buf = SNAPSHOT.begin(epoch, capacity + 64);
        buf.extend_from_slice(&(points.len() as u32).to_be_bytes());
        for (id, name, p) in points {
            buf.extend_from_slice(&id.to_be_bytes());
            put_short(&mut buf, name);
            buf.extend_from_slice(&p.to_be_bytes());
        }
        let states_at = buf.len();
        buf.extend_from_slice(&0u32.to_be_bytes());
        SnapshotWriter {
            buf,
            states_at,
            n_states: 0,
            outputs_at: None,
            n_outputs: 0,
        }
    }

    /// Appends one state store: `fill` writes its bytes.
    pub fn state(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), String> {
        put_short(&mut self.buf, name);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&0u64.to_be_bytes());
        fill(&mut self.buf)?;
        let n = (self.buf.len() - len_at - 8) as u64;
        self.buf[len_at..len_at + 8].copy_from_slice(&n.to_be_bytes());
        self.n_states += 1;
        Ok(())
    }

    fn close_states(&mut self) {
        if self.outputs_at.is_none() {
            let at = self.states_at;
            self.buf[at..at + 4].copy_from_slice(&self.n_states.to_be_bytes());
            self.outputs_at = Some(self.buf.len());
            self.buf.extend_from_slice(&0u32.to_be_bytes());
        }
    }

    /// Appends the unacknowledged outputs of one sink (after every state store).
    pub fn outputs(&mut self, sink: &str, fill: impl FnOnce(&mut Vec<u8>)) {
        self.close_states();
        put_short(&mut self.buf, sink);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&0u64.to_be_bytes());
        fill(&mut self.buf);
        let n = (self.buf.len() - len_at - 8) as u64;
        self.buf[len_at..len_at + 8].copy_from_slice(&n.to_be_bytes());
        self.n_outputs += 1;
    }

    /// The complete file contents.
    pub fn finish(mut self) -> Vec<u8> {
        self.close_states();
        if let Some(at) = self.outputs_at {
            self.buf[at..at + 4].copy_from_slice(&self.n_outputs.to_be_bytes());
        }
        SNAPSHOT.seal(&mut self.buf);
        self.buf
    }
}

/// Reads big-endian fields off a byte slice, naming the field that was cut short.
pub(crate) struct Cursor<'a>(pub(crate) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated in {what}"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u16(&mut self, w: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2, w)?.try_into().unwrap_or_default(),
        ))
    }
    pub(crate) fn u32(&mut self, w: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4, w)?.try_into().unwrap_or_default(),
        ))
    }
    pub(crate) fn u64(&mut self, w: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8, w)?.try_into().unwrap_or_default(),
        ))
    }
    /// `u32 n`, then n x (`u16` name length, name, `u64` length, bytes): named sections
    /// (`what` names them in errors: "state", "sink").
    pub(crate) fn sections(&mut self, what: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let n = self.u32(&format!("{what} count"))?;
        let mut v = Vec::new();
        for _ in 0..n {
            let name = self.short(&format!("{what} name"))?;
            let len = self.u64(&format!("{what} length"))? as usize;
            v.push((name, self.take(len, &format!("{what} bytes"))?.to_vec()));
        }
        Ok(v)
    }

    pub(crate) fn short(&mut self, w: &str) -> Result<String, String> {
        let n = self.u16(w)? as usize;
        String::from_utf8(self.take(n, w)?.to_vec()).map_err(|_| format!("{w} is not UTF-8"))
    }
}

/// Decodes and verifies a snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let (epoch, mut c) = SNAPSHOT.open(bytes)?;
    let n = c.u32("stream count")?;
    let mut points = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        let id = c.u64("stream id")?;
        let name = c.short("stream name")?;
        let p = c.u64("stream point")?;
        points.push((id, name, p));
    }
    let states = c.sections("state")?;
    let outputs = c.sections("sink")?;
    if !c.0.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last section",
            c.0.len()
        ));
    }
    Ok(Snapshot {
        epoch,
        points,
        states,
        outputs,
    })
}

/// Removes temporary files left by a checkpoint interrupted by a crash.
pub(crate) fn remove_temp_files(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".snapshot-") && name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `bytes` as the snapshot of `epoch` atomically and deletes all but the newest two.
/// Blocking: run it off the data thread.
pub(crate) fn write_atomic(dir: &Path, epoch: u64, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".snapshot-{epoch:020}.tmp"));
    let path = dir.join(format!("snapshot-{epoch:020}.ckpt"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    let files = list(dir)?;
    if files.len() > 2 {
        for (_, old) in &files[..files.len() - 2] {
            let _ = fs::remove_file(old);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(epoch: u64) -> Vec<u8> {
        let mut w = SnapshotWriter::new(epoch, &[(7, "s7".into(), 104), (9, "s9".into(), 3)], 0);
        let store: std::cell::RefCell<crate::partition::Partitioned<String, i64>> =
            std::cell::RefCell::new(crate::partition::Partitioned::new("a#0".into(), 2));
        *store.borrow_mut().get_or_default("k".into()) = 5;
        use crate::partition::StateStore;
        w.state("a#0", |b| store.snapshot_into(b)).unwrap();
        w.outputs("out", |b| b.extend_from_slice(b"frames"));
        w.finish()
    }

    #[test]
    fn round_trip() {
        let s = decode(&sample(3)).unwrap();
        assert_eq!(s.epoch, 3);
        assert_eq!(s.points[0], (7, "s7".to_string(), 104));
        let st: Vec<(String, i64)> = s.state("a#0").unwrap().unwrap();
        assert_eq!(st, vec![("k".to_string(), 5)]);
        assert_eq!(s.outputs, vec![("out".to_string(), b"frames".to_vec())]);
    }

    #[test]
    fn corrupt_and_truncated_are_reported_and_previous_used() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), 1, &sample(1)).unwrap();
        write_atomic(dir.path(), 2, &sample(2)).unwrap();
        write_atomic(dir.path(), 3, &sample(3)).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 2, "keeps the newest two");
        // corrupt the newest: flip a byte
        let p3 = dir.path().join(format!("snapshot-{:020}.ckpt", 3));
        let mut b = fs::read(&p3).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        fs::write(&p3, &b).unwrap();
        let mut reports = Vec::new();
        let s = Snapshot::load_latest(dir.path(), |p, e| {
            reports.push((p.to_path_buf(), e.to_string()))
        })
        .unwrap()
        .unwrap();
        assert_eq!(s.epoch, 2);
        assert_eq!(reports.len(), 1);
        assert!(reports[0].1.contains("checksum"), "{reports:?}");
        // truncate the other one too: nothing valid is an error, not an empty state
        let p2 = dir.path().join(format!("snapshot-{:020}.ckpt", 2));
        let b = fs::read(&p2).unwrap();
        fs::write(&p2, &b[..b.len() - 10]).unwrap();
        let e = Snapshot::load_latest(dir.path(), |_, _| {}).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert!(decode(&b[..b.len() - 10])
            .unwrap_err()
            .contains("truncated"));
    }
}
