//! Records/s into and out of the local S3/Kinesis service (moto): each connector beside a
//! plain AWS SDK loop doing the same work, in the same run, on fresh streams/buckets.
//!
//! ```text
//! CARGO_TARGET_DIR=target-aws cargo build --release -p aws-connectors -p engine -p stdio-connectors --bins
//! CARGO_TARGET_DIR=target-aws cargo bench -p aws-connectors --bench aws_throughput
//! ```
//! `BENCH_RECORDS` (default 50000, Kinesis) and `BENCH_S3_RECORDS` (default 500000, S3)
//! records of `BENCH_PAYLOAD` (default 100) bytes.
//! Kinesis streams have 64 shards: moto's PutRecords costs time proportional to the size of
//! the shard for every record, so every case writes the same number of records per shard.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_connectors::client::AwsOptions;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use aws_sdk_s3::primitives::ByteStream;
use testkit::{free_port, AppFile, Proc};

const SHARDS: i32 = 64;

struct Row {
    case: &'static str,
    records: usize,
    bytes: usize,
    secs: f64,
}

fn main() {
    let n: usize = env_or("BENCH_RECORDS", 50_000);
    let size: usize = env_or("BENCH_PAYLOAD", 100);
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(k, v);
    }
    let endpoint = testkit::aws_endpoint();
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let opts = AwsOptions {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.clone()),
    };
    let kin = rt.block_on(opts.kinesis()).expect("kinesis client");
    let s3 = rt.block_on(opts.s3(None)).expect("s3 client");
    let dir = tempfile::tempdir().expect("temp dir");
    let payloads = make_payloads(n, size);
    let frames = dir.path().join("in.frames");
    write_frames(&frames, &payloads);
    let total = n * size;
    let mut rows = Vec::new();
    let tag = std::process::id();

    // ---------------- Kinesis ----------------
    let streams: Vec<String> = (0..4).map(|i| format!("bench_{tag}_{i}")).collect();
    for s in &streams {
        rt.block_on(create_stream(&kin, s));
    }
    // Into Kinesis: a plain PutRecords loop (500 per call), then kinesis_sink.
    let t = Instant::now();
    rt.block_on(sdk_put_records(&kin, &streams[0], &payloads));
    rows.push(row(
        "Kinesis in: SDK PutRecords loop (500/call)",
        n,
        total,
        t,
    ));
    let t = Instant::now();
    run_stdin(
        dir.path(),
        "kinesis_sink",
        &frames,
        &["--k-stream", &streams[1]],
    );
    rows.push(row("Kinesis in: kinesis_sink --from stdin", n, total, t));
    let t = through_engine_into(
        dir.path(),
        &frames,
        n,
        "kinesis_sink",
        "",
        &["--stream", &streams[2]],
    );
    rows.push(row(
        "Kinesis in: stdin_source -> engine -> kinesis_sink",
        n,
        total,
        t,
    ));
    // Out of Kinesis: a plain GetRecords loop over every shard, then kinesis_source.
    let t = Instant::now();
    let got = rt.block_on(sdk_get_records(&kin, &streams[0]));
    assert_eq!(got, n, "SDK read back everything");
    rows.push(row(
        "Kinesis out: SDK GetRecords loop (10000/call)",
        n,
        total,
        t,
    ));
    let t = Instant::now();
    read_stdout(
        dir.path(),
        "kinesis_source",
        n,
        &["--k-stream", &streams[1]],
    );
    rows.push(row("Kinesis out: kinesis_source --to stdout", n, total, t));
    let t = through_engine_out_of(dir.path(), n, "kinesis_source", &["--stream", &streams[2]]);
    rows.push(row(
        "Kinesis out: kinesis_source -> engine -> stdout_sink",
        n,
        total,
        t,
    ));
    for s in &streams {
        let _ = rt.block_on(kin.delete_stream().stream_name(s).send());
    }

    // ---------------- S3 ----------------
    let n_kinesis = n;
    let n: usize = env_or("BENCH_S3_RECORDS", 500_000);
    let payloads = make_payloads(n, size);
    let frames = dir.path().join("in-s3.frames");
    write_frames(&frames, &payloads);
    let total = n * size;
    let bucket = format!("bench-{tag}");
    rt.block_on(s3.create_bucket().bucket(&bucket).send())
        .expect("create bucket");
    let object_bytes = 1 << 20;
    let t = Instant::now();
    rt.block_on(sdk_put_objects(
        &s3,
        &bucket,
        "sdk/",
        &payloads,
        object_bytes,
    ));
    rows.push(row(
        "S3 in: SDK PutObject loop (1 MiB frames objects)",
        n,
        total,
        t,
    ));
    let sink_args = [
        "--k-bucket",
        &bucket,
        "--k-prefix",
        "conn/",
        "--k-format",
        "frames",
        "--k-batch_bytes",
        "1048576",
    ];
    let t = Instant::now();
    run_stdin(dir.path(), "s3_sink", &frames, &sink_args);
    rows.push(row(
        "S3 in: s3_sink --from stdin (1 MiB batches)",
        n,
        total,
        t,
    ));
    let s3_params = [
        "--bucket",
        &bucket,
        "--prefix",
        "eng/",
        "--format",
        "frames",
        "--batch_bytes",
        "1048576",
        "--batch_ms",
        "50",
    ];
    let t = through_engine_into(dir.path(), &frames, n, "s3_sink", "", &s3_params);
    rows.push(row(
        "S3 in: stdin_source -> engine -> s3_sink (max_credits 8192)",
        n,
        total,
        t,
    ));
    let mut s3_params = s3_params;
    s3_params[3] = "eng2/";
    let t = through_engine_into(
        dir.path(),
        &frames,
        n,
        "s3_sink",
        "max_credits = 65536",
        &s3_params,
    );
    rows.push(row(
        "S3 in: stdin_source -> engine -> s3_sink (max_credits 65536)",
        n,
        total,
        t,
    ));
    let t = Instant::now();
    let got = rt.block_on(sdk_get_objects(&s3, &bucket, "sdk/"));
    assert_eq!(got, n, "SDK read back everything");
    rows.push(row(
        "S3 out: SDK ListObjectsV2 + GetObject + split",
        n,
        total,
        t,
    ));
    let t = Instant::now();
    read_stdout(
        dir.path(),
        "s3_source",
        n,
        &["--k-bucket", &bucket, "--k-prefix", "conn/"],
    );
    rows.push(row("S3 out: s3_source --to stdout", n, total, t));
    let t = through_engine_out_of(
        dir.path(),
        n,
        "s3_source",
        &["--bucket", &bucket, "--prefix", "eng/"],
    );
    rows.push(row(
        "S3 out: s3_source -> engine -> stdout_sink",
        n,
        total,
        t,
    ));
    rt.block_on(async {
        let mut after = None;
        loop {
            let Ok(r) = s3
                .list_objects_v2()
                .bucket(&bucket)
                .set_start_after(after.clone())
                .send()
                .await
            else {
                break;
            };
            for o in r.contents() {
                let _ = s3
                    .delete_object()
                    .bucket(&bucket)
                    .key(o.key().unwrap_or(""))
                    .send()
                    .await;
                after = o.key().map(String::from);
            }
            if r.is_truncated() != Some(true) {
                break;
            }
        }
        let _ = s3.delete_bucket().bucket(&bucket).send().await;
    });

    println!(
        "\nKinesis: {n_kinesis} records, S3: {n} records, {size} bytes each, against {endpoint}\n"
    );
    println!("| case | records/s | MB/s | seconds |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} |",
            r.case,
            r.records as f64 / r.secs,
            r.bytes as f64 / r.secs / 1e6,
            r.secs
        );
    }
}

fn make_payloads(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut p = format!("{i:010}:").into_bytes();
            p.resize(size.max(11), b'a' + (i % 26) as u8);
            p
        })
        .collect()
}

fn write_frames(path: &Path, payloads: &[Vec<u8>]) {
    let mut buf = Vec::new();
    for p in payloads {
        buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
        buf.extend_from_slice(p);
    }
    std::fs::write(path, &buf).expect("write input");
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(case: &'static str, records: usize, bytes: usize, t: Instant) -> Row {
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{case}: {secs:.2} s");
    Row {
        case,
        records,
        bytes,
        secs,
    }
}

async fn create_stream(kin: &aws_sdk_kinesis::Client, name: &str) {
    kin.create_stream()
        .stream_name(name)
        .shard_count(SHARDS)
        .send()
        .await
        .expect("create stream");
    loop {
        let d = kin
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("describe");
        if d.stream_description_summary()
            .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The plain SDK way: PutRecords of 500, the failed records of a call sent again.
async fn sdk_put_records(kin: &aws_sdk_kinesis::Client, stream: &str, payloads: &[Vec<u8>]) {
    for chunk in payloads.chunks(500) {
        let mut todo: Vec<&Vec<u8>> = chunk.iter().collect();
        while !todo.is_empty() {
            let entries = todo
                .iter()
                .map(|p| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(p.to_vec()))
                        .partition_key(format!("{:016x}", aws_connectors::kinesis::fnv1a64(p)))
                        .build()
                        .expect("entry")
                })
                .collect();
            let out = match kin
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
            {
                Ok(o) => o,
                Err(_) => continue,
            };
            todo = todo
                .into_iter()
                .zip(out.records())
                .filter(|(_, r)| r.error_code().is_some())
                .map(|(p, _)| p)
                .collect();
        }
    }
}

/// The plain SDK way: every shard from TRIM_HORIZON until an empty answer.
async fn sdk_get_records(kin: &aws_sdk_kinesis::Client, stream: &str) -> usize {
    let shards = kin
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("list shards");
    let mut n = 0;
    for s in shards.shards() {
        let mut it = kin
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator");
        loop {
            let r = match kin
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
            {
                Ok(r) => r,
                Err(_) => continue,
            };
            if r.records.is_empty() {
                break;
            }
            n += r.records.len();
            match r.next_shard_iterator {
                Some(next) => it = next,
                None => break,
            }
        }
    }
    n
}

/// The plain SDK way: frames concatenated into objects of about `object_bytes`.
async fn sdk_put_objects(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    payloads: &[Vec<u8>],
    object_bytes: usize,
) {
    let mut body = Vec::new();
    let mut i = 0;
    for (n, p) in payloads.iter().enumerate() {
        body.extend_from_slice(&(p.len() as u32).to_be_bytes());
        body.extend_from_slice(p);
        if body.len() >= object_bytes || n + 1 == payloads.len() {
            let key = format!("{prefix}{i:08}.frames");
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(std::mem::take(&mut body)))
                .send()
                .await
                .expect("put object");
            i += 1;
        }
    }
}

/// The plain SDK way: list, get each object, split its frames.
async fn sdk_get_objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> usize {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_start_after(after.clone())
            .send()
            .await
            .expect("list");
        for o in page.contents() {
            let key = o.key().unwrap_or_default();
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes();
            let mut i = 0;
            while i + 4 <= body.len() {
                let len =
                    u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]) as usize;
                i += 4 + len;
                n += 1;
            }
            after = Some(key.to_string());
        }
        if page.is_truncated() != Some(true) {
            return n;
        }
    }
}

fn aws_command(program: &str) -> Command {
    let mut c = Command::new(testkit::bin(program));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs a sink with the frames file on standard input, until it exits.
fn run_stdin(dir: &Path, program: &str, input: &PathBuf, params: &[&str]) {
    let mut c = aws_command(program);
    c.args([
        "--connector",
        "k",
        "--from",
        "stdin",
        "--format",
        "frames",
        "--stats-interval",
        "0",
    ])
    .args(params)
    .stdin(Stdio::from(std::fs::File::open(input).expect("input")));
    let mut p = Proc::spawn_with(dir, program, &mut c);
    let status = p.wait_timeout(Duration::from_secs(1800));
    assert!(
        status.is_some_and(|s| s.success()),
        "{program}: {}",
        p.stderr()
    );
}

/// Runs a source to standard output until `n` frames came out.
fn read_stdout(dir: &Path, program: &str, n: usize, params: &[&str]) {
    let mut c = aws_command(program);
    c.args([
        "--connector",
        "k",
        "--to",
        "stdout",
        "--format",
        "frames",
        "--stats-interval",
        "0",
    ])
    .args(
        ["--k-poll_ms", "200"]
            .iter()
            .filter(|_| program == "kinesis_source"),
    )
    .args(params);
    let mut p = Proc::spawn_with(dir, program, &mut c);
    let mut counter = FrameCounter::new(p.stdout_path.clone());
    wait(&mut p, n, |_| counter.poll());
    p.terminate(Duration::from_secs(20));
}

/// stdin_source -> engine -> the sink `program`, until the sink acknowledged `n` messages.
fn through_engine_into(
    dir: &Path,
    input: &PathBuf,
    n: usize,
    program: &str,
    sink_toml: &str,
    params: &[&str],
) -> Instant {
    let (p_feed, p_sink) = (free_port(), free_port());
    let app = AppFile::new("bench in")
        .source("feed", p_feed, "")
        .sink("out", p_sink, sink_toml)
        .pipeline("feed", &["out"])
        .write(dir);
    let params: Vec<String> = params
        .chunks(2)
        .flat_map(|kv| {
            [
                format!("--out-{}", kv[0].trim_start_matches("--")),
                kv[1].to_string(),
            ]
        })
        .collect();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut c = aws_command(program);
    c.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "out",
        "--stats-interval",
        "0",
        "--metrics-addr",
        &metrics,
    ])
    .args(&params);
    c.env("RUST_LOG", "info");
    let mut sink = Proc::spawn_with(dir, &format!("{program}-engine"), &mut c);
    let _engine = testkit::start_engine(dir, "engine-in", &app, &[], &[p_feed]);
    // The clock starts once the engine is connected to the sink.
    wait(&mut sink, 1, |p| {
        usize::from(p.stderr().contains("connected from"))
    });
    let t = Instant::now();
    let mut feed = aws_command("stdin_source");
    feed.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "feed",
        "--format",
        "frames",
        "--stats-interval",
        "0",
    ])
    .stdin(Stdio::from(std::fs::File::open(input).expect("input")));
    let _feed = Proc::spawn_with(dir, "stdin_source", &mut feed);
    wait(&mut sink, n, |_| acked(&metrics));
    sink.terminate(Duration::from_secs(20));
    t
}

/// The source `program` -> engine -> stdout_sink, until `n` frames came out.
fn through_engine_out_of(dir: &Path, n: usize, program: &str, params: &[&str]) -> Instant {
    let (p_src, p_out) = (free_port(), free_port());
    let app = AppFile::new("bench out")
        .source("src", p_src, "")
        .sink("out", p_out, "")
        .pipeline("src", &["out"])
        .write(dir);
    let mut out = aws_command("stdout_sink");
    out.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "out",
        "--format",
        "frames",
        "--stats-interval",
        "0",
    ]);
    out.env("RUST_LOG", "info");
    let mut out = Proc::spawn_with(dir, "stdout_sink", &mut out);
    let _engine = testkit::start_engine(dir, "engine-out", &app, &[], &[p_src]);
    // The clock starts once the engine is connected to the sink.
    wait(&mut out, 1, |p| {
        usize::from(p.stderr().contains("connected from"))
    });
    let t = Instant::now();
    let mut params: Vec<String> = params
        .chunks(2)
        .flat_map(|kv| {
            [
                format!("--src-{}", kv[0].trim_start_matches("--")),
                kv[1].to_string(),
            ]
        })
        .collect();
    if program == "kinesis_source" {
        params.extend(["--src-poll_ms".to_string(), "200".to_string()]);
    }
    let mut c = aws_command(program);
    c.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        "src",
        "--stats-interval",
        "0",
    ])
    .args(&params);
    let mut src = Proc::spawn_with(dir, program, &mut c);
    let mut counter = FrameCounter::new(out.stdout_path.clone());
    wait(&mut out, n, |_| counter.poll());
    src.terminate(Duration::from_secs(20));
    t
}

fn wait(p: &mut Proc, n: usize, mut count: impl FnMut(&Proc) -> usize) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let c = count(p);
        if c >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} got {c} of {n} records: {}",
            p.name,
            p.stderr()
        );
        assert!(
            p.is_running(),
            "{} stopped after {c} of {n} records: {}",
            p.name,
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `connector_acked_total` from a connector's metrics endpoint.
fn acked(addr: &str) -> usize {
    use std::io::{Read, Write};
    let Ok(mut sock) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = sock.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    text.lines()
        .find(|l| l.starts_with("connector_acked_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as usize)
        .unwrap_or(0)
}

/// Counts the frames of a growing file, reading only what is new.
struct FrameCounter {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    count: usize,
}

impl FrameCounter {
    fn new(path: PathBuf) -> FrameCounter {
        FrameCounter {
            path,
            offset: 0,
            pending: Vec::new(),
            count: 0,
        }
    }

    fn poll(&mut self) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return self.count;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return self.count;
        }
        let mut new = Vec::new();
        let _ = f.read_to_end(&mut new);
        self.offset += new.len() as u64;
        self.pending.extend_from_slice(&new);
        let mut i = 0;
        while i + 4 <= self.pending.len() {
            let b = &self.pending;
            let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
            if i + 4 + len > b.len() {
                break;
            }
            i += 4 + len;
            self.count += 1;
        }
        self.pending.drain(..i);
        self.count
    }
}
