//! Throughput of the Redis connectors beside `redis-benchmark -P 64` and the plain `redis`
//! crate doing the same writes and reads, in one run against the same server.
//!
//! ```text
//! cargo build --release -p engine -p redis-connectors --bins
//! cargo bench -p redis-connectors --bench throughput            # N=200000 SIZE=100
//! N=100000 SIZE=1000 cargo bench -p redis-connectors --bench throughput
//! ```
//!
//! Prints one markdown table row per measurement: messages/s and MB/s of payload.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use testkit::{AppFile, Proc};

struct Bench {
    n: usize,
    size: usize,
    url: String,
    dir: tempfile::TempDir,
    rows: Vec<(String, f64)>,
}

impl Bench {
    fn report(&mut self, what: &str, secs: f64) {
        let rate = self.n as f64 / secs;
        let mb = rate * self.size as f64 / 1e6;
        println!("| {what} | {rate:.0} | {mb:.1} |");
        self.rows.push((what.to_string(), rate));
    }

    fn payload(&self, i: usize) -> Vec<u8> {
        let mut p = format!("{i:010}").into_bytes();
        p.resize(self.size, b'x');
        p
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis")
    }

    fn del(&self, keys: &[&str]) {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut self.conn()).unwrap();
    }

    fn count(&self, cmd: &str, key: &str) -> usize {
        redis::cmd(cmd).arg(key).query(&mut self.conn()).unwrap()
    }

    /// Fills `stream` with n entries (key, payload), pipelined.
    fn fill_stream(&self, stream: &str) {
        let mut c = self.conn();
        for chunk in (0..self.n).collect::<Vec<_>>().chunks(5000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("key")
                    .arg(format!("k{i}"))
                    .arg("payload")
                    .arg(self.payload(i))
                    .ignore();
            }
            let () = pipe.query(&mut c).unwrap();
        }
    }

    /// `redis-benchmark -P 64 -n N -r N <args>`: returns requests per second.
    fn redis_benchmark(&mut self, what: &str, args: &[&str]) {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .unwrap_or(6379);
        let out = Command::new("redis-benchmark")
            .args([
                "-p",
                &port.to_string(),
                "-P",
                "64",
                "-n",
                &self.n.to_string(),
            ])
            .args(["-r", &self.n.to_string(), "--csv"])
            .args(args)
            .output()
            .expect("run redis-benchmark (apt-get install redis-tools)");
        let text = String::from_utf8_lossy(&out.stdout);
        let rps: f64 = text
            .lines()
            .nth(1)
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("cannot parse redis-benchmark output: {text}"));
        self.report(what, self.n as f64 / rps);
    }
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(dir: &Path, name: &str, program: &str, args: &[String]) -> Proc {
    let mut all = vec!["--stats-interval".to_string(), "0".to_string()];
    all.extend(args.iter().cloned());
    Proc::spawn_with(
        dir,
        name,
        Command::new(testkit::bin(program))
            .args(&all)
            .env("RUST_LOG", "warn"),
    )
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut b = Bench {
        n: env("N", 200_000),
        size: env("SIZE", 100),
        url: testkit::redis_url(),
        dir: tempfile::tempdir().unwrap(),
        rows: Vec::new(),
    };
    println!("{} messages of {} bytes, Redis at {}\n", b.n, b.size, b.url);
    println!("| what | messages/s | MB/s |\n|---|---:|---:|");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let value = b.payload(0);
    let value_str = String::from_utf8(value).unwrap();

    // --- Redis's own tool, 50 connections, 64 commands per pipeline.
    b.del(&["bench:rb:hash", "bench:rb:stream"]);
    b.redis_benchmark(
        "redis-benchmark -P 64: HSET (50 connections)",
        &["HSET", "bench:rb:hash", "k:__rand_int__", &value_str],
    );
    b.redis_benchmark(
        "redis-benchmark -P 64: XADD (50 connections)",
        &[
            "XADD",
            "bench:rb:stream",
            "*",
            "key",
            "k:__rand_int__",
            "payload",
            &value_str,
        ],
    );
    b.del(&["bench:rb:hash", "bench:rb:stream"]);

    // --- The plain redis crate: one connection, pipelines of 4096 awaited one by one (what
    // the sinks do), then the stream read loop the source does.
    let client = redis::Client::open(b.url.as_str()).unwrap();
    let plain = |what: &str, xadd: bool| {
        rt.block_on(async {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let start = Instant::now();
            for chunk in (0..b.n).collect::<Vec<_>>().chunks(4096) {
                let mut pipe = redis::pipe();
                if xadd {
                    for &i in chunk {
                        pipe.cmd("XADD")
                            .arg("bench:plain:stream")
                            .arg("*")
                            .arg("key")
                            .arg(format!("k{i}"))
                            .arg("payload")
                            .arg(b.payload(i))
                            .ignore();
                    }
                } else {
                    let hset = pipe.cmd("HSET").arg("bench:plain:hash");
                    for &i in chunk {
                        hset.arg(format!("k{i}")).arg(b.payload(i));
                    }
                    hset.ignore();
                }
                let () = pipe.query_async(&mut c).await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let _: () = c
                .del(&["bench:plain:hash", "bench:plain:stream"])
                .await
                .unwrap();
            (what.to_string(), secs)
        })
    };
    let hset = plain("redis crate: HSET pipelines of 4096, 1 connection", false);
    let xadd = plain("redis crate: XADD pipelines of 4096, 1 connection", true);
    for (w, s) in [hset, xadd] {
        b.report(&w, s);
    }

    b.fill_stream("bench:plain:in");
    let secs = rt.block_on(async {
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("bench:plain:in")
            .arg("g")
            .arg("0")
            .query_async(&mut c)
            .await
            .unwrap();
        let start = Instant::now();
        let mut got = 0;
        while got < b.n {
            let v: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg("bench:plain:in")
                .arg(">")
                .query_async(&mut c)
                .await
                .unwrap();
            let entries = redis_connectors::parse_xread(v).unwrap();
            got += entries.len();
            let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
            let _: i64 = redis::cmd("XACK")
                .arg("bench:plain:in")
                .arg("g")
                .arg(&ids)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        start.elapsed().as_secs_f64()
    });
    b.report(
        "redis crate: XREADGROUP COUNT 1000 + XACK, 1 connection",
        secs,
    );
    b.del(&["bench:plain:in"]);

    // The same job as the end-to-end runs below, in one process with the plain client:
    // read 1000 entries, write them (HSET or XADD) and XACK them in one pipeline.
    for xadd in [false, true] {
        b.fill_stream("bench:plain:relay");
        let secs = rt.block_on(async {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg("bench:plain:relay")
                .arg("g")
                .arg("0")
                .query_async(&mut c)
                .await
                .unwrap();
            let start = Instant::now();
            let mut got = 0;
            while got < b.n {
                let v: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg("bench:plain:relay")
                    .arg(">")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                let entries = redis_connectors::parse_xread(v).unwrap();
                got += entries.len();
                let mut pipe = redis::pipe();
                if xadd {
                    for e in &entries {
                        let (k, p) = e.key_and_payload(b"key", b"payload");
                        pipe.cmd("XADD")
                            .arg("bench:plain:relay:out")
                            .arg("*")
                            .arg("key")
                            .arg(k.as_ref())
                            .arg("payload")
                            .arg(p.as_ref())
                            .ignore();
                    }
                } else {
                    let hset = pipe.cmd("HSET").arg("bench:plain:relay:out");
                    for e in &entries {
                        let (k, p) = e.key_and_payload(b"key", b"payload");
                        hset.arg(k.as_ref()).arg(p.as_ref());
                    }
                    hset.ignore();
                }
                let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
                pipe.cmd("XACK")
                    .arg("bench:plain:relay")
                    .arg("g")
                    .arg(&ids)
                    .ignore();
                let () = pipe.query_async(&mut c).await.unwrap();
            }
            start.elapsed().as_secs_f64()
        });
        let what = if xadd { "XADD" } else { "HSET" };
        b.report(
            &format!("redis crate: XREADGROUP 1000 -> {what} -> XACK relay, 1 connection"),
            secs,
        );
        b.del(&["bench:plain:relay", "bench:plain:relay:out"]);
    }

    // --- The sinks alone, fed from standard input (`--from stdin --format kv`).
    let input = b.dir.path().join("input.kv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..b.n {
            f.write_all(format!("k{i}\t").as_bytes()).unwrap();
            f.write_all(&b.payload(i)).unwrap();
            f.write_all(b"\n").unwrap();
        }
    }
    for (program, target, arg) in [
        ("redis_hash_sink", "bench:stdin:hash", "key"),
        ("redis_stream_sink", "bench:stdin:stream", "stream"),
    ] {
        b.del(&[target]);
        let start = Instant::now();
        let status = Command::new(testkit::bin(program))
            .args(["--connector", "out", "--from", "stdin", "--format", "kv"])
            .args(["--stats-interval", "0", "--out-url", &b.url])
            .arg(format!("--out-{arg}"))
            .arg(target)
            .stdin(std::fs::File::open(&input).unwrap())
            .status()
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(status.success());
        let count = b.count(if arg == "key" { "HLEN" } else { "XLEN" }, target);
        assert_eq!(count, b.n, "{program} wrote {count} of {}", b.n);
        b.report(&format!("{program} --from stdin (no engine)"), secs);
        b.del(&[target]);
    }

    // --- The stream source alone, to standard output.
    b.fill_stream("bench:src:in");
    {
        let out = b.dir.path().join("source.out");
        let start = Instant::now();
        let mut p = Proc::spawn_with(
            b.dir.path(),
            "source-stdout",
            Command::new(testkit::bin("redis_stream_source"))
                .args(["--connector", "in", "--to", "stdout", "--format", "frames"])
                .args(["--stats-interval", "0", "--in-url", &b.url])
                .args(["--in-stream", "bench:src:in"]),
        );
        let expected = (b.n * (4 + b.size)) as u64;
        let _ = out;
        wait("the source's output", Duration::from_secs(300), || {
            std::fs::metadata(&p.stdout_path)
                .map(|m| m.len())
                .unwrap_or(0)
                >= expected
        });
        let secs = start.elapsed().as_secs_f64();
        p.terminate(Duration::from_secs(10));
        b.report("redis_stream_source --to stdout (no engine)", secs);
    }
    b.del(&["bench:src:in"]);

    // --- Pub/sub: redis-benchmark publishes (its own rate is the raw one) while
    // redis_subscriber_source writes what it receives to standard output.
    {
        let mut p = Proc::spawn_with(
            b.dir.path(),
            "subscriber-stdout",
            Command::new(testkit::bin("redis_subscriber_source"))
                .args(["--connector", "sub", "--to", "stdout", "--format", "frames"])
                .args(["--stats-interval", "0", "--sub-url", &b.url])
                .args(["--sub-topic", "bench:pub"])
                .env("RUST_LOG", "info"),
        );
        wait("the subscription", Duration::from_secs(20), || {
            p.stderr().contains("subscribed to")
        });
        let start = Instant::now();
        b.redis_benchmark(
            "redis-benchmark -P 64: PUBLISH (50 connections, 1 subscriber)",
            &["PUBLISH", "bench:pub", &value_str],
        );
        let frame = (4 + b.size) as u64;
        let mut last = (0u64, start.elapsed());
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let len = std::fs::metadata(&p.stdout_path)
                .map(|m| m.len())
                .unwrap_or(0);
            if len == last.0 {
                break;
            }
            last = (len, start.elapsed());
        }
        p.terminate(Duration::from_secs(10));
        let received = (last.0 / frame) as usize;
        let rate = received as f64 / last.1.as_secs_f64();
        println!(
            "| redis_subscriber_source --to stdout (no engine): {received} of {} received | {rate:.0} | {:.1} |",
            b.n,
            rate * b.size as f64 / 1e6
        );
    }

    // --- End to end: redis_stream_source -> engine -> one sink, acknowledgements on.
    for (program, target, arg) in [
        ("redis_hash_sink", "bench:e2e:hash", "key"),
        ("redis_stream_sink", "bench:e2e:stream", "stream"),
    ] {
        let stream = format!("bench:e2e:in:{program}");
        b.del(&[target, &stream]);
        b.fill_stream(&stream);
        let dir = tempfile::tempdir().unwrap();
        let (src_port, sink_port) = (testkit::free_port(), testkit::free_port());
        let app = AppFile::new("bench")
            .source("in", src_port, "max_credits = 4096\nrefill_credits = 2048")
            .sink("out", sink_port, "max_credits = 8192")
            .pipeline("in", &["out"])
            .write(dir.path());
        let app_arg = app.display().to_string();
        let common = |name: &str| -> Vec<String> {
            vec![
                "--application-module".into(),
                app_arg.clone(),
                "--connector".into(),
                name.into(),
                format!("--{name}-url"),
                b.url.clone(),
            ]
        };
        let mut sink_args = common("out");
        sink_args.extend([format!("--out-{arg}"), target.to_string()]);
        let _sink = spawn(dir.path(), "sink", program, &sink_args);
        assert!(testkit::wait_for_port(sink_port, Duration::from_secs(10)));
        let _engine = testkit::start_engine(dir.path(), "engine", &app, &[], &[src_port]);
        let mut src_args = common("in");
        src_args.extend(["--in-stream".to_string(), stream.clone()]);
        let start = Instant::now();
        let _source = spawn(dir.path(), "source", "redis_stream_source", &src_args);
        let cmd = if arg == "key" { "HLEN" } else { "XLEN" };
        let mut c = b.conn();
        wait("the end-to-end run", Duration::from_secs(300), || {
            redis::cmd(cmd).arg(target).query::<usize>(&mut c).unwrap() >= b.n
        });
        let secs = start.elapsed().as_secs_f64();
        b.report(
            &format!("redis_stream_source -> engine -> {program} (acks on)"),
            secs,
        );
        b.del(&[target, &stream]);
    }
    println!();
    let get = |name: &str| {
        b.rows
            .iter()
            .find(|r| r.0.starts_with(name))
            .map(|r| r.1)
            .unwrap_or(f64::NAN)
    };
    println!(
        "ratios to the plain relay: e2e to hash {:.2}, e2e to stream {:.2}",
        get("redis_stream_source -> engine -> redis_hash_sink")
            / get("redis crate: XREADGROUP 1000 -> HSET"),
        get("redis_stream_source -> engine -> redis_stream_sink")
            / get("redis crate: XREADGROUP 1000 -> XADD"),
    );
    println!(
        "ratios to redis-benchmark -P 64: hash sink {:.2}, stream sink {:.2}, e2e to hash {:.2}, e2e to stream {:.2}",
        get("redis_hash_sink --from") / get("redis-benchmark -P 64: HSET"),
        get("redis_stream_sink --from") / get("redis-benchmark -P 64: XADD"),
        get("redis_stream_source -> engine -> redis_hash_sink") / get("redis-benchmark -P 64: HSET"),
        get("redis_stream_source -> engine -> redis_stream_sink") / get("redis-benchmark -P 64: XADD"),
    );
}
