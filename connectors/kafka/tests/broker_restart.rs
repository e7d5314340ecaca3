//! kafka_source -> engine -> kafka_sink survives a restart of the Kafka broker in the middle
//! of a run with nothing lost.
//!
//! The broker is a private Tansu started by this test on a free port (the shared one on
//! 9092 is never restarted), with a storage engine that survives a restart (see
//! [`Storage`]). It is killed with SIGKILL while records flow and started again on the same
//! port with the same storage; source, engine and sink keep running throughout.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pair;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use testkit::Proc;

/// Value size of every test record.
const VALUE: usize = 100;
/// `max_credits` of kafka_source and kafka_sink.
const CREDITS: u32 = 1000;
/// Partitions of the input and output topics.
const PARTITIONS: i32 = 4;
/// How long the broker stays down.
const DOWN: Duration = Duration::from_secs(3);

/// The `tansu` binary: `TANSU` if set, else on PATH, else `~/.cargo/bin/tansu`.
fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu"));
    on_path
        .or(home.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("the tansu broker is not installed: run `bash scripts/services.sh` (it installs it with cargo)")
        })
}

/// Where the private broker keeps its data: it must survive the broker's SIGKILL.
///
/// By default PostgreSQL (`postgres://`, a database of its own per run on the test
/// PostgreSQL; needs Tansu built with the `postgres` feature). Tansu 0.6 creates no schema
/// in PostgreSQL (it only does for SQLite/Turso), so the test creates it from
/// `tansu_pg_schema.sql`: Tansu's own SQLite DDL (tansu-storage 0.6.0, `src/ddl`) in
/// PostgreSQL types, matching the column types its PostgreSQL engine binds (e.g. `record`
/// is written with COPY as int4, int8, int2, int8, int2, timestamptz, bytea, bytea, and
/// fetched with a `transaction_id xid8` column).
///
/// `TANSU_RESTART_STORAGE=s3` uses `s3://BUCKET` instead (the `dynostore` feature, on the
/// local moto server, a bucket per run): it survives the restart too, but is several times
/// slower than PostgreSQL (over 90 s for this test) and was seen losing records once after
/// the restart (Tansu logged `DuplicateSequenceNumber` for the sink's idempotent producer).
/// `memory://` (the shared broker's) loses everything at a restart.
struct Storage {
    url: String,
    env: Vec<(String, String)>,
    /// The PostgreSQL database to drop at the end.
    database: Option<String>,
    /// The bucket of S3 storage, deleted at the end.
    _bucket: Option<testkit::s3::TestBucket>,
}

impl Storage {
    /// PostgreSQL storage: a database of its own per run on the test PostgreSQL (PG_URL's
    /// server), with the schema Tansu 0.6 expects (`tansu_pg_schema.sql`: Tansu creates
    /// none itself).
    fn postgres() -> Storage {
        testkit::pg_url();
        let db = testkit::unique("tansu");
        psql("postgres", &format!("create database {db}"));
        psql(&db, include_str!("tansu_pg_schema.sql"));
        Storage {
            url: format!("postgres://postgres@127.0.0.1:5432/{db}?sslmode=disable"),
            env: Vec::new(),
            database: Some(db),
            _bucket: None,
        }
    }

    fn s3() -> Storage {
        let endpoint = testkit::aws_endpoint();
        let bucket = testkit::s3::TestBucket::create("tansu");
        Storage {
            url: format!("s3://{}/", bucket.name),
            env: [
                ("AWS_ENDPOINT", endpoint.as_str()),
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_REGION", "us-east-1"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            database: None,
            _bucket: Some(bucket),
        }
    }
}

/// Runs SQL on database `db` of the test PostgreSQL server with psql.
fn psql(db: &str, sql: &str) {
    let out = Command::new("psql")
        .args([
            &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (the PostgreSQL client): {e}"));
    assert!(
        out.status.success(),
        "psql on {db} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Tansu broker of the test's own.
struct Broker {
    port: u16,
    dir: PathBuf,
    storage: Storage,
    proc: Option<Proc>,
    starts: usize,
}

impl Broker {
    fn start(dir: &Path, storage: Storage) -> Broker {
        let mut b = Broker {
            port: testkit::free_port(),
            dir: dir.to_path_buf(),
            storage,
            proc: None,
            starts: 0,
        };
        b.spawn();
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let url = format!("tcp://{}", self.addr());
        // Through env(1): Proc sets RUST_LOG=info for every process, and Tansu's info level
        // traces every span (gigabytes in a minute, and slow).
        let mut cmd = Command::new("env");
        cmd.arg(format!(
            "RUST_LOG={}",
            std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into())
        ))
        .arg(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            &self.storage.url,
            "--silent",
        ]);
        for (k, v) in &self.storage.env {
            cmd.env(k, v);
        }
        let mut p = Proc::spawn_with(&self.dir, &format!("tansu.{}", self.starts), &mut cmd);
        if !testkit::wait_for_port(self.port, Duration::from_secs(30)) {
            let err = p.stderr();
            let out = String::from_utf8_lossy(&p.stdout()).into_owned();
            p.kill9();
            panic!(
                "tansu did not listen on {} with storage {} (PostgreSQL storage needs Tansu built with the postgres feature: cargo install tansu --locked --features dynostore,postgres):\n{out}\n{err}",
                self.port, self.storage.url
            );
        }
        self.proc = Some(p);
    }

    /// SIGKILL, down for `down`, then started again on the same port and storage.
    fn crash_and_restart(&mut self, down: Duration) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        std::thread::sleep(down);
        self.spawn();
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        if let Some(db) = &self.storage.database {
            let _ = Command::new("psql")
                .args([
                    "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                    "-q",
                    "-c",
                    &format!("drop database if exists {db} with (force)"),
                ])
                .output();
        }
    }
}

/// Reads the output topic from the beginning, riding out the broker's absence (transport
/// errors while it is down are expected, not failures).
struct Watcher {
    consumer: BaseConsumer,
    seen: std::collections::HashMap<Vec<u8>, usize>,
    records: usize,
    errors: usize,
}

impl Watcher {
    fn new(brokers: &str, topic: &str) -> Watcher {
        let consumer: BaseConsumer = common::consumer_config(brokers, &testkit::unique("watch"))
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        Watcher {
            consumer,
            seen: Default::default(),
            records: 0,
            errors: 0,
        }
    }

    fn poll_for(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default().to_vec();
                    let (_, v) = record_of(&key);
                    assert_eq!(
                        m.payload().unwrap_or_default(),
                        &v[..],
                        "value of {}",
                        String::from_utf8_lossy(&key)
                    );
                    *self.seen.entry(key).or_default() += 1;
                    self.records += 1;
                }
                Some(Err(_)) => self.errors += 1,
                None => {}
            }
        }
    }

    fn wait_unique(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            if Instant::now() > deadline {
                return false;
            }
            self.poll_for(Duration::from_millis(200));
        }
        true
    }

    /// Up to 10 records of `0..n` never seen, as (index, input partition).
    fn missing(&self, n: usize) -> Vec<(usize, usize)> {
        (0..n)
            .filter(|i| !self.seen.contains_key(&common::record(*i, 0).0))
            .take(10)
            .map(|i| (i, i % PARTITIONS as usize))
            .collect()
    }

    fn duplicates(&self) -> usize {
        self.records - self.seen.len()
    }
}

/// The input record with key `key` (`k00000042`), checked to be one that was produced.
fn record_of(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let i: usize = std::str::from_utf8(&key[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected key {:?}", String::from_utf8_lossy(key)));
    common::record(i, VALUE)
}

#[test]
fn pipeline_survives_a_broker_restart_with_nothing_lost() {
    let dir = common::test_dir();
    let storage = match std::env::var("TANSU_RESTART_STORAGE").as_deref() {
        Ok("s3") => Storage::s3(),
        _ => Storage::postgres(),
    };
    let mut broker = Broker::start(dir.path(), storage);
    let brokers = broker.addr();
    let n = 8_000;
    let input = testkit::unique("restart_in");
    let output = testkit::unique("restart_out");
    common::create_topic(&brokers, &input, PARTITIONS);
    common::create_topic(&brokers, &output, PARTITIONS);
    let t = Instant::now();
    // One record per batch: after the restart the source resumes in the middle of the
    // input, and Tansu 0.6 skips the rest of a batch when a fetch starts inside it.
    common::produce(&brokers, &input, PARTITIONS, n, VALUE);
    eprintln!(
        "produced {n} records (one per batch) into {} in {:?}",
        broker.storage.url,
        t.elapsed()
    );

    let mut pair = Pair::new(dir.path(), "restart", CREDITS);
    let group = testkit::unique("restart_group");
    pair.source_args = [
        "--in-topics",
        &input,
        "--in-consumer_group",
        &group,
        "--in-bootstrap_brokers",
        &brokers,
        "--in-option",
        "session.timeout.ms=6000",
        "--in-option",
        "heartbeat.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    pair.sink_args = ["--out-topic", &output, "--out-bootstrap_brokers", &brokers]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Instant::now();
    pair.start();
    let mut out = Watcher::new(&brokers, &output);
    // The kill comes when the source has sent a quarter of the input (its own count: the
    // output reader lags behind), so records are in flight on both sides of the engine.
    let mut sent = 0;
    let started = testkit::wait_until(Duration::from_secs(60), || {
        sent = common::metric(pair.source_metrics, "connector_messages_total").unwrap_or(0);
        sent >= n as i64 / 4
    });
    assert!(
        started,
        "kafka_source sent only {sent} records before the restart\n{}\n--- tansu\n{}",
        pair.logs(),
        broker.logs()
    );
    broker.crash_and_restart(DOWN);
    eprintln!(
        "kill -9 of the broker at {sent} records sent by kafka_source ({:?}); started again after {DOWN:?}",
        t.elapsed()
    );
    out.poll_for(Duration::from_millis(500));
    let at_kill = out.seen.len();
    assert!(
        at_kill < n * 3 / 4,
        "most of the run was over before the restart ({at_kill} records): nothing was tested"
    );
    pair.assert_running();

    let done = out.wait_unique(n, Duration::from_secs(60));
    pair.assert_running();
    assert!(
        done,
        "only {} of {n} records arrived after the broker restart; missing e.g. (record, input partition) {:?}; committed input offsets {:?}\n{}\n--- tansu\n{}",
        out.seen.len(),
        out.missing(n),
        common::committed(&brokers, &group, &input, PARTITIONS),
        pair.logs(),
        broker.logs()
    );
    out.poll_for(Duration::from_secs(2));
    let dups = out.duplicates();
    eprintln!(
        "{n} records through a broker restart in {:?}; {dups} duplicates ({} consumer errors while the broker was down)",
        t.elapsed(),
        out.errors
    );
    assert_eq!(out.seen.len(), n);
    // The source re-reads at most what it had sent and the engine had not acknowledged (a
    // partition resumes after the engine's resume point), at most its credits; the sink
    // re-sends at most the records whose delivery report the restart lost, at most its
    // credits (it acknowledges nothing it has not seen delivered).
    let bound = 2 * CREDITS as usize;
    assert!(
        dups <= bound,
        "{dups} duplicates, more than the two in-flight windows (2 x {CREDITS})\n{}",
        pair.logs()
    );
    // Everything was committed, on the restarted broker.
    let mut committed = Vec::new();
    let all = testkit::wait_until(Duration::from_secs(20), || {
        committed = common::committed(&brokers, &group, &input, PARTITIONS);
        committed.iter().sum::<i64>() == n as i64
    });
    assert!(all, "committed offsets {committed:?}\n{}", pair.logs());
}
