//! A blocking source connector written with raw framing: sends records `1..=count` of one
//! stream (message id = record number), resumes from the engine's NOTIFY_ACK point after
//! every reconnect (so it replays exactly what was not acknowledged), sends EOS and returns
//! once the last record is acknowledged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use application::Endpoint;
use bytes::BytesMut;
use framing::{Frame, Hello, NOTHING_PROCESSED};

/// Progress shared with the caller (for tests and reports).
#[derive(Debug, Default)]
pub struct Progress {
    /// Highest record id sent.
    pub sent: AtomicU64,
    /// Highest record id acknowledged.
    pub acked: AtomicU64,
    /// Connections made.
    pub sessions: AtomicU64,
    /// Bytes of MESSAGE frames written (replays included).
    pub bytes: AtomicU64,
}

trait Sock: Read + Write + Send {
    fn dup(&self) -> std::io::Result<Box<dyn Sock>>;
    fn close(&self);
}
impl Sock for UnixStream {
    fn dup(&self) -> std::io::Result<Box<dyn Sock>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}
impl Sock for TcpStream {
    fn dup(&self) -> std::io::Result<Box<dyn Sock>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

fn connect(ep: &Endpoint) -> std::io::Result<Box<dyn Sock>> {
    Ok(match ep {
        Endpoint::Unix(p) => Box::new(UnixStream::connect(p)?),
        Endpoint::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// Reads frames into `buf` until one is complete.
fn read_frame(s: &mut dyn Sock, buf: &mut Vec<u8>) -> Result<Frame, String> {
    loop {
        if buf.len() >= 4 {
            let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() >= 4 + n {
                let body = bytes::Bytes::copy_from_slice(&buf[4..4 + n]);
                buf.drain(..4 + n);
                return Frame::decode(body).map_err(|e| e.to_string());
            }
        }
        let mut tmp = vec![0u8; 64 * 1024];
        match s.read(&mut tmp) {
            Ok(0) => return Err("engine closed the connection".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn write(s: &mut dyn Sock, f: &Frame) -> Result<(), String> {
    let mut b = BytesMut::new();
    f.encode(&mut b).map_err(|e| e.to_string())?;
    s.write_all(&b).map_err(|e| e.to_string())
}

struct Shared {
    credits: u64,
    acked: u64,
    dead: Option<String>,
}

/// Feeds `count` records to the engine until all are acknowledged, reconnecting (for up to
/// `patience` without progress) whenever the engine goes away.
pub fn feed(
    ep: &Endpoint,
    cookie: &str,
    stream_name: &str,
    count: u64,
    record: &(dyn Fn(u64) -> Vec<u8> + Sync),
    progress: &Progress,
    patience: Duration,
) -> Result<(), String> {
    let mut last_progress = Instant::now();
    let mut last_acked = 0;
    loop {
        match session(ep, cookie, stream_name, count, record, progress) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let a = progress.acked.load(Ordering::SeqCst);
                if a != last_acked {
                    last_acked = a;
                    last_progress = Instant::now();
                }
                if last_progress.elapsed() > patience {
                    return Err(format!("no progress for {patience:?}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn session(
    ep: &Endpoint,
    cookie: &str,
    stream_name: &str,
    count: u64,
    record: &(dyn Fn(u64) -> Vec<u8> + Sync),
    progress: &Progress,
) -> Result<(), String> {
    let mut s = connect(ep).map_err(|e| e.to_string())?;
    progress.sessions.fetch_add(1, Ordering::SeqCst);
    let mut buf = Vec::new();
    write(
        &mut *s,
        &Frame::Hello(Hello {
            version: framing::PROTOCOL_VERSION.into(),
            cookie: cookie.into(),
            program_name: "alerts_feed".into(),
            instance_name: stream_name.into(),
        }),
    )?;
    let mut credits = match read_frame(&mut *s, &mut buf)? {
        Frame::Ok { initial_credits } => u64::from(initial_credits),
        f => return Err(format!("expected OK, got {f:?}")),
    };
    let stream_id = framing::stream_id_for(stream_name);
    write(
        &mut *s,
        &Frame::Notify {
            stream_id,
            stream_name: stream_name.into(),
            point_of_ref: progress.acked.load(Ordering::SeqCst),
        },
    )?;
    credits -= 1;
    let point = loop {
        match read_frame(&mut *s, &mut buf)? {
            Frame::NotifyAck {
                success: true,
                point_of_ref,
                ..
            } => break point_of_ref,
            Frame::NotifyAck { success: false, .. } => {
                return Err("NOTIFY refused (stream still active)".into())
            }
            Frame::Ack { credits: c, .. } => credits += u64::from(c),
            f => return Err(format!("expected NOTIFY_ACK, got {f:?}")),
        }
    };
    let start = if point == NOTHING_PROCESSED { 0 } else { point };
    progress.acked.store(start, Ordering::SeqCst);
    let shared = Arc::new((
        Mutex::new(Shared {
            credits,
            acked: start,
            dead: None,
        }),
        Condvar::new(),
    ));
    let mut rd = s.dup().map_err(|e| e.to_string())?;
    let sh = shared.clone();
    std::thread::scope(|scope| {
        scope.spawn(move || loop {
            let f = read_frame(&mut *rd, &mut buf);
            let (m, cv) = &*sh;
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            match f {
                Ok(Frame::Ack { credits, acks }) => {
                    g.credits += u64::from(credits);
                    for (sid, p) in acks {
                        if sid == stream_id && p > g.acked {
                            g.acked = p;
                            progress.acked.store(p, Ordering::SeqCst);
                        }
                    }
                }
                Ok(Frame::Error { message }) => g.dead = Some(format!("ERROR: {message}")),
                Ok(f) => g.dead = Some(format!("unexpected {f:?}")),
                Err(e) => g.dead = Some(e),
            }
            cv.notify_all();
            if g.dead.is_some() || g.acked >= count {
                return;
            }
        });
        let result = (|| {
            let mut next = start + 1;
            let mut out = BytesMut::with_capacity(256 * 1024);
            while next <= count {
                let n = {
                    let (m, cv) = &*shared;
                    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                    while g.credits == 0 && g.dead.is_none() {
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    if let Some(d) = &g.dead {
                        return Err(d.clone());
                    }
                    let n = g.credits.min(4096).min(count - next + 1);
                    g.credits -= n;
                    n
                };
                out.clear();
                for _ in 0..n {
                    let r = record(next);
                    framing::encode_message(&mut out, stream_id, next, 0, b"", &r)
                        .map_err(|e| e.to_string())?;
                    next += 1;
                }
                s.write_all(&out).map_err(|e| e.to_string())?;
                progress.sent.store(next - 1, Ordering::SeqCst);
                progress.bytes.fetch_add(out.len() as u64, Ordering::SeqCst);
            }
            write(&mut *s, &Frame::Eos { stream_id })?;
            let (m, cv) = &*shared;
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            while g.acked < count && g.dead.is_none() {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            match &g.dead {
                Some(d) if g.acked < count => Err(d.clone()),
                _ => Ok(()),
            }
        })();
        // unblock the reader if we stop first
        s.close();
        result
    })
}
