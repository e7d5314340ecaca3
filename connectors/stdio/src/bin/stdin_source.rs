//! stdin_source: reads records from standard input (`--format lines|frames|kv`) and sends
//! them to the engine; exits when the input ends and everything was acknowledged.

use std::process::ExitCode;

use connector_runtime::format::RecordDecoder;
use connector_runtime::prelude::*;
use futures::{FutureExt, StreamExt};
use tokio_util::codec::FramedRead;

/// Reads records from standard input (--format lines|frames|kv) and sends them to the engine.
#[derive(Parser)]
#[command(name = "stdin_source")]
struct Params {
    /// Stream name announced to the engine
    #[arg(long, default_value = "stdin")]
    stream: String,
}

struct StdinSource {
    input: FramedRead<tokio::io::Stdin, RecordDecoder>,
    name: String,
    stream: Option<u64>,
    next_id: u64,
}

impl SourceConnector for StdinSource {
    type Token = ();

    async fn read(&mut self, out: &mut Batch<()>) -> Result<()> {
        let Some(stream) = self.stream else {
            self.stream = Some(out.open(&self.name, None));
            return Ok(());
        };
        let mut next = self.input.next().await;
        for taken in 1.. {
            match next {
                Some(Ok((key, payload))) => {
                    self.next_id += 1;
                    out.push(stream, self.next_id, &key, &payload, ());
                }
                Some(Err(e)) => bail!("standard input: {e}"),
                None => {
                    out.finish();
                    break;
                }
            }
            if taken == 4096 {
                break;
            }
            match self.input.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        self.next_id = stream.resume.unwrap_or(0);
        Ok(())
    }
}

fn main() -> ExitCode {
    connector_runtime::source().run(|ctx, p: Params| async move {
        let decoder = ctx.options.format.decoder(ctx.options.max_frame);
        Ok(StdinSource {
            input: FramedRead::with_capacity(tokio::io::stdin(), decoder, 256 * 1024),
            name: p.stream,
            stream: None,
            next_id: 0,
        })
    })
}
