//! template_source: a minimal source connector to copy when you write your own.
//!
//! It sends a text file to the engine, one message per line, and remembers in an offset file
//! how far the engine has acknowledged, so a restart resumes after the last acknowledged line.
//! The file plays the part of your upstream system (a topic, a queue, a table); the offset
//! file plays the part of its commit (a Kafka offset commit, an AMQP ack, a Redis XACK).
//!
//! Delivery guarantee: at-least-once. The offset file only ever holds a position the engine
//! acknowledged, so after a crash the lines after it are sent again (the engine drops those
//! it already processed, since message ids are byte offsets and never repeat).
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

// ---------------------------------------------------------------------------------------
// 1. What this binary is and the parameters it takes. This is the Rust counterpart of
//    Wallaroo's `SourceConnector(required_params=["file"], optional_params=["offset_file"])`.
//    Each parameter is given as `--CONNECTOR-NAME VALUE` (here `--lines-file input.txt`),
//    or as `NAME = "..."` in the `[source_connectors.CONNECTOR.params]` table of the
//    application file, or as the environment variable `CONNECTOR_NAME`. `--help` lists them.
// ---------------------------------------------------------------------------------------
const SPEC: ConnectorSpec = ConnectorSpec {
    program: "template_source",
    about:
        "Sends the lines of a text file to the engine, one message per line (a template to copy).",
    direction: Direction::Source,
    params: &[
        Param::required("file", "Text file to send, one message per line"),
        Param::optional(
            "offset_file",
            "File where the acknowledged position is kept; a restart resumes after it",
        ),
    ],
};

fn main() -> ExitCode {
    connector_runtime::legacy_source(SPEC)
        // -------------------------------------------------------------------------------
        // 2. Optional: what `--check` should try besides the runtime's own checks (the
        //    application file, the parameters, the engine's address). One `Check` per line.
        // -------------------------------------------------------------------------------
        .check(|ctx| async move {
            match ctx.params.get("file") {
                Some(path) => vec![Check::from_result(
                    format!("input file {path} is readable"),
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|e| anyhow!("{e}: fix --{}-file", ctx.connector)),
                )],
                None => vec![], // the runtime already reported the missing parameter
            }
        })
        // -------------------------------------------------------------------------------
        // 3. The body. The runtime parsed the arguments; `source` connects to the engine (the
        //    seed's `connect()`, retrying until it is up) at the first `notify`, or writes to
        //    standard output with `--to stdout`. Open upstream first, so that a bad setting
        //    is reported at once rather than after the engine is reachable.
        // -------------------------------------------------------------------------------
        .run(|ctx, mut source| async move {
            let path = ctx.params.required("file")?.to_string();
            let offset_file = ctx.params.get("offset_file").map(PathBuf::from);
            let committed = match &offset_file {
                Some(f) => read_offset(f).await?,
                None => None,
            };
            let mut file = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("cannot open --{}-file {path}", ctx.connector))?;

            // Announce the stream. A connector can open many (one per partition, shard,
            // queue); ids are a hash of the name. The engine answers with the last message id
            // it has processed on this stream, if any: resume after the later of the two.
            let stream = source.notify(&path, committed).await?;
            let start = stream.resume.max(committed).unwrap_or(0);
            let mut acks = source.acks();
            file.seek(SeekFrom::Start(start)).await?;
            let mut input = BufReader::new(file);
            let mut offset = start;
            let mut line = Vec::new();

            // The main loop: read upstream, write to the engine, commit what was acknowledged.
            let sent: Result<()> = async {
                loop {
                    line.clear();
                    let n = tokio::select! {
                        n = input.read_until(b'\n', &mut line) => n?,
                        _ = ctx.shutdown.cancelled() => break, // Ctrl-C / SIGTERM
                    };
                    if n == 0 {
                        break; // end of the file
                    }
                    offset += n as u64;
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    ctx.metrics.messages_in.inc();
                    ctx.metrics.bytes_in.add(text.len() as u64);
                    // The seed's `write()`. The message id must grow within a stream: the byte
                    // offset after the line does, and it is exactly where to resume from.
                    // `write` waits while the engine gives no credits (back-pressure) and
                    // buffers; it sends on its own when the buffer is full.
                    source.write(stream.id, offset, b"", text).await?;
                    // Commit whatever the engine acknowledged meanwhile (does not wait).
                    commit(offset_file.as_deref(), acks.try_next()).await?;
                }
                // Send what is buffered, wait (up to 30 s) until the engine acknowledged all
                // of it, then end the stream. A source that never ends (a topic, a socket)
                // calls `source.flush()` whenever upstream has nothing ready instead, and
                // every IDLE_FLUSH while it waits (that is how it notices a lost engine).
                source.finish(stream.id, Duration::from_secs(30)).await
            }
            .await;

            // Whatever ended the loop (end of file, a signal, a closed stdout under `| head`,
            // a lost engine), commit what was acknowledged, and only that. With `--to stdout`
            // a line counts as acknowledged once it was written to standard output.
            commit(offset_file.as_deref(), acks.try_next()).await?;
            sent
        })
}

/// The upstream commit: keep the highest acknowledged position in the offset file.
async fn commit(offset_file: Option<&Path>, acked: Vec<Acked>) -> Result<()> {
    let (Some(f), Some(point)) = (offset_file, acked.iter().map(|a| a.point).max()) else {
        return Ok(());
    };
    // Write a new file and rename it over the old one, so a crash never leaves half a number.
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
