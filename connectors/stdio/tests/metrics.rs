//! `--metrics-addr` and `--stats-interval` during a real run: stdin_source -> engine ->
//! stdout_sink, each serving Prometheus text, `/health` and `/ready`; the counters and
//! latency histograms must match what was sent, and readiness must follow the processes
//! each one depends on.

use std::time::Duration;

use testkit::shell::{http_get, must, scrape, OpenStdin};
use testkit::{bin, free_port, start_connector, start_engine, wait_until, AppFile};

#[test]
fn metrics_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let (src_m, engine_m, sink_m) = (free_port(), free_port(), free_port());
    let app = AppFile::new("metrics")
        .source("in", src_port, "max_credits = 500")
        .sink("out", sink_port, "max_credits = 1000")
        .pipeline("in", &["out"])
        .write(dir.path());
    let sink = start_connector(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &["--metrics-addr".into(), format!("127.0.0.1:{sink_m}")],
    );
    let metrics_addr = format!("127.0.0.1:{engine_m}");
    let _engine = start_engine(
        dir.path(),
        "engine",
        &app,
        &["--metrics-addr", &metrics_addr],
        &[src_port],
    );
    let mut source = OpenStdin::spawn(
        dir.path(),
        "stdin_source",
        &bin("stdin_source"),
        &[
            "--application-module".into(),
            app.display().to_string(),
            "--connector".into(),
            "in".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{src_m}"),
            "--stats-interval".into(),
            "1".into(),
        ],
    );

    // Send N lines of varying length; the source stays running (stdin open) while we scrape.
    let n = 20_000u64;
    let mut text = String::new();
    let mut bytes = 0u64;
    for i in 0..n {
        let line = "x".repeat((i % 50) as usize) + &i.to_string();
        bytes += line.len() as u64;
        text.push_str(&line);
        text.push('\n');
    }
    source.write(text.as_bytes());
    assert!(
        wait_until(Duration::from_secs(45), || sink.stdout().len()
            == text.len()),
        "the sink wrote {} of {} bytes; sink stderr: {}",
        sink.stdout().len(),
        text.len(),
        testkit::shell::tail(&sink.stderr())
    );
    // Acknowledgements travel back sink -> engine -> source after the write: wait for them.
    let settled = wait_until(Duration::from_secs(20), || {
        let s = scrape(src_m);
        testkit::shell::metric(&s, "connector_acked_total", &[]) == Some(n as f64)
    });
    let (src, eng, snk) = (scrape(src_m), scrape(engine_m), scrape(sink_m));
    assert!(
        settled,
        "source never saw every message acknowledged:\n{src}"
    );

    let (n, bytes) = (n as f64, bytes as f64);
    let out = [("direction", "out")];
    let inn = [("direction", "in")];
    // Source: read from stdin, sent to the engine, acknowledged end to end.
    let program = [("program", "stdin_source"), ("connector", "in")];
    assert_eq!(must(&src, "connector_messages_total", &program), n, "{src}");
    assert_eq!(must(&src, "connector_messages_total", &inn), n, "{src}");
    assert_eq!(must(&src, "connector_bytes_total", &inn), bytes, "{src}");
    assert_eq!(must(&src, "connector_messages_total", &out), n, "{src}");
    assert_eq!(must(&src, "connector_bytes_total", &out), bytes, "{src}");
    assert_eq!(must(&src, "connector_acked_total", &[]), n, "{src}");
    assert_eq!(must(&src, "connector_in_flight", &[]), 0.0, "{src}");
    let credits = must(&src, "connector_credits_available", &[]);
    assert!(
        (0.0..=500.0).contains(&credits),
        "credits {credits}:\n{src}"
    );
    assert_eq!(must(&src, "connector_reconnects_total", &[]), 0.0, "{src}");
    for kind in ["refused", "engine_connection", "protocol", "decode"] {
        assert_eq!(
            must(&src, "connector_errors_total", &[("kind", kind)]),
            0.0,
            "{src}"
        );
    }
    // Engine: everything in, everything out, everything acknowledged.
    assert_eq!(must(&eng, "engine_messages_total", &inn), n, "{eng}");
    assert_eq!(must(&eng, "engine_bytes_total", &inn), bytes, "{eng}");
    assert_eq!(must(&eng, "engine_messages_total", &out), n, "{eng}");
    assert_eq!(must(&eng, "engine_bytes_total", &out), bytes, "{eng}");
    assert_eq!(must(&eng, "engine_acked_total", &[]), n, "{eng}");
    assert_eq!(must(&eng, "engine_in_flight", &[]), 0.0, "{eng}");
    // Sink: received from the engine, written to stdout, acknowledged, credits back in full.
    let program = [("program", "stdout_sink"), ("connector", "out")];
    assert_eq!(must(&snk, "connector_messages_total", &program), n, "{snk}");
    assert_eq!(must(&snk, "connector_messages_total", &inn), n, "{snk}");
    assert_eq!(must(&snk, "connector_bytes_total", &inn), bytes, "{snk}");
    assert_eq!(must(&snk, "connector_messages_total", &out), n, "{snk}");
    assert_eq!(must(&snk, "connector_bytes_total", &out), bytes, "{snk}");
    assert_eq!(must(&snk, "connector_acked_total", &[]), n, "{snk}");
    assert_eq!(must(&snk, "connector_in_flight", &[]), 0.0, "{snk}");
    assert_eq!(
        must(&snk, "connector_credits_available", &[]),
        1000.0,
        "{snk}"
    );
    assert_eq!(
        must(&snk, "connector_errors_total", &[("kind", "protocol")]),
        0.0,
        "{snk}"
    );

    // Latency: exactly one observation per record on each hop (source read -> engine ACK,
    // engine MESSAGE in -> sink ACK, the sink's write), all below +Inf.
    for (text, name) in [
        (&src, "connector_delivery_latency_seconds"),
        (&eng, "engine_delivery_latency_seconds"),
        (&snk, "connector_write_latency_seconds"),
    ] {
        assert_eq!(must(text, &format!("{name}_count"), &[]), n, "{text}");
        let inf = must(text, &format!("{name}_bucket"), &[("le", "+Inf")]);
        assert_eq!(inf, n, "{text}");
        let sum = must(text, &format!("{name}_sum"), &[]);
        assert!(sum > 0.0 && sum < n * 30.0, "{name}_sum {sum}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
    }
    // The operations endpoints of all three: alive, ready (each is connected to what it
    // depends on), 404 elsewhere.
    for (port, who) in [(src_m, "source"), (engine_m, "engine"), (sink_m, "sink")] {
        assert_eq!(http_get(port, "/health").0, 200, "{who} /health");
        let (code, body) = http_get(port, "/ready");
        assert_eq!(code, 200, "{who} /ready: {body}");
        let (code, body) = http_get(port, "/nope");
        assert_eq!(code, 404, "{who} /nope: {body}");
    }

    // The stats line (--stats-interval 1) reports the same totals on stderr, and the
    // delivery latency's p50/p99 of an interval in which records were acknowledged.
    let expect = format!("stats stdin_source/in: messages={n} bytes={bytes}");
    assert!(
        wait_until(Duration::from_secs(5), || source
            .proc
            .stderr()
            .contains(&expect)),
        "no `{expect}` line in:\n{}",
        source.proc.stderr()
    );
    let timed = |line: &str| {
        let value = |key: &str| {
            line.split_once(key)
                .is_some_and(|(_, v)| v.starts_with(|c: char| c.is_ascii_digit()))
        };
        line.starts_with("stats stdin_source/in:") && value(" p50=") && value(" p99=")
    };
    assert!(
        source.proc.stderr().lines().any(timed),
        "no stats line with p50/p99 values in:\n{}",
        source.proc.stderr()
    );
    source.close();
    let status = source.proc.wait_timeout(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn reconnects_and_lost_connections_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port, src_m) = (free_port(), free_port(), free_port());
    let app = AppFile::new("reconnects")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let sink = start_connector(dir.path(), "stdout_sink", &app, "out", &[]);
    let mut engine = start_engine(dir.path(), "engine", &app, &[], &[src_port]);
    let mut source = OpenStdin::spawn(
        dir.path(),
        "stdin_source",
        &bin("stdin_source"),
        &[
            "--application-module".into(),
            app.display().to_string(),
            "--connector".into(),
            "in".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{src_m}"),
            "--stats-interval".into(),
            "0".into(),
        ],
    );
    source.write(b"one\ntwo\n");
    assert!(wait_until(Duration::from_secs(20), || sink.stdout() == b"one\ntwo\n"));
    let before = scrape(src_m);
    assert_eq!(
        must(&before, "connector_reconnects_total", &[]),
        0.0,
        "{before}"
    );

    // The engine dies and comes back: the source reconnects on its own and says so.
    engine.kill9();
    let _engine = start_engine(dir.path(), "engine2", &app, &[], &[src_port]);
    source.write(b"three\n");
    assert!(
        wait_until(Duration::from_secs(30), || {
            String::from_utf8_lossy(&sink.stdout()).contains("three\n")
        }),
        "sink got {:?}; source: {}",
        String::from_utf8_lossy(&sink.stdout()),
        source.proc.stderr()
    );
    let after = scrape(src_m);
    assert_eq!(
        must(&after, "connector_reconnects_total", &[]),
        1.0,
        "{after}"
    );
    assert!(
        must(
            &after,
            "connector_errors_total",
            &[("kind", "engine_connection")]
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(
        must(&after, "connector_messages_total", &[("direction", "out")]),
        3.0
    );
    source.close();
    assert!(source
        .proc
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// `/ready` answers 503 with the reason while a process a binary depends on is gone, and
/// 200 again once it is back: the engine's sink for the engine, the engine for both
/// connectors. `/health` stays 200 throughout.
#[test]
fn ready_follows_the_engine_and_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let (src_m, engine_m, sink_m) = (free_port(), free_port(), free_port());
    let app = AppFile::new("ready")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let sink_args = ["--metrics-addr".to_string(), format!("127.0.0.1:{sink_m}")];
    let mut sink = start_connector(dir.path(), "stdout_sink", &app, "out", &sink_args);
    let engine_m_addr = format!("127.0.0.1:{engine_m}");
    let engine_args = ["--metrics-addr", engine_m_addr.as_str()];
    let mut engine = start_engine(dir.path(), "engine", &app, &engine_args, &[src_port]);
    let mut source = OpenStdin::spawn(
        dir.path(),
        "stdin_source",
        &bin("stdin_source"),
        &[
            "--application-module".into(),
            app.display().to_string(),
            "--connector".into(),
            "in".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{src_m}"),
        ],
    );
    let ready = |port| http_get(port, "/ready");
    let becomes = |port: u16, code: u16, reason: &str| {
        let ok = wait_until(Duration::from_secs(30), || {
            let (c, body) = ready(port);
            c == code && body.contains(reason)
        });
        let (c, body) = ready(port);
        assert!(
            ok,
            "expected {code} with `{reason}` on port {port}, got {c}: {body}"
        );
        assert_eq!(http_get(port, "/health").0, 200, "port {port} /health");
    };
    source.write(b"one\n");
    assert!(wait_until(Duration::from_secs(20), || sink.stdout() == b"one\n"));
    for port in [src_m, engine_m, sink_m] {
        becomes(port, 200, "ready");
    }

    // The sink dies: the engine is not ready, and says which sink; back once it returns.
    sink.kill9();
    becomes(engine_m, 503, "sink `out`");
    becomes(src_m, 200, "ready");
    let sink = start_connector(dir.path(), "stdout_sink", &app, "out", &sink_args);
    becomes(engine_m, 200, "ready");
    becomes(sink_m, 200, "ready");

    // The engine dies: both connectors say the engine is what they miss.
    engine.kill9();
    becomes(src_m, 503, "engine");
    becomes(sink_m, 503, "engine");
    let _engine = start_engine(dir.path(), "engine2", &app, &engine_args, &[src_port]);
    becomes(src_m, 200, "ready");
    becomes(sink_m, 200, "ready");
    becomes(engine_m, 200, "ready");
    source.write(b"two\n");
    assert!(
        wait_until(Duration::from_secs(20), || sink.stdout() == b"two\n"),
        "{:?}",
        String::from_utf8_lossy(&sink.stdout())
    );
    source.close();
    assert!(source
        .proc
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
