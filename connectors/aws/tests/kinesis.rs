//! kinesis_sink and kinesis_source against the local Kinesis service (moto), through the engine.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{free_port, start_engine, AppFile};

#[test]
fn kinesis_round_trip_100k_through_the_engine() {
    let dir = scratch();
    let stream = stream_name("kin_rt");
    // 64 shards: moto's PutRecords copies the shard's list of sequence numbers for every
    // record (time proportional to the shard's size), so small shards keep it fast.
    rt().block_on(create_stream(&stream, 64));
    let _cleanup_stream = DeleteStream(stream.clone());
    let data = payloads(100_000, 11);
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);

    let (p_feed, p_kin, p_from, p_out) = (free_port(), free_port(), free_port(), free_port());
    let app = AppFile::new("kinesis round trip")
        .source("feed", p_feed, "")
        .sink("to_kinesis", p_kin, "")
        .source("from_kinesis", p_from, "")
        .sink("out", p_out, "")
        .pipeline("feed", &["to_kinesis"])
        .pipeline("from_kinesis", &["out"])
        .write(dir.path());
    // Stats every second: the test waits for `acked=100000` before reading (moto answers
    // GetRecords slowly, and with errors, while PutRecords changes the same shard).
    let sink = start(
        dir.path(),
        "kinesis_sink",
        &app,
        "to_kinesis",
        &args(&["--to_kinesis-stream", &stream, "--stats-interval", "1"]),
    );
    let out = start(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &args(&["--format", "frames"]),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed, p_from]);

    let started = Instant::now();
    let mut feed = feed_frames(dir.path(), &app, &input);
    let status = feed.wait_timeout(Duration::from_secs(240));
    assert!(
        status.is_some_and(|s| s.success()),
        "stdin_source: {status:?}\n{}",
        feed.stderr()
    );
    wait_for(
        Duration::from_secs(240),
        "the sink to acknowledge every message",
        &[&sink, &engine],
        || sink.stderr().contains(&format!("acked={}", data.len())),
    );
    eprintln!(
        "100k messages into Kinesis through the engine in {:?}",
        started.elapsed()
    );
    let reading = Instant::now();

    let source = start(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &args(&[
            "--from_kinesis-stream",
            &stream,
            "--from_kinesis-checkpoint_dir",
            &dir.path().join("cp").display().to_string(),
            "--from_kinesis-poll_ms",
            "500",
        ]),
    );
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(240),
        "100k records out of Kinesis",
        &[&source, &sink, &engine, &out],
        || {
            got = read_frames(&out.stdout());
            counts(&got).len() >= data.len()
        },
    );
    eprintln!(
        "100k messages out of Kinesis through the engine in {:?}",
        reading.elapsed()
    );
    let dups = assert_all_delivered(&data, &got);
    eprintln!("{dups} duplicates");
    assert!(
        dups < 2_000,
        "{dups} duplicates without any failure injected"
    );
    // A sample of the stream itself: keyed by a 16-hex-digit hash of the payload, spread
    // over every shard.
    let sample = rt().block_on(read_stream_sample(&stream, 50));
    assert_eq!(sample.len(), 64 * 50);
    assert!(sample
        .iter()
        .all(|r| r.1.len() == 16
            && r.1 == format!("{:016x}", aws_connectors::kinesis::fnv1a64(&r.2))));
}

/// Writes `data` into `stream` with kinesis_sink, then starts an engine passing connector
/// `from_kinesis` (a kinesis_source, started by the caller) to a `stdout_sink --format frames`.
/// Returns the application file, the sink and the engine.
fn filled_stream_to_stdout(
    dir: &std::path::Path,
    stream: &str,
    data: &[Vec<u8>],
    app_name: &str,
) -> (std::path::PathBuf, testkit::Proc, testkit::Proc) {
    let input = path(dir, "in.frames");
    write_frames(&input, data);
    run_with_stdin(
        dir,
        "kinesis_sink",
        "k",
        &input,
        &args(&["--format", "frames", "--k-stream", stream]),
        Duration::from_secs(120),
    );
    let (p_from, p_out) = (free_port(), free_port());
    let app = AppFile::new(app_name)
        .source("from_kinesis", p_from, "")
        .sink("out", p_out, "")
        .pipeline("from_kinesis", &["out"])
        .write(dir);
    let out = start(
        dir,
        "stdout_sink",
        &app,
        "out",
        &args(&["--format", "frames"]),
    );
    let engine = start_engine(dir, "engine", &app, &[], &[p_from]);
    (app, out, engine)
}

#[test]
fn kinesis_source_kill9_loses_nothing_after_restart() {
    let dir = scratch();
    let stream = stream_name("kin_kill");
    rt().block_on(create_stream(&stream, 8));
    let _cleanup_stream = DeleteStream(stream.clone());
    let data = payloads(30_000, 22);
    let (app, out, engine) = filled_stream_to_stdout(dir.path(), &stream, &data, "kinesis kill");
    let cp = dir.path().join("cp");
    // Small GetRecords calls (at most 5 a second per shard) so the kill lands mid-stream.
    let source_args = args(&[
        "--from_kinesis-stream",
        &stream,
        "--from_kinesis-checkpoint_dir",
        &cp.display().to_string(),
        "--from_kinesis-max_records",
        "100",
        "--from_kinesis-poll_ms",
        "200",
        "--from_kinesis-checkpoint_ms",
        "100",
    ]);
    let mut source = start(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &source_args,
    );
    wait_for(
        Duration::from_secs(60),
        "a first part of the records",
        &[&source, &engine, &out],
        || read_frames(&out.stdout()).len() >= 4_000,
    );
    source.kill9();
    let at_kill = read_frames(&out.stdout()).len();
    assert!(
        at_kill < data.len(),
        "the source finished before it could be killed ({at_kill} records)"
    );
    let checkpoint = std::fs::read_to_string(cp.join(format!("from_kinesis.{stream}.json")))
        .expect("checkpoint written before the kill");
    assert!(checkpoint.contains("shardId-000000000000"), "{checkpoint}");
    eprintln!("killed the source after {at_kill} records; checkpoint:\n{checkpoint}");

    let source = start(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &source_args,
    );
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(90),
        "every record after the restart",
        &[&source, &engine, &out],
        || {
            got = read_frames(&out.stdout());
            counts(&got).len() >= data.len()
        },
    );
    let dups = assert_all_delivered(&data, &got);
    eprintln!("{dups} duplicates after kill -9 at {at_kill}");
    assert!(
        dups <= at_kill,
        "duplicates ({dups}) are bounded by what was delivered before the kill"
    );
}

#[test]
fn kinesis_sink_refuses_oversize_records_one_by_one() {
    let dir = scratch();
    // 300 records; two over the 1 MiB record limit, in the middle of a batch.
    let mut data = text_payloads(300);
    data[100] = vec![b'x'; 1024 * 1024 + 100];
    data[200] = vec![b'y'; 1024 * 1024 + 1];
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);
    let expected: Vec<Vec<u8>> = data
        .iter()
        .filter(|p| p.len() < 1024 * 1024)
        .cloned()
        .collect();

    // 1. Through the engine; the sink sees the records are too large before sending them.
    let stream = stream_name("kin_big");
    rt().block_on(create_stream(&stream, 1));
    let _cleanup_stream = DeleteStream(stream.clone());
    let (p_feed, p_kin) = (free_port(), free_port());
    let app = AppFile::new("kinesis oversize")
        .source("feed", p_feed, "")
        .sink("to_kinesis", p_kin, "")
        .pipeline("feed", &["to_kinesis"])
        .write(dir.path());
    let dead = dir.path().join("dead");
    let sink = start(
        dir.path(),
        "kinesis_sink",
        &app,
        "to_kinesis",
        &args(&[
            "--to_kinesis-stream",
            &stream,
            "--dead-letter",
            &dead.display().to_string(),
        ]),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed]);
    let mut feed = feed_frames(dir.path(), &app, &input);
    let status = feed.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "stdin_source: {status:?}\n{}\n{}",
        feed.stderr(),
        sink.stderr()
    );
    assert!(
        !feed.stderr().contains("not acknowledged"),
        "every message, refused ones included, is acknowledged: {}",
        feed.stderr()
    );
    let in_stream: Vec<Vec<u8>> = rt()
        .block_on(read_stream(&stream))
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        in_stream, expected,
        "every other record written once, in order"
    );
    let index = std::fs::read_to_string(dead.join("to_kinesis.jsonl")).expect("dead-letter index");
    assert_eq!(index.lines().count(), 2, "{index}");
    assert!(index.contains("over the stream's limit"), "{index}");
    let refused =
        read_frames(&std::fs::read(dead.join("to_kinesis.frames")).expect("dead letters"));
    assert_eq!(refused, vec![data[100].clone(), data[200].clone()]);
    drop((sink, engine));

    // 2. With the limit raised, the service refuses the whole PutRecords call naming the
    //    record: that record is refused, the rest of the batch is sent again.
    let stream2 = stream_name("kin_big2");
    rt().block_on(create_stream(&stream2, 1));
    let _cleanup_stream2 = DeleteStream(stream2.clone());
    let dead2 = dir.path().join("dead2");
    let p = run_with_stdin(
        dir.path(),
        "kinesis_sink",
        "k",
        &input,
        &args(&[
            "--format",
            "frames",
            "--k-stream",
            &stream2,
            "--k-max_record_bytes",
            "4000000",
            "--dead-letter",
            &dead2.display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    let in_stream: Vec<Vec<u8>> = rt()
        .block_on(read_stream(&stream2))
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(in_stream, expected, "{}", p.stderr());
    let index = std::fs::read_to_string(dead2.join("k.jsonl")).expect("dead-letter index");
    assert_eq!(index.lines().count(), 2, "{index}");
}

#[test]
fn kinesis_source_finishes_a_split_parent_before_its_children() {
    let dir = scratch();
    let stream = stream_name("kin_split");
    rt().block_on(create_stream(&stream, 1));
    let _cleanup_stream = DeleteStream(stream.clone());
    let data = text_payloads(2_000);
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);
    run_with_stdin(
        dir.path(),
        "kinesis_sink",
        "k",
        &input,
        &args(&["--format", "frames", "--k-stream", &stream]),
        Duration::from_secs(60),
    );
    rt().block_on(async {
        kinesis()
            .await
            .split_shard()
            .stream_name(&stream)
            .shard_to_split("shardId-000000000000")
            .new_starting_hash_key((1u128 << 127).to_string())
            .send()
            .await
            .expect("split shard");
    });
    // (No writes after the split: moto keeps routing them to the closed parent.)
    let cp = dir.path().join("cp");
    let read = |name: &str| {
        let mut c = command("kinesis_source");
        c.args([
            "--connector",
            "k",
            "--to",
            "stdout",
            "--format",
            "lines",
            "--stats-interval",
            "0",
        ])
        .args(args(&[
            "--k-stream",
            &stream,
            "--k-checkpoint_dir",
            &cp.display().to_string(),
            "--k-shard_refresh_ms",
            "300",
            "--k-poll_ms",
            "200",
        ]))
        .args(aws_args("k"));
        testkit::Proc::spawn_with(dir.path(), name, &mut c)
    };
    let mut first = read("first");
    wait_for(
        Duration::from_secs(60),
        "the parent's records and the children started",
        &[&first],
        || {
            let e = first.stderr();
            first.stdout().iter().filter(|b| **b == b'\n').count() >= data.len()
                && e.contains("shard shardId-000000000000 finished")
                && e.contains("reading shard shardId-000000000001")
                && e.contains("reading shard shardId-000000000002")
        },
    );
    let log = first.stderr();
    let finished_at = log.find("shard shardId-000000000000 finished").unwrap_or(0);
    assert!(
        log.find("reading shard shardId-000000000001").unwrap_or(0) > finished_at,
        "children start after the parent finished:\n{log}"
    );
    assert!(
        first
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "{}",
        first.stderr()
    );
    let lines: Vec<Vec<u8>> = first
        .stdout()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines, data, "the parent's records, in order");
    let checkpoint =
        std::fs::read_to_string(cp.join(format!("k.{stream}.json"))).expect("checkpoint");
    let v: serde_json::Value = serde_json::from_str(&checkpoint).expect("json");
    assert_eq!(
        v["shards"]["shardId-000000000000"]["finished"], true,
        "{checkpoint}"
    );

    // A restart resumes from the checkpoint: nothing is read again.
    let mut second = read("second");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        second
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "{}",
        second.stderr()
    );
    assert!(
        second.stdout().is_empty(),
        "nothing repeated after a clean restart: {} bytes",
        second.stdout().len()
    );
    assert!(
        !second
            .stderr()
            .contains("reading shard shardId-000000000000"),
        "{}",
        second.stderr()
    );
}

#[test]
fn kinesis_source_latest_reads_only_new_records() {
    let dir = scratch();
    let stream = stream_name("kin_latest");
    rt().block_on(create_stream(&stream, 1));
    let _cleanup_stream = DeleteStream(stream.clone());
    let old = path(dir.path(), "old.frames");
    write_frames(&old, &text_payloads(50));
    run_with_stdin(
        dir.path(),
        "kinesis_sink",
        "k",
        &old,
        &args(&["--format", "frames", "--k-stream", &stream]),
        Duration::from_secs(60),
    );
    let mut c = command("kinesis_source");
    c.args([
        "--connector",
        "k",
        "--to",
        "stdout",
        "--format",
        "kv",
        "--stats-interval",
        "0",
    ])
    .args(args(&[
        "--k-stream",
        &stream,
        "--k-iterator",
        "LATEST",
        "--k-poll_ms",
        "200",
    ]))
    .args(aws_args("k"));
    let mut source = testkit::Proc::spawn_with(dir.path(), "latest", &mut c);
    wait_for(
        Duration::from_secs(30),
        "the reader to start",
        &[&source],
        || source.stderr().contains("reading shard"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let new = path(dir.path(), "new.kv");
    std::fs::write(&new, "alice\tnew-1\nbob\tnew-2\n").expect("write");
    run_with_stdin(
        dir.path(),
        "kinesis_sink",
        "k",
        &new,
        &args(&["--format", "kv", "--k-stream", &stream]),
        Duration::from_secs(60),
    );
    wait_for(
        Duration::from_secs(30),
        "the two new records",
        &[&source],
        || source.stdout().iter().filter(|b| **b == b'\n').count() >= 2,
    );
    std::thread::sleep(Duration::from_millis(500));
    source.terminate(Duration::from_secs(20));
    assert_eq!(
        String::from_utf8_lossy(&source.stdout()),
        "alice\tnew-1\nbob\tnew-2\n",
        "keys are partition keys; old records skipped"
    );
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let mut c = command("kinesis_source");
    c.args([
        "--connector",
        "k",
        "--to",
        "stdout",
        "--k-stream",
        "x",
        "--k-iterator",
        "AT_TIMESTAMP",
    ])
    .args(aws_args("k"));
    let out = c.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AT_TIMESTAMP needs the `timestamp` parameter"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut c = command("kinesis_source");
    c.args([
        "--connector",
        "k",
        "--to",
        "stdout",
        "--k-stream",
        &stream_name("missing"),
    ])
    .args(aws_args("k"));
    let out = c.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut c = command("kinesis_source");
    c.args([
        "--connector",
        "k",
        "--to",
        "stdout",
        "--k-stream",
        "x",
        "--k-max_records",
        "0",
    ])
    .args(aws_args("k"));
    let out = c.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 to 10000 records"), "{err}");
}

#[test]
fn kinesis_source_killed_before_its_first_checkpoint_resends_nothing_the_engine_has() {
    let dir = scratch();
    let stream = stream_name("kin_first");
    rt().block_on(create_stream(&stream, 2));
    let _cleanup_stream = DeleteStream(stream.clone());
    let data = payloads(2_000, 7);
    let (app, out, engine) = filled_stream_to_stdout(dir.path(), &stream, &data, "kinesis first");
    let cp = dir.path().join("cp");
    // No acknowledged position is saved within the test: only the shards' first records.
    let source_args = args(&[
        "--from_kinesis-stream",
        &stream,
        "--from_kinesis-checkpoint_dir",
        &cp.display().to_string(),
        "--from_kinesis-checkpoint_ms",
        "600000",
    ]);
    let mut source = start(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &source_args,
    );
    wait_for(
        Duration::from_secs(60),
        "every record",
        &[&source, &engine, &out],
        || read_frames(&out.stdout()).len() >= data.len(),
    );
    source.kill9();
    let checkpoint = std::fs::read_to_string(cp.join(format!("from_kinesis.{stream}.json")))
        .expect("the shards' first records were saved");
    assert!(checkpoint.contains("\"first\""), "{checkpoint}");

    let source = start(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &source_args,
    );
    // The restart reads both shards again from their first records, under the same ids:
    // the engine has them all, so nothing new may come out.
    std::thread::sleep(Duration::from_secs(6));
    let got = read_frames(&out.stdout());
    assert_eq!(
        got.len(),
        data.len(),
        "records sent again after the restart; source: {}",
        source.stderr()
    );
    assert_all_delivered(&data, &got);
}
