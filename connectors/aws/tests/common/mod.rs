//! Helpers shared by the AWS connector tests: the local S3/Kinesis service (moto), AWS
//! environment for spawned processes, payload generation and frame files.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_connectors::client::AwsOptions;
use testkit::Proc;

/// The local service endpoint (fails with instructions when it is not running).
pub fn endpoint() -> String {
    testkit::aws_endpoint()
}

/// Test credentials and region, set on every spawned process (and this one, for the SDK).
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Sets the test credentials in this process (for the SDK clients the tests use).
pub fn init_env() {
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
}

/// A command for a workspace binary with the AWS environment set.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(testkit::bin(program));
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    c.env("AWS_ENDPOINT_URL", endpoint());
    c
}

/// `--NAME-endpoint_url URL --NAME-region us-east-1`.
pub fn aws_args(connector: &str) -> Vec<String> {
    vec![
        format!("--{connector}-endpoint_url"),
        endpoint(),
        format!("--{connector}-region"),
        "us-east-1".into(),
    ]
}

/// Converts a list of `&str` into owned arguments.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Starts a connector with the application file, its name and `extra` arguments.
pub fn start(dir: &Path, program: &str, app: &Path, connector: &str, extra: &[String]) -> Proc {
    let mut c = command(program);
    c.args([
        "--application-module",
        &app.display().to_string(),
        "--connector",
        connector,
    ])
    .args(extra);
    if !extra.iter().any(|a| a == "--stats-interval") {
        c.args(["--stats-interval", "0"]);
    }
    if program.starts_with("kinesis") || program.starts_with("s3") {
        c.args(aws_args(connector));
    }
    Proc::spawn_with(dir, &format!("{program}-{connector}"), &mut c)
}

/// Runs a connector in stdin/stdout mode with `input` as standard input and waits for it.
pub fn run_with_stdin(
    dir: &Path,
    program: &str,
    connector: &str,
    input: &Path,
    extra: &[String],
    timeout: Duration,
) -> Proc {
    let mut c = command(program);
    c.args([
        "--connector",
        connector,
        "--from",
        "stdin",
        "--stats-interval",
        "0",
    ])
    .args(extra)
    .args(aws_args(connector))
    .stdin(Stdio::from(
        std::fs::File::open(input).expect("open input file"),
    ));
    let mut p = Proc::spawn_with(dir, &format!("{program}-{connector}-stdin"), &mut c);
    let status = p.wait_timeout(timeout);
    assert!(
        status.is_some_and(|s| s.success()),
        "{program} --from stdin did not finish cleanly within {timeout:?}: {status:?}\n{}",
        p.stderr()
    );
    p
}

/// A tokio runtime for the SDK calls of a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn options() -> AwsOptions {
    init_env();
    AwsOptions {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint()),
    }
}

/// A Kinesis client for the local service.
pub async fn kinesis() -> aws_sdk_kinesis::Client {
    options().kinesis().await.expect("kinesis client")
}

/// An S3 client for the local service.
pub async fn s3() -> aws_sdk_s3::Client {
    options().s3(None).await.expect("s3 client")
}

/// A stream name unique to this run.
pub fn stream_name(prefix: &str) -> String {
    testkit::unique(prefix)
}

/// A bucket name unique to this run (lowercase, no underscores).
pub fn bucket_name(prefix: &str) -> String {
    testkit::unique(prefix)
        .replace('_', "-")
        .to_ascii_lowercase()
}

/// Creates a stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(name: &str, shards: i32) {
    let k = kinesis().await;
    k.create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("describe stream");
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str() == "ACTIVE")
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} did not become ACTIVE");
}

/// Creates a bucket.
pub async fn create_bucket(name: &str) {
    s3().await
        .create_bucket()
        .bucket(name)
        .send()
        .await
        .expect("create bucket");
}

/// The first `n` records of every shard, as (shard, partition key, data).
pub async fn read_stream_sample(name: &str, n: i32) -> Vec<(String, String, Vec<u8>)> {
    let k = kinesis().await;
    let shards = k
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("list shards");
    let mut out = Vec::new();
    for s in shards.shards() {
        let it = k
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(s.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator");
        let r = k
            .get_records()
            .shard_iterator(&it)
            .limit(n)
            .send()
            .await
            .expect("get records");
        for rec in r.records {
            out.push((
                s.shard_id().to_string(),
                rec.partition_key.unwrap_or_default(),
                rec.data.into_inner(),
            ));
        }
    }
    out
}

/// Every record of every shard of a stream (TRIM_HORIZON), as (shard, partition key, data).
pub async fn read_stream(name: &str) -> Vec<(String, String, Vec<u8>)> {
    let k = kinesis().await;
    let shards = k
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("list shards");
    let mut out = Vec::new();
    for s in shards.shards() {
        let mut it = k
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(s.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("iterator");
        loop {
            let r = k
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
                .expect("get records");
            if r.records.is_empty() {
                break;
            }
            for rec in r.records {
                out.push((
                    s.shard_id().to_string(),
                    rec.partition_key.unwrap_or_default(),
                    rec.data.into_inner(),
                ));
            }
            match r.next_shard_iterator {
                Some(n) => it = n,
                None => break,
            }
        }
    }
    out
}

/// All keys under `prefix` in `bucket`, in order.
pub async fn list_keys(bucket: &str, prefix: &str) -> Vec<(String, i64)> {
    let c = s3().await;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_start_after(after.clone())
            .send()
            .await
            .expect("list");
        for o in r.contents() {
            out.push((
                o.key().unwrap_or_default().to_string(),
                o.size().unwrap_or(0),
            ));
            after = o.key().map(String::from);
        }
        if r.is_truncated() != Some(true) {
            return out;
        }
    }
}

/// An object's bytes.
pub async fn get_object(bucket: &str, key: &str) -> Vec<u8> {
    let c = s3().await;
    let o = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get object");
    o.body.collect().await.expect("body").into_bytes().to_vec()
}

/// `n` deterministic binary payloads: an 8-digit index, `:`, then 0-80 pseudo-random bytes
/// (including `\n`, `\t` and `\0`).
pub fn payloads(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|i| {
            let mut p = format!("{i:08}:").into_bytes();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 81) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push((x >> 24) as u8);
            }
            p
        })
        .collect()
}

/// Text payloads without newlines (for the `lines` format).
pub fn text_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{i:08}:{}", "abcdefghij".repeat(i % 7)).into_bytes())
        .collect()
}

/// Writes payloads as plain length-prefixed frames.
pub fn write_frames(path: &Path, payloads: &[Vec<u8>]) {
    let mut v = Vec::new();
    for p in payloads {
        v.extend_from_slice(&(p.len() as u32).to_be_bytes());
        v.extend_from_slice(p);
    }
    std::fs::write(path, v).expect("write frames");
}

/// Splits a frames byte stream (a trailing partial frame is ignored: still being written).
pub fn read_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let n = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        if i + 4 + n > bytes.len() {
            break;
        }
        out.push(bytes[i + 4..i + 4 + n].to_vec());
        i += 4 + n;
    }
    out
}

/// Counts of each payload.
pub fn counts(items: &[Vec<u8>]) -> HashMap<Vec<u8>, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}

/// Asserts every expected payload arrived (at least once) and nothing else did; returns the
/// number of duplicates.
pub fn assert_all_delivered(expected: &[Vec<u8>], got: &[Vec<u8>]) -> usize {
    let want = counts(expected);
    let have = counts(got);
    let missing: Vec<String> = want
        .keys()
        .filter(|k| !have.contains_key(*k))
        .take(5)
        .map(|k| String::from_utf8_lossy(&k[..k.len().min(9)]).into_owned())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} payloads missing (e.g. {missing:?}); got {} records",
        want.keys().filter(|k| !have.contains_key(*k)).count(),
        want.len(),
        got.len()
    );
    let unexpected = have.keys().filter(|k| !want.contains_key(*k)).count();
    assert_eq!(unexpected, 0, "{unexpected} payloads that were never sent");
    got.len() - expected.len()
}

/// Waits until `f` says the output is complete (polling every 100 ms), or panics with `what`.
pub fn wait_for(timeout: Duration, what: &str, procs: &[&Proc], mut f: impl FnMut() -> bool) {
    if !testkit::wait_until(timeout, || {
        std::thread::sleep(Duration::from_millis(80));
        f()
    }) {
        let logs: Vec<String> = procs
            .iter()
            .map(|p| format!("--- {} stderr:\n{}", p.name, tail(&p.stderr(), 3000)))
            .collect();
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            logs.join("\n")
        );
    }
}

/// The last `n` bytes of a log.
pub fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

/// A scratch directory for logs and files.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A path inside a directory.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Deletes a stream when dropped (keeps the local service small: moto slows down as it
/// holds more records).
pub struct DeleteStream(pub String);

impl Drop for DeleteStream {
    fn drop(&mut self) {
        let name = self.0.clone();
        rt().block_on(async move {
            let _ = kinesis()
                .await
                .delete_stream()
                .stream_name(name)
                .send()
                .await;
        });
    }
}

/// Empties and deletes a bucket when dropped.
pub struct DeleteBucket(pub String);

impl Drop for DeleteBucket {
    fn drop(&mut self) {
        let name = self.0.clone();
        rt().block_on(async move {
            let c = s3().await;
            for (key, _) in list_keys(&name, "").await {
                let _ = c.delete_object().bucket(&name).key(key).send().await;
            }
            let _ = c.delete_bucket().bucket(&name).send().await;
        });
    }
}

/// Starts `stdin_source` as connector `feed` of `app`, reading the plain frames of `input`:
/// the usual way these tests push payloads into the engine.
pub fn feed_frames(dir: &Path, app: &Path, input: &Path) -> Proc {
    let mut feed = command("stdin_source");
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
    .stdin(std::fs::File::open(input).expect("input"));
    Proc::spawn_with(dir, "stdin_source", &mut feed)
}

/// `s3_source --to stdout` polling `prefix` of `bucket` every 200 ms, as connector `r`.
pub fn start_poller(dir: &Path, bucket: &str, prefix: &str) -> testkit::Proc {
    let mut c = command("s3_source");
    c.args([
        "--connector",
        "r",
        "--to",
        "stdout",
        "--stats-interval",
        "0",
        "--r-bucket",
        bucket,
        "--r-prefix",
        prefix,
        "--r-poll_ms",
        "200",
    ])
    .args(aws_args("r"));
    testkit::Proc::spawn_with(dir, "poller", &mut c)
}
