//! Issue 12: keyed state scoped per source stream travels between engines through the
//! checkpoint store (a directory; the fencing test also on the S3-compatible service).
//!
//! - `released_stream_moves_with_its_state`: engine A processes a stream to its end (EOS:
//!   final, released slice); engine B takes the stream over at once, resumes after A's
//!   point and ends with every user's exact total.
//! - `fenced_old_owner_cannot_overwrite_the_new_owners_slice`: A processes more of a stream
//!   than its last slice holds, then loses it (its connector vanishes); B takes it over from
//!   A's last slice after waiting for a release that never comes (A's connector stalled
//!   without closing); A's next checkpoint is refused by the store's conditional write, with
//!   a clear log line, its late messages are dropped unacknowledged, and B's state is what
//!   the store keeps: every total exact.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alerts_stateful::{
    decode_transaction, feed, generated_transaction, print_sink, TransactionTotal, STATE,
};
use application::{Application, Endpoint};
use bytes::BytesMut;
use engine::slice::{slice_key, Slice};
use engine::store::StoreUrl;
use framing::{Frame, Hello};

const USERS: u64 = 10;

fn record(i: u64) -> Vec<u8> {
    generated_transaction(3, USERS, i)
}

/// Every user's total over records `1..=n`.
fn expected(n: u64) -> HashMap<String, i64> {
    let mut m = HashMap::new();
    for i in 1..=n {
        let t = decode_transaction(&record(i)).unwrap();
        *m.entry(t.user.to_string()).or_insert(0) += t.amount;
    }
    m
}

/// One engine process (`alerts_stateful run`) with its own sockets and print sink.
struct Pair {
    engine: Child,
    source: Endpoint,
    log: PathBuf,
}

impl Pair {
    fn start(dir: &Path, name: &str, store: &Store, extra: &[&str]) -> Pair {
        let app = dir.join(format!("{name}.toml"));
        std::fs::write(
            &app,
            format!(
                "name = \"handoff\"\nstate_scope = \"stream\"\n[source_connectors.transactions]\npath = \"{}\"\n[sink_connectors.alerts]\npath = \"{}\"\n",
                dir.join(format!("{name}-in.sock")).display(),
                dir.join(format!("{name}-out.sock")).display()
            ),
        )
        .unwrap();
        let config = Application::load(&app).unwrap();
        let sink = config.connector("alerts").unwrap().1.endpoint().unwrap();
        std::thread::spawn(move || print_sink::run(&sink, true));
        let log = dir.join(format!("{name}.log"));
        let engine = Command::new(env!("CARGO_BIN_EXE_alerts_stateful"))
            .arg("run")
            .arg("--application-module")
            .arg(&app)
            .arg("--checkpoint-store")
            .arg(&store.url)
            .args(["--stats-interval", "0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let source = config
            .connector("transactions")
            .unwrap()
            .1
            .endpoint()
            .unwrap();
        let Endpoint::Unix(p) = &source else {
            panic!("unix socket expected")
        };
        let t0 = Instant::now();
        while UnixStream::connect(p).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "engine {name} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Pair {
            engine,
            source,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.engine.kill();
        let _ = self.engine.wait();
    }
}

/// A checkpoint store the engines share: a directory, or a fresh bucket on the local
/// S3-compatible service.
struct Store {
    url: String,
    /// The S3 bucket, deleted with its slices at the end.
    _bucket: Option<testkit::s3::TestBucket>,
}

impl Store {
    fn dir(dir: &Path) -> Store {
        Store {
            url: dir.join("store").display().to_string(),
            _bucket: None,
        }
    }

    fn s3() -> Store {
        testkit::s3::set_test_env(); // inherited by the engines
        let bucket = testkit::s3::TestBucket::create("handoff");
        Store {
            url: format!(
                "s3://{}/app?endpoint_url={}&region=us-east-1",
                bucket.name, bucket.endpoint
            ),
            _bucket: Some(bucket),
        }
    }

    /// The current slice of `stream`, read as the engines read it.
    fn slice(&self, stream: &str) -> Slice {
        let url = StoreUrl::parse(&self.url).unwrap();
        let bytes = runtime().block_on(async {
            let store = url.open().await.unwrap();
            store.load(&slice_key(stream)).await.unwrap()
        });
        Slice::decode(&bytes.unwrap_or_else(|| panic!("no slice of {stream}")).0).unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn totals(slice: &Slice) -> HashMap<String, i64> {
    let pairs: Vec<(String, TransactionTotal)> = slice.state(STATE).unwrap().unwrap();
    pairs.into_iter().map(|(k, v)| (k, v.total)).collect()
}

fn feed_until(ep: &Endpoint, stream: &str, count: u64) {
    let progress = feed::Progress::default();
    feed::feed(
        ep,
        "",
        stream,
        count,
        &record,
        &progress,
        Duration::from_secs(60),
    )
    .unwrap();
}

#[test]
fn released_stream_moves_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::dir(dir.path());
    let a = Pair::start(dir.path(), "a", &store, &[]);
    feed_until(&a.source, "txns/0", 1000);
    let s = store.slice("txns/0");
    assert_eq!(
        (s.point, s.generation, s.released),
        (1000, 1, true),
        "{s:?}"
    );
    assert_eq!(totals(&s), expected(1000));

    let b = Pair::start(dir.path(), "b", &store, &[]);
    let t0 = Instant::now();
    feed_until(&b.source, "txns/0", 2500);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "a released stream is taken over without waiting"
    );
    let s = store.slice("txns/0");
    assert_eq!(
        (s.point, s.generation, s.released),
        (2500, 2, true),
        "{s:?}"
    );
    assert_eq!(totals(&s), expected(2500), "B continued from A's state");
    assert!(
        b.log().contains("took over stream `txns/0` at point 1000"),
        "{}",
        b.log()
    );
    assert!(
        a.log().contains("stream `txns/0`") && a.log().contains("dropped here"),
        "A forgets the stream once its final slice is written:\n{}",
        a.log()
    );
}

/// A raw source session: HELLO, NOTIFY, MESSAGEs, and ACKs read as they come.
struct RawSource {
    sock: UnixStream,
    buf: Vec<u8>,
    stream_id: u64,
    acked: u64,
}

impl RawSource {
    fn open(ep: &Endpoint, stream: &str) -> (RawSource, u64) {
        let Endpoint::Unix(p) = ep else { panic!() };
        let sock = UnixStream::connect(p).unwrap();
        let mut me = RawSource {
            sock,
            buf: Vec::new(),
            stream_id: framing::stream_id_for(stream),
            acked: 0,
        };
        me.send(&Frame::Hello(Hello {
            version: framing::PROTOCOL_VERSION.into(),
            cookie: String::new(),
            program_name: "raw".into(),
            instance_name: "raw".into(),
        }));
        assert!(matches!(me.read(), Frame::Ok { .. }));
        me.send(&Frame::Notify {
            stream_id: me.stream_id,
            stream_name: stream.into(),
            point_of_ref: framing::NOTHING_PROCESSED,
        });
        loop {
            match me.read() {
                Frame::NotifyAck {
                    success: true,
                    point_of_ref,
                    ..
                } => return (me, point_of_ref),
                Frame::Ack { .. } => {}
                f => panic!("expected NOTIFY_ACK, got {f:?}"),
            }
        }
    }

    fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        self.sock.write_all(&b).unwrap();
    }

    fn read(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + n {
                    let body = bytes::Bytes::copy_from_slice(&self.buf[4..4 + n]);
                    self.buf.drain(..4 + n);
                    return Frame::decode(body).unwrap();
                }
            }
            let mut tmp = [0u8; 65536];
            let n = self.sock.read(&mut tmp).unwrap();
            assert!(n > 0, "engine closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn messages(&mut self, ids: std::ops::RangeInclusive<u64>) {
        let mut out = BytesMut::new();
        for i in ids {
            framing::encode_message(&mut out, self.stream_id, i, 0, b"", &record(i)).unwrap();
        }
        self.sock.write_all(&out).unwrap();
    }

    /// Reads whatever the engine sends for `quiet` (until it is silent that long).
    fn read_for(&mut self, quiet: Duration) {
        self.sock.set_read_timeout(Some(quiet)).unwrap();
        loop {
            let mut tmp = [0u8; 65536];
            match self.sock.read(&mut tmp) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => break,
            }
        }
        self.sock.set_read_timeout(None).unwrap();
        while self.buf.len() >= 4
            && self.buf.len() >= 4 + u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize
        {
            if let Frame::Ack { acks, .. } = self.read() {
                for (s, p) in acks {
                    if s == self.stream_id {
                        self.acked = self.acked.max(p);
                    }
                }
            }
        }
    }

    fn wait_acked(&mut self, id: u64) {
        while self.acked < id {
            if let Frame::Ack { acks, .. } = self.read() {
                for (s, p) in acks {
                    if s == self.stream_id {
                        self.acked = self.acked.max(p);
                    }
                }
            }
        }
    }
}

#[test]
fn fenced_old_owner_cannot_overwrite_the_new_owners_slice_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::dir(dir.path());
    fenced_old_owner(dir.path(), &store);
}

#[test]
fn fenced_old_owner_cannot_overwrite_the_new_owners_slice_in_s3() {
    let dir = tempfile::tempdir().unwrap();
    fenced_old_owner(dir.path(), &Store::s3());
}

fn fenced_old_owner(dir: &Path, store: &Store) {
    // A checkpoints every 3 s: it processes records its store does not hold yet.
    let a = Pair::start(dir, "a", store, &["--checkpoint-interval", "3s"]);
    let (mut raw, point) = RawSource::open(&a.source, "txns/7");
    assert_eq!(point, framing::NOTHING_PROCESSED);
    raw.messages(1..=100);
    raw.wait_acked(100); // A's slice of txns/7 now holds 1..=100
    raw.messages(101..=150); // processed by A, not in its slice yet
    std::thread::sleep(Duration::from_millis(200));
    // A's connector stalls (a paused pair, a partition the group gave away): A still holds
    // the stream and does not release it.
    let s = store.slice("txns/7");
    assert_eq!(
        (s.point, s.generation, s.released),
        (100, 1, false),
        "{s:?}"
    );

    // B takes the stream over from A's last slice once A failed to release it in 500 ms.
    let b = Pair::start(
        dir,
        "b",
        store,
        &["--checkpoint-interval", "200ms", "--takeover-wait", "500ms"],
    );
    feed_until(&b.source, "txns/7", 400);
    assert!(b.log().contains("did not release it"), "{}", b.log());
    let s = store.slice("txns/7");
    assert_eq!(s.generation, 2, "{s:?}");

    // A's next checkpoint (within 3 s of its last) tries to write its slice at 150: refused.
    let t0 = Instant::now();
    while !a.log().contains("fenced out: stream `txns/7`") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "engine A never reported the refused write:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The zombie's late messages are dropped, never acknowledged.
    raw.messages(151..=160);
    raw.read_for(Duration::from_millis(500));
    assert_eq!(
        raw.acked, 100,
        "nothing past A's last durable slice is acknowledged"
    );
    drop(raw);
    let s = store.slice("txns/7");
    assert_eq!((s.point, s.generation, s.released), (400, 2, true), "{s:?}");
    assert!(s.owner.starts_with("worker1@"), "{s:?}");
    assert_eq!(
        totals(&s),
        expected(400),
        "the store keeps B's state: 1..=100 from A's slice, 101..=400 from B"
    );
}

#[test]
fn a_closed_connection_releases_its_streams_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::dir(dir.path());
    let a = Pair::start(dir.path(), "a", &store, &["--checkpoint-interval", "1s"]);
    let (mut raw, _) = RawSource::open(&a.source, "txns/3");
    raw.messages(1..=300);
    raw.wait_acked(300);
    raw.messages(301..=320); // processed, not yet in a slice
    std::thread::sleep(Duration::from_millis(100));
    drop(raw); // the connector dies: A writes the stream's final slice right away
    let t0 = Instant::now();
    while !store.slice("txns/3").released {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "A never released the stream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = store.slice("txns/3");
    assert_eq!(s.point, 320, "{s:?}");
    let b = Pair::start(dir.path(), "b", &store, &["--takeover-wait", "30s"]);
    let t0 = Instant::now();
    feed_until(&b.source, "txns/3", 500);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "no wait for a released stream"
    );
    assert!(b.log().contains("at point 320"), "{}", b.log());
    assert_eq!(totals(&store.slice("txns/3")), expected(500));
}

#[test]
fn a_stopping_engine_releases_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::dir(dir.path());
    let mut a = Pair::start(dir.path(), "a", &store, &["--checkpoint-interval", "5s"]);
    let (mut raw, _) = RawSource::open(&a.source, "txns/5");
    raw.messages(1..=120);
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM: the engine writes every owned stream's final slice before it exits.
    let status = Command::new("kill")
        .args(["-TERM", &a.engine.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    while a.engine.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "engine did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(raw);
    let s = store.slice("txns/5");
    assert_eq!((s.point, s.released), (120, true), "{s:?}\n{}", a.log());
    assert!(a.log().contains("released 1 stream(s)"), "{}", a.log());
    assert_eq!(totals(&s), expected(120));
}

#[test]
fn an_owner_that_does_not_release_is_waited_for_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::dir(dir.path());
    let a = Pair::start(dir.path(), "a", &store, &["--checkpoint-interval", "200ms"]);
    // A holds two streams and never releases them (its connector stalls).
    let mut held = Vec::new();
    for name in ["txns/1", "txns/2"] {
        let (mut raw, _) = RawSource::open(&a.source, name);
        raw.messages(1..=50);
        raw.wait_acked(50);
        held.push(raw);
    }
    let b = Pair::start(dir.path(), "b", &store, &["--takeover-wait", "2s"]);
    let t0 = Instant::now();
    feed_until(&b.source, "txns/1", 100);
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "the first take-over waits"
    );
    // A connector NOTIFYs its streams one after the other: the second one does not wait.
    let t1 = Instant::now();
    feed_until(&b.source, "txns/2", 100);
    assert!(
        t1.elapsed() < Duration::from_millis(1500),
        "waited again for an owner already given up on: {:?}",
        t1.elapsed()
    );
    for name in ["txns/1", "txns/2"] {
        assert_eq!(totals(&store.slice(name)), expected(100), "{name}");
    }
    drop(held);
}
