//! Every Redis binary reconnects when the server restarts, without losing acknowledged
//! work. These tests run their own throwaway `redis-server` (AOF with `appendfsync always`,
//! so what Redis acknowledged survives its SIGKILL) on a free port: the shared instance on
//! 6379 is never restarted.
//!
//! Build first: `cargo build -p engine -p redis-connectors --bins`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use testkit::Proc;

/// A redis-server of the test's own.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    proc: Proc,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let proc = Self::spawn(&dir, port);
        OwnRedis { port, dir, proc }
    }

    fn spawn(dir: &tempfile::TempDir, port: u16) -> Proc {
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Proc::spawn(
            dir.path(),
            "redis-server",
            &PathBuf::from("redis-server"),
            &args,
        );
        assert!(
            testkit::wait_for_port(port, Duration::from_secs(10)),
            "redis-server did not start (is it installed? apt-get install redis-server): {}",
            p.stderr()
        );
        p
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, stay down for `down`, start again on the same port and data directory.
    fn crash_and_restart(&mut self, down: Duration) {
        self.proc.kill9();
        std::thread::sleep(down);
        self.proc = Self::spawn(&self.dir, self.port);
    }
}

#[test]
fn stream_source_and_both_sinks_survive_a_redis_restart() {
    let _lock = heavy();
    let mut server = OwnRedis::start();
    let url = server.url();
    let mut r = Client::connect(&url);
    let (input_stream, hash, output_stream, group) = ("in", "hash", "out", "group");
    let input: Vec<Msg> = (0..30_000).map(message).collect();
    r.xadd_all(input_stream, &input);
    let mut p = Pipeline::start(
        &url,
        (
            "redis_stream_source",
            &[
                "--in-stream",
                input_stream,
                "--in-group",
                group,
                "--in-count",
                "200",
            ],
        ),
        &[
            ("redis_hash_sink", "h", &["--h-key", hash]),
            ("redis_stream_sink", "o", &["--o-stream", output_stream]),
        ],
        "",
    );
    wait_for(
        "8000 entries out",
        Duration::from_secs(60),
        || p.logs(),
        || r.xlen(output_stream) >= 8000,
    );
    server.crash_and_restart(Duration::from_millis(1500));
    r.reconnect();
    wait_for(
        "every input entry XACKed",
        Duration::from_secs(90),
        || p.logs(),
        || {
            let v: redis::Value = r.cmd(redis::cmd("XINFO").arg("GROUPS").arg(input_stream));
            let lag = redis_connectors::group_info(v, group).and_then(|g| g.lag);
            lag == Some(0) && r.pending(input_stream, group) == 0
        },
    );
    wait_for(
        "every field in the hash",
        Duration::from_secs(30),
        || p.logs(),
        || r.hlen(hash) >= input.len(),
    );
    std::thread::sleep(Duration::from_millis(500));
    for c in std::iter::once(&p.source).chain(&p.sinks) {
        assert!(
            c.proc.stderr().contains("reconnected to Redis"),
            "{} did not report a reconnect:\n{}",
            c.program,
            p.logs()
        );
    }
    p.stop();
    let output = r.read_stream(output_stream);
    let dups = assert_all_delivered(&input, &output, 10_000);
    let h = r.hash(hash);
    assert_eq!(h.len(), input.len());
    for (k, v) in &input {
        assert_eq!(
            h.get(k),
            Some(v),
            "hash field {:?}",
            String::from_utf8_lossy(k)
        );
    }
    eprintln!(
        "Redis restarted mid-run: {} entries out, {dups} duplicates",
        output.len()
    );
}

#[test]
fn subscriber_source_subscribes_again_after_a_redis_restart() {
    let _lock = heavy();
    let mut server = OwnRedis::start();
    let shared = testkit::redis_url();
    let mut out = Client::connect(&shared);
    let output_stream = testkit::unique("resub");
    // The source subscribes on the throwaway server; the sink writes to the shared one.
    let mut p = Pipeline::start(
        &server.url(),
        ("redis_subscriber_source", &["--in-topic", "news"]),
        &[(
            "redis_stream_sink",
            "o",
            &["--o-stream", &output_stream, "--o-url", &shared],
        )],
        "",
    );
    let publish = |url: &str, from: usize, to: usize| -> Vec<Msg> {
        let mut c = Client::connect(url);
        (from..to)
            .map(|i| {
                let payload = message(i).1;
                let _: i64 = c.cmd(redis::cmd("PUBLISH").arg("news").arg(&payload));
                (b"news".to_vec(), payload)
            })
            .collect()
    };
    wait_for(
        "the subscription",
        Duration::from_secs(20),
        || p.logs(),
        || p.source.proc.stderr().contains("subscribed to channels"),
    );
    let mut input = publish(&server.url(), 0, 1000);
    wait_for(
        "1000 messages out",
        Duration::from_secs(30),
        || p.logs(),
        || out.xlen(&output_stream) >= 1000,
    );
    server.crash_and_restart(Duration::from_millis(1000));
    wait_for(
        "a new subscription",
        Duration::from_secs(30),
        || p.logs(),
        || p.source.proc.stderr().contains("subscribed again"),
    );
    input.extend(publish(&server.url(), 1000, 2000));
    wait_for(
        "2000 messages out",
        Duration::from_secs(30),
        || p.logs(),
        || out.xlen(&output_stream) >= 2000,
    );
    let log = p.source.proc.stderr();
    assert!(
        log.contains("s without a connection: messages published meanwhile are lost"),
        "the outage is not reported:\n{log}"
    );
    p.stop();
    let output = out.read_stream(&output_stream);
    assert_all_delivered(&input, &output, 0);
    out.del(&[&output_stream]);
}

/// `/ready` of a connector follows its external system: 200 while Redis answers, 503 with
/// the reason while it is down (`/health` stays 200: the process is alive), 200 again once
/// it is back; and nothing sent before, during or after is lost.
#[test]
fn ready_goes_503_while_redis_is_down() {
    let _lock = heavy();
    let mut server = OwnRedis::start();
    let url = server.url();
    let mut r = Client::connect(&url);
    let (input_stream, output_stream) = ("in", "out");
    let ops = testkit::free_port();
    let ops_addr = format!("127.0.0.1:{ops}");
    let mut p = Pipeline::start(
        &url,
        (
            "redis_stream_source",
            &["--in-stream", input_stream, "--metrics-addr", &ops_addr],
        ),
        &[("redis_stream_sink", "o", &["--o-stream", output_stream])],
        "",
    );
    let ready = || testkit::shell::http_get(ops, "/ready");
    let becomes = |code: u16, reason: &str, p: &Pipeline| {
        let ok = testkit::wait_until(Duration::from_secs(30), || {
            let (c, body) = ready();
            c == code && body.contains(reason)
        });
        let (c, body) = ready();
        assert!(
            ok,
            "expected {code} with `{reason}`, got {c}: {body}\n{}",
            p.logs()
        );
        assert_eq!(testkit::shell::http_get(ops, "/health").0, 200);
    };
    let first: Vec<Msg> = (0..100).map(message).collect();
    r.xadd_all(input_stream, &first);
    wait_for(
        "100 entries out",
        Duration::from_secs(30),
        || p.logs(),
        || r.xlen(output_stream) >= 100,
    );
    becomes(200, "ready", &p);

    server.proc.kill9();
    becomes(503, "redis:", &p);
    server.proc = OwnRedis::spawn(&server.dir, server.port);
    r.reconnect();
    becomes(200, "ready", &p);
    let second: Vec<Msg> = (100..200).map(message).collect();
    r.xadd_all(input_stream, &second);
    wait_for(
        "200 entries out",
        Duration::from_secs(30),
        || p.logs(),
        || r.xlen(output_stream) >= 200,
    );
    p.stop();
    let input: Vec<Msg> = first.into_iter().chain(second).collect();
    assert_all_delivered(&input, &r.read_stream(output_stream), 100);
}
