//! Scale-out with keyed state that follows its partition (`state_scope = "stream"` and a
//! checkpoint store in S3): pairs of kafka_source -> `alerts_stateful run` -> kafka_sink in
//! one consumer group come and go while transactions flow, and every user's running total
//! ends exact.
//!
//! Against the broker at `KAFKA_BROKERS` (Tansu on 127.0.0.1:9092) and the S3 service at
//! `AWS_ENDPOINT_URL` (moto on 127.0.0.1:5000): a topic of 8 partitions, a consumer group and
//! a bucket of the test's own. 200,000 transactions of 1,000 users are produced over ~35 s
//! with Kafka key = user (a user stays in one partition). Meanwhile: pairs a and b start,
//! c joins at 20 % of the input, a is killed (SIGKILL of its sink, engine and source) at
//! 45 %, b stops cleanly (SIGTERM) at 65 %, a starts again at 80 %. Every change moves
//! partitions, and with them their state through the slices in the bucket.
//!
//! At the end (every partition's committed offset and slice point at its last record):
//! (a) the 8 slices hold every user's exact total and the point of the partition's last
//! record; (b) every alert of a clean single-engine run is in the output topic (and no
//! other alert); (c) duplicates are counted and bounded by the in-flight windows.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerts_stateful::{check_transaction_total, decode_transaction, TransactionTotal};
use common::{Pair, Reader};
use engine::slice::slice_key;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};
use smol_str::SmolStr;

/// Partitions of the input topic (and of the output topic).
const PARTITIONS: i32 = 8;
/// Distinct users (the state keys).
const USERS: u64 = 1_000;
/// Transactions produced.
const COUNT: usize = 200_000;
/// How long producing them takes (a steady rate: the pairs change while it runs).
const PRODUCE_OVER: Duration = Duration::from_secs(35);
/// Seed of `alerts_stateful::generated_transaction`.
const SEED: u64 = 12;
/// `max_credits` of both connectors.
const CREDITS: u32 = 1000;
/// `in_flight_bytes` of the source: what a source may have sent and not had acknowledged,
/// so what one hand-off or kill can make a pair process twice.
const IN_FLIGHT_BYTES: usize = 256 * 1024;
/// The smallest MESSAGE frame of this input: 31 bytes of header, key `user0`, payload
/// `user0,0`. `IN_FLIGHT_BYTES / MIN_FRAME` bounds the records in flight per source.
const MIN_FRAME: usize = 31 + 5 + 7;
/// Clean hand-offs in the run: c joining, b leaving, a joining again. Each should repeat
/// nothing (the old owner releases the stream with a final slice), and may repeat at most
/// one source's records in flight if that release comes too late.
const CLEAN_HANDOFFS: usize = 3;
/// The state store of the alerts pipeline in slices.
const STATE: &str = alerts_stateful::STATE;

/// One transaction as produced.
struct Tx {
    user: SmolStr,
    payload: Vec<u8>,
    partition: i32,
}

/// The partition of a user: FNV-1a of the key, as a keyed producer's partitioner would.
fn partition_of(user: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % PARTITIONS as u32) as i32
}

fn transactions() -> Vec<Tx> {
    (1..=COUNT as u64)
        .map(|i| {
            let payload = alerts_stateful::generated_transaction(SEED, USERS, i);
            let user = decode_transaction(&payload).expect("generated").user;
            Tx {
                partition: partition_of(&user),
                user,
                payload,
            }
        })
        .collect()
}

/// What the producers' delivery reports said.
#[derive(Default)]
struct Reports {
    /// Records confirmed by the broker.
    delivered: AtomicUsize,
    /// (transaction index, partition, offset) of every confirmed record.
    at: Mutex<Vec<(usize, i32, i64)>>,
    errors: Mutex<Vec<String>>,
    /// Set when the test stops early: the producers stop too.
    stop: AtomicBool,
}

struct Reporter(Arc<Reports>);

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        match result {
            Ok(m) => {
                self.0
                    .at
                    .lock()
                    .unwrap()
                    .push((i, m.partition(), m.offset()));
                self.0.delivered.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, _)) => self
                .0
                .errors
                .lock()
                .unwrap()
                .push(format!("record {i}: {e}")),
        }
    }
}

/// Produces `txs` at a steady rate over [`PRODUCE_OVER`], one producer (connection) per
/// partition, one record per batch: Tansu 0.6 skips the rest of a batch when a fetch starts
/// in its middle, which a partition's new owner does (see `common::produce`).
fn produce_paced(brokers: &str, topic: &str, txs: &[Tx], reports: &Arc<Reports>) {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for p in 0..PARTITIONS {
            s.spawn(move || {
                let producer: ThreadedProducer<Reporter> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("acks", "all")
                    .set("linger.ms", "0")
                    .set("batch.num.messages", "1")
                    .set("enable.idempotence", "false")
                    .set("max.in.flight.requests.per.connection", "500")
                    .set("queue.buffering.max.messages", "1000000")
                    .create_with_context(Reporter(reports.clone()))
                    .expect("producer");
                for (i, tx) in txs.iter().enumerate().filter(|(_, t)| t.partition == p) {
                    if reports.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let due = t0 + PRODUCE_OVER.mul_f64(i as f64 / txs.len() as f64);
                    let now = Instant::now();
                    if due > now + Duration::from_millis(2) {
                        std::thread::sleep(due - now);
                    }
                    let rec = BaseRecord::with_opaque_to(topic, i)
                        .key(tx.user.as_bytes())
                        .payload(&tx.payload[..])
                        .partition(p);
                    common::send_retrying(&producer, rec);
                }
                producer.flush(Duration::from_secs(120)).expect("flush");
            });
        }
    });
}

/// Sets the producers' stop flag when the test leaves its scope (a failed assertion too).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a clean single engine computes, from the records' places in the topic: each
/// partition's transactions in offset order through `check_transaction_total` (the pipeline's
/// own function), per user. One engine reading the topic sees exactly this order for every
/// user, since a user's transactions are all in one partition. (Computed here, not by
/// running a reference engine: same function, same order, without a second run.)
struct Reference {
    /// Final total per user, by partition.
    totals: Vec<BTreeMap<SmolStr, i64>>,
    /// Every alert line (`DepositAlert(user7, 2100)`) with how many times it is emitted.
    alerts: HashMap<String, usize>,
    /// Offset of each partition's last record.
    last: Vec<i64>,
}

fn reference(txs: &[Tx], at: &[(usize, i32, i64)]) -> Reference {
    let mut by_partition: Vec<Vec<(i64, usize)>> = vec![Vec::new(); PARTITIONS as usize];
    for &(i, p, offset) in at {
        by_partition[p as usize].push((offset, i));
    }
    let mut r = Reference {
        totals: vec![BTreeMap::new(); PARTITIONS as usize],
        alerts: HashMap::new(),
        last: Vec::new(),
    };
    for (p, recs) in by_partition.iter_mut().enumerate() {
        recs.sort_unstable();
        r.last.push(recs.last().map_or(-1, |(o, _)| *o));
        let mut state: HashMap<SmolStr, TransactionTotal> = HashMap::new();
        for &(_, i) in recs.iter() {
            let t = decode_transaction(&txs[i].payload).expect("generated");
            let s = state.entry(t.user.clone()).or_default();
            if let Some(alert) = check_transaction_total(t, s) {
                *r.alerts.entry(alert.to_string()).or_default() += 1;
            }
        }
        r.totals[p] = state.into_iter().map(|(u, s)| (u, s.total)).collect();
    }
    r
}

/// `engine_messages_total` in and out of a running pair's engine.
fn engine_counts(pair: &Pair) -> (u64, u64) {
    let text = testkit::shell::scrape(pair.engine_metrics);
    let get = |d| {
        testkit::shell::metric(&text, "engine_messages_total", &[("direction", d)]).unwrap_or(0.0)
            as u64
    };
    (get("in"), get("out"))
}

/// SIGKILL of every process of `pair`, returning how many transactions its source had sent
/// and its engine had not acknowledged, i.e. not saved in a slice yet: what the partitions'
/// next owners process again. The engine is stopped (SIGSTOP) first, so that the source's
/// count (`connector_in_flight`) settles and the engine writes no slice meanwhile.
fn kill_pair(pair: &mut Pair) -> usize {
    pair.engine
        .as_ref()
        .expect("engine running")
        .signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    let window =
        common::metric(pair.source_metrics, "connector_in_flight").expect("kafka_source metrics");
    for p in [&mut pair.source, &mut pair.engine, &mut pair.sink] {
        if let Some(mut p) = p.take() {
            p.kill9();
        }
    }
    window.max(0) as usize
}

/// SIGTERM of the source (which drains, ends its streams and leaves the group), then of the
/// engine and the sink; returns the engine's final [`engine_counts`].
fn stop_pair(pair: &mut Pair) -> (u64, u64) {
    let status = pair
        .source
        .take()
        .expect("kafka_source running")
        .terminate(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "kafka_source of {} did not exit cleanly on SIGTERM: {status:?}\n{}",
        pair.dir.display(),
        pair.logs()
    );
    let counts = engine_counts(pair);
    for p in [&mut pair.engine, &mut pair.sink] {
        if let Some(mut p) = p.take() {
            if p.terminate(Duration::from_secs(20)).is_none() {
                p.kill9();
            }
        }
    }
    counts
}

/// Reads the output and watches the pairs until `frac` of the input was produced.
fn until(frac: f64, reports: &Reports, out: &mut Reader, pairs: &mut [&mut Pair]) {
    let want = (COUNT as f64 * frac) as usize;
    let deadline = Instant::now() + PRODUCE_OVER * 3;
    while reports.delivered.load(Ordering::SeqCst) < want {
        out.poll_for(Duration::from_millis(100));
        pairs.iter_mut().for_each(|p| p.assert_running());
        let errors = reports.errors.lock().unwrap().clone();
        if !errors.is_empty() || Instant::now() > deadline {
            panic!(
                "producing stalled at {} of {COUNT} records: {errors:?}",
                reports.delivered.load(Ordering::SeqCst)
            );
        }
    }
}

/// Stops the test with every pair's logs.
fn fail(pairs: &[&Pair], what: String) -> ! {
    let logs: String = pairs.iter().map(|p| p.logs()).collect();
    panic!("{what}\n{logs}");
}

#[test]
fn stateful_pairs_hand_partitions_and_their_state_over_through_s3() {
    let brokers = testkit::kafka_brokers();
    let endpoint = testkit::aws_endpoint();
    let input = testkit::unique("so_in");
    let output = testkit::unique("so_out");
    let group = testkit::unique("so_group");
    let _topics = common::cleanup(&brokers, &[&input, &output]);
    common::create_topic(&brokers, &input, PARTITIONS);
    common::create_topic(&brokers, &output, PARTITIONS);
    let bucket = testkit::s3::TestBucket::create("scale-out");
    let prefix = "ckpt";
    let store = format!(
        "s3://{}/{prefix}?endpoint_url={endpoint}&region=us-east-1",
        bucket.name
    );
    let txs = transactions();

    let dir = common::test_dir();
    let new_pair = |tag: &str| {
        let mut p = Pair::with_app(dir.path(), tag, "transactions", "alerts", |sp, kp| {
            testkit::AppFile::new(&format!("scale_out_{tag}"))
                .top("state_scope = \"stream\"")
                .source(
                    "transactions",
                    sp,
                    &format!("max_credits = {CREDITS}\nin_flight_bytes = {IN_FLIGHT_BYTES}"),
                )
                .sink("alerts", kp, &format!("max_credits = {CREDITS}"))
        });
        p.engine_program = ("alerts_stateful".into(), vec!["run".into()]);
        p.engine_args = vec![
            "--checkpoint-store".into(),
            store.clone(),
            "--checkpoint-interval".into(),
            "250ms".into(),
        ];
        p.source_args = [
            "--transactions-topics",
            &input,
            "--transactions-consumer_group",
            &group,
            "--transactions-bootstrap_brokers",
            &brokers,
            // A killed member is noticed after this, not after the 45 s default.
            "--transactions-option",
            "session.timeout.ms=6000",
            "--transactions-option",
            "heartbeat.interval.ms=500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        p.sink_args = [
            "--alerts-topic",
            &output,
            "--alerts-bootstrap_brokers",
            &brokers,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        p.env = testkit::s3::TEST_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    };
    let (mut a, mut b, mut c) = (new_pair("a"), new_pair("b"), new_pair("c"));
    let t = Instant::now();
    a.start();
    b.start();
    let settled = testkit::wait_until(Duration::from_secs(30), || {
        [&a, &b].iter().all(|p| {
            p.source
                .as_ref()
                .is_some_and(|s| s.stderr().contains("assigned: starting"))
        })
    });
    if !settled {
        fail(
            &[&a, &b],
            "the group never assigned partitions to both a and b".into(),
        );
    }
    eprintln!("pairs a and b started ({:?})", t.elapsed());

    let mut out = Reader::new(&brokers, &output);
    let reports = Arc::new(Reports::default());
    // Per-pair stats: (pair, engine messages in, out) when each pair stopped.
    let mut stats: Vec<(String, u64, u64)> = Vec::new();
    // Transactions the killed pair had processed and not saved in a slice.
    let mut kill_window = 0;
    let t = Instant::now();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&reports.stop);
        let producer = s.spawn(|| produce_paced(&brokers, &input, &txs, &reports));
        until(0.2, &reports, &mut out, &mut [&mut a, &mut b]);
        c.start();
        eprintln!(
            "{:?}: pair c joins ({} alerts out so far)",
            t.elapsed(),
            out.records.len()
        );

        until(0.45, &reports, &mut out, &mut [&mut a, &mut b, &mut c]);
        let (a_in, a_out) = engine_counts(&a);
        assert!(
            a_in > 0,
            "pair a processed nothing before its kill: no state to hand over\n{}",
            a.logs()
        );
        stats.push(("a (killed)".into(), a_in, a_out));
        kill_window = kill_pair(&mut a);
        eprintln!(
            "{:?}: kill -9 of pair a's sink, engine and source, after {a_in} transactions in; {kill_window} sent to it were not saved in a slice yet",
            t.elapsed()
        );

        until(0.65, &reports, &mut out, &mut [&mut b, &mut c]);
        let (b_in, b_out) = stop_pair(&mut b);
        stats.push(("b (stopped)".into(), b_in, b_out));
        eprintln!("{:?}: pair b stopped cleanly (SIGTERM)", t.elapsed());

        until(0.8, &reports, &mut out, &mut [&mut c]);
        a.start();
        eprintln!("{:?}: pair a started again", t.elapsed());

        until(1.0, &reports, &mut out, &mut [&mut a, &mut c]);
        producer.join().expect("producer");
    });
    let errors = reports.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "delivery failed: {errors:?}");
    let at = std::mem::take(&mut *reports.at.lock().unwrap());
    assert_eq!(at.len(), COUNT, "not every transaction was produced");
    eprintln!("{COUNT} transactions produced in {:?}", t.elapsed());
    let r = reference(&txs, &at);

    // Everything consumed: the group committed every partition's end, and every slice holds
    // the partition's last record.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = common::committed(&brokers, &group, &input, PARTITIONS);
        if committed.iter().zip(&r.last).all(|(c, l)| *c == l + 1) {
            break;
        }
        if Instant::now() > deadline {
            fail(
                &[&a, &b, &c],
                format!(
                    "the group's committed offsets {committed:?} never reached the ends {:?}",
                    r.last.iter().map(|l| l + 1).collect::<Vec<_>>()
                ),
            );
        }
        a.assert_running();
        c.assert_running();
        out.poll_for(Duration::from_millis(300));
    }
    eprintln!("{:?}: every partition committed to its end", t.elapsed());
    let read_slices = || -> Vec<Option<engine::slice::Slice>> {
        (0..PARTITIONS)
            .map(|p| {
                let key = format!("{prefix}/{}", slice_key(&format!("{input}/{p}")));
                bucket.get(&key).map(|bytes| {
                    engine::slice::Slice::decode(&bytes)
                        .unwrap_or_else(|e| panic!("slice {key} does not decode: {e}"))
                })
            })
            .collect()
    };
    let mut points = Vec::new();
    let at_end = testkit::wait_until(Duration::from_secs(30), || {
        points = read_slices()
            .iter()
            .map(|s| s.as_ref().map(|s| s.point))
            .collect();
        points
            .iter()
            .zip(&r.last)
            .all(|(p, l)| *p == Some(*l as u64))
    });
    if !at_end {
        fail(
            &[&a, &b, &c],
            format!(
                "the slices' points {points:?} never reached the partitions' last offsets {:?} (keys {}: {:?})",
                r.last,
                bucket.name,
                bucket.keys()
            ),
        );
    }
    for (name, p) in [("a (restarted)", &mut a), ("c", &mut c)] {
        let (n_in, n_out) = stop_pair(p);
        stats.push((name.into(), n_in, n_out));
    }
    eprintln!("{:?}: pairs a and c stopped cleanly", t.elapsed());

    // (a) The final slices: each user's exact total, each partition's last offset.
    let mut problems = Vec::new();
    let mut wrong_users = Vec::new();
    for (p, slice) in read_slices().into_iter().enumerate() {
        let stream = format!("{input}/{p}");
        let Some(slice) = slice else {
            problems.push(format!("no slice for {stream}"));
            continue;
        };
        eprintln!(
            "slice {stream}: point {}, generation {}, written by {}",
            slice.point, slice.generation, slice.owner
        );
        if slice.stream != stream || slice.point != r.last[p] as u64 {
            problems.push(format!(
                "slice of {stream} names stream {} at point {}, want point {}",
                slice.stream, slice.point, r.last[p]
            ));
        }
        let pairs: Vec<(SmolStr, TransactionTotal)> = match slice.state(STATE) {
            Some(Ok(pairs)) => pairs,
            Some(Err(e)) => {
                problems.push(format!("state {STATE} of {stream} does not decode: {e}"));
                continue;
            }
            None => {
                problems.push(format!("slice of {stream} has no state {STATE}"));
                continue;
            }
        };
        let got: BTreeMap<SmolStr, i64> = pairs.into_iter().map(|(u, s)| (u, s.total)).collect();
        for (user, want) in &r.totals[p] {
            if got.get(user) != Some(want) {
                wrong_users.push(format!(
                    "{user} (partition {p}): want {want}, got {:?}",
                    got.get(user)
                ));
            }
        }
        for user in got.keys().filter(|u| !r.totals[p].contains_key(*u)) {
            wrong_users.push(format!(
                "{user} in the slice of partition {p}, where it has no transaction"
            ));
        }
    }
    let users: usize = r.totals.iter().map(|t| t.len()).sum();
    assert!(
        problems.is_empty() && wrong_users.is_empty(),
        "the final slices are wrong: {problems:?}; {} of {users} users with a wrong total, e.g. {:?}\n{}{}{}",
        wrong_users.len(),
        &wrong_users[..wrong_users.len().min(10)],
        a.logs(),
        b.logs(),
        c.logs()
    );

    // (b) Every alert of the reference at least once, nothing else; (c) duplicates bounded.
    let want: usize = r.alerts.values().sum();
    let count = |out: &Reader| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for rec in &out.records {
            let line = String::from_utf8_lossy(&rec.value);
            *seen.entry(line.trim_end().to_string()).or_default() += 1;
        }
        seen
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        out.poll_for(Duration::from_millis(500));
        if out.records.len() >= want {
            let seen = count(&out);
            if r.alerts
                .iter()
                .all(|(a, n)| seen.get(a).is_some_and(|g| g >= n))
            {
                break;
            }
        }
    }
    out.poll_for(Duration::from_secs(1));
    let seen = count(&out);
    let mut missing: Vec<String> = Vec::new();
    let mut duplicates = 0;
    for (alert, n) in &r.alerts {
        let got = seen.get(alert).copied().unwrap_or(0);
        if got < *n {
            missing.push(format!("{alert} (want {n}, got {got})"));
        }
        duplicates += got.saturating_sub(*n);
    }
    let unexpected: Vec<&String> = seen.keys().filter(|a| !r.alerts.contains_key(*a)).collect();
    missing.sort();
    // The kill repeats at most the transactions a had not saved in a slice (each gives at
    // most one alert); a clean hand-off at most one source's window, if its release is late.
    let window = IN_FLIGHT_BYTES / MIN_FRAME;
    let bound = kill_window + CLEAN_HANDOFFS * window;
    eprintln!(
        "{} alerts out for {want} of the reference ({} distinct): {} missing, {} unexpected, {duplicates} duplicates (bound: {kill_window} unsaved at the kill + {CLEAN_HANDOFFS} clean hand-offs x {window} in flight = {bound})",
        out.records.len(),
        r.alerts.len(),
        missing.len(),
        unexpected.len()
    );
    for (name, n_in, n_out) in &stats {
        eprintln!("pair {name}: {n_in} transactions in, {n_out} alerts out");
    }
    assert!(
        missing.is_empty(),
        "{} alerts of the reference are missing from the output, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        unexpected.is_empty(),
        "{} alerts that a single engine never emits (a total computed from wrong state), e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicate alerts, more than the {kill_window} transactions unsaved at the kill + {CLEAN_HANDOFFS} clean hand-offs x {window} in flight"
    );
}
