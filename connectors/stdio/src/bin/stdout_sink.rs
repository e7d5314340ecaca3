//! stdout_sink: writes every message from the engine to standard output
//! (`--format lines|frames|kv`), acknowledging once written.

use std::process::ExitCode;

use bytes::BytesMut;
use connector_runtime::format::Format;
use connector_runtime::prelude::*;
use connector_runtime::OutputClosed;
use tokio::io::AsyncWriteExt;

/// Writes every message from the engine to standard output (--format lines|frames|kv).
#[derive(Parser)]
#[command(name = "stdout_sink")]
struct Params {}

struct StdoutSink {
    out: tokio::io::Stdout,
    format: Format,
    buf: BytesMut,
}

impl SinkConnector for StdoutSink {
    async fn write(&mut self, batch: &[SinkMessage], _: &mut Outcomes) -> Result<()> {
        for m in batch {
            self.format.encode(&m.key, &m.payload, &mut self.buf);
        }
        let written = async {
            self.out.write_all(&self.buf).await?;
            self.out.flush().await
        }
        .await;
        self.buf.clear();
        match written {
            Ok(()) => Ok(()),
            // `| head`: a clean end; what was not written is not acknowledged.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
            Err(e) => bail!("cannot write to standard output: {e}"),
        }
    }
}

fn main() -> ExitCode {
    connector_runtime::sink().run(|ctx, _: Params| async move {
        Ok(StdoutSink {
            out: tokio::io::stdout(),
            format: ctx.options.format,
            buf: BytesMut::new(),
        })
    })
}
