//! Helpers shared by the Redis tests: test messages, a small synchronous Redis client for
//! setting up input and reading output, and the pipeline (engine + connectors) as processes.
//!
//! Build first: `cargo build -p engine -p redis-connectors --bins`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;
use redis_connectors::parse_entries;
use testkit::{AppFile, Proc};

/// One message as the tests see it: key and payload.
pub type Msg = (Vec<u8>, Vec<u8>);

/// Heavy tests take this so that they do not compete for the two cores.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `i`th test message, unique by key and by payload. Keys: plain, binary (NUL, 0xff)
/// or with spaces (trailing too). Payloads: binary (every byte value), trailing and
/// leading whitespace and newlines, 2 KB, UTF-8, empty (i = 5), plain.
pub fn message(i: usize) -> Msg {
    let key = match i % 7 {
        0 => {
            let mut k = b"k\x00\xff\n".to_vec();
            k.extend_from_slice(i.to_string().as_bytes());
            k
        }
        1 => format!("key with spaces {i}  ").into_bytes(),
        _ => format!("k{i}").into_bytes(),
    };
    let payload = match i % 10 {
        _ if i == 5 => Vec::new(),
        0 => {
            let mut p = format!("{i}|").into_bytes();
            p.extend((0..=255u8).map(|b| b.wrapping_add(i as u8)));
            p
        }
        1 => format!("value {i}  \t\n ").into_bytes(),
        2 => format!("\r\n  {i}").into_bytes(),
        3 => {
            let mut p = format!("{i}:").into_bytes();
            p.resize(2048, b'x');
            p
        }
        4 => format!("ü {i} ✓\u{0}").into_bytes(),
        _ => format!("payload-{i}").into_bytes(),
    };
    (key, payload)
}

/// Counts each message.
pub fn histogram(msgs: &[Msg]) -> HashMap<&Msg, usize> {
    let mut h = HashMap::new();
    for m in msgs {
        *h.entry(m).or_insert(0) += 1;
    }
    h
}

/// Asserts every input message is in the output with its key, nothing else is, and there
/// are at most `max_duplicates` extra copies; returns the number of duplicates.
pub fn assert_all_delivered(input: &[Msg], output: &[Msg], max_duplicates: usize) -> usize {
    let want = histogram(input);
    let got = histogram(output);
    let missing: Vec<&&Msg> = want.keys().filter(|m| !got.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages lost (first: key {:?})",
        missing.len(),
        input.len(),
        String::from_utf8_lossy(&missing[0].0),
    );
    let strangers = got.keys().filter(|m| !want.contains_key(*m)).count();
    assert_eq!(
        strangers, 0,
        "output holds messages that were never input (bytes or key changed)"
    );
    let duplicates = output.len() - input.len();
    assert!(
        duplicates <= max_duplicates,
        "{duplicates} duplicates, more than the bound {max_duplicates}"
    );
    duplicates
}

/// A synchronous client for the test itself.
pub struct Client {
    pub url: String,
    conn: redis::Connection,
}

impl Client {
    /// Connects to `url`.
    pub fn connect(url: &str) -> Client {
        let conn = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to Redis at {url}: {e}"));
        Client {
            url: url.to_string(),
            conn,
        }
    }

    /// Connects again (after a server restart), retrying for up to 30 s until the server
    /// answers PING (not LOADING).
    pub fn reconnect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = redis::Client::open(self.url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).map(|_| c));
            match attempt {
                Ok(c) => {
                    self.conn = c;
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "Redis did not come back: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Runs a command.
    pub fn cmd<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.conn)
            .unwrap_or_else(|e| panic!("Redis command failed: {e}"))
    }

    /// XADD every message (fields `key` and `payload`), 1000 per pipeline.
    pub fn xadd_all(&mut self, stream: &str, msgs: &[Msg]) {
        for chunk in msgs.chunks(1000) {
            let mut pipe = redis::pipe();
            for (k, p) in chunk {
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("key")
                    .arg(k)
                    .arg("payload")
                    .arg(p)
                    .ignore();
            }
            let () = pipe
                .query(&mut self.conn)
                .unwrap_or_else(|e| panic!("XADD failed: {e}"));
        }
    }

    /// Every entry of `stream` as (key, payload), in stream order.
    pub fn read_stream(&mut self, stream: &str) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut from = "-".to_string();
        loop {
            let v: Value = self.cmd(
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(10_000),
            );
            let entries = parse_entries(v).expect("parse XRANGE");
            let Some(last) = entries.last() else { break };
            from = format!("({}", last.id);
            for e in &entries {
                let k = e.field(b"key").map(|b| b.to_vec()).unwrap_or_default();
                let p = e.field(b"payload").map(|b| b.to_vec()).unwrap_or_default();
                out.push((k, p));
            }
        }
        out
    }

    /// The whole hash.
    pub fn hash(&mut self, key: &str) -> HashMap<Vec<u8>, Vec<u8>> {
        self.cmd(redis::cmd("HGETALL").arg(key))
    }

    /// XLEN.
    pub fn xlen(&mut self, stream: &str) -> usize {
        self.cmd(redis::cmd("XLEN").arg(stream))
    }

    /// HLEN.
    pub fn hlen(&mut self, key: &str) -> usize {
        self.cmd(redis::cmd("HLEN").arg(key))
    }

    /// Entries pending (read, not XACKed) in `group`.
    pub fn pending(&mut self, stream: &str, group: &str) -> usize {
        let v: Value = self.cmd(redis::cmd("XPENDING").arg(stream).arg(group));
        match v {
            Value::Array(a) => match a.first() {
                Some(Value::Int(n)) => *n as usize,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// DEL.
    pub fn del(&mut self, keys: &[&str]) {
        let _: i64 = self.cmd(redis::cmd("DEL").arg(keys));
    }
}

/// Polls `cond` every 50 ms; panics with `what` and the logs after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connector process and how to start it again.
pub struct Connector {
    pub program: String,
    pub name: String,
    pub args: Vec<String>,
    pub proc: Proc,
}

/// Engine + one source connector `in` + sink connectors, as processes.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub app: PathBuf,
    pub source_port: u16,
    pub engine: Proc,
    pub source: Connector,
    pub sinks: Vec<Connector>,
}

impl Pipeline {
    /// Starts the sinks, then the engine, then the source. `sinks` are (program, name,
    /// args); every connector also gets `--<name>-url <redis_url>`.
    pub fn start(
        redis_url: &str,
        source: (&str, &[&str]),
        sinks: &[(&str, &str, &[&str])],
        source_params: &str,
    ) -> Pipeline {
        let dir = tempfile::tempdir().expect("temp dir");
        let source_port = testkit::free_port();
        let mut app = AppFile::new("redis test").source(
            "in",
            source_port,
            &format!("max_credits = 1000\nrefill_credits = 500\n{source_params}"),
        );
        let mut sink_ports = Vec::new();
        for (_, name, _) in sinks {
            let port = testkit::free_port();
            app = app.sink(name, port, "max_credits = 4096");
            sink_ports.push(port);
        }
        let names: Vec<&str> = sinks.iter().map(|s| s.1).collect();
        let app = app.pipeline("in", &names).write(dir.path());
        let mut started = Vec::new();
        for ((program, name, args), port) in sinks.iter().zip(&sink_ports) {
            let c = start(&dir, &app, program, name, args, redis_url);
            assert!(
                testkit::wait_for_port(*port, Duration::from_secs(20)),
                "{program} did not listen: {}",
                c.proc.stderr()
            );
            started.push(c);
        }
        let engine = testkit::start_engine(dir.path(), "engine", &app, &[], &[source_port]);
        let source = start(&dir, &app, source.0, "in", source.1, redis_url);
        Pipeline {
            dir,
            app,
            source_port,
            engine,
            source,
            sinks: started,
        }
    }

    /// SIGKILL the source connector and start it again with the same arguments.
    pub fn restart_source_hard(&mut self) {
        self.source.proc.kill9();
        let args: Vec<String> = self.source.args.clone();
        self.source.proc = testkit::start_connector(
            self.dir.path(),
            &self.source.program,
            &self.app,
            &self.source.name,
            &args,
        );
    }

    /// SIGKILL the engine and start it again.
    pub fn restart_engine_hard(&mut self) {
        self.engine.kill9();
        self.engine = testkit::start_engine(
            self.dir.path(),
            "engine",
            &self.app,
            &[],
            &[self.source_port],
        );
    }

    /// The tail of every process's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut add = |name: &str, text: String| {
            let tail: String = text
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            s.push_str(&format!("--- {name} ---\n{tail}\n"));
        };
        add("engine", self.engine.stderr());
        add(&self.source.program, self.source.proc.stderr());
        for c in &self.sinks {
            add(&c.program, c.proc.stderr());
        }
        s
    }

    /// SIGTERM everything (source first) and wait for clean exits.
    pub fn stop(&mut self) {
        let status = self.source.proc.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "source did not exit cleanly ({status:?}):\n{}",
            self.logs()
        );
        self.engine.terminate(Duration::from_secs(20));
        for c in &mut self.sinks {
            let status = c.proc.terminate(Duration::from_secs(20));
            assert!(
                status.is_some_and(|s| s.success()),
                "{} did not exit cleanly ({status:?})",
                c.program
            );
        }
    }
}

fn start(
    dir: &tempfile::TempDir,
    app: &std::path::Path,
    program: &str,
    name: &str,
    args: &[&str],
    redis_url: &str,
) -> Connector {
    let mut all: Vec<String> = vec![format!("--{name}-url"), redis_url.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let proc = testkit::start_connector(dir.path(), program, app, name, &all);
    Connector {
        program: program.to_string(),
        name: name.to_string(),
        args: all,
        proc,
    }
}
