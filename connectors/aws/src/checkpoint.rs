//! Checkpoint files: JSON written atomically, so a `kill -9` at any instant leaves either the
//! previous checkpoint or the new one on disk, never a torn file.
//!
//! Write: temporary file in the same directory, `fsync`, `rename` over the target, `fsync`
//! of the directory (so the rename itself is durable).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A checkpoint file at a fixed path.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// `dir/name` (the directory is created if missing).
    pub fn new(dir: &Path, name: &str) -> Result<CheckpointFile> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create checkpoint directory {}: fix the path or its permissions",
                dir.display()
            )
        })?;
        Ok(CheckpointFile {
            path: dir.join(name),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the checkpoint; `None` when there is none yet.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "checkpoint {} is not valid: move it away to start from the `iterator`/beginning again",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Replaces the checkpoint atomically and durably.
    pub fn store<T: Serialize>(&self, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)?;
        write_atomic(&self.path, &bytes)
    }
}

/// Writes `bytes` to `path` atomically: temp file + fsync + rename + fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    r.with_context(|| format!("cannot write checkpoint {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn store_then_load_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = CheckpointFile::new(&dir.path().join("sub"), "c.json").unwrap();
        assert_eq!(f.load::<BTreeMap<String, u64>>().unwrap(), None);
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), 7u64);
        f.store(&m).unwrap();
        m.insert("b".to_string(), 8u64);
        f.store(&m).unwrap();
        assert_eq!(f.load::<BTreeMap<String, u64>>().unwrap(), Some(m));
        std::fs::write(f.path(), b"{not json").unwrap();
        let e = f.load::<BTreeMap<String, u64>>().unwrap_err();
        assert!(format!("{e:#}").contains("not valid"), "{e:#}");
    }
}
