//! template_source: a minimal source connector to copy when you write your own.
//!
//! It sends a text file to the engine, one message per line, and remembers in an offset file
//! how far the engine has acknowledged, so a restart resumes after the last acknowledged line.
//! The file plays the part of your upstream system (a topic, a queue, a table); the offset
//! file plays the part of its commit (a Kafka offset commit, an AMQP ack, a Redis XACK).
//!
//! Delivery guarantee: at-least-once. The runtime calls `commit` only with lines the engine
//! acknowledged, so the offset file never runs ahead of the engine; after a crash the lines
//! after it are sent again (the engine drops those it already processed, since message ids
//! are byte offsets and never repeat).
//!
//! Run it (the engine listens on the `lines` connector's port in `app.toml`):
//! ```text
//! template_source --application-module app.toml --connector lines \
//!     --lines-file input.txt --lines-offset_file input.offset
//! template_source --connector lines --lines-file input.txt --to stdout | head   # no engine
//! ```

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use connector_runtime::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

// 1. The parameters: the Rust counterpart of Wallaroo's
//    `SourceConnector(required_params=["file"], optional_params=["offset_file"])`. Each field
//    is `--CONNECTOR-FIELD VALUE` (here `--lines-file input.txt`), or `FIELD = "..."` in the
//    `[source_connectors.CONNECTOR.params]` table, or the variable `CONNECTOR_FIELD`; its doc
//    comment is its `--help` line and `default_value` its default.

/// Sends the lines of a text file to the engine, one message per line (a template to copy).
#[derive(Parser)]
#[command(name = "template_source")]
struct Params {
    /// Text file to send, one message per line
    #[arg(long)]
    file: String,
    /// File where the acknowledged position is kept; a restart resumes after it
    #[arg(long)]
    offset_file: Option<PathBuf>,
}

// 2. The connector: the upstream's state, and how to read from it and commit to it.
struct FileSource {
    path: String,
    input: BufReader<tokio::fs::File>,
    offset_file: Option<PathBuf>,
    /// The position the offset file held at start.
    committed: Option<u64>,
    stream: Option<u64>,
    /// Byte offset after the last line pushed.
    offset: u64,
    /// The line being read: kept across calls, so an interrupted read loses nothing.
    line: Vec<u8>,
}

impl SourceConnector for FileSource {
    /// The commit token of a line: the byte offset after it, where to resume.
    type Token = u64;

    async fn read(&mut self, out: &mut Batch<u64>) -> Result<()> {
        // First call: announce the stream (one per partition, shard, queue, file); the
        // runtime asks the engine where it stands and calls `opened`.
        let Some(stream) = self.stream else {
            self.stream = Some(out.open(&self.path, self.committed));
            return Ok(());
        };
        // The seed's `write()`, a batch at a time. The runtime sends the batch when `read`
        // returns, waiting for credits from the engine (back-pressure).
        while out.len() < 1000 {
            // Appends to `self.line`: an interrupted call keeps what it read there, so the
            // line's length (not this call's count) is what moves the offset.
            let n = self.input.read_until(b'\n', &mut self.line).await?;
            if n == 0 && self.line.is_empty() {
                out.finish(); // end of the file: drain, commit, end the stream, exit
                break;
            }
            self.offset += self.line.len() as u64;
            let text = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            // The message id must grow within a stream: the byte offset after the line does.
            out.push(stream, self.offset, b"", text, self.offset);
            self.line.clear();
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        // The engine has processed up to `stream.resume`: start after the later of the two.
        self.offset = stream.resume.max(self.committed).unwrap_or(0);
        self.input.seek(SeekFrom::Start(self.offset)).await?;
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<u64>) -> Result<()> {
        // Only acknowledged lines come here, in order: keep the last position.
        match (&self.offset_file, tokens.last()) {
            (Some(f), Some(point)) => write_offset(f, *point).await,
            _ => Ok(()),
        }
    }
}

// 3. `main`: open the upstream (so a bad setting is reported at once, before waiting for the
//    engine) and hand the connector to the runtime, which connects to the engine (or writes
//    to standard output with `--to stdout`) and drives it until the end or Ctrl-C.
fn main() -> ExitCode {
    connector_runtime::source()
        // Optional: what `--check` tries besides the runtime's own checks.
        .check(|ctx, p: Params| async move {
            vec![Check::from_result(
                format!("input file {} is readable", p.file),
                tokio::fs::File::open(&p.file)
                    .await
                    .map_err(|e| anyhow!("{e}: fix --{}-file", ctx.connector)),
            )]
        })
        .run(|ctx, p: Params| async move {
            let committed = match &p.offset_file {
                Some(f) => read_offset(f).await?,
                None => None,
            };
            let file = tokio::fs::File::open(&p.file)
                .await
                .with_context(|| format!("cannot open --{}-file {}", ctx.connector, p.file))?;
            Ok(FileSource {
                path: p.file,
                input: BufReader::new(file),
                offset_file: p.offset_file,
                committed,
                stream: None,
                offset: 0,
                line: Vec::new(),
            })
        })
}

/// The upstream commit: a new file renamed over the old one, so a crash never leaves half a
/// number.
async fn write_offset(f: &Path, point: u64) -> Result<()> {
    let tmp = f.with_extension("tmp");
    tokio::fs::write(&tmp, format!("{point}\n"))
        .await
        .with_context(|| format!("cannot write the offset file {}", tmp.display()))?;
    tokio::fs::rename(&tmp, f).await?;
    tracing::info!("committed up to byte {point}");
    Ok(())
}

/// The committed position, if the offset file exists.
async fn read_offset(f: &Path) -> Result<Option<u64>> {
    match tokio::fs::read_to_string(f).await {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            anyhow!(
                "offset file {} does not hold a byte offset ({s:?}): fix it, or delete it to start from the beginning",
                f.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read the offset file {}: {e}", f.display())),
    }
}
