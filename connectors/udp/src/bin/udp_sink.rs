//! udp_sink: sends each message's payload from the engine as one UDP datagram.
//!
//! A datagram is "confirmed" once the kernel accepted it; a payload too large for UDP is
//! refused permanently (dead-lettered with `--dead-letter DIR`, else the sink stops).

use std::process::ExitCode;

use connector_runtime::prelude::*;
use tokio::net::UdpSocket;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "udp_sink",
    about: "Sends the payload of every message from the engine as one UDP datagram.",
    direction: Direction::Sink,
    params: &[
        Param::with_default("host", "Destination address", "127.0.0.1"),
        Param::required("port", "Destination UDP port"),
    ],
};

fn main() -> ExitCode {
    connector_runtime::sink(SPEC).run(|ctx, mut sink| async move {
        let host = ctx.params.required("host")?;
        let port: u16 = ctx.params.parse_or("port", 0)?;
        let bind = if host.contains(':') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(bind).await?;
        socket
            .connect((host, port))
            .await
            .with_context(|| format!("cannot resolve UDP destination {host}:{port}"))?;
        while let Some(batch) = sink.read_batch(1024).await {
            for msg in &batch {
                match socket.send(&msg.payload).await {
                    Ok(_) => {
                        ctx.metrics.messages_out.inc();
                        ctx.metrics.bytes_out.add(msg.payload.len() as u64);
                    }
                    Err(e) if e.raw_os_error() == Some(90) => {
                        // EMSGSIZE: this payload can never be sent as one datagram.
                        ctx.dead_letter(
                            msg,
                            &format!(
                                "payload of {} bytes is too large for a UDP datagram",
                                msg.payload.len()
                            ),
                        )
                        .await?;
                    }
                    // Nobody listening yet (ICMP port unreachable): UDP is fire-and-forget.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(anyhow!("UDP send to {host}:{port} failed: {e}")),
                }
            }
            sink.ack_all(&batch);
        }
        Ok(())
    })
}
