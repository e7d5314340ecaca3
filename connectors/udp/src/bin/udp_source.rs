//! udp_source: receives UDP datagrams and sends each one, byte for byte, to the engine.
//!
//! UDP has no replay, so this source is at-most-once upstream of itself: a datagram the
//! kernel dropped is gone. Empty datagrams and datagrams over `max_bytes` are counted and
//! reported, not forwarded.
//!
//! Copy this file to start a connector of your own: parameters in `SPEC`, then a loop that
//! reads upstream, `write`s, and `flush`es when nothing more is ready.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

const SPEC: ConnectorSpec = ConnectorSpec {
    program: "udp_source",
    about: "Receives UDP datagrams and forwards each one unchanged as a message to the engine.",
    direction: Direction::Source,
    params: &[
        Param::with_default("host", "Address to bind the UDP socket to", "127.0.0.1"),
        Param::required("port", "UDP port to receive on"),
        Param::with_default(
            "max_bytes",
            "Largest datagram forwarded; larger ones are counted and dropped",
            "65507",
        ),
        Param::with_default(
            "recv_buffer",
            "Kernel receive buffer in bytes (bursts beyond it are dropped by the kernel)",
            "8388608",
        ),
    ],
};

fn main() -> ExitCode {
    connector_runtime::source(SPEC).run(|ctx, mut source| async move {
        let host = ctx.params.required("host")?;
        let port: u16 = ctx.params.parse_or("port", 0)?;
        let max_bytes: usize = ctx.params.parse_or("max_bytes", 65507)?;
        let socket = bind(host, port, ctx.params.parse_or("recv_buffer", 8 << 20)?)
            .with_context(|| format!("cannot bind UDP {host}:{port}"))?;
        let stream = source.notify(&format!("udp:{host}:{port}"), None).await?;
        // Ids only need to increase across restarts of this process: start above both the
        // engine's resume point and any id an earlier run can have used (its start time).
        let mut id = stream.resume.unwrap_or(0).max(unix_nanos());
        let (empty, oversize) = (
            ctx.metrics.registry.counter(
                "udp_datagrams_dropped_total",
                "Datagrams not forwarded, by reason.",
                &[("reason", "empty")],
            ),
            ctx.metrics.registry.counter(
                "udp_datagrams_dropped_total",
                "Datagrams not forwarded, by reason.",
                &[("reason", "oversize")],
            ),
        );
        let mut buf = vec![0u8; max_bytes + 1];
        loop {
            let n = tokio::select! {
                r = socket.recv(&mut buf) => r?,
                _ = tokio::time::sleep(IDLE_FLUSH) => {
                    // Idle: notices a lost engine connection and resends.
                    source.flush().await?;
                    continue;
                }
                _ = ctx.shutdown.cancelled() => break,
            };
            let mut next = Some(n);
            while let Some(n) = next {
                ctx.metrics.messages_in.inc();
                ctx.metrics.bytes_in.add(n as u64);
                if n == 0 {
                    empty.inc();
                    tracing::warn!("empty datagram dropped ({} so far)", empty.get());
                } else if n > max_bytes {
                    oversize.inc();
                    tracing::warn!(
                        "datagram over {max_bytes} bytes dropped ({} so far)",
                        oversize.get()
                    );
                } else {
                    id += 1;
                    source.write(stream.id, id, b"", &buf[..n]).await?;
                }
                next = match socket.try_recv(&mut buf) {
                    Ok(n) => Some(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(e) => return Err(e.into()),
                };
            }
            source.flush().await?;
        }
        let left = source.drain(Duration::from_secs(10)).await?;
        if left > 0 {
            tracing::warn!("{left} datagrams were not acknowledged before exit");
        }
        Ok(())
    })
}

fn bind(host: &str, port: u16, recv_buffer: usize) -> Result<UdpSocket> {
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse().or_else(|_| {
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))
    })?;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!("cannot set the UDP receive buffer to {recv_buffer} bytes: {e}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
