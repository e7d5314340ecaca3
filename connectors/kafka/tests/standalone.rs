//! The binaries on their own (`--from stdin`, `--to stdout`) against the real broker:
//! compression round trips, refused records, resume from the group's commits, bad input.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kv_input(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let (k, v) = common::record(i, 50);
        out.extend_from_slice(&k);
        out.push(b'\t');
        out.extend_from_slice(&v);
        out.push(b'\n');
    }
    out
}

/// Runs kafka_sink with `--from stdin --format kv` on `input`; returns (success, stderr).
fn run_sink(args: &[&str], input: &[u8]) -> (bool, String) {
    let mut child = Command::new(testkit::bin("kafka_sink"))
        .args(["--connector", "out", "--from", "stdin", "--format", "kv"])
        .args(["--stats-interval", "0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kafka_sink");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("kafka_sink");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kafka_source with `--to stdout --format kv` until `n` lines arrived (or 30 s), then
/// SIGTERM; returns the lines.
fn run_source(args: &[&str], n: usize, dir: &std::path::Path, name: &str) -> Vec<String> {
    let mut all: Vec<String> = ["--connector", "in", "--to", "stdout", "--format", "kv"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let mut p = testkit::Proc::spawn(dir, name, &testkit::bin("kafka_source"), &all);
    let lines = |p: &testkit::Proc| String::from_utf8_lossy(&p.stdout()).lines().count();
    testkit::wait_until(Duration::from_secs(30), || lines(&p) >= n);
    // Give a few more records the chance to show up if there are too many.
    std::thread::sleep(Duration::from_millis(300));
    let status = p.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "kafka_source did not exit cleanly: {status:?}\n{}",
        p.stderr()
    );
    String::from_utf8_lossy(&p.stdout())
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn sink_round_trips_every_compression_codec() {
    let brokers = testkit::kafka_brokers();
    let input = kv_input(2000);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = testkit::unique(&format!("codec_{codec}"));
        let _cleanup = common::cleanup(&brokers, &[&topic]);
        common::create_topic(&brokers, &topic, 2);
        let (ok, err) = run_sink(
            &[
                "--out-topic",
                &topic,
                "--out-bootstrap_brokers",
                &brokers,
                "--out-compression",
                codec,
            ],
            &input,
        );
        assert!(ok, "kafka_sink with {codec}: {err}");
        let got = common::read_topic(&brokers, &topic, 2000, Duration::from_secs(30));
        assert_eq!(got.len(), 2000, "{codec}");
        let mut lines: Vec<String> = got
            .iter()
            .map(|r| {
                format!(
                    "{}\t{}",
                    String::from_utf8_lossy(&r.key),
                    String::from_utf8_lossy(&r.value)
                )
            })
            .collect();
        lines.sort();
        let mut want: Vec<String> = String::from_utf8_lossy(&input)
            .lines()
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(lines, want, "{codec}: keys and values must round-trip");
    }
}

#[test]
fn sink_sets_aside_refused_records_or_stops_with_the_reason() {
    let brokers = testkit::kafka_brokers();
    let topic = testkit::unique("refused");
    let _cleanup = common::cleanup(&brokers, &[&topic]);
    common::create_topic(&brokers, &topic, 1);
    let dir = common::test_dir();
    // A record over librdkafka's message.max.bytes (1 MB) between two good ones.
    let mut input = b"a\tfirst\n".to_vec();
    input.extend_from_slice(b"big\t");
    input.extend(vec![b'x'; 1_500_000]);
    input.extend_from_slice(b"\nc\tlast\n");

    // Without --dead-letter: the sink stops and names the record and the reason.
    let (ok, err) = run_sink(&["--out-topic", &topic], &input);
    assert!(!ok, "kafka_sink should fail without --dead-letter");
    assert!(
        err.contains("\"big\"")
            && err.contains("MessageSizeTooLarge")
            && err.contains("--dead-letter"),
        "{err}"
    );

    // With it: the record is set aside with its reason, the others are written.
    let dl = dir.path().join("dead");
    let (ok, err) = run_sink(
        &[
            "--out-topic",
            &topic,
            "--dead-letter",
            &dl.display().to_string(),
        ],
        &input,
    );
    assert!(ok, "{err}");
    let index = std::fs::read_to_string(dl.join("out.jsonl")).expect("dead-letter index");
    assert_eq!(index.lines().count(), 1, "{index}");
    assert!(
        index.contains("\"key\":\"big\"") && index.contains("MessageSizeTooLarge"),
        "{index}"
    );
    let frames = std::fs::metadata(dl.join("out.frames")).unwrap().len();
    assert_eq!(frames, 4 + 1_500_000);
    let mut out = common::Reader::new(&brokers, &topic);
    assert!(
        out.wait_unique(2, Duration::from_secs(20)),
        "{:?}",
        out.records
    );
    out.poll_for(Duration::from_millis(300));
    assert!(out.seen.contains_key(&b"a"[..]) && out.seen.contains_key(&b"c"[..]));
    assert!(!out.seen.contains_key(&b"big"[..]));

    // A topic that does not exist (Tansu does not auto-create): refused as well.
    let missing = testkit::unique("no_such_topic");
    let (ok, err) = run_sink(
        &[
            "--out-topic",
            &missing,
            "--out-option",
            "topic.metadata.propagation.max.ms=1000",
        ],
        b"k\tv\n",
    );
    assert!(!ok);
    assert!(
        err.contains("UnknownTopicOrPartition") || err.contains("UnknownTopic"),
        "{err}"
    );
}

#[test]
fn source_resumes_after_the_groups_commits() {
    let brokers = testkit::kafka_brokers();
    let topic = testkit::unique("resume");
    let _cleanup = common::cleanup(&brokers, &[&topic]);
    common::create_topic(&brokers, &topic, 3);
    common::produce(&brokers, &topic, 3, 300, 20);
    let dir = common::test_dir();
    let group = testkit::unique("resume_group");
    let args = [
        "--in-topics",
        &topic,
        "--in-consumer_group",
        &group,
        "--in-bootstrap_brokers",
        &brokers,
    ];
    let first = run_source(&args, 300, dir.path(), "first");
    assert_eq!(first.len(), 300);
    // Acknowledged (written to stdout) means committed: a restart reads only new records.
    assert_eq!(
        common::committed(&brokers, &group, &topic, 3),
        vec![100, 100, 100]
    );
    common::produce_range(&brokers, &topic, 3, 300..330, 20, true);
    let second = run_source(&args, 30, dir.path(), "second");
    let want: Vec<String> = (300..330)
        .map(|i| {
            let (k, v) = common::record(i, 20);
            format!(
                "{}\t{}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&v)
            )
        })
        .collect();
    let mut got = second.clone();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let mut errors = Vec::new();
    let mut run = |program: &str, args: &[&str]| {
        let out = Command::new(testkit::bin(program))
            .args(args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        errors.push(err.clone());
        (out.status.code(), err)
    };
    let (code, err) = run(
        "kafka_source",
        &[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--in-topics",
            "t",
            "--in-start",
            "middle",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--in-start") && err.contains("earliest or latest"),
        "{err}"
    );
    let (code, err) = run(
        "kafka_source",
        &[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--in-topics",
            "t",
            "--in-option",
            "enable.auto.commit=true",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("not allowed"), "{err}");
    let (code, err) = run(
        "kafka_sink",
        &[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--out-topic",
            "t",
            "--out-compression",
            "brotli",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("--out-compression"), "{err}");
    let (code, err) = run(
        "kafka_sink",
        &[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--out-topic",
            "t",
            "--out-acks",
            "1",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("idempotence false"), "{err}");
    let (code, err) = run(
        "kafka_sink",
        &[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--out-topic",
            "t",
            "--out-option",
            "nonsense.setting=1",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("nonsense.setting"), "{err}");
    for e in errors {
        assert_eq!(e.trim().lines().count(), 1, "one line, not: {e}");
    }
}

#[test]
fn an_unreachable_broker_is_reported_without_flooding_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = testkit::free_port().to_string();
    let brokers = format!("127.0.0.1:{port}");
    let mut source = testkit::Proc::spawn_with(
        dir.path(),
        "kafka_source",
        Command::new(testkit::bin("kafka_source")).args([
            "--connector",
            "s",
            "--to",
            "stdout",
            "--s-topics",
            "t",
            "--s-bootstrap_brokers",
            &brokers,
            "--stats-interval",
            "0",
        ]),
    );
    // librdkafka retries several times a second; each kind of failure is logged once,
    // then once every 30 s.
    std::thread::sleep(Duration::from_secs(4));
    let err = source.stderr();
    source.kill9();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(
        err.lines().count() <= 8,
        "{} lines:\n{err}",
        err.lines().count()
    );
}
