//! Helpers shared by the Kafka integration tests: topics, a one-record-per-batch producer,
//! and a plain consumer that reads a topic back.

#![allow(dead_code)]

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// Runs the pipeline tests of one test binary one at a time: each starts several processes
/// and the broker is shared, so on a 2-core machine they are faster in a row than together.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Creates `topic` with `partitions` partitions and waits until its metadata shows them.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create_topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        if md
            .topics()
            .first()
            .is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never showed {partitions} partitions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes its topics when dropped (also when the test fails): the test broker keeps
/// everything in memory.
pub struct Cleanup {
    brokers: String,
    topics: Vec<String>,
}

/// Registers `topics` for deletion at the end of the test.
pub fn cleanup(brokers: &str, topics: &[&str]) -> Cleanup {
    Cleanup {
        brokers: brokers.to_string(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(admin) = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create::<AdminClient<DefaultClientContext>>()
        else {
            return;
        };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let _ = rt.block_on(admin.delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ));
    }
}

/// The key and value of input record `i`.
pub fn record(i: usize, value_size: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("k{i:08}").into_bytes();
    let mut value = format!("v{i:08}:").into_bytes();
    while value.len() < value_size {
        value.push(b'a' + (i % 26) as u8);
    }
    (key, value)
}

/// Produces `n` records (`record(i)`) round-robin over `partitions` partitions.
///
/// Tansu 0.6 returns the NEXT record batch when a fetch starts in the middle of a batch,
/// so a consumer resuming mid-batch would skip records. This producer therefore sends one
/// record per batch (`batch.num.messages=1`, `linger.ms=0`): every offset starts a batch and
/// every resume point is safe. Real Kafka does not need this.
pub fn produce(brokers: &str, topic: &str, partitions: i32, n: usize, value_size: usize) -> usize {
    produce_range(brokers, topic, partitions, 0..n, value_size, true)
}

/// Like [`produce`] but in normal batches: only for tests where no consumer resumes
/// in the middle of the topic.
pub fn produce_batched(
    brokers: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    value_size: usize,
) -> usize {
    produce_range(brokers, topic, partitions, 0..n, value_size, false)
}

/// Produces records `range` (record `i` to partition `i % partitions`); `one_per_batch`
/// as explained at [`produce`]. With one record per batch, one producer per partition runs
/// in its own thread: Tansu answers each connection's requests one after the other.
pub fn produce_range(
    brokers: &str,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<usize>,
    value_size: usize,
    one_per_batch: bool,
) -> usize {
    if !one_per_batch {
        return produce_to(brokers, topic, partitions, None, range, value_size, false);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..partitions)
            .map(|p| {
                let range = range.clone();
                s.spawn(move || {
                    produce_to(brokers, topic, partitions, Some(p), range, value_size, true)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("producer thread"))
            .sum()
    })
}

/// Produces the records of `range` that go to partition `only` (all when `None`).
fn produce_to(
    brokers: &str,
    topic: &str,
    partitions: i32,
    only: Option<i32>,
    range: std::ops::Range<usize>,
    value_size: usize,
    one_per_batch: bool,
) -> usize {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000");
    if one_per_batch {
        // An idempotent producer keeps at most 5 requests in flight, which makes one
        // record per request slow; without idempotence many requests can be in flight
        // (nothing is retried on loopback, so the order is kept).
        config
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "500");
    } else {
        config.set("enable.idempotence", "true");
    }
    let p: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let mut n = 0;
    for i in range {
        let partition = (i % partitions as usize) as i32;
        if only.is_some_and(|o| o != partition) {
            continue;
        }
        n += 1;
        let (k, v) = record(i, value_size);
        let rec = BaseRecord::to(topic)
            .key(&k)
            .payload(&v)
            .partition(partition);
        send_retrying(&p, rec);
    }
    p.flush(Duration::from_secs(120)).expect("flush producer");
    n
}

/// Queues one record, waiting while the producer's queue is full (any other error fails).
pub fn send_retrying<'a, C, K, P>(
    p: &ThreadedProducer<C>,
    mut rec: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) where
    C: rdkafka::producer::ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "produce: {e}"
                );
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The group's committed offsets of partitions `0..partitions` (-1 when none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = consumer_config(brokers, group).create().expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let out = (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect();
    // Drop the list before the consumer (it can hold librdkafka partition references).
    drop(got);
    out
}

/// A consumer configuration for reading test topics (no commits).
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    if let Ok(d) = std::env::var("KAFKA_DEBUG") {
        c.set("debug", d);
    }
    c
}

/// Polls until `n` records arrived or `timeout` passed.
pub fn poll_n<C: rdkafka::consumer::ConsumerContext>(
    c: &BaseConsumer<C>,
    n: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Rec {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}

/// Reads the whole of `topic` (all partitions) until `n` records arrived, or nothing new
/// came for `quiet` after at least `n` were seen, or `timeout`.
pub fn read_topic(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Rec> {
    let c: BaseConsumer = consumer_config(brokers, &testkit::unique("reader"))
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    poll_n(&c, n, timeout)
}

/// Accumulates what a plain consumer reads from an output topic, so a test can watch
/// progress while processes run and count duplicates at the end.
pub struct Reader {
    consumer: BaseConsumer,
    /// Every record read, duplicates included.
    pub records: Vec<Rec>,
    /// Number of times each key was seen.
    pub seen: std::collections::HashMap<Vec<u8>, usize>,
}

impl Reader {
    /// Starts reading `topic` from the beginning (a fresh group).
    pub fn new(brokers: &str, topic: &str) -> Reader {
        let consumer: BaseConsumer = consumer_config(brokers, &testkit::unique("reader"))
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Reader {
            consumer,
            records: Vec::new(),
            seen: Default::default(),
        }
    }

    /// The records of several readers as one (no consumer of its own reading further).
    pub fn merged(readers: &[&Reader]) -> Merged {
        let mut m = Merged {
            records: Vec::new(),
            seen: Default::default(),
        };
        for r in readers {
            for rec in &r.records {
                *m.seen.entry(rec.key.clone()).or_default() += 1;
                m.records.push(rec.clone());
            }
        }
        m
    }

    /// Reads whatever arrives for `dur`.
    pub fn poll_for(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default().to_vec();
                    *self.seen.entry(key.clone()).or_default() += 1;
                    self.records.push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key,
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(e)) => panic!("reading the output topic: {e}"),
                None => {}
            }
        }
    }

    /// Reads until `n` distinct keys were seen (true) or `timeout` (false).
    pub fn wait_unique(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            if Instant::now() > deadline {
                return false;
            }
            self.poll_for(Duration::from_millis(200));
        }
        true
    }

    /// Records read beyond the first copy of each key.
    pub fn duplicates(&self) -> usize {
        self.records.len() - self.seen.len()
    }

    /// Where the duplicates are: per input partition (`i % partitions`), the number of
    /// duplicated offsets and their lowest and highest offset (`i / partitions`).
    pub fn duplicate_ranges(&self, partitions: usize) -> Vec<(usize, usize, usize)> {
        let mut out = vec![(0usize, usize::MAX, 0usize); partitions];
        for (key, n) in &self.seen {
            if *n < 2 {
                continue;
            }
            let Some(i) = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let e = &mut out[i % partitions];
            e.0 += n - 1;
            e.1 = e.1.min(i / partitions);
            e.2 = e.2.max(i / partitions);
        }
        out
    }

    /// Asserts that records `0..n` are all present with their exact values and nothing else.
    pub fn assert_complete(&self, n: usize, value_size: usize) {
        check_complete(&self.records, &self.seen, n, value_size);
    }
}

fn check_complete(
    records: &[Rec],
    seen: &std::collections::HashMap<Vec<u8>, usize>,
    n: usize,
    value_size: usize,
) {
    {
        for r in records {
            let i: usize = std::str::from_utf8(&r.key[1..])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected key {:?}", String::from_utf8_lossy(&r.key)));
            assert!(i < n, "key {i} was never produced");
            let (k, v) = record(i, value_size);
            assert_eq!(r.key, k);
            assert_eq!(r.value, v, "value of key {i} changed");
        }
        let missing: Vec<usize> = (0..n)
            .filter(|i| !seen.contains_key(&record(*i, 0).0))
            .take(10)
            .collect();
        assert!(missing.is_empty(), "missing records, e.g. {missing:?}");
        assert_eq!(seen.len(), n);
    }
}

/// Reads one metric (the first series named `name`) from a `--metrics-addr` endpoint.
pub fn metric(port: u16, name: &str) -> Option<i64> {
    use std::io::Read;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

/// Records gathered from several [`Reader`]s.
pub struct Merged {
    /// Every record, duplicates included.
    pub records: Vec<Rec>,
    /// Number of times each key was seen.
    pub seen: std::collections::HashMap<Vec<u8>, usize>,
}

impl Merged {
    /// Records beyond the first copy of each key.
    pub fn duplicates(&self) -> usize {
        self.records.len() - self.seen.len()
    }

    /// See [`Reader::assert_complete`].
    pub fn assert_complete(&self, n: usize, value_size: usize) {
        check_complete(&self.records, &self.seen, n, value_size);
    }
}

/// One engine with its kafka_source (`in`) and kafka_sink (`out`), in a directory of its
/// own; processes are restarted with fresh log files (`NAME.N.stderr`).
pub struct Pair {
    pub dir: std::path::PathBuf,
    pub app: std::path::PathBuf,
    pub source_port: u16,
    pub sink_port: u16,
    pub engine: Option<testkit::Proc>,
    pub source: Option<testkit::Proc>,
    pub sink: Option<testkit::Proc>,
    pub source_args: Vec<String>,
    pub sink_args: Vec<String>,
    pub engine_args: Vec<String>,
    /// The engine program and the arguments before the common ones (`engine` and none;
    /// `alerts_stateful` and `run` for an application binary).
    pub engine_program: (String, Vec<String>),
    /// Connector names of the source and the sink in the application file.
    pub source_name: String,
    pub sink_name: String,
    /// Environment variables set on every process of the pair.
    pub env: Vec<(String, String)>,
    /// Port of kafka_source's `--metrics-addr`, chosen at each start.
    pub source_metrics: u16,
    /// Port of the engine's `--metrics-addr`, chosen at each start.
    pub engine_metrics: u16,
    starts: usize,
}

impl Pair {
    /// Writes the application file: `in` -> `out`, `credits` for both connectors.
    pub fn new(dir: &std::path::Path, tag: &str, credits: u32) -> Pair {
        Pair::with_app(dir, tag, "in", "out", |source_port, sink_port| {
            testkit::AppFile::new(&format!("kafka_{tag}"))
                .source("in", source_port, &format!("max_credits = {credits}"))
                .sink("out", sink_port, &format!("max_credits = {credits}"))
                .pipeline("in", &["out"])
        })
    }

    /// A pair whose application file `app(source port, sink port)` declares the source
    /// connector `source` and the sink connector `sink` (the `engine` binary runs it unless
    /// `engine_program` is changed).
    pub fn with_app(
        dir: &std::path::Path,
        tag: &str,
        source: &str,
        sink: &str,
        app: impl FnOnce(u16, u16) -> testkit::AppFile,
    ) -> Pair {
        let dir = dir.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let source_port = testkit::free_port();
        let sink_port = testkit::free_port();
        let app = app(source_port, sink_port).write(&dir);
        Pair {
            dir,
            app,
            source_port,
            sink_port,
            engine: None,
            source: None,
            sink: None,
            source_args: Vec::new(),
            sink_args: Vec::new(),
            engine_args: Vec::new(),
            engine_program: ("engine".to_string(), Vec::new()),
            source_name: source.to_string(),
            sink_name: sink.to_string(),
            env: Vec::new(),
            source_metrics: 0,
            engine_metrics: 0,
            starts: 0,
        }
    }

    fn spawn(&mut self, program: &str, first: &[String], args: Vec<String>) -> testkit::Proc {
        self.starts += 1;
        let mut cmd = std::process::Command::new(testkit::bin(program));
        cmd.args(first)
            .arg("--application-module")
            .arg(&self.app)
            .arg("--stats-interval")
            .arg(std::env::var("KAFKA_TEST_STATS").unwrap_or_else(|_| "0".into()))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        testkit::Proc::spawn_with(&self.dir, &format!("{program}.{}", self.starts), &mut cmd)
    }

    /// Starts kafka_sink and waits until it listens.
    pub fn start_sink(&mut self) {
        let mut args = vec!["--connector".to_string(), self.sink_name.clone()];
        args.extend(self.sink_args.iter().cloned());
        let mut p = self.spawn("kafka_sink", &[], args);
        if !testkit::wait_for_port(self.sink_port, Duration::from_secs(20)) {
            let e = p.stderr();
            p.kill9();
            panic!("kafka_sink did not listen: {e}");
        }
        self.sink = Some(p);
    }

    /// Starts the engine and waits until it listens for the source.
    pub fn start_engine(&mut self) {
        self.engine_metrics = testkit::free_port();
        let mut args = self.engine_args.clone();
        args.push("--metrics-addr".into());
        args.push(format!("127.0.0.1:{}", self.engine_metrics));
        let (program, first) = self.engine_program.clone();
        let mut p = self.spawn(&program, &first, args);
        if !testkit::wait_for_port(self.source_port, Duration::from_secs(20)) {
            let e = p.stderr();
            p.kill9();
            panic!("{program} did not listen: {e}");
        }
        self.engine = Some(p);
    }

    /// Starts kafka_source (serving its metrics on a fresh port, `source_metrics`).
    pub fn start_source(&mut self) {
        self.source_metrics = testkit::free_port();
        let mut args = vec![
            "--connector".to_string(),
            self.source_name.clone(),
            "--metrics-addr".to_string(),
            format!("127.0.0.1:{}", self.source_metrics),
        ];
        args.extend(self.source_args.iter().cloned());
        let p = self.spawn("kafka_source", &[], args);
        self.source = Some(p);
    }

    /// Starts sink, engine and source.
    pub fn start(&mut self) {
        self.start_sink();
        self.start_engine();
        self.start_source();
    }

    /// kill -9 of kafka_source, returning how many records it had sent that the engine had
    /// not acknowledged: the source is stopped (SIGSTOP) first, so that number cannot grow,
    /// and read from the engine (`engine_in_flight`) once what was in transit arrived.
    pub fn kill_source(&mut self) -> i64 {
        let source = self.source.as_mut().expect("kafka_source running");
        source.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(500));
        let window = metric(self.engine_metrics, "engine_in_flight").expect("engine metrics");
        source.kill9();
        window
    }

    /// kill -9 of the engine, returning how many records kafka_source had sent that the
    /// engine had not acknowledged: the engine is stopped (SIGSTOP) first, so the source runs
    /// out of credits and its count (`connector_in_flight`) settles.
    pub fn kill_engine(&mut self) -> i64 {
        let engine = self.engine.as_mut().expect("engine running");
        engine.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(500));
        let window =
            metric(self.source_metrics, "connector_in_flight").expect("kafka_source metrics");
        engine.kill9();
        window
    }

    /// Panics with the logs if a process exited.
    pub fn assert_running(&mut self) {
        for p in [&mut self.sink, &mut self.engine, &mut self.source]
            .into_iter()
            .flatten()
        {
            if !p.is_running() {
                panic!("{} exited: {}", p.name, p.stderr());
            }
        }
    }

    /// Everything the processes wrote to stderr (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                if f.extension().is_some_and(|e| e == "stderr") {
                    let text = std::fs::read_to_string(&f).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    out.push_str(&format!("--- {} (last lines)\n", f.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

/// A directory for one test's logs, removed at the end unless `KAFKA_TEST_KEEP` is set.
pub struct TestDir {
    path: std::path::PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// A fresh [`TestDir`].
pub fn test_dir() -> TestDir {
    let dir = tempfile::Builder::new()
        .prefix("kafka-test-")
        .tempdir()
        .expect("temp dir");
    if std::env::var_os("KAFKA_TEST_KEEP").is_some() {
        eprintln!("logs in {}", dir.path().display());
        return TestDir {
            path: dir.keep(),
            _guard: None,
        };
    }
    TestDir {
        path: dir.path().to_path_buf(),
        _guard: Some(dir),
    }
}
