//! End to end over real processes on loopback: datagrams -> udp_source -> engine -> udp_sink
//! -> datagrams. Bytes out must equal bytes in, in order, for 100,000 datagrams of mixed sizes
//! (1 B to 60 KB, trailing whitespace and arbitrary binary), and none may be lost at a rate the
//! machine can carry (the sender keeps a bounded window of datagrams in flight).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{free_port, start_connector, start_engine, AppFile};

const COUNT: usize = 100_000;

/// Deterministic pseudo-random sizes and contents: mostly small, some large, up to 60 KB.
fn datagram(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let size = match next() % 100 {
        0 => 30_000 + (next() % 30_001) as usize,
        1..=9 => 200 + (next() % 3_800) as usize,
        _ => 1 + (next() % 200) as usize,
    };
    let mut d: Vec<u8> = (0..size).map(|_| next() as u8).collect();
    // Start with the index so order and identity are easy to check.
    let tag = (i as u32).to_be_bytes();
    for (k, b) in tag.iter().enumerate() {
        if k < d.len() {
            d[k] = *b;
        }
    }
    // Every 7th datagram ends in whitespace that must survive untouched.
    if i.is_multiple_of(7) && d.len() > 6 {
        let n = d.len();
        d[n - 2..].copy_from_slice(b" \n");
    }
    d
}

/// The test's own receiving socket needs a receive buffer larger than the sender's window,
/// or the kernel drops bursts before the test reads them (the default is ~200 KB).
fn bind_with_big_buffer() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.into()
}

/// Starts udp_source (connector `feed`) reading UDP `port`; returns once it is connected to
/// the engine.
fn start_udp_source(dir: &std::path::Path, app: &std::path::Path, port: u16) -> testkit::Proc {
    let source = start_connector(
        dir,
        "udp_source",
        app,
        "feed",
        &["--feed-port".into(), port.to_string()],
    );
    assert!(
        testkit::wait_until(Duration::from_secs(20), || source
            .stderr()
            .contains("connected to engine")),
        "udp_source did not connect: {}",
        source.stderr()
    );
    source
}

#[test]
fn hundred_thousand_datagrams_round_trip_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (engine_port, sink_port) = (free_port(), free_port());
    let udp_in = UdpSocket::bind("127.0.0.1:0").unwrap();
    let in_port = udp_in.local_addr().unwrap().port();
    drop(udp_in);
    let receiver = bind_with_big_buffer();
    let out_port = receiver.local_addr().unwrap().port();
    let app = AppFile::new("udp round trip")
        .source("feed", engine_port, "max_credits = 2000")
        .sink("out", sink_port, "")
        .pipeline("feed", &["out"])
        .write(dir.path());

    let _sink = start_connector(
        dir.path(),
        "udp_sink",
        &app,
        "out",
        &["--out-port".into(), out_port.to_string()],
    );
    let _engine = start_engine(dir.path(), "engine", &app, &[], &[engine_port]);
    let mut source = start_udp_source(dir.path(), &app, in_port);

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = std::thread::spawn(move || {
        receiver
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut mismatches = Vec::new();
        for i in 0..COUNT {
            match receiver.recv(&mut buf) {
                Ok(n) => {
                    if buf[..n] != datagram(i)[..] && mismatches.len() < 5 {
                        mismatches.push((i, n));
                    }
                    counter.fetch_add(1, Ordering::Release);
                }
                Err(e) => return Err(format!("after {i} datagrams: {e}")),
            }
        }
        Ok(mismatches)
    });

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let mut in_flight_bytes = std::collections::VecDeque::new();
    let mut window_bytes = 0usize;
    for i in 0..COUNT {
        let d = datagram(i);
        // Bounded window: at most 256 datagrams / 256 KiB sent but not yet received.
        loop {
            let done = received.load(Ordering::Acquire) as usize;
            while in_flight_bytes.len() > i - done {
                if let Some(n) = in_flight_bytes.pop_front() {
                    window_bytes -= n;
                }
            }
            if in_flight_bytes.len() < 256 && window_bytes + d.len() <= 256 * 1024 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "stalled at {i} sent, {done} received"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        sender.send_to(&d, ("127.0.0.1", in_port)).unwrap();
        in_flight_bytes.push_back(d.len());
        window_bytes += d.len();
    }
    let result = reader.join().unwrap();
    let mismatches =
        result.unwrap_or_else(|e| panic!("lost datagrams: {e}; source: {}", source.stderr()));
    assert!(
        mismatches.is_empty(),
        "datagrams differ (index, received length): {mismatches:?}"
    );
    assert_eq!(received.load(Ordering::Acquire) as usize, COUNT);
    // A clean stop drains and exits 0.
    let status = source.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "udp_source did not stop cleanly: {}",
        source.stderr()
    );
}

#[test]
fn empty_and_oversize_datagrams_are_counted_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let engine_port = free_port();
    let in_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let metrics_port = free_port();
    let app = AppFile::new("udp limits")
        .source("feed", engine_port, "")
        .write(dir.path());
    let _engine = start_engine(dir.path(), "engine", &app, &[], &[engine_port]);
    let source = start_connector(
        dir.path(),
        "udp_source",
        &app,
        "feed",
        &[
            "--feed-port".into(),
            in_port.to_string(),
            "--feed-max_bytes".into(),
            "100".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
    );
    assert!(testkit::wait_until(Duration::from_secs(20), || source
        .stderr()
        .contains("connected to engine")));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"", ("127.0.0.1", in_port)).unwrap();
    sender.send_to(&[7u8; 101], ("127.0.0.1", in_port)).unwrap();
    sender.send_to(&[7u8; 100], ("127.0.0.1", in_port)).unwrap();
    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let ok = testkit::wait_until(Duration::from_secs(10), || {
        scrape().is_some_and(|m| {
            m.contains("udp_datagrams_dropped_total{program=\"udp_source\",connector=\"feed\",reason=\"empty\"} 1")
                && m.contains("reason=\"oversize\"} 1")
                && m.contains("connector_messages_total{program=\"udp_source\",connector=\"feed\",direction=\"out\"} 1")
        })
    });
    assert!(ok, "metrics: {}", scrape().unwrap_or_default());
    assert!(
        source.stderr().contains("empty datagram dropped"),
        "{}",
        source.stderr()
    );
}

#[test]
fn a_bad_parameter_is_reported_without_waiting_for_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    // No engine is listening on this port.
    let app = AppFile::new("no engine")
        .source("feed", free_port(), "host = \"127.0.0.1\"")
        .write(dir.path());
    let mut source = start_connector(
        dir.path(),
        "udp_source",
        &app,
        "feed",
        &["--feed-port".into(), "not-a-port".into()],
    );
    let status = source.wait_timeout(Duration::from_secs(10));
    let err = source.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("not-a-port"), "{err}");
    assert!(
        !err.contains("not reachable"),
        "waited for the engine: {err}"
    );
}

#[test]
fn datagrams_sent_before_an_engine_restart_arrive_without_new_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (engine_port, sink_port) = (free_port(), free_port());
    let udp_in = UdpSocket::bind("127.0.0.1:0").unwrap();
    let in_port = udp_in.local_addr().unwrap().port();
    drop(udp_in);
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let out_port = receiver.local_addr().unwrap().port();
    let app = AppFile::new("udp engine restart")
        .source("feed", engine_port, "")
        .sink("out", sink_port, "")
        .pipeline("feed", &["out"])
        .write(dir.path());
    // No sink yet: the engine cannot acknowledge what udp_source sends.
    let mut engine = start_engine(dir.path(), "engine", &app, &[], &[engine_port]);
    let source = start_udp_source(dir.path(), &app, in_port);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5 {
        sender
            .send_to(format!("d{i}").as_bytes(), ("127.0.0.1", in_port))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    engine.kill9();
    let _engine = start_engine(dir.path(), "engine2", &app, &[], &[engine_port]);
    let _sink = start_connector(
        dir.path(),
        "udp_sink",
        &app,
        "out",
        &["--out-port".into(), out_port.to_string()],
    );
    // No datagram is sent any more: udp_source's idle flush finds the new engine.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 5 {
        let n = receiver.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "only {got:?} arrived ({e}); udp_source: {}",
                source.stderr()
            )
        });
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got, ["d0", "d1", "d2", "d3", "d4"]);
}
