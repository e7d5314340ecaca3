//! `udp_print HOST:PORT COUNT [TIMEOUT_SECS]`: prints each datagram received as one line until
//! COUNT arrived (exit 0) or nothing arrived for TIMEOUT_SECS (exit 1). The demo's output end.

use std::io::Write;
use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(count)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: udp_print HOST:PORT COUNT [TIMEOUT_SECS]");
        return ExitCode::from(2);
    };
    let timeout = args
        .get(2)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(30);
    let socket = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp_print: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(timeout)));
    let mut buf = vec![0u8; 65536];
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("udp_print: nothing received for {timeout} s: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
