//! `--dead-letter DIR`: where a sink puts messages the external system permanently refuses,
//! and a source the records the protocol cannot carry (a key over 65,535 bytes, a record over
//! the frame limit), so one poison message cannot stall a pipeline.
//!
//! Two files per connector: `NAME.frames` (each payload as a plain length-prefixed frame)
//! and `NAME.jsonl` (one JSON object per message: connector, stream, message id, key, reason,
//! and the byte offset of its frame).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use tokio::fs::OpenOptions;
use tokio::io::AsyncWriteExt;

/// Appends refused messages to the dead-letter directory.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    connector: String,
    frames: PathBuf,
    index: PathBuf,
}

impl DeadLetters {
    /// Creates `dir` if needed.
    pub fn open(dir: &Path, connector: &str) -> Result<DeadLetters> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create dead-letter directory {}", dir.display()))?;
        Ok(DeadLetters {
            connector: connector.to_string(),
            frames: dir.join(format!("{connector}.frames")),
            index: dir.join(format!("{connector}.jsonl")),
        })
    }

    /// Writes one message (its stream, id, key and payload) and its reason, synced to disk
    /// before returning.
    pub async fn write(
        &self,
        stream_id: u64,
        message_id: u64,
        key: &[u8],
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        let mut frames = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.frames)
            .await
            .with_context(|| format!("cannot open {}", self.frames.display()))?;
        let offset = frames.metadata().await?.len();
        let mut buf = Vec::with_capacity(payload.len() + 4);
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(payload);
        frames.write_all(&buf).await?;
        frames.sync_data().await?;
        let line = serde_json::json!({
            "connector": self.connector,
            "stream_id": stream_id,
            "message_id": message_id,
            "key": String::from_utf8_lossy(key),
            "reason": reason,
            "frame_offset": offset,
            "payload_bytes": payload.len(),
        });
        let mut index = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.index)
            .await
            .with_context(|| format!("cannot open {}", self.index.display()))?;
        index.write_all(format!("{line}\n").as_bytes()).await?;
        index.sync_data().await?;
        Ok(())
    }
}
