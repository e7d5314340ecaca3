//! A checkpoint store in a local (or shared, lock-honouring) directory: object `key` is the
//! file `DIR/key`. A conditional write holds an exclusive lock on `DIR/key.lock` while it
//! compares the current file's version, writes a temporary file, fsyncs it and renames it
//! over the old one, so readers see the old or the new slice and two engines cannot both
//! replace the same version.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::{CheckpointStore, Expect, StoreError, StoreFuture, Version};

/// A directory of checkpoint objects.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

/// A file's version: its CRC-32 and length (every slice write changes its contents).
fn version_of(bytes: &[u8]) -> Version {
    format!("{:08x}-{}", crc32fast::hash(bytes), bytes.len())
}

fn failed(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Failed(format!("cannot {what} {}: {e}", path.display()))
}

impl DirStore {
    /// Opens (creating it when missing) the directory `dir`.
    pub fn open(dir: &Path) -> Result<DirStore, String> {
        fs::create_dir_all(dir)
            .map_err(|e| format!("checkpoint store {}: cannot create: {e}", dir.display()))?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
        })
    }

    fn read(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed("read", path, e)),
        }
    }

    fn load_blocking(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(Self::read(&self.dir.join(key))?.map(|b| {
            let v = version_of(&b);
            (b, v)
        }))
    }

    fn save_blocking(
        &self,
        key: &str,
        bytes: &[u8],
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        let path = self.dir.join(key);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| failed("create", &parent, e))?;
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| failed("open", &lock_path, e))?;
        lock.lock().map_err(|e| failed("lock", &lock_path, e))?;
        let current = Self::read(&path)?.map(|b| version_of(&b));
        let matches = match (expect, &current) {
            (Expect::Absent, None) => true,
            (Expect::Version(want), Some(have)) => want == have,
            _ => false,
        };
        if !matches {
            return Err(StoreError::Conflict);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(|e| failed("create", &tmp, e))?;
            f.write_all(bytes).map_err(|e| failed("write", &tmp, e))?;
            f.sync_all().map_err(|e| failed("sync", &tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| failed("rename onto", &path, e))?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed("sync", &parent, e))?;
        drop(lock);
        Ok(version_of(bytes))
    }
}

/// Runs a blocking file operation on tokio's blocking threads, off the data thread.
fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Failed(format!("store thread failed: {e}")))?
    })
}

impl CheckpointStore for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<(Vec<u8>, Version)>> {
        let (me, key) = (self.clone(), key.to_string());
        off_thread(move || me.load_blocking(&key))
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> StoreFuture<'a, Version> {
        let (me, key) = (self.clone(), key.to_string());
        off_thread(move || me.save_blocking(&key, &bytes, &expect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes_fence_a_stale_version() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::open(d.path()).unwrap();
        let k = "streams/a%2F1.slice";
        assert!(s.load(k).await.unwrap().is_none());
        let v1 = s.save(k, b"one".to_vec(), Expect::Absent).await.unwrap();
        assert!(matches!(
            s.save(k, b"again".to_vec(), Expect::Absent).await,
            Err(StoreError::Conflict)
        ));
        let v2 = s
            .save(k, b"two".to_vec(), Expect::Version(v1.clone()))
            .await
            .unwrap();
        // The stale owner still holds v1: refused, and the newer object is untouched.
        assert!(matches!(
            s.save(k, b"stale".to_vec(), Expect::Version(v1)).await,
            Err(StoreError::Conflict)
        ));
        let (b, v) = s.load(k).await.unwrap().unwrap();
        assert_eq!((b.as_slice(), v), (&b"two"[..], v2));
    }
}
