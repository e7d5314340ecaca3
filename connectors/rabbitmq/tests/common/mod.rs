//! Helpers shared by the RabbitMQ tests: a small lapin client for setting up queues,
//! publishing input and reading output, the pipeline (engine + both connectors) as processes,
//! and the lock that keeps the broker-restart test away from every other test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use testkit::{AppFile, Proc};

/// One message as the tests see it: routing key and body.
pub type Msg = (String, Vec<u8>);

/// The `i`th test message: key `k.<i mod 97>`, a body that starts with the number `i` and
/// continues with 0..300 binary bytes (newlines, NULs, 0xff included).
pub fn message(i: usize) -> Msg {
    let mut body = format!("{i:09}|").into_bytes();
    let len = (i * 7919) % 301;
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for _ in 0..len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        body.push((x >> 56) as u8);
    }
    (format!("k.{}", i % 97), body)
}

/// Counts each message.
pub fn histogram(msgs: &[Msg]) -> HashMap<&Msg, usize> {
    let mut h = HashMap::new();
    for m in msgs {
        *h.entry(m).or_insert(0) += 1;
    }
    h
}

/// Asserts every input message is in the output (with its key) and that there are at most
/// `max_duplicates` extra copies; returns the number of duplicates.
pub fn assert_all_delivered(input: &[Msg], output: &[Msg], max_duplicates: usize) -> usize {
    let want = histogram(input);
    let got = histogram(output);
    let missing: Vec<&&Msg> = want.keys().filter(|m| !got.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages lost (first: key {:?}, body starts {:?})",
        missing.len(),
        input.len(),
        missing[0].0,
        String::from_utf8_lossy(&missing[0].1[..10])
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

/// A lapin client for the test itself (its own multi-thread runtime, reconnecting when the
/// broker was restarted).
pub struct Amqp {
    pub rt: tokio::runtime::Runtime,
    url: String,
    conn: Connection,
    ch: Channel,
}

impl Amqp {
    /// Connects to `testkit::amqp_url()`.
    pub fn connect() -> Amqp {
        let url = testkit::amqp_url();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (conn, ch) = rt.block_on(open(&url)).expect("connect to RabbitMQ");
        Amqp { rt, url, conn, ch }
    }

    fn reconnect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match self.rt.block_on(open(&self.url)) {
                Ok((c, ch)) => {
                    self.conn = c;
                    self.ch = ch;
                    return;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "RabbitMQ did not come back: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Declares a durable exchange.
    pub fn exchange(&self, name: &str, kind: ExchangeKind) {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.rt
            .block_on(
                self.ch
                    .exchange_declare(name.into(), kind, opts, FieldTable::default()),
            )
            .expect("declare exchange");
    }

    /// Declares a durable queue (with a dead-letter exchange if given).
    pub fn queue(&self, name: &str, dlx: Option<&str>) {
        let mut args = FieldTable::default();
        if let Some(x) = dlx {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(x.into()),
            );
        }
        self.rt
            .block_on(
                self.ch
                    .queue_declare(name.into(), QueueDeclareOptions::durable(), args),
            )
            .expect("declare queue");
    }

    /// Binds `queue` to `exchange` with `key`.
    pub fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.rt
            .block_on(self.ch.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .expect("bind queue");
    }

    /// Deletes a queue (ignores errors).
    pub fn delete_queue(&mut self, name: &str) {
        let r = self.rt.block_on(
            self.ch
                .queue_delete(name.into(), QueueDeleteOptions::default()),
        );
        if r.is_err() {
            self.reconnect();
        }
    }

    /// Deletes an exchange (ignores errors).
    pub fn delete_exchange(&mut self, name: &str) {
        let r = self
            .rt
            .block_on(self.ch.exchange_delete(name.into(), Default::default()));
        if r.is_err() {
            self.reconnect();
        }
    }

    /// Publishes persistent messages with confirms, 2000 in flight at most.
    pub fn publish(&self, exchange: &str, msgs: &[Msg]) {
        self.rt.block_on(async {
            for chunk in msgs.chunks(2000) {
                for (key, body) in chunk {
                    let c = self
                        .ch
                        .basic_publish(
                            exchange.into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            body,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .expect("publish");
                    drop(c);
                }
                let returned = self.ch.wait_for_confirms().await.expect("confirms");
                assert!(returned.is_empty());
            }
        });
    }

    /// Ready messages in `queue` (reconnects after a broker restart).
    pub fn count(&mut self, queue: &str) -> u32 {
        self.counts(queue).0
    }

    /// Ready and unacknowledged messages in `queue`, from `rabbitmqctl` when needed:
    /// (ready, consumers).
    pub fn counts(&mut self, queue: &str) -> (u32, u32) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        loop {
            match self.rt.block_on(self.ch.queue_declare(
                queue.into(),
                passive,
                FieldTable::default(),
            )) {
                Ok(q) => return (q.message_count(), q.consumer_count()),
                Err(_) => self.reconnect(),
            }
        }
    }

    /// Waits until `queue` holds at least `n` ready messages; panics after `timeout` with
    /// `context()` (process logs).
    pub fn wait_count(
        &mut self,
        queue: &str,
        n: u32,
        timeout: Duration,
        context: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.count(queue);
            if c >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} holds {c} messages, expected {n} within {timeout:?}\n{}",
                context()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads (and acknowledges) every message now in `queue`.
    pub fn drain(&mut self, queue: &str) -> Vec<Msg> {
        let n = self.count(queue) as usize;
        self.rt.block_on(async {
            let opts = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            let mut consumer = self
                .ch
                .basic_consume(queue.into(), "".into(), opts, FieldTable::default())
                .await
                .expect("consume");
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                    .await
                    .expect("next message within 20 s")
                    .expect("consumer open")
                    .expect("delivery");
                out.push((d.routing_key.to_string(), d.data));
            }
            self.ch
                .basic_cancel(consumer.tag(), Default::default())
                .await
                .expect("cancel");
            out
        })
    }
}

impl Drop for Amqp {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.conn.close(200, "test done".into()));
    }
}

async fn open(url: &str) -> lapin::Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

/// Input exchange/queue and output exchange/queue, unique to one test, deleted at the end.
pub struct Topology {
    pub x_in: String,
    pub q_in: String,
    pub x_out: String,
    pub q_out: String,
}

impl Topology {
    /// Declares `x_in` (topic) -> `q_in` and `x_out` (topic) -> `q_out`, all durable, `#`.
    pub fn new(amqp: &Amqp, name: &str) -> Topology {
        let t = Topology {
            x_in: testkit::unique(&format!("{name}_xin")),
            q_in: testkit::unique(&format!("{name}_qin")),
            x_out: testkit::unique(&format!("{name}_xout")),
            q_out: testkit::unique(&format!("{name}_qout")),
        };
        amqp.exchange(&t.x_in, ExchangeKind::Topic);
        amqp.queue(&t.q_in, None);
        amqp.bind(&t.q_in, &t.x_in, "#");
        amqp.exchange(&t.x_out, ExchangeKind::Topic);
        amqp.queue(&t.q_out, None);
        amqp.bind(&t.q_out, &t.x_out, "#");
        t
    }

    /// Deletes everything.
    pub fn delete(&self, amqp: &mut Amqp) {
        amqp.delete_queue(&self.q_in);
        amqp.delete_queue(&self.q_out);
        amqp.delete_exchange(&self.x_in);
        amqp.delete_exchange(&self.x_out);
    }
}

/// rabbitmq_source -> engine -> rabbitmq_sink as processes (killed when dropped).
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub app: PathBuf,
    pub engine: Proc,
    pub source: Proc,
    pub sink: Proc,
    pub source_args: Vec<String>,
    engine_port: u16,
    starts: usize,
}

impl Pipeline {
    /// Starts the sink (publishing to `t.x_out`), the engine, then the source (on `t.q_in`).
    pub fn start(t: &Topology, extra_source: &[&str]) -> Pipeline {
        Self::start_with_sink(t, extra_source, &[])
    }

    /// [`Pipeline::start`] with extra sink arguments.
    pub fn start_with_sink(t: &Topology, extra_source: &[&str], extra_sink: &[&str]) -> Pipeline {
        let dir = tempfile::tempdir().expect("temp dir");
        let (src_port, sink_port) = (testkit::free_port(), testkit::free_port());
        let app = AppFile::new("rabbitmq relay")
            .source("in", src_port, "")
            .sink("out", sink_port, "")
            .pipeline("in", &["out"])
            .write(dir.path());
        let url = testkit::amqp_url();
        let mut sink_args: Vec<String> = ["--out-amqpurl", &url, "--out-exchange", &t.x_out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sink_args.extend(extra_sink.iter().map(|s| s.to_string()));
        let sink = testkit::start_connector(dir.path(), "rabbitmq_sink", &app, "out", &sink_args);
        assert!(
            testkit::wait_for_port(sink_port, Duration::from_secs(20)),
            "rabbitmq_sink did not listen: {}",
            sink.stderr()
        );
        let engine = testkit::start_engine(dir.path(), "engine", &app, &[], &[src_port]);
        let mut source_args: Vec<String> = ["--in-amqpurl", &url, "--in-queue", &t.q_in]
            .iter()
            .map(|s| s.to_string())
            .collect();
        source_args.extend(extra_source.iter().map(|s| s.to_string()));
        let source = start_source(dir.path(), &app, &source_args, 0);
        Pipeline {
            dir,
            app,
            engine,
            source,
            sink,
            source_args,
            engine_port: src_port,
            starts: 0,
        }
    }

    /// Kills the source with SIGKILL and starts a new one.
    pub fn restart_source_hard(&mut self) {
        self.source.kill9();
        self.starts += 1;
        self.source = start_source(self.dir.path(), &self.app, &self.source_args, self.starts);
    }

    /// Kills the engine with SIGKILL and starts a new one.
    pub fn restart_engine_hard(&mut self) {
        self.engine.kill9();
        self.starts += 1;
        self.engine = testkit::start_engine(
            self.dir.path(),
            &format!("engine-{}", self.starts),
            &self.app,
            &[],
            &[self.engine_port],
        );
    }

    /// Every process's stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- source:\n{}\n--- engine:\n{}\n--- sink:\n{}",
            tail(&self.source.stderr()),
            tail(&self.engine.stderr()),
            tail(&self.sink.stderr())
        )
    }

    /// SIGTERM to source, engine and sink (in that order); asserts each exits cleanly.
    pub fn stop(&mut self) {
        let logs = self.logs();
        for p in [&mut self.source, &mut self.engine, &mut self.sink] {
            let status = p.terminate(Duration::from_secs(30));
            assert!(
                status.is_some_and(|s| s.success()),
                "{} did not exit cleanly on SIGTERM: {status:?}\n{logs}",
                p.name
            );
        }
    }
}

fn start_source(dir: &Path, app: &Path, args: &[String], n: usize) -> Proc {
    let mut all = vec![
        "--application-module".to_string(),
        app.display().to_string(),
        "--connector".to_string(),
        "in".to_string(),
        "--stats-interval".to_string(),
        "0".to_string(),
    ];
    all.extend(args.iter().cloned());
    Proc::spawn(
        dir,
        &format!("rabbitmq_source-{n}"),
        &testkit::bin("rabbitmq_source"),
        &all,
    )
}

/// The last 3000 characters of a log.
pub fn tail(s: &str) -> String {
    let start = s.len().saturating_sub(3000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

/// A lock shared by every RabbitMQ test and taken exclusively by the broker-restart test, so
/// a restart never hits another test's connections (also across `cargo test` runs).
pub fn broker_lock(exclusive: bool) -> File {
    use std::os::fd::AsRawFd;
    let f = File::options()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join("rabbitmq-connectors-tests.lock"))
        .expect("open lock file");
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock(2) on a file descriptor we own; released when the File is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    assert_eq!(r, 0, "flock failed");
    f
}

/// Publishes one message with a routing key of any bytes (lapin only sends UTF-8 ones) to
/// `exchange` through a minimal AMQP 0-9-1 client on a plain socket, and waits for the
/// broker's publisher confirm.
pub fn publish_raw(exchange: &str, routing_key: &[u8], body: &[u8]) {
    use std::io::Write;
    let uri: lapin::uri::AMQPUri = testkit::amqp_url().parse().expect("AMQP URL");
    let mut s = std::net::TcpStream::connect((uri.authority.host.as_str(), uri.authority.port))
        .expect("connect to RabbitMQ");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    raw::expect(&mut s, 10, 10); // connection.start
    let user = &uri.authority.userinfo;
    let mut a = 0u32.to_be_bytes().to_vec(); // no client properties
    raw::short(&mut a, b"PLAIN");
    let login = format!("\0{}\0{}", user.username, user.password);
    a.extend((login.len() as u32).to_be_bytes());
    a.extend(login.as_bytes());
    raw::short(&mut a, b"en_US");
    raw::method(&mut s, 0, 10, 11, &a); // start-ok
    let tune = raw::expect(&mut s, 10, 30);
    let mut a = tune[..6].to_vec(); // channel-max and frame-max as offered, no heartbeats
    a.extend(0u16.to_be_bytes());
    raw::method(&mut s, 0, 10, 31, &a); // tune-ok
    let mut a = Vec::new();
    raw::short(&mut a, uri.vhost.as_bytes());
    a.extend([0, 0]);
    raw::method(&mut s, 0, 10, 40, &a); // connection.open
    raw::expect(&mut s, 10, 41);
    raw::method(&mut s, 1, 20, 10, &[0]); // channel.open
    raw::expect(&mut s, 20, 11);
    raw::method(&mut s, 1, 85, 10, &[0]); // confirm.select
    raw::expect(&mut s, 85, 11);
    let mut a = 0u16.to_be_bytes().to_vec();
    raw::short(&mut a, exchange.as_bytes());
    raw::short(&mut a, routing_key);
    a.push(0);
    raw::method(&mut s, 1, 60, 40, &a); // basic.publish
    let mut h = 60u16.to_be_bytes().to_vec();
    h.extend(0u16.to_be_bytes());
    h.extend((body.len() as u64).to_be_bytes());
    h.extend(0u16.to_be_bytes()); // no properties
    raw::frame(&mut s, 2, 1, &h);
    raw::frame(&mut s, 3, 1, body);
    raw::expect(&mut s, 60, 80); // basic.ack: the broker has it
    let mut a = 200u16.to_be_bytes().to_vec();
    a.extend([0, 0, 0, 0, 0]);
    raw::method(&mut s, 0, 10, 50, &a); // connection.close
    raw::expect(&mut s, 10, 51);
}

/// Frames for [`publish_raw`].
mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn short(out: &mut Vec<u8>, s: &[u8]) {
        out.push(u8::try_from(s.len()).expect("short string"));
        out.extend(s);
    }

    pub fn frame(s: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend(channel.to_be_bytes());
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xce);
        s.write_all(&f).unwrap();
    }

    pub fn method(s: &mut TcpStream, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut p = class.to_be_bytes().to_vec();
        p.extend(method.to_be_bytes());
        p.extend(args);
        frame(s, 1, channel, &p);
    }

    /// Reads frames up to method `class.method` and returns its arguments.
    pub fn expect(s: &mut TcpStream, class: u16, method: u16) -> Vec<u8> {
        loop {
            let mut head = [0u8; 7];
            s.read_exact(&mut head).expect("a frame from the broker");
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut p = vec![0u8; size + 1];
            s.read_exact(&mut p).unwrap();
            if head[0] != 1 {
                continue;
            }
            let got = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            if got == (class, method) {
                return p[4..size].to_vec();
            }
            assert!(
                got != (10, 50) && got != (20, 40),
                "the broker closed: {}",
                String::from_utf8_lossy(&p)
            );
        }
    }
}
