//! udp_sink: sends each message's payload from the engine as one UDP datagram.
//!
//! A datagram is "confirmed" once the kernel accepted it; a payload too large for UDP is
//! refused permanently (dead-lettered with `--dead-letter DIR`, else the sink stops).

use std::process::ExitCode;

use connector_runtime::prelude::*;
use tokio::net::UdpSocket;

/// Sends the payload of every message from the engine as one UDP datagram.
#[derive(Parser)]
#[command(name = "udp_sink")]
struct Params {
    /// Destination address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Destination UDP port
    #[arg(long)]
    port: u16,
}

struct UdpSink {
    socket: UdpSocket,
    destination: String,
}

impl SinkConnector for UdpSink {
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()> {
        for (i, msg) in batch.iter().enumerate() {
            match self.socket.send(&msg.payload).await {
                Ok(_) => {}
                // EMSGSIZE: this payload can never be sent as one datagram.
                Err(e) if e.raw_os_error() == Some(90) => outcomes.refuse(
                    i,
                    format!(
                        "payload of {} bytes is too large for a UDP datagram",
                        msg.payload.len()
                    ),
                ),
                // Nobody listening yet (ICMP port unreachable): UDP is fire-and-forget.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => bail!("UDP send to {} failed: {e}", self.destination),
            }
        }
        Ok(())
    }

    fn batching(&self) -> Batching {
        Batching {
            max: 1024,
            ..Batching::default()
        }
    }
}

fn main() -> ExitCode {
    connector_runtime::sink().run(|_ctx, p: Params| async move {
        let bind = if p.host.contains(':') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(bind).await?;
        let destination = format!("{}:{}", p.host, p.port);
        socket
            .connect((p.host.as_str(), p.port))
            .await
            .with_context(|| format!("cannot resolve UDP destination {destination}"))?;
        Ok(UdpSink {
            socket,
            destination,
        })
    })
}
