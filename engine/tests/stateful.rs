//! Keyed state with checkpoints, in process: ACK only after a checkpoint holds the state
//! change, restore on restart (NOTIFY answered with the stored point), decode errors
//! acknowledged and skipped, unusable snapshots refused.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use framing::Frame;

const T: Duration = Duration::from_secs(10);

fn counting_app() -> engine::App {
    let mut app = engine::App::new();
    app.pipeline("in")
        .decode(|b: &[u8]| {
            std::str::from_utf8(b)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    s.strip_prefix("k=")
                        .map(|k| k.to_string())
                        .ok_or_else(|| format!("no key in `{s}`"))
                })
        })
        .key_by(|k: &String| k.clone())
        .state(|k: String, n: &mut u64| {
            *n += 1;
            Some(format!("{k}={n}"))
        })
        .encode(|s: &String| (Bytes::new(), Bytes::from(s.clone())))
        .to_sink("out");
    app
}

fn start(dir: &Path, sink: &TestSink, interval: Duration) -> engine::EngineHandle {
    let config = app_file(
        dir,
        &format!(
            "name = \"st\"\n[source_connectors.in]\npath = \"{}\"\n[sink_connectors.out]\npath = \"{}\"\n",
            dir.join("src.sock").display(),
            sink.path.display()
        ),
    );
    engine::spawn(
        counting_app,
        config,
        engine::RunOptions {
            resilience_dir: Some(dir.join("res")),
            checkpoint_interval: interval,
            stats_interval: Duration::ZERO,
            partitions: 3,
            ..Default::default()
        },
    )
    .unwrap()
}

fn outputs(sink: &TestSink) -> Vec<String> {
    sink.received
        .lock()
        .unwrap()
        .iter()
        .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
        .collect()
}

#[test]
fn ack_waits_for_the_checkpoint_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(dir.path().join("sink.sock"));

    // 1. no checkpoint within the test: the sink acks, the source gets no ACK pair
    let e = start(dir.path(), &sink, Duration::from_secs(3600));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    assert_eq!(s.notify(3, "three", u64::MAX), (true, u64::MAX));
    s.send_all(&[msg(3, 1, b"", b"k=a"), msg(3, 2, b"", b"k=b")]);
    sink.wait_count(2, T);
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while let Some(f) = s.recv(deadline.saturating_duration_since(std::time::Instant::now())) {
        if let Frame::Ack { acks, .. } = f {
            assert!(acks.is_empty(), "acked {acks:?} before any checkpoint");
        }
    }
    drop(s);
    e.stop().unwrap();

    // 2. restart: nothing was durable, the stream starts over; now checkpoints are fast
    let e = start(dir.path(), &sink, Duration::from_millis(50));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    assert_eq!(s.notify(3, "three", u64::MAX), (true, u64::MAX));
    s.send_all(&[
        msg(3, 1, b"", b"k=a"),
        msg(3, 2, b"", b"k=b"),
        msg(3, 3, b"", b"garbage"),
        msg(3, 4, b"", b"k=a"),
    ]);
    s.wait_ack(3, 4, T);
    drop(s);
    e.stop().unwrap();
    assert_eq!(
        outputs(&sink)[2..],
        ["a=1", "b=1", "a=2"],
        "decode error skipped"
    );

    // 3. restart: the stored point and the state come back
    let e = start(dir.path(), &sink, Duration::from_millis(50));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    assert_eq!(s.notify(3, "three", u64::MAX), (true, 4));
    // a replay of 3..4 is dropped, 5 continues the counts
    s.send_all(&[
        msg(3, 3, b"", b"garbage"),
        msg(3, 4, b"", b"k=a"),
        msg(3, 5, b"", b"k=a"),
        msg(3, 6, b"", b"k=b"),
    ]);
    s.wait_ack(3, 6, T);
    e.stop().unwrap();
    assert_eq!(outputs(&sink)[5..], ["a=3", "b=2"]);
    let snap = engine::checkpoint::Snapshot::load_latest(&dir.path().join("res"), |p, e| {
        panic!("{p:?}: {e}")
    })
    .unwrap()
    .unwrap();
    let mut st: Vec<(String, u64)> = snap.state("in#0").unwrap().unwrap();
    st.sort();
    assert_eq!(st, [("a".to_string(), 3), ("b".to_string(), 2)]);
}

#[test]
fn unusable_snapshots_are_reported_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(dir.path().join("sink.sock"));
    let e = start(dir.path(), &sink, Duration::from_millis(20));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    s.notify(3, "three", u64::MAX);
    for i in 1..=3 {
        s.send(&msg(3, i, b"", b"k=z"));
        s.wait_ack(3, i, T);
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(s);
    e.stop().unwrap();
    let res = dir.path().join("res");
    let mut files: Vec<_> = std::fs::read_dir(&res)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "keeps the newest two: {files:?}");
    // truncate the newest: the previous one is used
    let b = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &b[..b.len() / 2]).unwrap();
    let e = start(dir.path(), &sink, Duration::from_millis(20));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    assert_eq!(s.notify(3, "three", u64::MAX), (true, 2));
    drop(s);
    e.stop().unwrap();
    // corrupt every snapshot: the engine refuses to start with an empty state
    for f in std::fs::read_dir(&res).unwrap() {
        let p = f.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let config = app_file(
        dir.path(),
        &format!(
            "name = \"st\"\n[source_connectors.in]\npath = \"{}\"\n[sink_connectors.out]\npath = \"{}\"\n",
            dir.path().join("src.sock").display(),
            sink.path.display()
        ),
    );
    let err = engine::spawn(
        counting_app,
        config,
        engine::RunOptions {
            resilience_dir: Some(res),
            stats_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("refusing"), "{err}");
}

#[test]
fn outputs_unacknowledged_at_the_checkpoint_are_resent_after_a_crash() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(dir.path().join("sink.sock"));
    sink.ack.store(false, Ordering::SeqCst);
    let e = start(dir.path(), &sink, Duration::from_millis(30));
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    s.notify(4, "four", u64::MAX);
    s.send_all(&[msg(4, 1, b"", b"k=a"), msg(4, 2, b"", b"k=b")]);
    sink.wait_count(2, T);
    // let checkpoints take the state, the points and the unacknowledged outputs
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    e.stop().unwrap(); // as good as a crash: nothing is flushed on stop
    sink.ack.store(true, Ordering::SeqCst);
    let e = start(dir.path(), &sink, Duration::from_millis(30));
    // the snapshot says 1..2 are processed; their outputs come from the snapshot
    sink.wait_count(4, T);
    assert_eq!(outputs(&sink), ["a=1", "b=1", "a=1", "b=1"]);
    let mut s = Raw::connect(&dir.path().join("src.sock"));
    s.hello("");
    assert_eq!(s.notify(4, "four", u64::MAX), (true, 2));
    s.send(&msg(4, 3, b"", b"k=a"));
    s.wait_ack(4, 3, T);
    e.stop().unwrap();
    assert_eq!(outputs(&sink)[4..], ["a=2"]);
}
