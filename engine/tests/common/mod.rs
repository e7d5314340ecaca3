//! Raw-framing test peers: a blocking source client and a test sink server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use framing::{Frame, Hello, ProtocolCodec};
use tokio_util::codec::Decoder;

/// A blocking connection speaking raw protocol frames.
pub struct Raw {
    pub s: UnixStream,
    pub eof: bool,
    buf: BytesMut,
    codec: ProtocolCodec,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    return Raw {
                        s,
                        eof: false,
                        buf: BytesMut::new(),
                        codec: ProtocolCodec::new(64 << 20),
                    }
                }
                Err(e) if Instant::now() > deadline => panic!("connect {path:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn from_stream(s: UnixStream) -> Raw {
        Raw {
            s,
            eof: false,
            buf: BytesMut::new(),
            codec: ProtocolCodec::new(64 << 20),
        }
    }

    pub fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.s.write_all(&b).unwrap();
    }

    pub fn send_all(&mut self, frames: &[Frame]) {
        let mut b = BytesMut::new();
        for f in frames {
            f.encode(&mut b).unwrap();
        }
        self.s.write_all(&b).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Next frame, or None on EOF / timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(f)) = self.codec.decode(&mut self.buf) {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => return None,
            }
        }
    }

    /// True when the peer closed the connection (EOF) within `timeout`.
    pub fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn hello_with(&mut self, version: &str, cookie: &str) -> Frame {
        self.send(&Frame::Hello(Hello {
            version: version.into(),
            cookie: cookie.into(),
            program_name: "test".into(),
            instance_name: "t1".into(),
        }));
        self.recv(Duration::from_secs(5)).expect("answer to HELLO")
    }

    /// HELLO with the right version; returns the credits.
    pub fn hello(&mut self, cookie: &str) -> u32 {
        match self.hello_with("0.0.1", cookie) {
            Frame::Ok { initial_credits } => initial_credits,
            f => panic!("expected OK, got {f:?}"),
        }
    }

    /// NOTIFY; returns (success, point).
    pub fn notify(&mut self, stream_id: u64, name: &str, point: u64) -> (bool, u64) {
        self.send(&Frame::Notify {
            stream_id,
            stream_name: name.into(),
            point_of_ref: point,
        });
        loop {
            match self.recv(Duration::from_secs(5)).expect("NOTIFY_ACK") {
                Frame::NotifyAck {
                    success,
                    stream_id: s,
                    point_of_ref,
                } if s == stream_id => return (success, point_of_ref),
                Frame::Ack { .. } => continue,
                f => panic!("expected NOTIFY_ACK, got {f:?}"),
            }
        }
    }

    /// Waits until an ACK pair for `stream` reaches `point`; returns every pair seen.
    pub fn wait_ack(&mut self, stream: u64, point: u64, timeout: Duration) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(Frame::Ack { acks, .. }) => {
                    for (s, p) in acks {
                        if s == stream {
                            seen.push(p);
                            if p >= point {
                                return seen;
                            }
                        }
                    }
                }
                Some(_) => {}
                None => panic!("no ACK reaching {point} for stream {stream}; saw {seen:?}"),
            }
        }
    }
}

pub fn msg(stream_id: u64, id: u64, key: &[u8], payload: &[u8]) -> Frame {
    Frame::Message(framing::Message {
        stream_id,
        message_id: id,
        event_time: id as i64 * 10,
        key: bytes::Bytes::copy_from_slice(key),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// One output received by the test sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub stream: u64,
    pub id: u64,
    pub event_time: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A sink connector for tests: accepts the engine, grants credits, records every MESSAGE,
/// acknowledges (unless told to withhold) and can drop the connection on demand.
pub struct TestSink {
    pub path: PathBuf,
    pub received: Arc<Mutex<Vec<Out>>>,
    pub ack: Arc<AtomicBool>,
    pub drop_conn: Arc<AtomicBool>,
    pub notify_point: Arc<AtomicU64>,
    pub connections: Arc<AtomicUsize>,
    pub notifies: Arc<Mutex<Vec<(u64, String, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl TestSink {
    pub fn start(path: PathBuf) -> TestSink {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let t = TestSink {
            path,
            received: Arc::default(),
            ack: Arc::new(AtomicBool::new(true)),
            drop_conn: Arc::default(),
            notify_point: Arc::new(AtomicU64::new(u64::MAX)),
            connections: Arc::default(),
            notifies: Arc::default(),
            stop: Arc::default(),
        };
        let (received, ack, drop_conn, point, conns, notifies, stop) = (
            t.received.clone(),
            t.ack.clone(),
            t.drop_conn.clone(),
            t.notify_point.clone(),
            t.connections.clone(),
            t.notifies.clone(),
            t.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                conns.fetch_add(1, Ordering::SeqCst);
                serve(
                    Raw::from_stream(s),
                    &received,
                    &ack,
                    &drop_conn,
                    &point,
                    &notifies,
                    &stop,
                );
            }
        });
        t
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until `n` outputs were received.
    pub fn wait_count(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "sink got {} of {n} outputs",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut raw: Raw,
    received: &Mutex<Vec<Out>>,
    ack: &AtomicBool,
    drop_conn: &AtomicBool,
    point: &AtomicU64,
    notifies: &Mutex<Vec<(u64, String, u64)>>,
    stop: &AtomicBool,
) {
    match raw.recv(Duration::from_secs(5)) {
        Some(Frame::Hello(_)) => raw.send(&Frame::Ok {
            initial_credits: 1 << 20,
        }),
        _ => return,
    }
    let mut unacked: Option<(u64, u64, u32)> = None; // stream, last id, count
    while !stop.load(Ordering::SeqCst) {
        if drop_conn.swap(false, Ordering::SeqCst) {
            return;
        }
        let f = raw.recv(Duration::from_millis(20));
        match f {
            Some(Frame::Notify {
                stream_id,
                stream_name,
                point_of_ref,
            }) => {
                notifies
                    .lock()
                    .unwrap()
                    .push((stream_id, stream_name, point_of_ref));
                raw.send(&Frame::NotifyAck {
                    success: true,
                    stream_id,
                    point_of_ref: point.load(Ordering::SeqCst),
                })
            }
            Some(Frame::Message(m)) => {
                received.lock().unwrap().push(Out {
                    stream: m.stream_id,
                    id: m.message_id,
                    event_time: m.event_time,
                    key: m.key.to_vec(),
                    payload: m.payload.to_vec(),
                });
                let c = unacked.map_or(0, |u| u.2);
                unacked = Some((m.stream_id, m.message_id, c + 1));
                // ack whenever no more frames are buffered
                if raw.buf.has_remaining() {
                    continue;
                }
            }
            Some(_) => return,
            None => {
                // timeout or EOF: check the socket is still there
                if raw.eof {
                    return;
                }
            }
        }
        if ack.load(Ordering::SeqCst) {
            if let Some((s, id, n)) = unacked.take() {
                raw.send(&Frame::Ack {
                    credits: n,
                    acks: vec![(s, id)],
                });
            }
        }
    }
}

/// Writes an application file and returns it loaded.
pub fn app_file(dir: &Path, text: &str) -> application::Application {
    telemetry::init_logging();
    let p = dir.join("app.toml");
    std::fs::write(&p, text).unwrap();
    application::Application::load(&p).unwrap()
}

/// Starts a pass-through engine for `app`.
pub fn pass_through(config: application::Application) -> engine::EngineHandle {
    let pipes: Vec<(String, Vec<String>)> = config
        .pipelines
        .iter()
        .map(|p| (p.source.clone(), p.sinks.clone()))
        .collect();
    let opts = engine::RunOptions {
        stats_interval: Duration::ZERO,
        ..Default::default()
    };
    engine::spawn(
        move || {
            let mut app = engine::App::new();
            for (s, sinks) in pipes {
                let v: Vec<&str> = sinks.iter().map(|s| s.as_str()).collect();
                app.pass_through(&s, &v);
            }
            app
        },
        config,
        opts,
    )
    .unwrap()
}
