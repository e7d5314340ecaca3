//! Throughput benchmark: 100-byte messages, source client -> engine -> sink server on
//! loopback, acknowledgements on (the source counts only what came back acknowledged).
//!
//! `cargo bench -p engine --bench throughput -- [uds|tcp|both] [MESSAGES] [relay]`
//!
//! The source and sink are raw-framing peers on their own threads with blocking sockets and
//! 256 KiB batched writes; the engine runs in-process on its own thread (current_thread
//! runtime), exactly as the `engine` binary does. With `relay`, a bare two-hop relay takes the
//! engine's place (every MESSAGE parsed and re-encoded, the sink's ACKs passed back as they
//! are): the ceiling of any source -> middle -> sink path on this machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use framing::{Frame, Hello};

const PAYLOAD: usize = 100;

type Acceptor = Box<dyn FnOnce() -> Box<dyn Sock> + Send>;

trait Sock: Read + Write + Send + 'static {
    fn dup(&self) -> Box<dyn Sock>;
}
impl Sock for UnixStream {
    fn dup(&self) -> Box<dyn Sock> {
        Box::new(self.try_clone().unwrap())
    }
}
impl Sock for TcpStream {
    fn dup(&self) -> Box<dyn Sock> {
        Box::new(self.try_clone().unwrap())
    }
}

/// A read buffer: bytes `start..end` of `data` are unread.
struct RBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RBuf {
    fn new() -> RBuf {
        RBuf {
            data: vec![0; 512 * 1024],
            start: 0,
            end: 0,
        }
    }
}

/// One read, then calls `f(tag, body)` for every complete frame; false on EOF.
fn read_frames(s: &mut dyn Sock, b: &mut RBuf, mut f: impl FnMut(u8, &[u8])) -> bool {
    if b.data.len() - b.end < 128 * 1024 {
        b.data.copy_within(b.start..b.end, 0);
        b.end -= b.start;
        b.start = 0;
    }
    let n = s.read(&mut b.data[b.end..]).unwrap_or_default();
    if n == 0 {
        return false;
    }
    b.end += n;
    while b.end - b.start >= 4 {
        let off = b.start;
        let l = u32::from_be_bytes(b.data[off..off + 4].try_into().unwrap()) as usize;
        if b.end - off < 4 + l {
            break;
        }
        f(b.data[off + 4], &b.data[off + 5..off + 4 + l]);
        b.start += 4 + l;
    }
    true
}

fn frame_bytes(f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    b
}

/// The sink: accepts the engine, grants credits, acks once per read.
fn sink(mut s: Box<dyn Sock>) {
    let mut buf = RBuf::new();
    let mut stream = 0u64;
    let mut state = 0; // 0 = expect HELLO, 1 = expect NOTIFY, 2 = messages
    loop {
        let mut last = 0u64;
        let mut count = 0u32;
        let mut replies = BytesMut::new();
        let ok = read_frames(&mut *s, &mut buf, |tag, body| match (state, tag) {
            (0, 0) => {
                replies.extend_from_slice(&frame_bytes(&Frame::Ok {
                    initial_credits: 1 << 20,
                }));
                state = 1;
            }
            (1, 3) => {
                stream = u64::from_be_bytes(body[0..8].try_into().unwrap());
                replies.extend_from_slice(&frame_bytes(&Frame::NotifyAck {
                    success: true,
                    stream_id: stream,
                    point_of_ref: u64::MAX,
                }));
                state = 2;
            }
            (2, 5) => {
                last = u64::from_be_bytes(body[8..16].try_into().unwrap());
                count += 1;
            }
            _ => panic!("sink: unexpected tag {tag} in state {state}"),
        });
        if !ok {
            return;
        }
        if count > 0 {
            replies.put_u32(1 + 4 + 4 + 16);
            replies.put_u8(6);
            replies.put_u32(count);
            replies.put_u32(1);
            replies.put_u64(stream);
            replies.put_u64(last);
        }
        if !replies.is_empty() && s.write_all(&replies).is_err() {
            return;
        }
    }
}

struct Shared {
    credits: u64,
    acked: u64,
}

/// The source: sends `n` messages within credits; returns when the last one is acked.
fn source(mut s: Box<dyn Sock>, n: u64) -> Duration {
    s.write_all(&frame_bytes(&Frame::Hello(Hello {
        version: "0.0.1".into(),
        cookie: String::new(),
        program_name: "bench".into(),
        instance_name: "bench".into(),
    })))
    .unwrap();
    let mut buf = RBuf::new();
    let mut credits = 0u64;
    let mut got = false;
    while !got {
        read_frames(&mut *s, &mut buf, |tag, body| {
            assert_eq!(tag, 1, "expected OK");
            credits = u32::from_be_bytes(body[..4].try_into().unwrap()) as u64;
            got = true;
        });
    }
    s.write_all(&frame_bytes(&Frame::Notify {
        stream_id: 1,
        stream_name: "bench".into(),
        point_of_ref: 0,
    }))
    .unwrap();
    credits -= 1;
    let shared = Arc::new((Mutex::new(Shared { credits, acked: 0 }), Condvar::new()));
    let mut rd = s.dup();
    let sh = shared.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = RBuf::new();
        loop {
            let mut add = 0u64;
            let mut acked = None;
            let ok = read_frames(&mut *rd, &mut buf, |tag, body| {
                if tag == 6 {
                    add += u32::from_be_bytes(body[..4].try_into().unwrap()) as u64;
                    let k = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                    for i in 0..k {
                        let p =
                            u64::from_be_bytes(body[16 + 16 * i..24 + 16 * i].try_into().unwrap());
                        acked = Some(p);
                    }
                }
            });
            let (m, cv) = &*sh;
            let mut g = m.lock().unwrap();
            g.credits += add;
            if let Some(a) = acked {
                g.acked = a;
            }
            cv.notify_all();
            if !ok || g.acked >= n {
                return;
            }
        }
    });
    let payload = [b'x'; PAYLOAD];
    let start = Instant::now();
    let mut next = 1u64;
    let mut out = BytesMut::with_capacity(300 * 1024);
    while next <= n {
        let avail = {
            let (m, cv) = &*shared;
            let mut g = m.lock().unwrap();
            while g.credits == 0 {
                g = cv.wait(g).unwrap();
            }
            let take = g.credits.min(2000).min(n - next + 1);
            g.credits -= take;
            take
        };
        out.clear();
        for _ in 0..avail {
            framing::encode_message(&mut out, 1, next, 0, b"", &payload).unwrap();
            next += 1;
        }
        s.write_all(&out).unwrap();
    }
    {
        let (m, cv) = &*shared;
        let mut g = m.lock().unwrap();
        while g.acked < n {
            g = cv.wait(g).unwrap();
        }
    }
    let elapsed = start.elapsed();
    let _ = reader.join();
    elapsed
}

/// CPU seconds (user + system) used so far by this process's threads named `name`.
fn thread_cpu(name: &str) -> f64 {
    let tick = 100.0; // USER_HZ
    let mut total = 0.0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // fields after the ")" of the command: state is field 3; utime 14, stime 15
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                total += (ut + st) / tick;
            }
        }
    }
    total
}

/// Reads complete frames into `(tag, body)` until `want` of them came.
fn read_n(s: &mut dyn Sock, b: &mut RBuf, want: usize) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            read_frames(s, b, |t, body| got.push((t, body.to_vec()))),
            "peer closed"
        );
    }
    got
}

/// The bare relay in the engine's place: handshakes with both peers, then one thread moves
/// MESSAGE frames source -> sink (parsed and re-encoded) and one moves ACKs sink -> source.
fn relay(mut src: Box<dyn Sock>, mut snk: Box<dyn Sock>) {
    let mut sb = RBuf::new();
    read_n(&mut *src, &mut sb, 1); // HELLO
    src.write_all(&frame_bytes(&Frame::Ok {
        initial_credits: 65536,
    }))
    .unwrap();
    let notify = read_n(&mut *src, &mut sb, 1);
    let stream = u64::from_be_bytes(notify[0].1[0..8].try_into().unwrap());
    src.write_all(&frame_bytes(&Frame::NotifyAck {
        success: true,
        stream_id: stream,
        point_of_ref: u64::MAX,
    }))
    .unwrap();
    snk.write_all(&frame_bytes(&Frame::Hello(Hello {
        version: "0.0.1".into(),
        cookie: String::new(),
        program_name: "relay".into(),
        instance_name: "relay".into(),
    })))
    .unwrap();
    snk.write_all(&frame_bytes(&Frame::Notify {
        stream_id: stream,
        stream_name: "bench".into(),
        point_of_ref: u64::MAX,
    }))
    .unwrap();
    let mut kb = RBuf::new();
    read_n(&mut *snk, &mut kb, 2); // OK, NOTIFY_ACK
    let (mut src_w, mut snk_r) = (src.dup(), snk.dup());
    std::thread::spawn(move || {
        let mut buf = [0u8; 256 * 1024];
        while let Ok(n) = snk_r.read(&mut buf) {
            if n == 0 || src_w.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let mut out = BytesMut::with_capacity(300 * 1024);
    loop {
        out.clear();
        let ok = read_frames(&mut *src, &mut sb, |tag, body| {
            if tag == 5 {
                if let Ok(m) = framing::MessageView::parse(body) {
                    let _ = framing::encode_message(
                        &mut out,
                        m.stream_id,
                        m.message_id,
                        m.event_time,
                        m.key,
                        m.payload,
                    );
                }
            }
        });
        if !ok || (!out.is_empty() && snk.write_all(&out).is_err()) {
            return;
        }
    }
}

/// Runs the source over `s` and prints the rate and the CPU time of the `thread` in the
/// middle per message.
fn measure(label: &str, thread: &str, s: Box<dyn Sock>, n: u64) {
    let cpu0 = thread_cpu(thread);
    let elapsed = source(s, n);
    let cpu = thread_cpu(thread) - cpu0;
    let secs = elapsed.as_secs_f64();
    println!(
        "{label}: {n} messages of {PAYLOAD} B in {secs:.2} s: {:.2} M msgs/s, {:.0} MB/s payload (acked end to end); {thread} thread CPU {cpu:.2} s = {:.0} ns/msg",
        n as f64 / secs / 1e6,
        n as f64 * PAYLOAD as f64 / secs / 1e6,
        cpu * 1e9 / n as f64
    );
}

/// A listener and a way to connect to it, for `kind` (uds or tcp).
fn endpoint(
    kind: &str,
    dir: &std::path::Path,
    name: &str,
) -> (Acceptor, Box<dyn Fn() -> Box<dyn Sock> + Send>) {
    if kind == "uds" {
        let path = dir.join(name);
        let l = UnixListener::bind(&path).unwrap();
        (
            Box::new(move || Box::new(l.accept().unwrap().0) as Box<dyn Sock>),
            Box::new(move || Box::new(UnixStream::connect(&path).unwrap()) as Box<dyn Sock>),
        )
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (
            Box::new(move || {
                let s = l.accept().unwrap().0;
                s.set_nodelay(true).unwrap();
                Box::new(s) as Box<dyn Sock>
            }),
            Box::new(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                Box::new(s) as Box<dyn Sock>
            }),
        )
    }
}

/// The same measurement with the bare relay in the engine's place.
fn run_relay(kind: &str, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (sink_accept, sink_connect) = endpoint(kind, dir.path(), "sink.sock");
    let (relay_accept, relay_connect) = endpoint(kind, dir.path(), "relay.sock");
    let sink_thread = std::thread::spawn(move || sink(sink_accept()));
    let relay_thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let snk = sink_connect();
            relay(relay_accept(), snk)
        })
        .unwrap();
    measure(&format!("relay-{kind}"), "relay", relay_connect(), n);
    drop(relay_thread);
    drop(sink_thread);
}

fn run(kind: &str, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (src_conf, sink_conf, sink_listener): (String, String, Acceptor) = if kind == "uds" {
        let sp = dir.path().join("sink.sock");
        let l = UnixListener::bind(&sp).unwrap();
        (
            format!("path = \"{}\"", dir.path().join("src.sock").display()),
            format!("path = \"{}\"", sp.display()),
            Box::new(move || Box::new(l.accept().unwrap().0) as Box<dyn Sock>),
        )
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (
            "port = 0".to_string(),
            format!("port = {port}"),
            Box::new(move || {
                let s = l.accept().unwrap().0;
                s.set_nodelay(true).unwrap();
                Box::new(s) as Box<dyn Sock>
            }),
        )
    };
    let toml = format!(
        "name = \"bench\"\n[source_connectors.in]\n{src_conf}\nmax_credits = 65536\nrefill_credits = 32768\n[sink_connectors.out]\n{sink_conf}\n[[pipelines]]\nsource = \"in\"\nsinks = [\"out\"]\n"
    );
    let p = dir.path().join("app.toml");
    std::fs::write(&p, toml).unwrap();
    let config = application::Application::load(&p).unwrap();
    let sink_thread = std::thread::spawn(move || sink(sink_listener()));
    let engine = engine::spawn(
        || {
            let mut app = engine::App::new();
            app.pass_through("in", &["out"]);
            app
        },
        config,
        engine::RunOptions {
            stats_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let s: Box<dyn Sock> = match engine.source_endpoint("in").unwrap() {
        application::Endpoint::Unix(p) => Box::new(UnixStream::connect(p).unwrap()),
        application::Endpoint::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).unwrap();
            s.set_nodelay(true).unwrap();
            Box::new(s)
        }
    };
    measure(kind, "engine", s, n);
    drop(engine);
    drop(sink_thread);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let kind = args
        .first()
        .map(|s| s.as_str())
        .unwrap_or("both")
        .to_string();
    let n: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000_000);
    let middle = if args.get(2).is_some_and(|a| a == "relay") {
        run_relay
    } else {
        run
    };
    if kind == "uds" || kind == "both" {
        middle("uds", n);
    }
    if kind == "tcp" || kind == "both" {
        middle("tcp", n);
    }
}
