//! Checkpoint stores: where stream slices (and, for a directory, engine snapshots) live.
//!
//! One small trait, [`CheckpointStore`], with a compare-and-swap write: a slice is saved
//! only if the object is still the version the engine last read or wrote ([`Expect`]).
//! That is the fencing of the stream hand-off: an engine that lost a stream and wakes up
//! late finds the object changed and is refused ([`StoreError::Conflict`]), whatever its
//! clock says. Two stores: a local directory ([`dir::DirStore`], lock file + rename) and an
//! S3-compatible object store ([`s3::S3Store`], `If-Match` / `If-None-Match`). Another
//! (a Postgres table, say) implements the same three methods.
//!
//! Chosen with `--checkpoint-store URL`: a path or `file://PATH` for a directory,
//! `s3://BUCKET/PREFIX?endpoint_url=...&region=...` for S3 (credentials from the SDK's
//! usual chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a profile, ...).

pub mod dir;
pub mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// The version of a stored object as the store reports it (an S3 ETag; a checksum of the
/// file for a directory): opaque, compared for equality only.
pub type Version = String;

/// What a conditional write expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object yet (the first owner of a stream).
    Absent,
    /// The object at this version (the one this engine last read or wrote).
    Version(Version),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object is not the expected version: another engine wrote it.
    #[error(
        "the object changed since this engine last read or wrote it (another engine wrote it)"
    )]
    Conflict,
    /// Anything else (unreachable store, permissions, ...), with the store's own words.
    #[error("{0}")]
    Failed(String),
}

/// A boxed future of a store operation (the trait stays object-safe).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where checkpoints are kept; shared by every engine that may own the same streams.
pub trait CheckpointStore: Send + Sync {
    /// How to name the store in log lines (`s3://bucket/prefix`, `directory /path`).
    fn describe(&self) -> String;
    /// Reads the object `key`: its bytes and version, `None` when there is none.
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<(Vec<u8>, Version)>>;
    /// Writes `bytes` as object `key` if it is still as `expect` says (atomically: readers
    /// see the old or the new object, never a mix); returns the new version.
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expect: Expect)
        -> StoreFuture<'a, Version>;
}

/// A parsed `--checkpoint-store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory.
    Dir(PathBuf),
    /// An S3-compatible bucket.
    S3(s3::S3Location),
}

impl StoreUrl {
    /// Parses a path, `file://PATH` or `s3://BUCKET[/PREFIX][?endpoint_url=URL&region=R&path_style=true]`.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return s3::S3Location::parse(rest).map(StoreUrl::S3);
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(StoreUrl::Dir(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "checkpoint store `{url}`: unknown scheme `{scheme}` (use a directory path, file://PATH or s3://BUCKET/PREFIX)"
            ));
        }
        if url.is_empty() {
            return Err("checkpoint store: empty path".into());
        }
        Ok(StoreUrl::Dir(PathBuf::from(url)))
    }

    /// Opens the store (for S3: loads the SDK configuration and checks the bucket answers).
    pub async fn open(&self) -> Result<Arc<dyn CheckpointStore>, String> {
        match self {
            StoreUrl::Dir(p) => Ok(Arc::new(dir::DirStore::open(p)?)),
            StoreUrl::S3(loc) => Ok(Arc::new(s3::S3Store::open(loc.clone()).await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            StoreUrl::parse("ckpt").unwrap(),
            StoreUrl::Dir("ckpt".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///var/x").unwrap(),
            StoreUrl::Dir("/var/x".into())
        );
        let StoreUrl::S3(l) =
            StoreUrl::parse("s3://b/p/q?endpoint_url=http://127.0.0.1:5000&region=eu-west-1")
                .unwrap()
        else {
            panic!("not s3")
        };
        assert_eq!(l.bucket, "b");
        assert_eq!(l.prefix, "p/q");
        assert_eq!(l.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(l.region.as_deref(), Some("eu-west-1"));
        assert!(StoreUrl::parse("gs://b")
            .unwrap_err()
            .contains("unknown scheme"));
        assert!(StoreUrl::parse("s3://").unwrap_err().contains("bucket"));
        assert!(StoreUrl::parse("s3://b?colour=red")
            .unwrap_err()
            .contains("colour"));
    }
}
