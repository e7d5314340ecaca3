//! Throughput of kafka_source and kafka_sink beside the plain rdkafka client, same broker,
//! same run.
//!
//! 1. source: records already in a 4-partition topic -> kafka_source -> engine ->
//!    stdout_sink (frames to a file: the blackhole), beside a plain `BaseConsumer` reading
//!    the same topic in a fresh group.
//! 2. sink: stdin_source (kv file) -> engine -> kafka_sink -> topic, beside a plain
//!    `ThreadedProducer` with kafka_sink's settings (idempotent, acks=all, linger.ms=5)
//!    writing the same records.
//!
//! Source rates are messages/s from the first record out to the last (start-up and group
//! join not counted, for either side). Sink rates are messages/s from the first record handed
//! over (plain: first send after a warm-up record; pipeline: stdin_source started, kafka_sink
//! running for 1 s) until every record is confirmed by Kafka (plain: flush; pipeline:
//! stdin_source exits once everything was acknowledged end to end). CPU µs/msg: the connector process's CPU time (all its threads, librdkafka's
//! included) beside the plain client's, per message. Needs release binaries and a broker:
//!
//! ```text
//! cargo build --release -p engine -p kafka-connectors -p stdio-connectors --bins
//! cargo bench -p kafka-connectors --bench throughput
//! # KAFKA_BENCH_SCALE=0.5 (fewer messages), KAFKA_BENCH_RUNS=3, KAFKA_BENCH_ONLY=source|sink,
//! # KAFKA_BENCH_CREDITS=8192 (both connectors), KAFKA_BENCH_KEEP=1 (keep the sink runs' logs)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 4;

fn main() {
    let brokers = testkit::kafka_brokers();
    let scale: f64 = std::env::var("KAFKA_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let runs: usize = std::env::var("KAFKA_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // `source` or `sink` to run only that half.
    let only = std::env::var("KAFKA_BENCH_ONLY").unwrap_or_default();
    println!("broker {brokers}, {PARTITIONS} partitions, median of {runs} runs\n");
    println!(
        "| path | size | messages | connector msg/s | plain client msg/s | ratio | connector MB/s | connector CPU µs/msg | plain CPU µs/msg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (size, n_source, n_sink) in [
        (100usize, 400_000usize, 1_000_000usize),
        (1024, 150_000, 300_000),
    ] {
        let n_source = ((n_source as f64) * scale) as usize;
        let n_sink = ((n_sink as f64) * scale) as usize;
        let mut src = Vec::new();
        let mut snk = Vec::new();
        for _ in 0..runs {
            if only != "sink" {
                src.push(source_run(&brokers, size, n_source));
            }
            if only != "source" {
                snk.push(sink_run(&brokers, size, n_sink));
            }
        }
        if !src.is_empty() {
            report("kafka_source -> engine -> blackhole", size, n_source, &src);
        }
        if !snk.is_empty() {
            report("stdin_source -> engine -> kafka_sink", size, n_sink, &snk);
        }
    }
}

/// One run: rates (msg/s) and CPU time per message (µs) of the connector process and of
/// the plain client.
struct Run {
    conn: f64,
    plain: f64,
    conn_cpu: f64,
    plain_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the medians of the connector beside those of the plain client.
fn report(path: &str, size: usize, n: usize, runs: &[Run]) {
    let c = median(runs.iter().map(|r| r.conn).collect());
    let p = median(runs.iter().map(|r| r.plain).collect());
    let cc = median(runs.iter().map(|r| r.conn_cpu).collect());
    let pc = median(runs.iter().map(|r| r.plain_cpu).collect());
    println!(
        "| {path} | {size} B | {n} | {c:.0} | {p:.0} | {:.0}% | {:.1} | {cc:.2} | {pc:.2} |",
        100.0 * c / p,
        c * size as f64 / 1e6
    );
    let rates: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.0}/{:.0}", r.conn, r.plain))
        .collect();
    eprintln!(
        "  {path} {size} B runs (connector/plain msg/s): {}",
        rates.join(", ")
    );
}

/// CPU seconds (user + system) this process used so far, all threads.
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) process `pid` used so far.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn record(i: usize, size: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("k{i:09}").into_bytes();
    let mut value = format!("v{i:09}:").into_bytes();
    value.resize(size, b'a' + (i % 26) as u8);
    (key, value)
}

fn create_topic(brokers: &str, topic: &str) {
    let out = std::process::Command::new("tansu")
        .args([
            "topic",
            "create",
            "--broker",
            &format!("tcp://{brokers}"),
            "--partitions",
            &PARTITIONS.to_string(),
            topic,
        ])
        .output();
    if out.as_ref().map_or(true, |o| !o.status.success()) {
        // Not Tansu (or no CLI): let the admin API do it.
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(admin.create_topics(
            &[rdkafka::admin::NewTopic::new(
                topic,
                PARTITIONS,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        ));
        for x in r.expect("create topic") {
            x.expect("create topic");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Deletes the run's topics again (the broker keeps them in memory otherwise).
fn delete_topics(brokers: &str, topics: &[&str]) {
    for t in topics {
        let ok = std::process::Command::new("tansu")
            .args([
                "topic",
                "delete",
                "--broker",
                &format!("tcp://{brokers}"),
                t,
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("admin client");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(admin.delete_topics(&[t], &rdkafka::admin::AdminOptions::new()));
        }
    }
}

/// kafka_sink's producer settings.
fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Plain producer: returns (msg/s from its creation to the last delivery, CPU µs/msg).
fn produce(brokers: &str, topic: &str, size: usize, n: usize) -> (f64, f64) {
    let p = producer(brokers);
    // Start-up (connection, producer id: librdkafka retries that every 500 ms until the
    // broker connection is up) is not measured, for either side.
    p.send(
        BaseRecord::to(topic)
            .key("warmup")
            .payload("warmup")
            .partition(0),
    )
    .map_err(|(e, _)| e)
    .expect("warm-up send");
    p.flush(Duration::from_secs(30)).expect("warm-up flush");
    let cpu = self_cpu();
    let t = Instant::now();
    for i in 0..n {
        let (k, v) = record(i, size);
        let mut rec = BaseRecord::to(topic)
            .key(&k)
            .payload(&v)
            .partition((i % PARTITIONS as usize) as i32);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(p);
    (rate, (self_cpu() - cpu) * 1e6 / n as f64)
}

/// Plain consumer: (msg/s from the first record to the n-th, CPU µs/msg).
fn consume(brokers: &str, topic: &str, n: usize) -> (f64, f64) {
    let cpu = self_cpu();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", testkit::unique("bench_plain"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut got = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            got += 1;
            std::hint::black_box(m.payload());
        }
    }
    assert_eq!(got, n, "plain consumer read {got} of {n}");
    let rate = n as f64 / first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
    (rate, (self_cpu() - cpu) * 1e6 / n as f64)
}

fn app(dir: &Path, source_port: u16, sink_port: u16) -> std::path::PathBuf {
    let credits = std::env::var("KAFKA_BENCH_CREDITS").unwrap_or_else(|_| "8192".into());
    testkit::AppFile::new("kafka_bench")
        .source("in", source_port, &format!("max_credits = {credits}"))
        .sink("out", sink_port, &format!("max_credits = {credits}"))
        .pipeline("in", &["out"])
        .write(dir)
}

fn spawn(
    dir: &Path,
    name: &str,
    app: &Path,
    connector: Option<&str>,
    args: &[&str],
) -> testkit::Proc {
    let mut all = vec![
        "--application-module".to_string(),
        app.display().to_string(),
        "--stats-interval".to_string(),
        "0".to_string(),
    ];
    if let Some(c) = connector {
        all.push("--connector".into());
        all.push(c.into());
    }
    all.extend(args.iter().map(|s| s.to_string()));
    testkit::Proc::spawn(dir, name, &testkit::bin(name), &all)
}

/// kafka_source -> engine -> blackhole beside a plain consumer, n records of `size` bytes.
fn source_run(brokers: &str, size: usize, n: usize) -> Run {
    let topic = testkit::unique("bench_src");
    create_topic(brokers, &topic);
    produce(brokers, &topic, size, n);
    let (plain, plain_cpu) = consume(brokers, &topic, n);

    let dir = tempfile::tempdir().unwrap();
    let (sp, kp) = (testkit::free_port(), testkit::free_port());
    let app = app(dir.path(), sp, kp);
    let out_path = dir.path().join("stdout_sink.stdout");
    let _sink = spawn(
        dir.path(),
        "stdout_sink",
        &app,
        Some("out"),
        &["--format", "frames"],
    );
    assert!(testkit::wait_for_port(kp, Duration::from_secs(20)));
    let _engine = spawn(dir.path(), "engine", &app, None, &[]);
    assert!(testkit::wait_for_port(sp, Duration::from_secs(20)));
    let group = testkit::unique("bench_group");
    let source = spawn(
        dir.path(),
        "kafka_source",
        &app,
        Some("in"),
        &["--in-topics", &topic, "--in-consumer_group", &group],
    );
    let expected = (n * (size + 4)) as u64;
    let rate = watch(
        || std::fs::metadata(&out_path).map_or(0, |m| m.len()),
        expected,
    );
    let conn_cpu = proc_cpu(source.pid()) * 1e6 / n as f64;
    delete_topics(brokers, &[&topic]);
    Run {
        conn: n as f64 / rate,
        plain,
        conn_cpu,
        plain_cpu,
    }
}

/// stdin_source -> engine -> kafka_sink beside a plain producer, n records of `size` bytes.
fn sink_run(brokers: &str, size: usize, n: usize) -> Run {
    let topic = testkit::unique("bench_sink");
    create_topic(brokers, &topic);
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("KAFKA_BENCH_KEEP").is_some() {
        eprintln!("sink run in {}", dir.path().display());
    }
    let input = dir.path().join("input.kv");
    let mut text = Vec::with_capacity(n * (size + 12));
    for i in 0..n {
        let (k, v) = record(i, size);
        text.extend_from_slice(&k);
        text.push(b'\t');
        text.extend_from_slice(&v);
        text.push(b'\n');
    }
    std::fs::write(&input, &text).unwrap();
    let (sp, kp) = (testkit::free_port(), testkit::free_port());
    let app = app(dir.path(), sp, kp);
    let sink = spawn(
        dir.path(),
        "kafka_sink",
        &app,
        Some("out"),
        &["--out-topic", &topic],
    );
    assert!(testkit::wait_for_port(kp, Duration::from_secs(20)));
    let _engine = spawn(dir.path(), "engine", &app, None, &[]);
    assert!(testkit::wait_for_port(sp, Duration::from_secs(20)));
    let args: Vec<String> = [
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "in",
        "--format",
        "kv",
        "--stats-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Let kafka_sink's producer finish starting (see `produce`).
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = proc_cpu(sink.pid());
    let t = Instant::now();
    let mut source = testkit::Proc::spawn_with(
        dir.path(),
        "stdin_source",
        std::process::Command::new(testkit::bin("stdin_source"))
            .args(&args)
            .stdin(std::fs::File::open(&input).unwrap()),
    );
    // Done = stdin_source exited: it ends once the engine acknowledged every message,
    // which the engine does once kafka_sink acknowledged it, which kafka_sink does once
    // Kafka confirmed it. (Scraping kafka_sink's metrics instead slows it down.)
    let status = source.wait_timeout(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "stdin_source did not finish: {status:?}"
    );
    let secs = t.elapsed().as_secs_f64();
    let conn_cpu = (proc_cpu(sink.pid()) - cpu_before) * 1e6 / n as f64;
    drop((source, sink, _engine));
    if std::env::var_os("KAFKA_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }

    let plain_topic = testkit::unique("bench_plain_out");
    create_topic(brokers, &plain_topic);
    let (plain, plain_cpu) = produce(brokers, &plain_topic, size, n);
    delete_topics(brokers, &[&topic, &plain_topic]);
    Run {
        conn: n as f64 / secs,
        plain,
        conn_cpu,
        plain_cpu,
    }
}

/// Polls `progress` until it reaches `target`; returns the seconds from the first progress
/// to the target.
fn watch(mut progress: impl FnMut() -> u64, target: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    loop {
        let p = progress();
        if p > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if p >= target {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {p} of {target}");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64())
}
