//! udp_source: receives UDP datagrams and sends each one, byte for byte, to the engine.
//!
//! UDP has no replay, so this source is at-most-once upstream of itself: a datagram the
//! kernel dropped is gone. Empty datagrams and datagrams over `max_bytes` are counted and
//! reported, not forwarded.
//!
//! Copy this file to start a connector of your own: the parameters, `start` (open the
//! upstream), `read` (push what is ready) and, when the upstream can commit, `commit`.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Receives UDP datagrams and forwards each one unchanged as a message to the engine.
#[derive(Parser)]
#[command(name = "udp_source")]
struct Params {
    /// Address to bind the UDP socket to
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// UDP port to receive on
    #[arg(long)]
    port: u16,
    /// Largest datagram forwarded; larger ones are counted and dropped
    #[arg(long, default_value_t = 65507)]
    max_bytes: usize,
    /// Kernel receive buffer in bytes (bursts beyond it are dropped by the kernel)
    #[arg(long, default_value_t = 8 << 20)]
    recv_buffer: usize,
}

struct UdpSource {
    socket: UdpSocket,
    name: String,
    stream: Option<u64>,
    next_id: u64,
    buf: Vec<u8>,
    max_bytes: usize,
    empty: Counter,
    oversize: Counter,
}

impl SourceConnector for UdpSource {
    type Token = ();

    async fn read(&mut self, out: &mut Batch<()>) -> Result<()> {
        let Some(stream) = self.stream else {
            self.stream = Some(out.open(&self.name, None));
            return Ok(());
        };
        let mut n = self.socket.recv(&mut self.buf).await?;
        // Everything the kernel already holds, up to one batch.
        for taken in 1.. {
            if n == 0 {
                self.empty.inc();
                tracing::warn!("empty datagram dropped ({} so far)", self.empty.get());
            } else if n > self.max_bytes {
                self.oversize.inc();
                let max = self.max_bytes;
                tracing::warn!(
                    "datagram over {max} bytes dropped ({} so far)",
                    self.oversize.get()
                );
            } else {
                self.next_id += 1;
                out.push(stream, self.next_id, b"", &self.buf[..n], ());
            }
            if taken == 4096 {
                break;
            }
            n = match self.socket.try_recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        // Ids only need to increase across restarts of this process: start above both the
        // engine's resume point and any id an earlier run can have used (its start time).
        self.next_id = stream
            .resume
            .unwrap_or(0)
            .max(connector_runtime::unix_nanos());
        Ok(())
    }
}

fn main() -> ExitCode {
    connector_runtime::source().run(|ctx, p: Params| async move {
        let socket = bind(&p.host, p.port, p.recv_buffer)
            .with_context(|| format!("cannot bind UDP {}:{}", p.host, p.port))?;
        let dropped = |reason| {
            ctx.metrics.registry.counter(
                "udp_datagrams_dropped_total",
                "Datagrams not forwarded, by reason.",
                &[("reason", reason)],
            )
        };
        Ok(UdpSource {
            socket,
            name: format!("udp:{}:{}", p.host, p.port),
            stream: None,
            next_id: 0,
            buf: vec![0u8; p.max_bytes + 1],
            max_bytes: p.max_bytes,
            empty: dropped("empty"),
            oversize: dropped("oversize"),
        })
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
