//! stdin_source: reads records from standard input (`--format lines|frames|kv`) and sends
//! them to the engine; exits when the input ends and everything was acknowledged.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use futures::{FutureExt, StreamExt};
use tokio_util::codec::FramedRead;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "stdin_source",
    about:
        "Reads records from standard input (--format lines|frames|kv) and sends them to the engine.",
    direction: Direction::Source,
    params: &[Param::with_default(
        "stream",
        "Stream name announced to the engine",
        "stdin",
    )],
};

fn main() -> ExitCode {
    connector_runtime::source(SPEC).run(|ctx, mut source| async move {
        let stream = source.notify(ctx.params.required("stream")?, None).await?;
        let mut id = stream.resume.unwrap_or(0);
        let decoder = ctx.options.format.decoder(ctx.options.max_frame);
        let mut input = FramedRead::with_capacity(tokio::io::stdin(), decoder, 256 * 1024);
        loop {
            let next = match input.next().now_or_never() {
                Some(n) => n,
                None => {
                    source.flush().await?;
                    tokio::select! {
                        n = input.next() => n,
                        // Idle: the flush above notices a lost engine connection.
                        _ = tokio::time::sleep(IDLE_FLUSH) => continue,
                        _ = ctx.shutdown.cancelled() => break,
                    }
                }
            };
            match next {
                Some(Ok((key, payload))) => {
                    id += 1;
                    ctx.metrics.messages_in.inc();
                    ctx.metrics.bytes_in.add(payload.len() as u64);
                    source.write(stream.id, id, &key, &payload).await?;
                }
                Some(Err(e)) => bail!("standard input: {e}"),
                None => break,
            }
        }
        source.finish(stream.id, Duration::from_secs(30)).await
    })
}
