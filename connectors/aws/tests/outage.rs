//! The S3 and Kinesis connectors survive the service being unreachable for 10 s under load,
//! with nothing lost.
//!
//! moto keeps nothing across a restart, so the outage is a TCP proxy of the test's own
//! (`testkit::Proxy`) between the connectors and moto: every connector under test has its
//! `endpoint_url` on the proxy, and the proxy is cut (live connections reset, new ones
//! refused) for 10 s while a steady feed runs, then restored on the same port. The test's own
//! checks talk to moto directly.
//!
//! Each test is one pipeline through one engine: a paced `stdin_source` -> engine -> the
//! sink under test -> (proxy) -> moto -> (proxy) -> the source under test -> engine ->
//! `stdout_sink`. Both connectors under test see the same outage.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use testkit::{free_port, start_engine, AppFile, Proc, Proxy};

/// How long the service is unreachable.
const DOWN: Duration = Duration::from_secs(10);
/// `max_credits` of the sinks and sources under test: what each may hold unacknowledged.
const CREDITS: usize = 1000;

/// Starts a connector like `common::start`, but with its endpoint on `endpoint` (the proxy).
fn start_via(
    dir: &Path,
    program: &str,
    app: &Path,
    connector: &str,
    extra: &[String],
    endpoint: &str,
) -> Proc {
    let mut c = command(program);
    c.env("AWS_ENDPOINT_URL", endpoint)
        .args([
            "--application-module",
            &app.display().to_string(),
            "--connector",
            connector,
            "--stats-interval",
            "0",
        ])
        .args(extra)
        .args([
            format!("--{connector}-endpoint_url"),
            endpoint.to_string(),
            format!("--{connector}-region"),
            "us-east-1".to_string(),
        ]);
    Proc::spawn_with(dir, &format!("{program}-{connector}"), &mut c)
}

/// `stdin_source` (connector `feed`) fed `data` as frames at `per_sec` payloads a second by
/// a thread of the test, so that the pipeline is under load before, during and after the
/// outage (the thread blocks, as a real producer would, when back-pressure fills the pipe).
struct Feed {
    proc: Proc,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Feed {
    fn start(dir: &Path, app: &Path, data: &[Vec<u8>], per_sec: usize) -> Feed {
        let (read, mut write) = std::io::pipe().expect("pipe");
        let mut c = command("stdin_source");
        c.args([
            "--application-module",
            &app.display().to_string(),
            "--connector",
            "feed",
            "--format",
            "frames",
            "--stats-interval",
            "0",
            "--drain-timeout",
            "60",
        ])
        .stdin(read);
        let proc = Proc::spawn_with(dir, "stdin_source", &mut c);
        drop(c); // our copy of the read end: EOF reaches stdin_source when the writer ends
        let data = data.to_vec();
        let tick = Duration::from_millis(50);
        let per_tick = (per_sec / 20).max(1);
        let writer = std::thread::spawn(move || {
            let started = Instant::now();
            for (i, group) in data.chunks(per_tick).enumerate() {
                let due = started + tick * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut buf = Vec::new();
                for p in group {
                    buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
                    buf.extend_from_slice(p);
                }
                if write.write_all(&buf).is_err() {
                    return; // stdin_source died: the test reports it
                }
            }
        });
        Feed {
            proc,
            writer: Some(writer),
        }
    }

    /// Waits until everything was written and `stdin_source` exited, every message
    /// acknowledged by the sink under test.
    fn finish(&mut self, timeout: Duration, logs: &[&Proc]) {
        if let Some(w) = self.writer.take() {
            w.join().expect("feed thread");
        }
        let status = self.proc.wait_timeout(timeout);
        let err = self.proc.stderr();
        assert!(
            status.is_some_and(|s| s.success()) && !err.contains("not acknowledged"),
            "stdin_source did not end with everything acknowledged: {status:?}\n{err}\n{}",
            tails(logs)
        );
    }
}

fn tails(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {} stderr:\n{}", p.name, tail(&p.stderr(), 3000)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Distinct payloads `stdout_sink` wrote so far.
fn distinct(out: &Proc) -> usize {
    counts(&read_frames(&out.stdout())).len()
}

/// Cuts the proxy for [`DOWN`] while the pipeline runs; checks that every process keeps
/// running and that the cut really stopped the flow (nothing new reached `out` from 2 s
/// into the outage to its end). Returns the distinct outputs when it was cut.
fn outage(proxy: &mut Proxy, out: &mut Proc, procs: &mut [&mut Proc]) -> usize {
    let at_cut = distinct(out);
    let reset = proxy.cut();
    let cut_at = Instant::now();
    eprintln!("proxy cut at {at_cut} distinct outputs, {reset} live connections reset");
    std::thread::sleep(Duration::from_secs(2));
    let early = distinct(out);
    std::thread::sleep(DOWN.saturating_sub(cut_at.elapsed()));
    let late = distinct(out);
    for p in procs.iter_mut().map(|p| &mut **p).chain([out]) {
        assert!(
            p.is_running(),
            "{} exited while the service was unreachable:\n{}",
            p.name,
            tail(&p.stderr(), 3000)
        );
    }
    proxy.restore();
    eprintln!(
        "proxy restored after {:.1} s ({early} -> {late} distinct outputs while cut)",
        cut_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        early, late,
        "records still flowed while the service was unreachable: the proxy was bypassed"
    );
    at_cut
}

/// Asserts that a connector noticed the outage (logged failed calls) and went on.
fn assert_noticed(p: &Proc, what: &str) {
    let log = p.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["failing", "failed", "not written", "again"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "{} logged no failed call during the outage ({what}):\n{}",
        p.name,
        tail(&log, 3000)
    );
    eprintln!(
        "{}: {} failure lines, first: {}",
        p.name,
        lines.len(),
        lines[0]
    );
}

#[test]
fn s3_sink_and_s3_source_survive_10s_of_unreachable_s3() {
    let dir = scratch();
    let bucket = bucket_name("s3outage");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let mut proxy = Proxy::for_url(&endpoint());
    let via = proxy.http_url();
    // 30,000 binary payloads at 1,500 a second: about 20 s of load, the outage in the middle.
    let data = payloads(30_000, 77);

    let (p_feed, p_s3, p_from, p_out) = (free_port(), free_port(), free_port(), free_port());
    let credits = format!("max_credits = {CREDITS}");
    let app = AppFile::new("s3 outage")
        .source("feed", p_feed, "")
        .sink("to_s3", p_s3, &credits)
        .source("from_s3", p_from, &credits)
        .sink("out", p_out, "")
        .pipeline("feed", &["to_s3"])
        .pipeline("from_s3", &["out"])
        .write(dir.path());
    // Batches close every 200 ms (or at CREDITS messages): many small objects.
    let mut sink = start_via(
        dir.path(),
        "s3_sink",
        &app,
        "to_s3",
        &args(&[
            "--to_s3-bucket",
            &bucket,
            "--to_s3-prefix",
            "p/",
            "--to_s3-format",
            "frames",
            "--to_s3-batch_ms",
            "200",
        ]),
        &via,
    );
    let mut out = start(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &args(&["--format", "frames"]),
    );
    for port in [p_s3, p_out] {
        assert!(
            testkit::wait_for_port(port, Duration::from_secs(30)),
            "sinks listen\n{}",
            tails(&[&sink, &out])
        );
    }
    let mut engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed, p_from]);
    // A polling reader of the prefix the sink writes: it reads the objects as they appear.
    let mut source = start_via(
        dir.path(),
        "s3_source",
        &app,
        "from_s3",
        &args(&[
            "--from_s3-bucket",
            &bucket,
            "--from_s3-prefix",
            "p/",
            "--from_s3-poll_ms",
            "200",
            "--from_s3-checkpoint_dir",
            &dir.path().join("cp").display().to_string(),
        ]),
        &via,
    );
    let started = Instant::now();
    let mut feed = Feed::start(dir.path(), &app, &data, 1500);

    wait_for(
        Duration::from_secs(30),
        "4,000 records through S3 before the outage",
        &[&feed.proc, &sink, &source, &engine, &out],
        || distinct(&out) >= 4_000,
    );
    assert!(
        proxy.connections() >= 2,
        "both connectors talk to S3 through the proxy ({} connections)",
        proxy.connections()
    );
    let at_cut = outage(
        &mut proxy,
        &mut out,
        &mut [&mut sink, &mut source, &mut engine, &mut feed.proc],
    );
    assert!(
        at_cut < data.len() * 3 / 4,
        "most of the run was over before the outage ({at_cut} records): nothing was tested"
    );

    feed.finish(Duration::from_secs(60), &[&sink, &engine]);
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(40),
        "every record back out of S3 after the outage",
        &[&sink, &source, &engine, &out],
        || {
            got = read_frames(&out.stdout());
            counts(&got).len() >= data.len()
        },
    );
    eprintln!(
        "{} records through S3 and back in {:.1} s, with a {} s outage",
        data.len(),
        started.elapsed().as_secs_f64(),
        DOWN.as_secs()
    );
    assert_noticed(&sink, "PutObject");
    assert_noticed(&source, "ListObjectsV2 / GetObject");

    // What s3_sink stored, read straight from moto.
    let mut stored = Vec::new();
    let keys = rt().block_on(list_keys(&bucket, "p/"));
    for (key, _) in &keys {
        stored.extend(read_frames(&rt().block_on(get_object(&bucket, key))));
    }
    let stored_dups = assert_all_delivered(&data, &stored);
    // The sink retries a failed PutObject itself and acknowledges a batch only once it is
    // stored; a batch is written again only when a PUT reached moto and its answer was cut.
    // Uploads into one prefix run one after the other, so that is at most the one batch in
    // flight at the cut: at most CREDITS messages (a batch closes at the sink's max_credits).
    assert!(
        stored_dups <= CREDITS,
        "{stored_dups} duplicates in the bucket: more than the one batch ({CREDITS} messages) that can be in flight at a cut"
    );
    // s3_source resumes an interrupted GET at the offset it reached, and its link to the
    // engine is never cut: what it adds to the stored duplicates is bounded by what it may
    // have unacknowledged (its max_credits).
    std::thread::sleep(Duration::from_millis(500));
    let got = read_frames(&out.stdout());
    let out_dups = assert_all_delivered(&data, &got);
    eprintln!(
        "{} objects; duplicates: {stored_dups} stored, {out_dups} read back",
        keys.len()
    );
    assert!(
        out_dups <= stored_dups + CREDITS,
        "{out_dups} duplicates read back: more than the {stored_dups} stored plus the source's window of {CREDITS}"
    );
    for p in [&mut source, &mut sink, &mut engine] {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "{} did not stop cleanly:\n{}",
            p.name,
            tail(&p.stderr(), 3000)
        );
    }
}

#[test]
fn kinesis_sink_and_kinesis_source_survive_10s_of_unreachable_kinesis() {
    let dir = scratch();
    let stream = stream_name("kin_outage");
    // Small shards: moto's PutRecords slows down as a shard grows.
    rt().block_on(create_stream(&stream, 8));
    let _cleanup = DeleteStream(stream.clone());
    let mut proxy = Proxy::for_url(&endpoint());
    let via = proxy.http_url();
    // 16,000 payloads at 800 a second: about 20 s of load, the outage in the middle.
    let data = payloads(16_000, 88);

    let (p_feed, p_kin, p_from, p_out) = (free_port(), free_port(), free_port(), free_port());
    let credits = format!("max_credits = {CREDITS}");
    let app = AppFile::new("kinesis outage")
        .source("feed", p_feed, "")
        .sink("to_kinesis", p_kin, &credits)
        .source("from_kinesis", p_from, &credits)
        .sink("out", p_out, "")
        .pipeline("feed", &["to_kinesis"])
        .pipeline("from_kinesis", &["out"])
        .write(dir.path());
    let mut sink = start_via(
        dir.path(),
        "kinesis_sink",
        &app,
        "to_kinesis",
        &args(&["--to_kinesis-stream", &stream]),
        &via,
    );
    let mut out = start(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &args(&["--format", "frames"]),
    );
    for port in [p_kin, p_out] {
        assert!(
            testkit::wait_for_port(port, Duration::from_secs(30)),
            "sinks listen\n{}",
            tails(&[&sink, &out])
        );
    }
    let mut engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed, p_from]);
    let mut source = start_via(
        dir.path(),
        "kinesis_source",
        &app,
        "from_kinesis",
        &args(&[
            "--from_kinesis-stream",
            &stream,
            "--from_kinesis-poll_ms",
            "200",
            "--from_kinesis-max_records",
            "1000",
            "--from_kinesis-checkpoint_dir",
            &dir.path().join("cp").display().to_string(),
        ]),
        &via,
    );
    let started = Instant::now();
    let mut feed = Feed::start(dir.path(), &app, &data, 800);

    wait_for(
        Duration::from_secs(30),
        "2,000 records through Kinesis before the outage",
        &[&feed.proc, &sink, &source, &engine, &out],
        || distinct(&out) >= 2_000,
    );
    assert!(
        proxy.connections() >= 2,
        "both connectors talk to Kinesis through the proxy ({} connections)",
        proxy.connections()
    );
    let at_cut = outage(
        &mut proxy,
        &mut out,
        &mut [&mut sink, &mut source, &mut engine, &mut feed.proc],
    );
    assert!(
        at_cut < data.len() * 3 / 4,
        "most of the run was over before the outage ({at_cut} records): nothing was tested"
    );

    feed.finish(Duration::from_secs(60), &[&sink, &engine]);
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(40),
        "every record back out of Kinesis after the outage",
        &[&sink, &source, &engine, &out],
        || {
            got = read_frames(&out.stdout());
            counts(&got).len() >= data.len()
        },
    );
    eprintln!(
        "{} records through Kinesis and back in {:.1} s, with a {} s outage",
        data.len(),
        started.elapsed().as_secs_f64(),
        DOWN.as_secs()
    );
    assert_noticed(&sink, "PutRecords");
    assert_noticed(&source, "GetRecords");

    // What kinesis_sink wrote, read straight from moto.
    let stored: Vec<Vec<u8>> = rt()
        .block_on(read_stream(&stream))
        .into_iter()
        .map(|r| r.2)
        .collect();
    let stored_dups = assert_all_delivered(&data, &stored);
    // A failed PutRecords call is written again whole (its records are retried by the sink,
    // not replayed by the engine); it duplicates only when the call reached moto and its
    // answer was cut. The sink makes one call at a time, so at most one call of up to
    // batch_records (500) records is in flight at the cut.
    assert!(
        stored_dups <= 500,
        "{stored_dups} duplicates in the stream: more than one PutRecords call (500 records)"
    );
    // kinesis_source repeats a failed GetRecords with the same iterator, and its link to the
    // engine is never cut: what it adds is bounded by its unacknowledged window.
    std::thread::sleep(Duration::from_millis(500));
    let got = read_frames(&out.stdout());
    let out_dups = assert_all_delivered(&data, &got);
    eprintln!("duplicates: {stored_dups} in the stream, {out_dups} read back");
    assert!(
        out_dups <= stored_dups + CREDITS,
        "{out_dups} duplicates read back: more than the {stored_dups} in the stream plus the source's window of {CREDITS}"
    );
    for p in [&mut source, &mut sink, &mut engine] {
        assert!(
            p.terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "{} did not stop cleanly:\n{}",
            p.name,
            tail(&p.stderr(), 3000)
        );
    }
}
