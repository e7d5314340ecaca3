//! template_sink: a minimal sink connector to copy when you write your own.
//!
//! It appends the payload of every message from the engine to a text file, one line per
//! message. The file plays the part of your external system (a table, a bucket, a topic).
//!
//! Delivery guarantee: at-least-once. A message is acknowledged to the engine only after its
//! line was written to the file (and synced to disk with `--CONNECTOR-sync true`); if this
//! process dies before that, the engine sends the message again when the sink is back, so a
//! line can appear twice but is never lost. A payload that contains a newline can never be
//! written as one line: it is refused permanently and goes to `--dead-letter DIR` when given;
//! without that flag the sink stops with an error and does not acknowledge it.
//!
//! Run it (the engine connects to the `copy` connector's port in `app.toml`):
//! ```text
//! template_sink --application-module app.toml --connector copy --copy-file out.txt
//! printf 'a\nb\n' | template_sink --connector copy --copy-file out.txt --from stdin  # no engine
//! ```

use std::process::ExitCode;

use connector_runtime::prelude::*;
use tokio::fs::OpenOptions;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------
// 1. What this binary is and its parameters: the Rust counterpart of Wallaroo's
//    `SinkConnector(required_params=["file"], optional_params=["sync"])`.
// ---------------------------------------------------------------------------------------
const SPEC: ConnectorSpec = ConnectorSpec {
    program: "template_sink",
    about: "Appends the payload of every message from the engine to a file, one line each (a template to copy).",
    direction: Direction::Sink,
    params: &[
        Param::required("file", "File to append one line per message to"),
        Param::optional(
            "sync",
            "true: fsync the file before acknowledging, so acknowledged lines survive a power cut",
        ),
    ],
};

fn main() -> ExitCode {
    connector_runtime::legacy_sink(SPEC)
        // 2. Optional: what `--check` tries besides the runtime's checks.
        .check(|ctx| async move {
            match ctx.params.get("file") {
                Some(path) => vec![Check::from_result(
                    format!("output file {path} can be appended to"),
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .map_err(|e| anyhow!("{e}: fix --{}-file", ctx.connector)),
                )],
                None => vec![],
            }
        })
        // -------------------------------------------------------------------------------
        // 3. The body. The seed's `listen()` has already happened when it runs: the runtime
        //    listens on the connector's address from the application file and lets the
        //    engine connect (and reconnect), or reads standard input for `--from stdin`.
        // -------------------------------------------------------------------------------
        .run(|ctx, mut sink| async move {
            let path = ctx.params.required("file")?;
            let sync = ctx.params.flag("sync")?;
            // Connect to the external system: fail with a one-line reason if we cannot.
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .with_context(|| format!("cannot open --{}-file {path}", ctx.connector))?;
            let mut lines = Vec::new();

            // The seed's `read()` loop, a batch at a time: `read_batch` waits for at least one
            // message and returns up to 1000 that are ready. `sink.read()` returns one message
            // if you prefer. Both return `None` on SIGTERM/Ctrl-C or at the end of stdin.
            while let Some(batch) = sink.read_batch(1000).await {
                lines.clear();
                for msg in &batch {
                    // A message the external system can never take is refused permanently:
                    // with `--dead-letter DIR` it is set aside there and we go on (it is
                    // acknowledged with the batch below); without it, `?` stops the sink here
                    // and nothing of this batch is acknowledged.
                    if msg.payload.contains(&b'\n') {
                        ctx.dead_letter(
                            msg,
                            "payload contains a newline; this sink writes one line per message",
                        )
                        .await?;
                        continue;
                    }
                    lines.extend_from_slice(&msg.payload);
                    lines.push(b'\n');
                    ctx.metrics.messages_out.inc();
                    ctx.metrics.bytes_out.add(msg.payload.len() as u64);
                }
                // Write, and wait until the external system confirmed the write.
                file.write_all(&lines)
                    .await
                    .with_context(|| format!("cannot write {path}"))?;
                file.flush().await?;
                if sync {
                    file.sync_data().await?;
                }
                // Only now tell the engine these messages are safely delivered.
                sink.ack_all(&batch);
            }
            Ok(())
        })
}
