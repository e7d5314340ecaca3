//! End to end through real processes: Kafka topic -> kafka_source -> engine -> kafka_sink ->
//! Kafka topic, against the broker at `KAFKA_BROKERS` (Tansu on 127.0.0.1:9092 by default).

mod common;

use std::time::{Duration, Instant};

use common::{Pair, Reader};

/// Value size of every test record.
const VALUE: usize = 100;

fn source_args(topic: &str, group: &str, brokers: &str) -> Vec<String> {
    [
        "--in-topics",
        topic,
        "--in-consumer_group",
        group,
        "--in-bootstrap_brokers",
        brokers,
        // A killed member is noticed after this, not after the 45 s default.
        "--in-option",
        "session.timeout.ms=6000",
        "--in-option",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn sink_args(topic: &str, brokers: &str) -> Vec<String> {
    ["--out-topic", topic, "--out-bootstrap_brokers", brokers]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn pass_through_200k_over_4_partitions() {
    let _serial = common::serial();
    let brokers = testkit::kafka_brokers();
    let n = 200_000;
    let input = testkit::unique("pt_in");
    let output = testkit::unique("pt_out");
    let _cleanup = common::cleanup(&brokers, &[&input, &output]);
    common::create_topic(&brokers, &input, 4);
    common::create_topic(&brokers, &output, 4);
    let t = Instant::now();
    // Nothing resumes mid-run here, so the input may be produced in normal batches.
    common::produce_batched(&brokers, &input, 4, n, VALUE);
    eprintln!("produced {n} records in {:?}", t.elapsed());

    let dir = common::test_dir();
    let mut pair = Pair::new(dir.path(), "pt", 8192);
    pair.source_args = source_args(&input, &testkit::unique("pt_group"), &brokers);
    pair.sink_args = sink_args(&output, &brokers);
    let t = Instant::now();
    pair.start();
    let mut out = Reader::new(&brokers, &output);
    let done = out.wait_unique(n, Duration::from_secs(100));
    pair.assert_running();
    assert!(
        done,
        "only {} of {n} records arrived\n{}",
        out.seen.len(),
        pair.logs()
    );
    eprintln!("{n} records through the pipeline in {:?}", t.elapsed());
    out.poll_for(Duration::from_millis(500));
    out.assert_complete(n, VALUE);
    assert_eq!(out.duplicates(), 0, "no failure happened, so no duplicates");

    // SIGTERM: the source drains, commits and leaves cleanly.
    let status = pair
        .source
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "kafka_source did not exit cleanly on SIGTERM: {status:?}\n{}",
        pair.logs()
    );
    // Everything was committed: a new source in the same group reads nothing.
    let committed = common::committed(&brokers, &pair.source_args[3], &input, 4);
    let total: i64 = committed.iter().sum();
    assert_eq!(total, n as i64, "committed offsets {committed:?}");
}

/// Bytes the engine buffers per sink in the kill test: it bounds the window of
/// unacknowledged messages, and so the duplicates a kill can cause.
const SINK_BUFFER: usize = 256 * 1024;
/// Credits of kafka_source and kafka_sink in the kill and split tests.
const CREDITS: u32 = 1000;

#[test]
fn kill_source_and_engine_mid_run_loses_nothing() {
    let _serial = common::serial();
    let brokers = testkit::kafka_brokers();
    let n = 200_000;
    let input = testkit::unique("kill_in");
    let output = testkit::unique("kill_out");
    let _cleanup = common::cleanup(&brokers, &[&input, &output]);
    common::create_topic(&brokers, &input, 4);
    common::create_topic(&brokers, &output, 4);
    let t = Instant::now();
    // One record per batch: after a kill the source resumes in the middle of the input,
    // and Tansu 0.6 skips the rest of a batch when a fetch starts inside it.
    common::produce(&brokers, &input, 4, n, VALUE);
    eprintln!("produced {n} records (one per batch) in {:?}", t.elapsed());

    let dir = common::test_dir();
    let mut pair = Pair::new(dir.path(), "kill", CREDITS);
    let group = testkit::unique("kill_group");
    pair.source_args = source_args(&input, &group, &brokers);
    pair.sink_args = sink_args(&output, &brokers);
    let resilience = dir.path().join("resilience");
    pair.engine_args = vec![
        "--resilience-dir".into(),
        resilience.display().to_string(),
        "--sink-buffer-bytes".into(),
        SINK_BUFFER.to_string(),
    ];
    let t = Instant::now();
    pair.start();
    let mut out = Reader::new(&brokers, &output);

    // Kill points away from multiples of a partition's 50,000 records: Tansu serves the
    // partitions largely one after another, so at a boundary the source may have nothing in
    // flight.
    assert!(
        out.wait_unique(n * 3 / 10, Duration::from_secs(60)),
        "only {} records before the first kill\n{}",
        out.seen.len(),
        pair.logs()
    );
    let window1 = pair.kill_source();
    eprintln!(
        "kill -9 kafka_source at {} records, {window1} unacknowledged ({:?})",
        out.seen.len(),
        t.elapsed()
    );
    pair.start_source();

    assert!(
        out.wait_unique(n * 13 / 20, Duration::from_secs(60)),
        "only {} records before the second kill\n{}",
        out.seen.len(),
        pair.logs()
    );
    let window2 = pair.kill_engine();
    eprintln!(
        "kill -9 engine at {} records, {window2} unacknowledged ({:?})",
        out.seen.len(),
        t.elapsed()
    );
    pair.start_engine();

    let done = out.wait_unique(n, Duration::from_secs(90));
    pair.assert_running();
    assert!(
        done,
        "only {} of {n} records arrived\n{}",
        out.seen.len(),
        pair.logs()
    );
    out.poll_for(Duration::from_secs(2));
    eprintln!(
        "{n} records through two kills in {:?}; {} duplicates",
        t.elapsed(),
        out.duplicates()
    );
    out.assert_complete(n, VALUE);
    // The restarted source commits everything the engine acknowledged, the records the
    // dead one had sent included.
    let mut committed = Vec::new();
    let all_committed = testkit::wait_until(Duration::from_secs(15), || {
        committed = common::committed(&brokers, &group, &input, 4);
        committed.iter().sum::<i64>() == n as i64
    });
    assert!(
        all_committed,
        "committed offsets {committed:?}\n{}",
        pair.logs()
    );
    // A kill can only repeat what was not acknowledged at that moment: for the source kill,
    // what it had sent and the engine had not acknowledged; for the engine kill, the same
    // counted by the source. Both counts are taken with the process about to die stopped.
    // On top: the outputs the engine had sent to kafka_sink without seeing their
    // acknowledgement (it re-sends them after its restart) and messages in transit that
    // neither count sees, each at most one connection's credits.
    let bound = (window1 + window2) as usize + 2 * CREDITS as usize;
    assert!(
        out.duplicates() <= bound,
        "{} duplicates, more than the unacknowledged windows at the kills ({window1} + {window2} + 2 x {CREDITS}); per partition (count, lowest, highest offset): {:?}\n{}",
        out.duplicates(),
        out.duplicate_ranges(4),
        pair.logs()
    );
}

#[test]
fn two_pairs_in_one_group_split_partitions_and_deliver_everything() {
    let _serial = common::serial();
    let brokers = testkit::kafka_brokers();
    let n = 40_000;
    let input = testkit::unique("split_in");
    let out_a = testkit::unique("split_out_a");
    let out_b = testkit::unique("split_out_b");
    let _cleanup = common::cleanup(&brokers, &[&input, &out_a, &out_b]);
    common::create_topic(&brokers, &input, 4);
    common::create_topic(&brokers, &out_a, 4);
    common::create_topic(&brokers, &out_b, 4);
    let group = testkit::unique("split_group");

    let dir = common::test_dir();
    let mut a = Pair::new(dir.path(), "a", CREDITS);
    a.source_args = source_args(&input, &group, &brokers);
    a.sink_args = sink_args(&out_a, &brokers);
    let mut b = Pair::new(dir.path(), "b", CREDITS);
    b.source_args = source_args(&input, &group, &brokers);
    b.sink_args = sink_args(&out_b, &brokers);
    let t = Instant::now();
    a.start();
    b.start();
    // Wait until the group settled with both members: each source logged an assignment.
    let settled = testkit::wait_until(Duration::from_secs(30), || {
        [&a, &b].iter().all(|p| {
            p.source
                .as_ref()
                .is_some_and(|s| s.stderr().contains("assigned: starting"))
        })
    });
    assert!(
        settled,
        "the group never assigned both members\n{}{}",
        a.logs(),
        b.logs()
    );

    // One record per batch: rebalances make sources resume in the middle of the input.
    common::produce_range(&brokers, &input, 4, 0..n / 2, VALUE, true);
    let mut ra = Reader::new(&brokers, &out_a);
    let mut rb = Reader::new(&brokers, &out_b);
    let deadline = Instant::now() + Duration::from_secs(60);
    while union(&ra, &rb) < n / 2 && Instant::now() < deadline {
        ra.poll_for(Duration::from_millis(100));
        rb.poll_for(Duration::from_millis(100));
    }
    a.assert_running();
    b.assert_running();
    assert!(
        !ra.seen.is_empty() && !rb.seen.is_empty(),
        "both pairs should have had partitions: {} via a, {} via b\n{}{}",
        ra.seen.len(),
        rb.seen.len(),
        a.logs(),
        b.logs()
    );
    eprintln!(
        "first half: {} via a, {} via b ({:?})",
        ra.seen.len(),
        rb.seen.len(),
        t.elapsed()
    );

    // b's source leaves the group cleanly; a takes over its partitions at b's commits.
    let status = b
        .source
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        b.logs()
    );
    common::produce_range(&brokers, &input, 4, n / 2..n, VALUE, true);
    eprintln!("second half produced ({:?})", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(60);
    while union(&ra, &rb) < n && Instant::now() < deadline {
        ra.poll_for(Duration::from_millis(100));
        rb.poll_for(Duration::from_millis(100));
    }
    ra.poll_for(Duration::from_secs(1));
    rb.poll_for(Duration::from_millis(200));
    a.assert_running();
    let got = union(&ra, &rb);
    assert_eq!(
        got,
        n,
        "together they delivered {got} of {n}\n{}{}",
        a.logs(),
        b.logs()
    );
    let all = Reader::merged(&[&ra, &rb]);
    all.assert_complete(n, VALUE);
    let dups = all.duplicates();
    eprintln!(
        "{n} records via two pairs in {:?}: {} via a, {} via b, {dups} duplicates",
        t.elapsed(),
        ra.seen.len(),
        rb.seen.len()
    );
    // One clean hand-over (commit on revoke, drain on SIGTERM) repeats at most what was
    // unacknowledged at that moment.
    let window = 2 * CREDITS as usize;
    assert!(dups <= 2 * window, "{dups} duplicates");
}

fn union(a: &Reader, b: &Reader) -> usize {
    a.seen.len() + b.seen.keys().filter(|k| !a.seen.contains_key(*k)).count()
}
