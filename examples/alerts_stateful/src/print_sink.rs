//! A minimal sink connector written with raw framing: accepts the engine, prints every
//! payload to stdout as it arrives and acknowledges each batch at once.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

use application::Endpoint;
use bytes::{BufMut, BytesMut};
use framing::{Frame, NOTHING_PROCESSED};

fn serve(mut s: impl Read + Write, out: &mut dyn Write) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 256 * 1024];
    let mut replies = BytesMut::new();
    loop {
        let n = s.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut off = 0;
        let mut acks: Vec<(u64, u64)> = Vec::new();
        let mut count = 0u32;
        while buf.len() - off >= 4 {
            let len =
                u32::from_be_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if buf.len() - off < 4 + len {
                break;
            }
            let body = &buf[off + 4..off + 4 + len];
            off += 4 + len;
            // MESSAGE parsed in place: stream, id, event time, key, payload
            if body.len() >= 27 && body[0] == framing::Tag::Message as u8 {
                let stream = u64::from_be_bytes(body[1..9].try_into().unwrap_or_default());
                let id = u64::from_be_bytes(body[9..17].try_into().unwrap_or_default());
                let klen = u16::from_be_bytes([body[25], body[26]]) as usize;
                let payload = body.get(27 + klen..).ok_or("truncated MESSAGE")?;
                out.write_all(payload).map_err(|e| e.to_string())?;
                count += 1;
                match acks.iter_mut().find(|a| a.0 == stream) {
                    Some(a) => a.1 = id,
                    None => acks.push((stream, id)),
                }
                continue;
            }
            match Frame::decode(bytes::Bytes::copy_from_slice(body)).map_err(|e| e.to_string())? {
                Frame::Hello(_) => Frame::Ok {
                    initial_credits: 65536,
                }
                .encode(&mut replies)
                .map_err(|e| e.to_string())?,
                Frame::Notify { stream_id, .. } => Frame::NotifyAck {
                    success: true,
                    stream_id,
                    point_of_ref: NOTHING_PROCESSED,
                }
                .encode(&mut replies)
                .map_err(|e| e.to_string())?,
                Frame::Message(m) => {
                    out.write_all(&m.payload).map_err(|e| e.to_string())?;
                    count += 1;
                    match acks.iter_mut().find(|a| a.0 == m.stream_id) {
                        Some(a) => a.1 = m.message_id,
                        None => acks.push((m.stream_id, m.message_id)),
                    }
                }
                Frame::Eos { .. } => {}
                f => return Err(format!("unexpected frame {:?}", f.tag())),
            }
        }
        buf.drain(..off);
        out.flush().map_err(|e| e.to_string())?;
        if count > 0 {
            replies.put_u32((9 + 16 * acks.len()) as u32);
            replies.put_u8(6);
            replies.put_u32(count);
            replies.put_u32(acks.len() as u32);
            for (s, p) in &acks {
                replies.put_u64(*s);
                replies.put_u64(*p);
            }
        }
        if !replies.is_empty() {
            s.write_all(&replies).map_err(|e| e.to_string())?;
            replies.clear();
        }
    }
}

/// Listens on `ep` and serves engine connections one after the other, forever; payloads go
/// to stdout, or nowhere when `quiet`.
pub fn run(ep: &Endpoint, quiet: bool) -> Result<(), String> {
    if quiet {
        run_to(ep, &mut std::io::sink())
    } else {
        run_to(ep, &mut std::io::stdout())
    }
}

/// Like [`run`], writing every payload to `out`.
pub fn run_to(ep: &Endpoint, out: &mut dyn Write) -> Result<(), String> {
    match ep {
        Endpoint::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).map_err(|e| format!("cannot listen on {ep}: {e}"))?;
            loop {
                let (s, _) = l.accept().map_err(|e| e.to_string())?;
                if let Err(e) = serve(s, out) {
                    eprintln!("print-sink: {e}");
                }
            }
        }
        Endpoint::Tcp { host, port } => {
            let l = TcpListener::bind((host.as_str(), *port))
                .map_err(|e| format!("cannot listen on {ep}: {e}"))?;
            loop {
                let (s, _) = l.accept().map_err(|e| e.to_string())?;
                if let Err(e) = serve(s, out) {
                    eprintln!("print-sink: {e}");
                }
            }
        }
    }
}
