//! Issue 12 benchmark: how long one stream's keyed state takes to move between engines, and
//! the steady-state throughput of `alerts_stateful` with each checkpoint store.
//!
//! `cargo bench -p alerts_stateful --bench handoff -- handoff [ROUNDS]`
//!
//! For 10,000 and 1,000,000 keys, with a directory store and an S3 store (a fresh bucket on
//! the S3-compatible service at `AWS_ENDPOINT_URL`, default moto on 127.0.0.1:5000), two
//! `alerts_stateful run` processes in stream scope share the store. A raw source sends
//! stream `txns/0` to engine A, one transaction per user (`user0`..: N keys of
//! `TransactionTotal`), and waits until A's metrics show them all processed (A checkpoints
//! every hour: nothing is in a slice yet). Then, timed on the source's side:
//! - save: EOS sent -> the ACK of the last id, which A sends once the stream's final
//!   (released) slice is written: serialize + encode + store write;
//! - load: on engine B, NOTIFY sent -> NOTIFY_ACK: load + decode + restore + claim write.
//!
//! Beside them, the engines' own figures: A's `engine_checkpoint_duration_seconds` (and its
//! `_snapshot_` part, the data path held to serialize) and `engine_checkpoint_bytes`; B's
//! `engine_stream_takeover_seconds` and its "took over stream ... in X ms" line; and the
//! store's share: the slice read back and written again through the engine's store API.
//!
//! `cargo bench -p alerts_stateful --bench handoff -- throughput USERS COUNT [ROUNDS]`
//!
//! Runs `alerts_stateful bench` (1 s checkpoints) in engine scope with `--resilience-dir`,
//! then in stream scope with a directory store and with the S3 store, ROUNDS times in turn.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use engine::slice::slice_key;
use engine::store::{Expect, StoreUrl};
use framing::{Frame, Hello, NOTHING_PROCESSED};

const BIN: &str = env!("CARGO_BIN_EXE_alerts_stateful");
const STREAM: &str = "txns/0";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let num = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    let s3 = S3::create();
    match args.first().map(String::as_str) {
        Some("handoff") => handoff(&s3, num(1, 3)),
        Some("throughput") => throughput(&s3, num(1, 1000), num(2, 20_000_000), num(3, 3)),
        _ => eprintln!("usage: handoff [ROUNDS] | throughput USERS COUNT [ROUNDS]"),
    }
}

fn handoff(s3: &S3, rounds: u64) {
    println!("keys      store  round  save ms (engine: checkpoint / snapshot)  slice MB  load ms (engine: histogram / log)  store read / write ms");
    for keys in [10_000, 1_000_000] {
        for round in 1..=rounds {
            for store in ["dir", "s3"] {
                let dir = tempfile::tempdir().unwrap();
                let url = match store {
                    "dir" => dir.path().join("store").display().to_string(),
                    _ => s3.url(&format!("{keys}-{round}")),
                };
                let r = one_handoff(dir.path(), &url, keys);
                let (read_ms, write_ms) = store_io(&s3.rt, &url);
                println!(
                    "{keys:<9} {store:<6} {round:<6} {:>7.1} ({:.1} / {:.1}){:>22.1} {:>8.1} ({:.1} / {}){:>15.1} / {:.1}",
                    r.save_ms, r.ckpt_ms, r.snap_ms, r.slice_mb, r.load_ms, r.takeover_ms, r.log_ms, read_ms, write_ms
                );
            }
        }
    }
}

struct HandOff {
    save_ms: f64,
    ckpt_ms: f64,
    snap_ms: f64,
    slice_mb: f64,
    load_ms: f64,
    takeover_ms: f64,
    log_ms: String,
}

fn one_handoff(dir: &Path, url: &str, keys: u64) -> HandOff {
    let a = Engine::start(dir, "a", url);
    let b = Engine::start(dir, "b", url);
    let mut src = Raw::connect(&a.socket);
    assert_eq!(src.notify(), NOTHING_PROCESSED, "a fresh store");
    src.send_all(keys);
    while a.metric("engine_messages_total{direction=\"in\"}") < keys as f64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    src.send(&Frame::Eos {
        stream_id: src.stream,
    });
    while src.acked < keys {
        src.read();
    }
    let save_ms = t0.elapsed().as_secs_f64() * 1e3;
    let checkpoints = a.metric("engine_checkpoint_duration_seconds_count");
    assert_eq!(
        checkpoints, 1.0,
        "A wrote one slice after its claim: the final one"
    );

    let mut dst = Raw::connect(&b.socket);
    let t0 = Instant::now();
    assert_eq!(dst.notify(), keys, "B resumes after A's last id");
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let log = std::fs::read_to_string(&b.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("took over stream"))
        .unwrap();
    assert!(line.contains(&format!("with {keys} key(s)")), "{line}");
    let log_ms = line
        .split(" in ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    HandOff {
        save_ms,
        ckpt_ms: a.metric("engine_checkpoint_duration_seconds_sum") * 1e3,
        snap_ms: a.metric("engine_checkpoint_snapshot_seconds_sum") * 1e3,
        slice_mb: a.metric("engine_checkpoint_bytes") / 1e6,
        load_ms,
        takeover_ms: b.metric("engine_stream_takeover_seconds_sum") * 1e3,
        log_ms: log_ms.to_string(),
    }
}

/// The store's share: reading the slice back and writing the same bytes over it, through
/// the engine's own store API (what a hand-off does besides (de)serializing).
fn store_io(rt: &tokio::runtime::Runtime, url: &str) -> (f64, f64) {
    rt.block_on(async {
        let store = StoreUrl::parse(url).unwrap().open().await.unwrap();
        let key = slice_key(STREAM);
        let t0 = Instant::now();
        let (bytes, version) = store.load(&key).await.unwrap().unwrap();
        let read_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        store
            .save(&key, bytes, Expect::Version(version))
            .await
            .unwrap();
        (read_ms, t0.elapsed().as_secs_f64() * 1e3)
    })
}

fn throughput(s3: &S3, users: u64, count: u64, rounds: u64) {
    for round in 1..=rounds {
        let store = s3.url(&format!("bench-{round}"));
        for extra in [
            vec![],
            vec!["--state-scope", "stream"],
            vec!["--state-scope", "stream", "--checkpoint-store", &store],
        ] {
            let (users, count) = (users.to_string(), count.to_string());
            let mut args = vec!["bench", "--users", &users, "--count", &count];
            args.extend(extra);
            println!("round {round}: alerts_stateful {}", args.join(" "));
            let out = Command::new(BIN).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "alerts_stateful bench failed: {err}");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// One `alerts_stateful run` process in stream scope, with its print sink and metrics.
struct Engine {
    child: Child,
    socket: std::path::PathBuf,
    metrics_port: u16,
    log: std::path::PathBuf,
}

impl Engine {
    fn start(dir: &Path, name: &str, store: &str) -> Engine {
        let socket = dir.join(format!("{name}-in.sock"));
        let app = dir.join(format!("{name}.toml"));
        // Nothing is acknowledged before the final slice: in_flight_bytes holds it all.
        std::fs::write(
            &app,
            format!(
                "name = \"handoff bench\"\nstate_scope = \"stream\"\n[source_connectors.transactions]\npath = \"{}\"\nmax_credits = 65536\nin_flight_bytes = 1073741824\n[sink_connectors.alerts]\npath = \"{}\"\n",
                socket.display(),
                dir.join(format!("{name}-out.sock")).display()
            ),
        )
        .unwrap();
        let config = application::Application::load(&app).unwrap();
        let sink = config.connector("alerts").unwrap().1.endpoint().unwrap();
        std::thread::spawn(move || alerts_stateful::print_sink::run(&sink, true));
        let metrics_port = testkit::free_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["run", "--application-module"])
            .arg(&app)
            .args(["--checkpoint-store", store, "--checkpoint-interval", "60m"])
            .args(["--stats-interval", "0", "--metrics-addr"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut engine = Engine {
            child,
            socket,
            metrics_port,
            log,
        };
        let t0 = Instant::now();
        while UnixStream::connect(&engine.socket).is_err() {
            let log = std::fs::read_to_string(&engine.log).unwrap_or_default();
            let exited = engine.child.try_wait().unwrap().is_some();
            assert!(
                !exited && t0.elapsed() < Duration::from_secs(30),
                "engine {name} did not listen:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        engine
    }

    /// The value of the first sample line starting with `name` on the metrics endpoint.
    fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or("x 0");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw-framing source session for stream [`STREAM`] that keeps to its credits.
struct Raw {
    sock: UnixStream,
    buf: Vec<u8>,
    stream: u64,
    credits: u64,
    acked: u64,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let mut me = Raw {
            sock: UnixStream::connect(path).unwrap(),
            buf: Vec::new(),
            stream: framing::stream_id_for(STREAM),
            credits: 0,
            acked: 0,
        };
        me.send(&Frame::Hello(Hello {
            version: framing::PROTOCOL_VERSION.into(),
            cookie: String::new(),
            program_name: "handoff-bench".into(),
            instance_name: "handoff-bench".into(),
        }));
        match me.read() {
            Frame::Ok { initial_credits } => me.credits = initial_credits.into(),
            f => panic!("expected OK, got {f:?}"),
        }
        me
    }

    fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.sock.write_all(&b).unwrap();
        self.credits = self.credits.saturating_sub(1);
    }

    /// The next frame; ACKs add their credits and this stream's point.
    fn read(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + n {
                    let body = bytes::Bytes::copy_from_slice(&self.buf[4..4 + n]);
                    self.buf.drain(..4 + n);
                    let f = Frame::decode(body).unwrap();
                    if let Frame::Ack { credits, acks } = &f {
                        self.credits += u64::from(*credits);
                        for &(s, p) in acks {
                            if s == self.stream {
                                self.acked = self.acked.max(p);
                            }
                        }
                    }
                    return f;
                }
            }
            let mut tmp = [0u8; 65536];
            let n = self.sock.read(&mut tmp).unwrap();
            assert!(n > 0, "engine closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// NOTIFY; returns the point of the NOTIFY_ACK.
    fn notify(&mut self) -> u64 {
        self.send(&Frame::Notify {
            stream_id: self.stream,
            stream_name: STREAM.into(),
            point_of_ref: NOTHING_PROCESSED,
        });
        loop {
            if let Frame::NotifyAck {
                success: true,
                point_of_ref,
                ..
            } = self.read()
            {
                return point_of_ref;
            }
        }
    }

    /// Messages 1..=n, message i a transaction of user i-1: n keys.
    fn send_all(&mut self, n: u64) {
        let mut next = 1;
        let mut out = BytesMut::new();
        while next <= n {
            while self.credits < 2 {
                self.read(); // keep one credit for the EOS
            }
            let batch = (self.credits - 1).min(4096).min(n - next + 1);
            out.clear();
            for i in next..next + batch {
                let record = format!("user{},{}", i - 1, i % 2001);
                framing::encode_message(&mut out, self.stream, i, 0, b"", record.as_bytes())
                    .unwrap();
            }
            self.sock.write_all(&out).unwrap();
            self.credits -= batch;
            next += batch;
        }
    }
}

/// A bucket of its own on the S3-compatible service (deleted with what the runs left in
/// it, also after a failed run), and a runtime to reach it through the engine's store API.
struct S3 {
    bucket: testkit::s3::TestBucket,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    /// Creates the bucket; the test credentials are set for this process and the engines
    /// it starts (before any thread starts).
    fn create() -> S3 {
        testkit::s3::set_test_env();
        S3 {
            bucket: testkit::s3::TestBucket::create("handoff-bench"),
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint_url={}&region=us-east-1",
            self.bucket.name, self.bucket.endpoint
        )
    }
}
