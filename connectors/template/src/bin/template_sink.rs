//! template_sink: a minimal sink connector to copy when you write your own.
//!
//! It appends the payload of every message from the engine to a text file, one line per
//! message. The file plays the part of your external system (a table, a bucket, a topic).
//!
//! Delivery guarantee: at-least-once. The runtime acknowledges a batch to the engine only
//! after `write` returned (the lines written, and synced to disk with `--CONNECTOR-sync
//! true`); if this process dies before that, the engine sends the batch again when the sink
//! is back, so a line can appear twice but is never lost. A payload that contains a newline
//! can never be written as one line: `write` refuses it, and the runtime puts it in
//! `--dead-letter DIR` when given; without that flag the sink stops with an error and does
//! not acknowledge it.
//!
//! Run it (the engine connects to the `copy` connector's port in `app.toml`):
//! ```text
//! template_sink --application-module app.toml --connector copy --copy-file out.txt
//! printf 'a\nb\n' | template_sink --connector copy --copy-file out.txt --from stdin  # no engine
//! ```

use std::process::ExitCode;

use connector_runtime::prelude::*;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

// 1. The parameters: the Rust counterpart of Wallaroo's
//    `SinkConnector(required_params=["file"], optional_params=["sync"])`.

/// Appends the payload of every message from the engine to a file, one line each (a template to copy).
#[derive(Parser)]
#[command(name = "template_sink")]
struct Params {
    /// File to append one line per message to
    #[arg(long)]
    file: String,
    /// true: fsync the file before acknowledging, so acknowledged lines survive a power cut
    #[arg(long)]
    sync: bool,
}

// 2. The connector: the external system's handle, and how to write a batch to it.
struct FileSink {
    file: File,
    path: String,
    sync: bool,
    lines: Vec<u8>,
}

impl SinkConnector for FileSink {
    /// The seed's `read()` loop, a batch at a time: write, wait until the external system
    /// confirmed it, and say what became of each message. The runtime acknowledges the batch
    /// to the engine only after this returns.
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        self.lines.clear();
        for (i, msg) in batch.iter().enumerate() {
            // A message the external system can never take is refused for good; a transient
            // failure would be `outcomes.retry(i, why)` (the runtime writes it again later).
            if msg.payload.contains(&b'\n') {
                let why = "payload contains a newline; this sink writes one line per message";
                outcomes.refuse(i, why);
                continue;
            }
            self.lines.extend_from_slice(&msg.payload);
            self.lines.push(b'\n');
        }
        // An error here stops the sink: nothing of the batch is acknowledged.
        self.file
            .write_all(&self.lines)
            .await
            .with_context(|| format!("cannot write {}", self.path))?;
        self.file.flush().await?;
        if self.sync {
            self.file.sync_data().await?;
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: 1000,
            ..Batching::default()
        }
    }
}

// 3. `main`: connect to the external system (fail with a one-line reason if we cannot) and
//    hand the connector to the runtime. The seed's `listen()` is the runtime's: it listens on
//    the connector's address from the application file and lets the engine connect (and
//    reconnect), or reads standard input with `--from stdin`.
fn main() -> ExitCode {
    connector_runtime::sink()
        // Optional: what `--check` tries besides the runtime's own checks.
        .check(|ctx, p: Params| async move {
            vec![Check::from_result(
                format!("output file {} can be appended to", p.file),
                open(&p.file)
                    .await
                    .map_err(|e| anyhow!("{e}: fix --{}-file", ctx.connector)),
            )]
        })
        .run(|ctx, p: Params| async move {
            let file = open(&p.file)
                .await
                .with_context(|| format!("cannot open --{}-file {}", ctx.connector, p.file))?;
            Ok(FileSink {
                file,
                path: p.file,
                sync: p.sync,
                lines: Vec::new(),
            })
        })
}

async fn open(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}
