//! Pass-through: a raw framing source, the engine, a raw framing sink.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use framing::Frame;

const T: Duration = Duration::from_secs(20);

struct Fixture {
    dir: tempfile::TempDir,
    sink: TestSink,
    engine: Option<engine::EngineHandle>,
    src: std::path::PathBuf,
}

fn fixture(credits: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.sock");
    let sink = TestSink::start(dir.path().join("sink.sock"));
    let config = app_file(
        dir.path(),
        &format!(
            r#"
name = "pt"
[source_connectors.in]
path = "{}"
max_credits = {credits}
[sink_connectors.out]
path = "{}"
[[pipelines]]
source = "in"
sinks = ["out"]
"#,
            src.display(),
            sink.path.display()
        ),
    );
    let engine = Some(pass_through(config));
    Fixture {
        dir,
        sink,
        engine,
        src,
    }
}

/// Sends messages respecting credits, returns when all were sent.
fn send_with_credits(raw: &mut Raw, credits: &mut u64, frames: Vec<Frame>) {
    let mut i = 0;
    while i < frames.len() {
        while *credits == 0 {
            match raw.recv(T).expect("ACK with credits") {
                Frame::Ack { credits: c, .. } => *credits += u64::from(c),
                f => panic!("{f:?}"),
            }
        }
        let n = (*credits as usize).min(frames.len() - i).min(500);
        raw.send_all(&frames[i..i + n]);
        *credits -= n as u64;
        i += n;
    }
}

fn wait_connections(sink: &TestSink, n: usize) {
    let deadline = std::time::Instant::now() + T;
    while sink.connections.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "engine did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

#[test]
fn mixed_sizes_bytes_out_equal_bytes_in_and_acks_follow_the_sink() {
    let f = fixture(1000);
    let mut raw = Raw::connect(&f.src);
    let mut credits = u64::from(raw.hello(""));
    assert_eq!(raw.notify(42, "mixed", u64::MAX), (true, u64::MAX));
    credits -= 1;
    let mut x = 7u64;
    let n = 5000u64;
    let mut sent = Vec::new();
    let mut frames = Vec::new();
    for id in 1..=n {
        let len = match lcg(&mut x) % 10 {
            0 => 0,
            1..=6 => 1 + (lcg(&mut x) % 200) as usize,
            7 | 8 => (lcg(&mut x) % 4096) as usize,
            _ => (lcg(&mut x) % 60_000) as usize,
        };
        let payload: Vec<u8> = (0..len).map(|_| lcg(&mut x) as u8).collect();
        let key = format!("k{}", id % 7).into_bytes();
        frames.push(msg(42, id * 3, &key, &payload));
        sent.push((key, payload, id * 3));
    }
    send_with_credits(&mut raw, &mut credits, frames);
    raw.wait_ack(42, n * 3, T);
    f.sink.wait_count(n as usize, T);
    let got = f.sink.received.lock().unwrap().clone();
    assert_eq!(got.len(), sent.len());
    let stream = got[0].stream;
    for (i, (o, (k, p, id))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(o.id, i as u64 + 1, "output ids are 1, 2, 3...");
        assert_eq!(o.stream, stream);
        assert_eq!(&o.key, k);
        assert_eq!(&o.payload, p, "payload {i} differs");
        assert_eq!(o.event_time, *id as i64 * 10, "event time passed through");
    }
    let name = &f.sink.notifies.lock().unwrap()[0].1;
    assert!(name.starts_with("pt/out@"), "{name}");
    assert_eq!(framing::stream_id_for(name), stream);
}

#[test]
fn no_ack_before_the_sink_acks_and_resend_after_sink_reconnect() {
    let f = fixture(1000);
    let mut raw = Raw::connect(&f.src);
    raw.hello("");
    raw.notify(5, "s5", u64::MAX);
    f.sink.ack.store(false, Ordering::SeqCst);
    raw.send_all(&(1..=10).map(|i| msg(5, i, b"", b"p")).collect::<Vec<_>>());
    f.sink.wait_count(10, T);
    // withheld: the source must get no ACK pair
    let deadline = std::time::Instant::now() + Duration::from_millis(400);
    while let Some(fr) = raw.recv(deadline.saturating_duration_since(std::time::Instant::now())) {
        if let Frame::Ack { acks, .. } = fr {
            assert!(acks.is_empty(), "acked {acks:?} before the sink did");
        }
    }
    // the sink drops the connection without acking: the engine reconnects and resends
    f.sink.drop_conn.store(true, Ordering::SeqCst);
    wait_connections(&f.sink, 2);
    f.sink.ack.store(true, Ordering::SeqCst);
    f.sink.wait_count(20, T);
    raw.wait_ack(5, 10, T);
    let got = f.sink.received.lock().unwrap().clone();
    let ids: Vec<u64> = got.iter().map(|o| o.id).collect();
    assert_eq!(ids, (1..=10).chain(1..=10).collect::<Vec<_>>());
    assert!(f.sink.connections.load(Ordering::SeqCst) >= 2);
    // the sink's NOTIFY_ACK point: on the next reconnect it says 10 were delivered
    raw.send_all(&(11..=15).map(|i| msg(5, i, b"", b"q")).collect::<Vec<_>>());
    raw.wait_ack(5, 15, T);
    f.sink.ack.store(false, Ordering::SeqCst);
    raw.send_all(&(16..=18).map(|i| msg(5, i, b"", b"r")).collect::<Vec<_>>());
    f.sink.wait_count(28, T);
    f.sink.notify_point.store(17, Ordering::SeqCst);
    f.sink.drop_conn.store(true, Ordering::SeqCst);
    wait_connections(&f.sink, 3);
    f.sink.ack.store(true, Ordering::SeqCst);
    // output 18 (source id 18) resent alone; 16 and 17 were confirmed by NOTIFY_ACK
    raw.wait_ack(5, 18, T);
    f.sink.wait_count(29, T);
    let got = f.sink.received.lock().unwrap().clone();
    assert_eq!(got.last().unwrap().id, 18);
    assert_eq!(
        got.len(),
        29,
        "{:?}",
        got.iter().map(|o| o.id).collect::<Vec<_>>()
    );
}

#[test]
fn notify_resume_points_dedup_and_stream_ownership() {
    let mut f = fixture(1000);
    let mut a = Raw::connect(&f.src);
    a.hello("");
    // A stream never seen: u64::MAX to a connector that announced u64::MAX (ours), 0 (the
    // start, as Wallaroo answered) to one that announced a position (Wallaroo's client).
    let mut w = Raw::connect(&f.src);
    w.hello("");
    assert_eq!(w.notify(77, "seventy-seven", 4096), (true, 0));
    assert_eq!(w.notify(78, "seventy-eight", 0), (true, 0));
    drop(w);
    assert_eq!(
        a.notify(9, "nine", u64::MAX),
        (true, u64::MAX),
        "unknown stream: u64::MAX"
    );
    a.send_all(
        &(1..=10)
            .map(|i| msg(9, i * 100, b"", &[i as u8]))
            .collect::<Vec<_>>(),
    );
    a.wait_ack(9, 1000, T);
    // another connection may not take an active stream
    let mut b = Raw::connect(&f.src);
    b.hello("");
    assert_eq!(b.notify(9, "nine", u64::MAX), (false, 1000));
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    // once the owner is gone, the stream resumes at the acked point; replays are dropped
    assert_eq!(b.notify(9, "nine", u64::MAX), (true, 1000));
    b.send_all(
        &(5..=15)
            .map(|i| msg(9, i * 100, b"", &[i as u8]))
            .collect::<Vec<_>>(),
    );
    let seen = b.wait_ack(9, 1500, T);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "never backwards: {seen:?}"
    );
    assert!(
        seen.iter().all(|p| *p > 1000 && *p <= 1500 && p % 100 == 0),
        "{seen:?}"
    );
    f.sink.wait_count(15, T);
    let got: Vec<u8> = f
        .sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|o| o.payload[0])
        .collect();
    assert_eq!(got, (1..=15).collect::<Vec<u8>>(), "replays 5..10 dropped");
    // EOS frees the stream after its last message is acked
    b.send(&msg(9, 1600, b"", &[16]));
    b.send(&Frame::Eos { stream_id: 9 });
    b.wait_ack(9, 1600, T);
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Raw::connect(&f.src);
    c.hello("");
    assert_eq!(c.notify(9, "nine", u64::MAX), (true, 1600));
    // EOS with nothing new (its last point went out already, here in NOTIFY_ACK) is
    // still answered with that point: Wallaroo's client waits for it.
    c.send(&Frame::Eos { stream_id: 9 });
    assert_eq!(c.wait_ack(9, 1600, T), vec![1600]);
    // After messages whose final ACK already went out, EOS gets no second one (the
    // connector may have sent EOS before that ACK reached it, and closed the stream on it),
    // and the stream is free again.
    assert_eq!(c.notify(9, "nine", u64::MAX), (true, 1600));
    c.send(&msg(9, 1700, b"", &[17]));
    c.wait_ack(9, 1700, T);
    c.send(&Frame::Eos { stream_id: 9 });
    std::thread::sleep(Duration::from_millis(300));
    while let Some(f) = c.recv(Duration::from_millis(200)) {
        if let Frame::Ack { acks, .. } = f {
            assert!(
                acks.iter().all(|(s, _)| *s != 9),
                "a second ACK after EOS: {acks:?}"
            );
        }
    }
    assert_eq!(c.notify(9, "nine", u64::MAX), (true, 1700));
    f.engine.take().unwrap().stop().unwrap();
    drop(f.dir);
}

#[test]
fn back_pressure_stops_credit_refills_when_the_sink_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.sock");
    let sink_path = dir.path().join("sink.sock");
    let config = app_file(
        dir.path(),
        &format!(
            r#"
name = "bp"
[source_connectors.in]
path = "{}"
max_credits = 100
refill_credits = 50
[sink_connectors.out]
path = "{}"
[[pipelines]]
source = "in"
sinks = ["out"]
"#,
            src.display(),
            sink_path.display()
        ),
    );
    let pipes = ("in".to_string(), "out".to_string());
    let engine = engine::spawn(
        move || {
            let mut app = engine::App::new();
            app.pass_through(&pipes.0, &[&pipes.1]);
            app
        },
        config,
        engine::RunOptions {
            stats_interval: Duration::ZERO,
            sink_buffer_bytes: Some(10_000),
            ..Default::default()
        },
    )
    .unwrap();
    let mut raw = Raw::connect(&src);
    let mut credits = u64::from(raw.hello(""));
    raw.notify(1, "one", u64::MAX);
    credits -= 1;
    // no sink running: outputs pile up to the 10 kB bound, then credits stop
    let mut id = 0u64;
    let mut stalled = false;
    for _ in 0..100 {
        if credits == 0 {
            match raw.recv(Duration::from_millis(300)) {
                Some(Frame::Ack { credits: c, .. }) => credits += u64::from(c),
                Some(f) => panic!("{f:?}"),
                None => {
                    stalled = true;
                    break;
                }
            }
            continue;
        }
        id += 1;
        raw.send(&msg(1, id, b"", &[1u8; 1000]));
        credits -= 1;
    }
    assert!(
        stalled,
        "the engine kept granting credits with its sink down"
    );
    assert!(id < 200, "sent {id} messages of 1 kB into a 10 kB buffer");
    // the sink comes up: everything drains, credits come back, all acked
    let sink = TestSink::start(sink_path);
    raw.wait_ack(1, id, T);
    sink.wait_count(id as usize, T);
    engine.stop().unwrap();
}

#[test]
fn a_source_gets_no_credits_while_its_in_flight_bytes_are_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.sock");
    let sink_path = dir.path().join("sink.sock");
    // The sink's buffer could take 100 MB: only the source's own bound holds it back.
    let config = app_file(
        dir.path(),
        &format!(
            r#"
name = "bp"
[source_connectors.in]
path = "{}"
max_credits = 100
refill_credits = 50
in_flight_bytes = 10000
[sink_connectors.out]
path = "{}"
in_flight_bytes = 100000000
[[pipelines]]
source = "in"
sinks = ["out"]
"#,
            src.display(),
            sink_path.display()
        ),
    );
    let pipes = ("in".to_string(), "out".to_string());
    let engine = engine::spawn(
        move || {
            let mut app = engine::App::new();
            app.pass_through(&pipes.0, &[&pipes.1]);
            app
        },
        config,
        engine::RunOptions {
            stats_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let mut raw = Raw::connect(&src);
    let mut credits = u64::from(raw.hello(""));
    raw.notify(1, "one", u64::MAX);
    credits -= 1;
    let mut id = 0u64;
    let mut stalled = false;
    for _ in 0..1000 {
        if credits == 0 {
            match raw.recv(Duration::from_millis(300)) {
                Some(Frame::Ack { credits: c, .. }) => credits += u64::from(c),
                Some(f) => panic!("{f:?}"),
                None => {
                    stalled = true;
                    break;
                }
            }
            continue;
        }
        id += 1;
        raw.send(&msg(1, id, b"", &[1u8; 1000]));
        credits -= 1;
    }
    assert!(
        stalled,
        "the engine kept granting credits past in_flight_bytes"
    );
    assert!(
        id < 200,
        "sent {id} unacknowledged messages of 1 kB with a 10 kB bound"
    );
    let sink = TestSink::start(sink_path);
    raw.wait_ack(1, id, T);
    sink.wait_count(id as usize, T);
    engine.stop().unwrap();
}

#[test]
fn final_ack_after_eos_reaches_a_half_closed_connector() {
    let f = fixture(1000);
    let mut raw = Raw::connect(&f.src);
    raw.hello("");
    raw.notify(8, "eight", u64::MAX);
    f.sink.ack.store(false, Ordering::SeqCst);
    raw.send_all(&[msg(8, 10, b"", b"a"), msg(8, 20, b"", b"b")]);
    raw.send(&Frame::Eos { stream_id: 8 });
    raw.s.shutdown(std::net::Shutdown::Write).unwrap();
    f.sink.wait_count(2, T);
    std::thread::sleep(Duration::from_millis(100));
    f.sink.ack.store(true, Ordering::SeqCst);
    // the sink acks on its next poll; the connector still gets its final ACK
    assert_eq!(raw.wait_ack(8, 20, T).last(), Some(&20));
    assert!(
        raw.closed(T),
        "closed once the ended stream is acknowledged"
    );
}
