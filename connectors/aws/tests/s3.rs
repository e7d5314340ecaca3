//! s3_sink and s3_source against the local S3 service (moto), through the engine.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{free_port, start_engine, AppFile};

#[test]
fn s3_round_trip_100k_through_the_engine() {
    let dir = scratch();
    let bucket = bucket_name("s3rt");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let data = payloads(100_000, 33);
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);

    let (p_feed, p_s3, p_from, p_out) = (free_port(), free_port(), free_port(), free_port());
    let app = AppFile::new("s3 round trip")
        .source("feed", p_feed, "")
        .sink("to_s3", p_s3, "")
        .source("from_s3", p_from, "")
        .sink("out", p_out, "")
        .pipeline("feed", &["to_s3"])
        .pipeline("from_s3", &["out"])
        .write(dir.path());
    let sink = start(
        dir.path(),
        "s3_sink",
        &app,
        "to_s3",
        &args(&[
            "--to_s3-bucket",
            &bucket,
            "--to_s3-prefix",
            "rt/{connector}/{date}/",
            "--to_s3-format",
            "frames",
            "--to_s3-compression",
            "gzip",
            "--to_s3-batch_bytes",
            "262144",
            "--to_s3-batch_ms",
            "1000",
        ]),
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
    let status = feed.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "stdin_source: {status:?}\n{}\n{}",
        feed.stderr(),
        sink.stderr()
    );
    assert!(
        !feed.stderr().contains("not acknowledged"),
        "the sink acknowledged everything: {}",
        feed.stderr()
    );
    eprintln!(
        "100k messages into S3 through the engine in {:?}",
        started.elapsed()
    );

    let keys = rt().block_on(list_keys(&bucket, ""));
    assert!(keys.len() > 5, "several batches: {keys:?}");
    assert!(
        keys.iter()
            .all(|(k, _)| k.starts_with("rt/to_s3/") && k.ends_with(".frames.gz")),
        "{keys:?}"
    );

    let reading = Instant::now();
    let mut source = start(
        dir.path(),
        "s3_source",
        &app,
        "from_s3",
        &args(&[
            "--from_s3-bucket",
            &bucket,
            "--from_s3-prefix",
            "rt/",
            "--from_s3-checkpoint_dir",
            &dir.path().join("cp").display().to_string(),
        ]),
    );
    // Without poll_ms the source exits once everything was read and acknowledged.
    let status = source.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "s3_source: {status:?}\n{}",
        source.stderr()
    );
    eprintln!(
        "100k messages out of S3 through the engine in {:?}",
        reading.elapsed()
    );
    let got = read_frames(&out.stdout());
    assert_eq!(got.len(), data.len(), "{}", engine.stderr());
    assert!(got == data, "every payload, byte for byte, in order");
}

#[test]
fn s3_source_kill9_resumes_without_repeats() {
    let dir = scratch();
    let bucket = bucket_name("s3kill");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let data = payloads(30_000, 44);
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);
    // ~70 zstd objects of ~16 KiB of frames each.
    run_with_stdin(
        dir.path(),
        "s3_sink",
        "w",
        &input,
        &args(&[
            "--format",
            "frames",
            "--w-bucket",
            &bucket,
            "--w-prefix",
            "in/",
            "--w-format",
            "frames",
            "--w-compression",
            "zstd",
            "--w-batch_bytes",
            "16384",
        ]),
        Duration::from_secs(120),
    );
    let objects = rt().block_on(list_keys(&bucket, "in/")).len();
    assert!(objects > 50, "{objects} objects");

    let (p_from, p_out) = (free_port(), free_port());
    // Few source credits: the engine paces the source, so the kill lands mid-way.
    let app = AppFile::new("s3 kill")
        .source("from_s3", p_from, "max_credits = 200\nrefill_credits = 100")
        .sink("out", p_out, "")
        .pipeline("from_s3", &["out"])
        .write(dir.path());
    let out = start(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &args(&["--format", "frames"]),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[p_from]);
    let cp = dir.path().join("cp");
    let source_args = args(&[
        "--from_s3-bucket",
        &bucket,
        "--from_s3-prefix",
        "in/",
        "--from_s3-checkpoint_dir",
        &cp.display().to_string(),
        "--from_s3-checkpoint_ms",
        "50",
    ]);
    let mut source = start(dir.path(), "s3_source", &app, "from_s3", &source_args);
    wait_for(
        Duration::from_secs(60),
        "a first part of the records",
        &[&source, &engine, &out],
        || read_frames(&out.stdout()).len() >= 6_000,
    );
    source.kill9();
    let at_kill = read_frames(&out.stdout()).len();
    assert!(
        at_kill < data.len(),
        "the source finished before it could be killed"
    );
    let checkpoint = std::fs::read_to_string(cp.join(format!("from_s3.{bucket}.json")))
        .expect("checkpoint written before the kill");
    eprintln!(
        "killed after {at_kill} records; checkpoint:\n{}",
        tail(&checkpoint, 600)
    );

    let mut source = start(dir.path(), "s3_source", &app, "from_s3", &source_args);
    let status = source.wait_timeout(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "s3_source after restart: {status:?}\n{}",
        source.stderr()
    );
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(30),
        "every record",
        &[&engine, &out],
        || {
            got = read_frames(&out.stdout());
            counts(&got).len() >= data.len()
        },
    );
    let dups = assert_all_delivered(&data, &got);
    eprintln!("{dups} duplicates after kill -9 at {at_kill}");
    // Only what was unacknowledged at the kill can come again: at most the source's credits
    // plus what arrived since the last checkpoint write.
    assert!(dups <= 2_000, "{dups} duplicates");
    // Delivered in key order, and within an object in order: the first copy of each record
    // comes in input order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&Vec<u8>> = got.iter().filter(|p| seen.insert((*p).clone())).collect();
    assert!(
        firsts.iter().zip(data.iter()).all(|(a, b)| *a == b),
        "first copies in input order"
    );
}

#[test]
fn s3_sink_streams_large_batches_as_multipart_and_replays_sort_later() {
    let dir = scratch();
    let bucket = bucket_name("s3mp");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    // 2,600 incompressible payloads of 10 KiB: one 26 MiB batch, uploaded in 8 MiB parts.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<Vec<u8>> = (0..2_600)
        .map(|i| {
            let mut p = format!("{i:08}:").into_bytes();
            while p.len() < 10_240 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.extend_from_slice(&x.to_le_bytes());
            }
            p
        })
        .collect();
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);
    let sink_args = args(&[
        "--format",
        "frames",
        "--m-bucket",
        &bucket,
        "--m-prefix",
        "mp/",
        "--m-format",
        "frames",
        "--m-compression",
        "zstd",
        "--m-batch_bytes",
        "100000000",
    ]);
    for round in 0..2 {
        let p = run_with_stdin(
            dir.path(),
            "s3_sink",
            "m",
            &input,
            &sink_args,
            Duration::from_secs(120),
        );
        // Each run writes the same batch again, under a later name: a polling reader sees it.
        let keys = rt().block_on(list_keys(&bucket, ""));
        let names: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(
            names.len(),
            round + 1,
            "round {round}: one object per run, no temporary left: {names:?}\n{}",
            p.stderr()
        );
        let newest = names[round];
        assert!(
            newest.starts_with("mp/2")
                && newest.ends_with(
                    "Z-0000000000000000-00000000000000000001-00000000000000002600.frames.zst"
                ),
            "named by time, stream, first and last ids: {newest}"
        );
        let uploads = rt().block_on(async {
            s3().await
                .list_multipart_uploads()
                .bucket(&bucket)
                .send()
                .await
                .expect("list uploads")
        });
        assert!(
            uploads.uploads().is_empty(),
            "no unfinished multipart upload"
        );
        let object = rt().block_on(get_object(&bucket, newest));
        assert!(
            object.len() > 3 * 8 * 1024 * 1024,
            "bigger than three parts"
        );
        let plain = zstd::decode_all(&object[..]).expect("zstd");
        assert!(
            read_frames(&plain) == data,
            "round {round}: content preserved"
        );
    }
}

#[test]
fn s3_sink_per_message_and_key_prefixes() {
    let dir = scratch();
    let bucket = bucket_name("s3pm");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    // Seed behaviour through the engine: key -> object key, payload -> body; the last write
    // of a key wins.
    let mut lines: Vec<String> = (0..50).map(|i| format!("user-{i}\tvalue-{i}")).collect();
    lines.push("user-1\tvalue-1-updated".into());
    lines.push("user-1\tvalue-1-final".into());
    let input = path(dir.path(), "in.kv");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let (p_feed, p_s3) = (free_port(), free_port());
    let app = AppFile::new("s3 per message")
        .source("feed", p_feed, "")
        .sink("to_s3", p_s3, "")
        .pipeline("feed", &["to_s3"])
        .write(dir.path());
    let sink = start(
        dir.path(),
        "s3_sink",
        &app,
        "to_s3",
        &args(&[
            "--to_s3-bucket",
            &bucket,
            "--to_s3-prefix",
            "kv/",
            "--to_s3-per_message",
            "true",
        ]),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed]);
    let mut feed = command("stdin_source");
    feed.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "feed",
        "--format",
        "kv",
        "--stats-interval",
        "0",
    ])
    .stdin(std::fs::File::open(&input).expect("input"));
    let mut feed = testkit::Proc::spawn_with(dir.path(), "stdin_source", &mut feed);
    let status = feed.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}\n{}\n{}",
        feed.stderr(),
        sink.stderr(),
        engine.stderr()
    );
    assert!(
        !feed.stderr().contains("not acknowledged"),
        "{}",
        feed.stderr()
    );
    let keys = rt().block_on(list_keys(&bucket, "kv/"));
    assert_eq!(keys.len(), 50, "{keys:?}");
    assert_eq!(rt().block_on(get_object(&bucket, "kv/user-7")), b"value-7");
    assert_eq!(
        rt().block_on(get_object(&bucket, "kv/user-1")),
        b"value-1-final"
    );

    // Batch mode with {key} in the prefix: one object per key, records in order; read back
    // with s3_source (lines, gzip by extension).
    let input = path(dir.path(), "by_key.kv");
    let text: String = (0..300)
        .map(|i| format!("k{}\trecord-{i}\n", i % 3))
        .collect();
    std::fs::write(&input, &text).expect("write");
    run_with_stdin(
        dir.path(),
        "s3_sink",
        "b",
        &input,
        &args(&[
            "--format",
            "kv",
            "--b-bucket",
            &bucket,
            "--b-prefix",
            "bykey/{key}/",
            "--b-compression",
            "gzip",
        ]),
        Duration::from_secs(60),
    );
    let keys = rt().block_on(list_keys(&bucket, "bykey/"));
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys[0].0.starts_with("bykey/k0/") && keys[0].0.ends_with(".lines.gz"),
        "{keys:?}"
    );
    let mut c = command("s3_source");
    c.args([
        "--connector",
        "r",
        "--to",
        "stdout",
        "--format",
        "lines",
        "--stats-interval",
        "0",
        "--r-bucket",
        &bucket,
        "--r-prefix",
        "bykey/k1/",
    ])
    .args(aws_args("r"));
    let out = c.output().expect("s3_source");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (0..300)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("record-{i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn s3_source_polls_for_new_objects() {
    let dir = scratch();
    let bucket = bucket_name("s3poll");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let write = |name: &str, body: &str| {
        let p = path(dir.path(), name);
        std::fs::write(&p, body).expect("write");
        run_with_stdin(
            dir.path(),
            "s3_sink",
            "w",
            &p,
            &args(&[
                "--format",
                "lines",
                "--w-bucket",
                &bucket,
                "--w-prefix",
                "p/",
                "--w-batch_ms",
                "100",
            ]),
            Duration::from_secs(60),
        );
    };
    write("a", "one\ntwo\n");
    let mut source = start_poller(dir.path(), &bucket, "p/");
    wait_for(
        Duration::from_secs(30),
        "the first object",
        &[&source],
        || source.stdout() == b"one\ntwo\n",
    );
    // The second run of the sink starts its ids again (same stream 0, id 1): the name still
    // sorts after the first object, since it leads with the time of the write.
    let p = path(dir.path(), "b");
    std::fs::write(&p, "three\n").expect("write");
    run_with_stdin(
        dir.path(),
        "s3_sink",
        "w",
        &p,
        &args(&[
            "--format",
            "lines",
            "--w-bucket",
            &bucket,
            "--w-prefix",
            "p/",
            "--w-batch_ms",
            "100",
        ]),
        Duration::from_secs(60),
    );
    wait_for(
        Duration::from_secs(30),
        "the new object",
        &[&source],
        || source.stdout() == b"one\ntwo\nthree\n",
    );
    assert!(
        source
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "{}",
        source.stderr()
    );
}

#[test]
fn s3_sink_closes_a_batch_before_it_holds_all_the_engine_credits() {
    // Huge batch_bytes and batch_ms: only the credit limit (max_credits = 1000) can close a
    // batch. Otherwise the engine would wait for acknowledgements and the sink for more data.
    let dir = scratch();
    let bucket = bucket_name("s3cred");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let data = text_payloads(5_000);
    let input = path(dir.path(), "in.frames");
    write_frames(&input, &data);
    let (p_feed, p_s3) = (free_port(), free_port());
    let app = AppFile::new("s3 credits")
        .source("feed", p_feed, "")
        .sink("to_s3", p_s3, "max_credits = 1000")
        .pipeline("feed", &["to_s3"])
        .write(dir.path());
    let sink = start(
        dir.path(),
        "s3_sink",
        &app,
        "to_s3",
        &args(&[
            "--to_s3-bucket",
            &bucket,
            "--to_s3-prefix",
            "c/",
            "--to_s3-batch_bytes",
            "1000000000",
            "--to_s3-batch_ms",
            "3600000",
        ]),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[p_feed]);
    let mut feed = feed_frames(dir.path(), &app, &input);
    let status = feed.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}\n{}\n{}",
        feed.stderr(),
        sink.stderr(),
        engine.stderr()
    );
    assert!(
        !feed.stderr().contains("not acknowledged"),
        "{}\n{}\n{}",
        feed.stderr(),
        sink.stderr(),
        engine.stderr()
    );
    let keys = rt().block_on(list_keys(&bucket, "c/"));
    assert!(
        keys.len() >= 5,
        "batches of at most 1000 messages: {keys:?}"
    );
    let mut all = Vec::new();
    for (k, _) in &keys {
        let body = rt().block_on(get_object(&bucket, k));
        let lines: Vec<Vec<u8>> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert!(lines.len() <= 1000, "{k}: {} records", lines.len());
        all.extend(lines);
    }
    assert_eq!(all, data);
}

#[test]
fn s3_source_polling_reads_everything_across_engine_and_sink_restarts() {
    // Every engine incarnation names its output stream anew (`<app>/<sink>@<start>`), so the
    // stream ids in the object names are random per run: the names must still sort in the
    // order the objects were written, or the polling reader would miss some.
    let dir = scratch();
    let bucket = bucket_name("s3restart");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let (p_feed, p_s3) = (free_port(), free_port());
    let app = AppFile::new("s3 restarts")
        .source("feed", p_feed, "")
        .sink("to_s3", p_s3, "max_credits = 100000")
        .pipeline("feed", &["to_s3"])
        .write(dir.path());
    let sink_args = args(&[
        "--to_s3-bucket",
        &bucket,
        "--to_s3-prefix",
        "p/",
        "--to_s3-batch_ms",
        "200",
    ]);
    let start_sink = || {
        let sink = start(dir.path(), "s3_sink", &app, "to_s3", &sink_args);
        assert!(
            testkit::wait_for_port(p_s3, Duration::from_secs(30)),
            "s3_sink listens: {}",
            sink.stderr()
        );
        sink
    };
    let mut sink = start_sink();
    let mut reader = start_poller(dir.path(), &bucket, "p/");
    let resilience = dir.path().join("resilience").display().to_string();
    let mut want: Vec<Vec<u8>> = Vec::new();
    for run in 0..6 {
        if run == 3 {
            assert!(
                sink.terminate(Duration::from_secs(30))
                    .is_some_and(|s| s.success()),
                "{}",
                sink.stderr()
            );
            sink = start_sink();
        }
        let name = format!("engine-{run}");
        let mut engine = start_engine(
            dir.path(),
            &name,
            &app,
            &["--resilience-dir", &resilience],
            &[p_feed],
        );
        let text: String = (0..300).map(|i| format!("run{run}-{i:04}\n")).collect();
        let input = path(dir.path(), &format!("in{run}.txt"));
        std::fs::write(&input, &text).expect("write");
        let mut feed = command("stdin_source");
        feed.args([
            "--application-module",
            &app.display().to_string(),
            "--connector",
            "feed",
            "--format",
            "lines",
            "--stats-interval",
            "0",
        ])
        .stdin(std::fs::File::open(&input).expect("input"));
        let mut feed = testkit::Proc::spawn_with(dir.path(), &format!("feed-{run}"), &mut feed);
        let status = feed.wait_timeout(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()) && !feed.stderr().contains("not acknowledged"),
            "run {run}: {status:?}\n{}\n{}\n{}",
            feed.stderr(),
            sink.stderr(),
            engine.stderr()
        );
        want.extend(text.lines().map(|l| l.as_bytes().to_vec()));
        assert!(
            engine
                .terminate(Duration::from_secs(30))
                .is_some_and(|s| s.success()),
            "{}",
            engine.stderr()
        );
        // Let the reader list between runs, as a tailing reader would.
        wait_for(
            Duration::from_secs(30),
            &format!("the records of run {run}"),
            &[&reader, &sink],
            || {
                let out = reader.stdout();
                let got: std::collections::HashSet<&[u8]> = out.split(|b| *b == b'\n').collect();
                want.iter().all(|w| got.contains(&w[..]))
            },
        );
    }
    let got: Vec<Vec<u8>> = reader
        .stdout()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_all_delivered(&want, &got);
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&Vec<u8>> = got.iter().filter(|p| seen.insert((*p).clone())).collect();
    assert!(
        firsts.iter().zip(want.iter()).all(|(a, b)| *a == b),
        "records in the order they were written"
    );
    // Several engine incarnations, so several stream ids, in one prefix.
    let keys = rt().block_on(list_keys(&bucket, "p/"));
    let streams: std::collections::HashSet<&str> = keys
        .iter()
        .filter_map(|(k, _)| k.split('-').nth(1))
        .collect();
    assert_eq!(streams.len(), 6, "{keys:?}");
    assert!(
        reader
            .terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "{}",
        reader.stderr()
    );
}

#[test]
fn s3_source_reads_every_key_s3_sink_writes() {
    // Keys that render as path segments readers skip (`_…`, `.…`, the empty key), in a
    // `{key}` prefix and in per-message mode: s3_sink encodes them so s3_source reads them.
    let dir = scratch();
    let bucket = bucket_name("s3keys");
    rt().block_on(create_bucket(&bucket));
    let _cleanup = DeleteBucket(bucket.clone());
    let batch = path(dir.path(), "batch.kv");
    std::fs::write(&batch, "alice\tv1\n\tv2\n_internal\tv3\n.cfg\tv4\n-\tv5\n").expect("write");
    run_with_stdin(
        dir.path(),
        "s3_sink",
        "b",
        &batch,
        &args(&[
            "--format",
            "kv",
            "--b-bucket",
            &bucket,
            "--b-prefix",
            "by-key/{key}/",
            "--b-batch_ms",
            "100",
        ]),
        Duration::from_secs(60),
    );
    let per_message = path(dir.path(), "pm.kv");
    std::fs::write(
        &per_message,
        "user/_draft\tv6\n.hidden\tv7\ndir/\tv8\nok\tv9\n",
    )
    .expect("write");
    run_with_stdin(
        dir.path(),
        "s3_sink",
        "pm",
        &per_message,
        &args(&[
            "--format",
            "kv",
            "--pm-bucket",
            &bucket,
            "--pm-prefix",
            "pm/",
            "--pm-per_message",
            "true",
        ]),
        Duration::from_secs(60),
    );
    let keys: Vec<String> = rt()
        .block_on(list_keys(&bucket, ""))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let dirs: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("by-key/"))
        .filter_map(|k| k.split('/').next())
        .collect();
    assert_eq!(
        dirs,
        ["%2D", "%2Ecfg", "%5Finternal", "-", "alice"],
        "{keys:?}"
    );
    let objects: Vec<&str> = keys
        .iter()
        .filter(|k| k.starts_with("pm/"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        objects,
        ["pm/%2Ehidden", "pm/dir%2F", "pm/ok", "pm/user/%5Fdraft"],
        "{keys:?}"
    );
    let mut c = command("s3_source");
    c.args([
        "--connector",
        "r",
        "--to",
        "stdout",
        "--stats-interval",
        "0",
        "--r-bucket",
        &bucket,
    ])
    .args(aws_args("r"));
    let out = c.output().expect("s3_source");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    assert_eq!(got, ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9"]);
}
