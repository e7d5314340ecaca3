//! stdout_sink: writes every message from the engine to standard output
//! (`--format lines|frames|kv`), acknowledging once written.

use std::process::ExitCode;

use bytes::BytesMut;
use connector_runtime::prelude::*;
use tokio::io::AsyncWriteExt;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "stdout_sink",
    about: "Writes every message from the engine to standard output (--format lines|frames|kv).",
    direction: Direction::Sink,
    params: &[],
};

fn main() -> ExitCode {
    connector_runtime::sink(SPEC).run(|ctx, mut sink| async move {
        let mut out = tokio::io::stdout();
        let mut buf = BytesMut::new();
        while let Some(batch) = sink.read_batch(4096).await {
            for m in &batch {
                ctx.options.format.encode(&m.key, &m.payload, &mut buf);
                ctx.metrics.messages_out.inc();
                ctx.metrics.bytes_out.add(m.payload.len() as u64);
            }
            match async {
                out.write_all(&buf).await?;
                out.flush().await
            }
            .await
            {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => bail!("cannot write to standard output: {e}"),
            }
            buf.clear();
            sink.ack_all(&batch);
        }
        Ok(())
    })
}
