//! `--dead-letter DIR`: a message the external system permanently refuses is written there
//! (length-prefixed payload + a JSON line) and acknowledged, and the rest flows on; without
//! the flag the sink stops with a clear error and does not acknowledge it.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use testkit::shell::{bash, metric, scrape, OpenStdin};
use testkit::{bin, free_port, start_connector, start_engine, wait_until, AppFile, Proc};

/// Plain length-prefixed frames of `payloads`.
fn frames(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Lines "good N", with a payload containing a newline (which template_sink refuses) at `poison`.
fn with_poison(n: usize, poison: usize) -> (Vec<Vec<u8>>, String) {
    let mut payloads = Vec::new();
    let mut good = String::new();
    for i in 1..=n {
        if i == poison {
            payloads.push(b"two\nlines".to_vec());
        } else {
            payloads.push(format!("good {i}").into_bytes());
            good.push_str(&format!("good {i}\n"));
        }
    }
    (payloads, good)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn template_sink_sets_a_refused_message_aside_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (payloads, good) = with_poison(50, 20);
    std::fs::write(dir.path().join("in.frames"), frames(&payloads)).unwrap();
    let out = bash(
        dir.path(),
        r#""$TEMPLATE_SINK" --connector copy --copy-file out.txt --from stdin --format frames \
            --dead-letter dead < in.frames"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&dir.path().join("out.txt")), good, "the rest flows on");
    let index = json_lines(&dir.path().join("dead/copy.jsonl"));
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["connector"], "copy");
    assert_eq!(index[0]["message_id"], 20);
    assert!(
        index[0]["reason"].as_str().unwrap().contains("newline"),
        "{index:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("dead/copy.frames")).unwrap(),
        frames(&[b"two\nlines".to_vec()]),
        "the payload, length-prefixed"
    );

    // Without --dead-letter: a clear error, non-zero exit, nothing of the batch written.
    let out = bash(
        dir.path(),
        r#""$TEMPLATE_SINK" --connector copy --copy-file out2.txt --from stdin --format frames \
            < in.frames"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("message 20")
            && stderr.contains("permanently refused")
            && stderr.contains("--dead-letter DIR"),
        "{stderr}"
    );
    assert!(!read(&dir.path().join("out2.txt")).contains("two"));
}

/// stdin_source (frames, stdin kept open) -> engine -> a sink; returns the source, its
/// metrics port and the engine.
fn pipeline(dir: &Path, app: &Path, src_port: u16) -> (OpenStdin, u16, Proc) {
    let engine = start_engine(dir, "engine", app, &[], &[src_port]);
    let metrics = free_port();
    let source = OpenStdin::spawn(
        dir,
        "stdin_source",
        &bin("stdin_source"),
        &[
            "--application-module".into(),
            app.display().to_string(),
            "--connector".into(),
            "in".into(),
            "--format".into(),
            "frames".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics}"),
            "--stats-interval".into(),
            "0".into(),
        ],
    );
    (source, metrics, engine)
}

fn acked(metrics_port: u16) -> f64 {
    metric(&scrape(metrics_port), "connector_acked_total", &[]).unwrap_or(-1.0)
}

#[test]
fn refused_message_through_the_engine_is_not_acked_until_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("dead letters")
        .source("in", src_port, "")
        .sink("copy", sink_port, "")
        .pipeline("in", &["copy"])
        .write(dir.path());
    let out = dir.path().join("out.txt");
    let sink_args = |extra: &[&str]| {
        let mut a = vec!["--copy-file".to_string(), out.display().to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut sink = start_connector(dir.path(), "template_sink", &app, "copy", &sink_args(&[]));
    let (mut source, src_metrics, _engine) = pipeline(dir.path(), &app, src_port);
    let (payloads, good) = with_poison(100, 50);
    source.write(&frames(&payloads));

    // Without --dead-letter the sink stops on the poison message with a clear error...
    let status = sink.wait_timeout(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", sink.stderr());
    assert!(
        sink.stderr().contains("permanently refused"),
        "{}",
        sink.stderr()
    );
    // ...and does not acknowledge it: the source never sees message 50 acknowledged.
    std::thread::sleep(Duration::from_millis(500));
    let acked_before = acked(src_metrics);
    assert!(
        (0.0..50.0).contains(&acked_before),
        "acknowledged {acked_before} of 100 with the poison message at 50"
    );
    assert!(!read(&out).contains("two"));

    // Restarted with --dead-letter, the sink receives the unacknowledged messages again from
    // the engine, sets the poison aside and delivers the rest: everything gets acknowledged.
    let dead = dir.path().join("dead");
    let mut sink = start_connector(
        dir.path(),
        "template_sink",
        &app,
        "copy",
        &sink_args(&["--dead-letter", &dead.display().to_string()]),
    );
    assert!(
        wait_until(Duration::from_secs(30), || acked(src_metrics) == 100.0),
        "acknowledged {} of 100; sink: {}",
        acked(src_metrics),
        sink.stderr()
    );
    let index = json_lines(&dead.join("copy.jsonl"));
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["connector"], "copy");
    assert!(index[0]["reason"].as_str().unwrap().contains("newline"));
    // At-least-once: lines delivered before the stop may come again, none is missing.
    let delivered = read(&out);
    for line in good.lines() {
        assert!(delivered.lines().any(|l| l == line), "{line} missing");
    }
    assert!(!delivered.contains("two"));
    assert!(sink.is_running());
    source.close();
    let status = source.proc.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        source.proc.stderr()
    );
}

#[test]
fn udp_sink_dead_letters_an_oversize_payload_and_the_rest_flows_on() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let udp_port = receiver.local_addr().unwrap().port();
    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("udp dead letters")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let dead = dir.path().join("dead");
    let sink = start_connector(
        dir.path(),
        "udp_sink",
        &app,
        "out",
        &[
            "--out-port".into(),
            udp_port.to_string(),
            "--dead-letter".into(),
            dead.display().to_string(),
        ],
    );
    let (mut source, src_metrics, _engine) = pipeline(dir.path(), &app, src_port);
    // Ten datagrams; the fifth is larger than any UDP datagram can be.
    let payloads: Vec<Vec<u8>> = (1..=10)
        .map(|i| {
            if i == 5 {
                vec![b'x'; 70_000]
            } else {
                format!("datagram {i}").into_bytes()
            }
        })
        .collect();
    source.write(&frames(&payloads));
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < 9 {
        let n = receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("after {got:?}: {e}; sink: {}", sink.stderr()));
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let expected: Vec<String> = (1..=10)
        .filter(|i| *i != 5)
        .map(|i| format!("datagram {i}"))
        .collect();
    assert_eq!(got, expected);
    assert!(wait_until(Duration::from_secs(10), || acked(src_metrics) == 10.0));
    let index = json_lines(&dead.join("out.jsonl"));
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["connector"], "out");
    assert_eq!(index[0]["payload_bytes"], 70_000);
    assert!(
        index[0]["reason"].as_str().unwrap().contains("too large"),
        "{index:?}"
    );
    let frames_file = std::fs::read(dead.join("out.frames")).unwrap();
    assert_eq!(frames_file.len(), 4 + 70_000);
    source.close();
    assert!(source
        .proc
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    // Without --dead-letter (here from stdin): a clear error and a non-zero exit.
    std::fs::write(dir.path().join("big.frames"), frames(&payloads)).unwrap();
    let out = bash(
        dir.path(),
        &format!(
            r#""$UDP_SINK" --connector out --out-port {udp_port} --from stdin --format frames < big.frames"#
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("too large for a UDP datagram") && stderr.contains("--dead-letter"),
        "{stderr}"
    );
}

#[test]
fn a_source_sets_aside_a_record_the_protocol_cannot_carry() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("unsendable")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let huge_key = "k".repeat(70_000);
    let input = format!("a\tone\n{huge_key}\ttwo\nb\tthree\n");
    std::fs::write(dir.path().join("in.kv"), &input).unwrap();
    let sink = start_connector(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &["--format".into(), "kv".into()],
    );
    let _engine = start_engine(dir.path(), "engine", &app, &[], &[src_port]);
    let source = |stream: &str, extra: &str| {
        bash(
            dir.path(),
            &format!(
                r#""$STDIN_SOURCE" --application-module app.toml --connector in --in-stream {stream} \
                    --format kv --stats-interval 0 {extra} < in.kv"#
            ),
        )
    };

    // Without --dead-letter: a clear error naming the record, after what came before it.
    let out = source("first", "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("message 2 of stream `first`")
            && stderr.contains("65535")
            && stderr.contains("--dead-letter DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&sink.stdout()).contains("a\tone\n")
        }),
        "the record before it was not delivered: {}",
        sink.stderr()
    );

    // With --dead-letter: set aside, and the stream goes on past it.
    let out = source("second", "--dead-letter dead");
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&sink.stdout()).contains("b\tthree\n")
        }),
        "{}",
        sink.stderr()
    );
    let index = json_lines(&dir.path().join("dead/in.jsonl"));
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["message_id"], 2);
    assert!(index[0]["reason"].as_str().unwrap().contains("65535"));
    assert_eq!(
        std::fs::read(dir.path().join("dead/in.frames")).unwrap(),
        frames(&[b"two".to_vec()])
    );
    assert!(!String::from_utf8_lossy(&sink.stdout()).contains("two"));
}
