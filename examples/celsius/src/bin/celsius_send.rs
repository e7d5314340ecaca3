//! `celsius_send HOST:PORT FROM TO`: sends FROM..TO (exclusive) as big-endian f32 datagrams,
//! the input of the Celsius demo.

use std::net::UdpSocket;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), from, to) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<i32>().ok()).unwrap_or(0),
        args.get(2)
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or(100),
    ) else {
        eprintln!("usage: celsius_send HOST:PORT [FROM] [TO]");
        return ExitCode::from(2);
    };
    let socket = match UdpSocket::bind("127.0.0.1:0") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("celsius_send: {e}");
            return ExitCode::FAILURE;
        }
    };
    for c in from..to {
        if let Err(e) = socket.send_to(&(c as f32).to_be_bytes(), addr) {
            eprintln!("celsius_send: cannot send to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
