//! Every bad input of the spec: the engine answers ERROR where it can, closes that
//! connection and keeps serving the others.

mod common;

use std::time::Duration;

use common::*;
use framing::Frame;

const T: Duration = Duration::from_secs(5);

struct Fixture {
    _dir: tempfile::TempDir,
    _sink: TestSink,
    engine: engine::EngineHandle,
    src: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.sock");
    let sink = TestSink::start(dir.path().join("sink.sock"));
    let config = app_file(
        dir.path(),
        &format!(
            r#"
name = "bad"
cookie = "secret"
max_frame_bytes = 65536
[source_connectors.in]
path = "{}"
max_credits = 4
refill_credits = 0
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
    let engine = pass_through(config);
    Fixture {
        _dir: dir,
        _sink: sink,
        engine,
        src,
    }
}

/// A healthy connection that must keep being served while others misbehave.
struct Good {
    raw: Raw,
    next: u64,
    credits: u32,
}

impl Good {
    fn new(f: &Fixture) -> Good {
        let mut raw = Raw::connect(&f.src);
        let credits = raw.hello("secret");
        assert_eq!(raw.notify(1, "good", u64::MAX), (true, u64::MAX));
        Good {
            raw,
            next: 1,
            credits: credits - 1,
        }
    }

    /// Sends one message and waits for its ACK.
    fn round_trip(&mut self) {
        let id = self.next;
        self.next += 1;
        self.raw.send(&msg(1, id, b"k", b"still served"));
        self.raw.wait_ack(1, id, T);
        // refill_credits = 0: credits come back only when exhausted; track loosely
        let _ = self.credits;
    }
}

fn expect_error(raw: &mut Raw, needle: &str) {
    match raw.recv(T) {
        Some(Frame::Error { message }) => {
            assert!(
                message.contains(needle),
                "ERROR `{message}` lacks `{needle}`"
            )
        }
        other => panic!("expected ERROR containing `{needle}`, got {other:?}"),
    }
    assert!(raw.closed(T), "connection not closed after ERROR");
}

fn hello_ok(f: &Fixture) -> Raw {
    let mut raw = Raw::connect(&f.src);
    raw.hello("secret");
    raw
}

#[test]
fn every_bad_input_closes_only_that_connection() {
    let f = fixture();
    let mut good = Good::new(&f);
    good.round_trip();

    // oversize length
    let mut r = hello_ok(&f);
    r.send_raw(&(70_000u32).to_be_bytes()).unwrap();
    expect_error(&mut r, "exceeds the maximum");
    good.round_trip();

    // garbage (an HTTP request): its "length" is far too large
    let mut r = Raw::connect(&f.src);
    r.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_error(&mut r, "exceeds the maximum");
    good.round_trip();

    // truncated frame: a NOTIFY whose body is too short for its fields
    let mut r = hello_ok(&f);
    r.send_raw(&[0, 0, 0, 5, 3, 0, 0, 0, 1]).unwrap();
    expect_error(&mut r, "truncated NOTIFY");
    good.round_trip();

    // unknown tag
    let mut r = hello_ok(&f);
    r.send_raw(&[0, 0, 0, 1, 99]).unwrap();
    expect_error(&mut r, "unknown frame tag 99");
    good.round_trip();

    // MESSAGE before NOTIFY
    let mut r = hello_ok(&f);
    r.send(&msg(77, 1, b"", b"x"));
    expect_error(&mut r, "without a successful NOTIFY");
    good.round_trip();

    // first frame is not HELLO
    let mut r = Raw::connect(&f.src);
    r.send(&Frame::Notify {
        stream_id: 5,
        stream_name: "x".into(),
        point_of_ref: 0,
    });
    expect_error(&mut r, "expected HELLO");
    good.round_trip();

    // wrong cookie
    let mut r = Raw::connect(&f.src);
    match r.hello_with("0.0.1", "wrong") {
        Frame::Error { message } => assert!(message.contains("cookie"), "{message}"),
        f => panic!("{f:?}"),
    }
    assert!(r.closed(T));
    good.round_trip();

    // wrong version
    let mut r = Raw::connect(&f.src);
    match r.hello_with("9.9.9", "secret") {
        Frame::Error { message } => assert!(message.contains("\"0.0.1\""), "{message}"),
        f => panic!("{f:?}"),
    }
    assert!(r.closed(T));
    good.round_trip();

    // credits overspent: 4 credits, NOTIFY + 4 MESSAGEs in one write
    let mut r = hello_ok(&f);
    r.send_all(&[
        Frame::Notify {
            stream_id: 9,
            stream_name: "greedy".into(),
            point_of_ref: 0,
        },
        msg(9, 1, b"", b"a"),
        msg(9, 2, b"", b"b"),
        msg(9, 3, b"", b"c"),
        msg(9, 4, b"", b"d"),
    ]);
    loop {
        match r.recv(T) {
            Some(Frame::NotifyAck { .. }) | Some(Frame::Ack { .. }) => continue,
            Some(Frame::Error { message }) => {
                assert!(message.contains("credits overspent"), "{message}");
                break;
            }
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    assert!(r.closed(T));
    good.round_trip();

    // an ACK frame from a source is not allowed
    let mut r = hello_ok(&f);
    r.send(&Frame::Ack {
        credits: 1,
        acks: vec![],
    });
    expect_error(&mut r, "unexpected Ack");
    good.round_trip();

    // peer vanishing mid-frame: half a MESSAGE, then gone
    let mut r = hello_ok(&f);
    r.notify(11, "vanishing", u64::MAX);
    let mut half = bytes::BytesMut::new();
    msg(11, 1, b"", &[7u8; 100]).encode(&mut half).unwrap();
    r.send_raw(&half[..60]).unwrap();
    drop(r);
    std::thread::sleep(Duration::from_millis(50));
    good.round_trip();

    // a stream id active on another connection is refused
    let mut r = hello_ok(&f);
    assert!(!r.notify(1, "good", u64::MAX).0);
    good.round_trip();

    f.engine.stop().unwrap();
}

#[test]
fn concurrent_bad_connections_do_not_disturb_a_streaming_one() {
    let f = fixture();
    let mut good = Good::new(&f);
    let src = f.src.clone();
    let bad = std::thread::spawn(move || {
        for i in 0..50u32 {
            let mut r = Raw::connect(&src);
            r.send_raw(&(i.wrapping_mul(2_654_435_761) | 0x1000_0000).to_be_bytes())
                .unwrap();
            let _ = r.recv(Duration::from_secs(2));
        }
    });
    for _ in 0..200 {
        good.round_trip();
    }
    bad.join().unwrap();
    f.engine.stop().unwrap();
}
