//! The soak test: every connector binary in one pipeline graph under one engine, fed at a
//! steady rate for MINUTES while a chaos loop SIGKILLs a random connector or the engine
//! (restarting it at once with the same arguments) and restarts services; at the end the
//! feeding stops, the pipeline drains and every output system is read back: each record fed
//! must have arrived at least once in each sink it was routed to.
//!
//! ```text
//! soak MINUTES            (scripts/soak.sh MINUTES builds the binaries and runs this)
//! ```
//!
//! Environment: `SOAK_RATE` (records per second per source, default 10), `SOAK_KILL_SECS`
//! (seconds between SIGKILLs, default 10), `SOAK_RESTART_SECS` (seconds between service
//! restarts, default 120), `SOAK_DRAIN_SECS` (longest wait for the drain, default 300),
//! `SOAK_DIR` (logs, default a new directory under /tmp), `SOAK_BIN_DIR` (the binaries,
//! default the directory of this executable), plus the service variables of
//! `scripts/services.sh` (`KAFKA_BROKERS`, `AMQP_URL`, `AWS_ENDPOINT_URL`). Redis and
//! PostgreSQL are private instances this program starts (and restarts) itself on free ports,
//! so the shared services are never restarted.
//!
//! The graph (one engine, `--resilience-dir`):
//!
//! ```text
//! kafka_source            -> kafka_sink, redis_stream_sink, rabbitmq_sink, postgres_sink, s3_sink, kinesis_sink
//! redis_stream_source     -> redis_hash_sink
//! rabbitmq_source, postgres_source, kinesis_source, s3_source, stdin_source,
//! redis_subscriber_source -> stdout_sink (a file)
//! udp_source              -> udp_sink (a socket of this program)
//! ```
//!
//! Not counted as losses (reported apart): UDP (no replay by nature) and Redis pub/sub
//! (at-most-once by design). `stdin_source`, `udp_source` and `redis_subscriber_source` are
//! never SIGKILLed: what they read and did not send is gone by design (a pipe, a datagram, a
//! published message have no upstream copy); the engine and every other connector are.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Seconds since the epoch, for log lines.
fn now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

macro_rules! say {
    ($($a:tt)*) => {{
        eprintln!("[{}] soak: {}", now(), format!($($a)*));
    }};
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator (no dependency needed for picking victims).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------
// Sources of records: one letter each, record `n` is `<letter>-<n, 8 digits>`.

/// (letter, name, counted): counted sources must lose nothing.
const SOURCES: &[(char, &str, bool)] = &[
    ('k', "kafka", true),
    ('r', "redis_stream", true),
    ('q', "rabbitmq", true),
    ('p', "postgres", true),
    ('n', "kinesis", true),
    ('s', "s3", true),
    ('i', "stdin", true),
    ('u', "udp", false),
    ('c', "redis_pubsub", false),
];

/// Which output each source's records must reach.
const ROUTES: &[(char, &[&str])] = &[
    (
        'k',
        &[
            "kafka_out",
            "redis_out",
            "rabbit_out",
            "pg_out",
            "s3_out",
            "kin_out",
        ],
    ),
    ('r', &["hash_out"]),
    ('q', &["collect"]),
    ('p', &["collect"]),
    ('n', &["collect"]),
    ('s', &["collect"]),
    ('i', &["collect"]),
    ('c', &["collect"]),
    ('u', &["udp_out"]),
];

fn record(letter: char, n: u64) -> String {
    format!("{letter}-{n:08}")
}

/// Every `<letter>-<8 digits>` token in `bytes` (robust to a line cut by a SIGKILL).
fn tokens(bytes: &[u8], out: &mut HashMap<String, u64>) {
    let mut i = 0;
    while i + 10 <= bytes.len() {
        let w = &bytes[i..i + 10];
        if w[0].is_ascii_lowercase() && w[1] == b'-' && w[2..].iter().all(u8::is_ascii_digit) {
            let followed_by_digit = bytes.get(i + 10).is_some_and(u8::is_ascii_digit);
            if !followed_by_digit {
                *out.entry(String::from_utf8_lossy(w).into_owned())
                    .or_default() += 1;
                i += 10;
                continue;
            }
        }
        i += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

/// One long-running process of the graph, restarted with the same arguments.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// stdout goes to this file (appended), else to the log.
    stdout_file: Option<PathBuf>,
    /// stdin is a pipe handed to the feeder.
    piped_stdin: bool,
    log: PathBuf,
    child: Option<Child>,
    starts: u64,
}

impl Proc {
    fn start(&mut self) -> Result<Option<ChildStdin>> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(
            log,
            "===== [{}] soak: start #{} of {}",
            now(),
            self.starts,
            self.name
        )?;
        let stdout = match &self.stdout_file {
            Some(p) => OpenOptions::new().create(true).append(true).open(p)?,
            None => log.try_clone()?,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .stdin(if self.piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        let stdin = child.stdin.take();
        self.child = Some(child);
        Ok(stdin)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self, timeout: Duration) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Some(c) = &mut self.child {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill9();
    }

    /// Exit status if it stopped by itself.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

// ---------------------------------------------------------------------------------------
// Private services: Redis (AOF) and PostgreSQL on free ports, restartable.

struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(dir: &Path) -> Result<PrivateRedis> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut r = PrivateRedis {
            port: testkit::free_port(),
            dir,
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &self.dir.display().to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start redis-server")?;
        self.child = Some(child);
        if !testkit::wait_for_port(self.port, Duration::from_secs(30)) {
            bail!("private redis-server did not listen on {}", self.port);
        }
        Ok(())
    }

    /// `signal` (SIGTERM: Redis saves and exits; SIGKILL: a crash, the AOF written with
    /// `appendfsync always` holds every write Redis answered), then start again on the
    /// same port and data.
    fn restart(&mut self, signal: i32) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_secs(1));
        self.spawn()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pg_bin(name: &str) -> Result<String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/services.sh installs it)")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .map(|p| p.display().to_string())
        .with_context(|| format!("{name} not found under /usr/lib/postgresql"))
}

fn su_postgres(cmd: &str) -> Result<()> {
    let out = Command::new("su")
        .args(["postgres", "-c", cmd])
        .output()
        .context("su postgres")?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

struct PrivatePostgres {
    port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    fn start(dir: &Path) -> Result<PrivatePostgres> {
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("chown")
            .args(["-R", "postgres", &dir.display().to_string()])
            .status()?;
        if !status.success() {
            bail!("chown postgres {}", dir.display());
        }
        su_postgres(&format!(
            "{} -D {}/data --auth=trust -U postgres --no-sync >{}/initdb.log 2>&1",
            pg_bin("initdb")?,
            dir.display(),
            dir.display()
        ))?;
        let pg = PrivatePostgres {
            port: testkit::free_port(),
            dir,
        };
        pg.pg_ctl("start", "fast")?;
        Ok(pg)
    }

    /// `pg_ctl WHAT` with shutdown mode `mode` (`fast`: clean; `immediate`: a crash,
    /// recovered from the WAL at the next start).
    fn pg_ctl(&self, what: &str, mode: &str) -> Result<()> {
        su_postgres(&format!(
            "{} -D {d}/data -l {d}/postgres.log -w -t 60 -m {mode} -o \"-p {} -k {d} -c listen_addresses=127.0.0.1\" {what}",
            pg_bin("pg_ctl")?,
            self.port,
            d = self.dir.display(),
        ))
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Ok(b) = pg_bin("pg_ctl") {
            let _ = su_postgres(&format!(
                "{b} -D {}/data -m immediate stop",
                self.dir.display()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::from_env()
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await
}

async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let c = aws_config(endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&c)
            .force_path_style(true)
            .build(),
    )
}

async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&aws_config(endpoint).await)
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn amqp_channel(url: &str) -> Result<(lapin::Connection, lapin::Channel)> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok((conn, ch))
}

fn kafka_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

// ---------------------------------------------------------------------------------------
// Names of this run.

struct Names {
    kafka_in: String,
    kafka_out: String,
    redis_in: String,
    redis_out: String,
    redis_hash: String,
    channel: String,
    queue_in: String,
    queue_out: String,
    pg_in: String,
    pg_out: String,
    bucket_in: String,
    bucket_out: String,
    kin_in: String,
    kin_out: String,
}

impl Names {
    fn new(tag: &str) -> Names {
        let dash = tag.replace('_', "-");
        Names {
            kafka_in: format!("{tag}_in"),
            kafka_out: format!("{tag}_out"),
            redis_in: format!("{tag}:in"),
            redis_out: format!("{tag}:out"),
            redis_hash: format!("{tag}:hash"),
            channel: format!("{tag}:chan"),
            queue_in: format!("{tag}_in"),
            queue_out: format!("{tag}_out"),
            pg_in: format!("{tag}_in"),
            pg_out: format!("{tag}_out"),
            bucket_in: format!("{dash}-in"),
            bucket_out: format!("{dash}-out"),
            kin_in: format!("{tag}_in"),
            kin_out: format!("{tag}_out"),
        }
    }
}

struct Env {
    brokers: String,
    amqp: String,
    aws: String,
    redis: String,
    pg: String,
}

async fn create_resources(n: &Names, e: &Env) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        kafka_config(&e.brokers).create()?;
    let topics = [
        NewTopic::new(&n.kafka_in, 2, TopicReplication::Fixed(1)),
        NewTopic::new(&n.kafka_out, 2, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?
    {
        r.map_err(|(t, err)| anyhow::anyhow!("create topic {t}: {err}"))?;
    }

    let (conn, ch) = amqp_channel(&e.amqp).await?;
    for q in [&n.queue_in, &n.queue_out] {
        ch.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "bye".into()).await;

    let pg = pg_connect(&e.pg).await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {} (id bigserial PRIMARY KEY, k text, v text);
         CREATE TABLE {} (key text PRIMARY KEY, value text);",
        n.pg_in, n.pg_out
    ))
    .await?;

    let s3 = s3_client(&e.aws).await;
    for b in [&n.bucket_in, &n.bucket_out] {
        s3.create_bucket().bucket(b).send().await?;
    }
    let k = kinesis_client(&e.aws).await;
    for s in [&n.kin_in, &n.kin_out] {
        k.create_stream()
            .stream_name(s)
            .shard_count(2)
            .send()
            .await?;
    }
    for s in [&n.kin_in, &n.kin_out] {
        for _ in 0..200 {
            let d = k.describe_stream_summary().stream_name(s).send().await?;
            if d.stream_description_summary()
                .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn delete_resources(n: &Names, e: &Env) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    if let Ok(admin) =
        kafka_config(&e.brokers).create::<AdminClient<rdkafka::client::DefaultClientContext>>()
    {
        let _ = admin
            .delete_topics(&[&n.kafka_in, &n.kafka_out], &AdminOptions::new())
            .await;
    }
    if let Ok((conn, ch)) = amqp_channel(&e.amqp).await {
        for q in [&n.queue_in, &n.queue_out] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    let k = kinesis_client(&e.aws).await;
    for s in [&n.kin_in, &n.kin_out] {
        let _ = k.delete_stream().stream_name(s).send().await;
    }
}

// ---------------------------------------------------------------------------------------
// The application file.

struct Ports {
    map: BTreeMap<&'static str, u16>,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            map: BTreeMap::new(),
        }
    }
    fn get(&mut self, name: &'static str) -> u16 {
        *self.map.entry(name).or_insert_with(testkit::free_port)
    }
}

fn application(
    n: &Names,
    e: &Env,
    dir: &Path,
    ports: &mut Ports,
    udp_in: u16,
    udp_out: u16,
) -> String {
    let state = dir.join("state");
    let state = state.display();
    let mut t = String::from("name = \"soak\"\n");
    let mut conn = |kind: &str, name: &'static str, extra: &str, params: &str| {
        t.push_str(&format!(
            "\n[{kind}.{name}]\nport = {}\n{extra}\n[{kind}.{name}.params]\n{params}\n",
            ports.get(name)
        ));
    };
    let src = "source_connectors";
    let snk = "sink_connectors";
    conn(
        src,
        "kafka_in",
        "max_credits = 500",
        &format!(
            "topics = \"{}\"\nbootstrap_brokers = \"{}\"\nconsumer_group = \"{}\"\noption = [\"session.timeout.ms=6000\"]",
            n.kafka_in, e.brokers, n.kafka_in
        ),
    );
    conn(
        src,
        "redis_in",
        "",
        &format!(
            "url = \"{}\"\nstream = \"{}\"\ngroup = \"soak\"\nconsumer = \"soak\"",
            e.redis, n.redis_in
        ),
    );
    conn(
        src,
        "pubsub_in",
        "",
        &format!("url = \"{}\"\ntopic = \"{}\"", e.redis, n.channel),
    );
    conn(
        src,
        "rabbit_in",
        "",
        &format!("amqpurl = \"{}\"\nqueue = \"{}\"", e.amqp, n.queue_in),
    );
    conn(
        src,
        "pg_in",
        "",
        &format!(
            "connection = \"{}\"\ntable = \"{}\"\nkey_column = \"k\"\npayload = \"v\"\ninstall_trigger = \"true\"\nposition_table = \"{}_pos\"",
            e.pg, n.pg_in, n.pg_in
        ),
    );
    conn(
        src,
        "kin_in",
        "",
        &format!(
            "stream = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\ncheckpoint_dir = \"{state}\"\npoll_ms = \"500\"",
            n.kin_in, e.aws
        ),
    );
    conn(
        src,
        "s3_in",
        "",
        &format!(
            "bucket = \"{}\"\nprefix = \"in/\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\ncheckpoint_dir = \"{state}\"\npoll_ms = \"1000\"",
            n.bucket_in, e.aws
        ),
    );
    conn(src, "stdin_in", "", "stream = \"soak-stdin\"");
    conn(
        src,
        "udp_in",
        "",
        &format!("host = \"127.0.0.1\"\nport = \"{udp_in}\""),
    );

    conn(
        snk,
        "kafka_out",
        "",
        &format!(
            "topic = \"{}\"\nbootstrap_brokers = \"{}\"",
            n.kafka_out, e.brokers
        ),
    );
    conn(
        snk,
        "redis_out",
        "",
        &format!("url = \"{}\"\nstream = \"{}\"", e.redis, n.redis_out),
    );
    conn(
        snk,
        "hash_out",
        "",
        &format!("url = \"{}\"\nkey = \"{}\"", e.redis, n.redis_hash),
    );
    conn(
        snk,
        "rabbit_out",
        "",
        &format!(
            "amqpurl = \"{}\"\nrouting_key = \"{}\"\nmandatory = \"true\"",
            e.amqp, n.queue_out
        ),
    );
    conn(
        snk,
        "pg_out",
        "",
        &format!("connection = \"{}\"\ntable = \"{}\"", e.pg, n.pg_out),
    );
    conn(
        snk,
        "s3_out",
        "max_credits = 2000",
        &format!(
            "bucket = \"{}\"\nprefix = \"out/\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nbatch_ms = \"1000\"",
            n.bucket_out, e.aws
        ),
    );
    conn(
        snk,
        "kin_out",
        "",
        &format!(
            "stream = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
            n.kin_out, e.aws
        ),
    );
    conn(snk, "collect", "", "");
    conn(
        snk,
        "udp_out",
        "",
        &format!("host = \"127.0.0.1\"\nport = \"{udp_out}\""),
    );
    t.push_str(
        r#"
[[pipelines]]
source = "kafka_in"
sinks = ["kafka_out", "redis_out", "rabbit_out", "pg_out", "s3_out", "kin_out"]

[[pipelines]]
source = "redis_in"
sinks = ["hash_out"]

[[pipelines]]
source = "udp_in"
sinks = ["udp_out"]
"#,
    );
    for s in [
        "rabbit_in",
        "pg_in",
        "kin_in",
        "s3_in",
        "stdin_in",
        "pubsub_in",
    ] {
        t.push_str(&format!(
            "\n[[pipelines]]\nsource = \"{s}\"\nsinks = [\"collect\"]\n"
        ));
    }
    t
}

// ---------------------------------------------------------------------------------------
// Feeders: one thread per upstream system; `fed[letter]` counts the records the system
// confirmed (ids 1..=fed). A write that fails is repeated until it succeeds (an ambiguous
// failure may write a record twice: a duplicate, never a gap).

type Counters = Arc<BTreeMap<char, AtomicU64>>;

struct Pace {
    start: Instant,
    rate: f64,
    n: u64,
}

impl Pace {
    fn new(rate: f64) -> Pace {
        Pace {
            start: Instant::now(),
            rate,
            n: 0,
        }
    }
    /// Sleeps until record `n + 1` is due (never bursts more than a second behind).
    fn wait(&mut self) {
        let due = self.start + Duration::from_secs_f64(self.n as f64 / self.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_secs(1) {
            self.start = now - Duration::from_secs_f64(self.n as f64 / self.rate);
        }
        self.n += 1;
    }
}

fn retry_sleep() {
    std::thread::sleep(Duration::from_millis(200));
}

fn feed_kafka(brokers: String, topic: String, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = rt();
    // One record per batch: Tansu skips the rest of a batch a consumer resumes inside.
    let producer: FutureProducer = kafka_config(&brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("kafka producer");
    let mut pace = Pace::new(rate);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.wait();
        n += 1;
        let r = record('k', n);
        loop {
            let sent = rt.block_on(producer.send(
                FutureRecord::to(&topic).key(&r).payload(&r),
                Duration::from_secs(30),
            ));
            match sent {
                Ok(_) => break,
                Err((e, _)) => {
                    say!("kafka feed {r}: {e}; again");
                    retry_sleep();
                }
            }
        }
        fed[&'k'].store(n, Ordering::Relaxed);
    }
}

fn feed_redis(url: String, n: Names, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let connect = || -> redis::Connection {
        loop {
            match redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                Ok(c) => return c,
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    };
    let mut con = connect();
    let mut pace = Pace::new(rate);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.wait();
        i += 1;
        let r = record('r', i);
        loop {
            let res: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(&n.redis_in)
                .arg("*")
                .arg("key")
                .arg(&r)
                .arg("payload")
                .arg(&r)
                .query(&mut con);
            match res {
                Ok(_) => break,
                Err(_) => {
                    retry_sleep();
                    con = connect();
                }
            }
        }
        fed[&'r'].store(i, Ordering::Relaxed);
        // Pub/sub: at-most-once by design, counted apart; one attempt only.
        let c = record('c', i);
        let res: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&n.channel)
            .arg(&c)
            .query(&mut con);
        if res.is_err() {
            con = connect();
        }
        fed[&'c'].store(i, Ordering::Relaxed);
    }
}

fn feed_rabbit(url: String, queue: String, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let rt = rt();
    rt.block_on(async {
        let connect = || async {
            loop {
                match amqp_channel(&url).await {
                    Ok(c) => return c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        };
        let mut chan = connect().await;
        let mut pace = Pace::new(rate);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            pace.wait();
            i += 1;
            let r = record('q', i);
            loop {
                let res = async {
                    let confirm = chan
                        .1
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            lapin::options::BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            r.as_bytes(),
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?;
                    match confirm.await? {
                        lapin::Confirmation::Ack(None) => Ok(()),
                        other => bail!("not confirmed: {other:?}"),
                    }
                }
                .await;
                match res {
                    Ok(()) => break,
                    Err(e) => {
                        say!("rabbitmq feed {r}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        chan = connect().await;
                    }
                }
            }
            fed[&'q'].store(i, Ordering::Relaxed);
        }
    });
}

fn feed_pg(url: String, table: String, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let rt = rt();
    rt.block_on(async {
        let connect = || async {
            loop {
                match pg_connect(&url).await {
                    Ok(c) => return c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        };
        let mut pg = connect().await;
        let sql = format!("INSERT INTO {table} (k, v) VALUES ($1, $1)");
        let mut pace = Pace::new(rate);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            pace.wait();
            i += 1;
            let r = record('p', i);
            loop {
                match pg.execute(&sql, &[&r]).await {
                    Ok(_) => break,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        pg = connect().await;
                    }
                }
            }
            fed[&'p'].store(i, Ordering::Relaxed);
        }
    });
}

fn feed_kinesis(aws: String, stream: String, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let rt = rt();
    rt.block_on(async {
        let k = kinesis_client(&aws).await;
        let mut pace = Pace::new(rate);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            pace.wait();
            i += 1;
            let r = record('n', i);
            loop {
                let res = k
                    .put_record()
                    .stream_name(&stream)
                    .partition_key(&r)
                    .data(aws_sdk_kinesis::primitives::Blob::new(r.as_bytes()))
                    .send()
                    .await;
                match res {
                    Ok(_) => break,
                    Err(e) => {
                        say!("kinesis feed {r}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            fed[&'n'].store(i, Ordering::Relaxed);
        }
    });
}

/// One object a second, `in/<seq>.lines`, holding that second's records.
fn feed_s3(aws: String, bucket: String, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let rt = rt();
    rt.block_on(async {
        let s3 = s3_client(&aws).await;
        let per_object = rate.round().max(1.0) as u64;
        let mut i = 0;
        let mut seq = 0u64;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let due = start + Duration::from_secs(seq);
            if due > Instant::now() {
                tokio::time::sleep(due - Instant::now()).await;
            }
            let mut body = String::new();
            for j in 1..=per_object {
                body.push_str(&record('s', i + j));
                body.push('\n');
            }
            let key = format!("in/{seq:010}.lines");
            loop {
                let res = s3
                    .put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(body.clone().into_bytes().into())
                    .send()
                    .await;
                match res {
                    Ok(_) => break,
                    Err(e) => {
                        say!("s3 feed {key}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            i += per_object;
            fed[&'s'].store(i, Ordering::Relaxed);
        }
    });
}

fn feed_stdin(
    pipe: Arc<Mutex<Option<ChildStdin>>>,
    rate: f64,
    stop: Arc<AtomicBool>,
    fed: Counters,
) {
    let mut pace = Pace::new(rate);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.wait();
        let r = record('i', i + 1);
        let mut guard = pipe.lock().unwrap();
        let ok = guard
            .as_mut()
            .is_some_and(|p| p.write_all(format!("{r}\n").as_bytes()).is_ok() && p.flush().is_ok());
        drop(guard);
        if ok {
            i += 1;
            fed[&'i'].store(i, Ordering::Relaxed);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn feed_udp(port: u16, rate: f64, stop: Arc<AtomicBool>, fed: Counters) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let mut pace = Pace::new(rate);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        pace.wait();
        i += 1;
        let _ = sock.send_to(record('u', i).as_bytes(), ("127.0.0.1", port));
        fed[&'u'].store(i, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Readers of the outputs.

type Seen = HashMap<String, u64>;

/// One XRANGE entry: id and fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

struct Readers {
    names: Names,
    env: Env,
    collect_file: PathBuf,
    udp_seen: Arc<Mutex<Seen>>,
    /// Objects already read (immutable): key -> tokens.
    s3_cache: HashMap<String, Seen>,
    /// RabbitMQ reads are destructive: accumulated here.
    rabbit: Seen,
}

fn merge(into: &mut Seen, from: &Seen) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl Readers {
    async fn read_all(&mut self) -> Result<BTreeMap<&'static str, Seen>> {
        let mut out = BTreeMap::new();
        out.insert("kafka_out", self.kafka().await?);
        let (stream, hash) = self.redis()?;
        out.insert("redis_out", stream);
        out.insert("hash_out", hash);
        self.rabbit_drain().await?;
        out.insert("rabbit_out", self.rabbit.clone());
        out.insert("pg_out", self.pg().await?);
        out.insert("s3_out", self.s3().await?);
        out.insert("kin_out", self.kinesis().await?);
        let mut collect = Seen::new();
        tokens(
            &std::fs::read(&self.collect_file).unwrap_or_default(),
            &mut collect,
        );
        out.insert("collect", collect);
        out.insert("udp_out", self.udp_seen.lock().unwrap().clone());
        Ok(out)
    }

    async fn kafka(&self) -> Result<Seen> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        use rdkafka::{Offset, TopicPartitionList};
        let c: BaseConsumer = kafka_config(&self.env.brokers)
            .set("group.id", format!("{}-reader", self.names.kafka_out))
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = &self.names.kafka_out;
        let mut tpl = TopicPartitionList::new();
        let mut high = HashMap::new();
        for p in 0..2 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            let (_, h) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            high.insert(p, h);
        }
        c.assign(&tpl)?;
        let mut pos: HashMap<i32, i64> = HashMap::new();
        let mut seen = Seen::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        // Up to the high watermarks, then until nothing came for 3 s (Tansu's watermarks
        // can lag behind the last batch).
        let mut quiet_since = Instant::now();
        loop {
            let at_end = high
                .iter()
                .all(|(p, h)| pos.get(p).copied().unwrap_or(0) >= *h);
            if at_end && quiet_since.elapsed() > Duration::from_secs(3) {
                break;
            }
            if Instant::now() > deadline {
                bail!("reading {topic} did not reach the end within 120 s");
            }
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    quiet_since = Instant::now();
                    pos.insert(m.partition(), m.offset() + 1);
                    tokens(m.payload().unwrap_or_default(), &mut seen);
                }
                Some(Err(e)) => bail!("reading {topic}: {e}"),
                None => {}
            }
        }
        Ok(seen)
    }

    fn redis(&self) -> Result<(Seen, Seen)> {
        let mut con = redis::Client::open(self.env.redis.as_str())?.get_connection()?;
        let mut stream = Seen::new();
        let mut from = "-".to_string();
        loop {
            let v: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(&self.names.redis_out)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query(&mut con)?;
            let Some(last) = v.last() else { break };
            from = format!("({}", last.0);
            for (_, fields) in &v {
                for (f, val) in fields {
                    if f == "payload" {
                        tokens(val, &mut stream);
                    }
                }
            }
        }
        let vals: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(&self.names.redis_hash)
            .query(&mut con)?;
        let mut hash = Seen::new();
        for v in vals {
            tokens(&v, &mut hash);
        }
        Ok((stream, hash))
    }

    async fn rabbit_drain(&mut self) -> Result<()> {
        let (conn, ch) = amqp_channel(&self.env.amqp).await?;
        while let Some(m) = ch
            .basic_get(
                self.names.queue_out.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            tokens(&m.delivery.data, &mut self.rabbit);
        }
        let _ = conn.close(200, "bye".into()).await;
        Ok(())
    }

    async fn pg(&self) -> Result<Seen> {
        let pg = pg_connect(&self.env.pg).await?;
        let mut seen = Seen::new();
        for row in pg
            .query(&format!("SELECT value FROM {}", self.names.pg_out), &[])
            .await?
        {
            let v: Option<String> = row.get(0);
            tokens(v.unwrap_or_default().as_bytes(), &mut seen);
        }
        Ok(seen)
    }

    async fn s3(&mut self) -> Result<Seen> {
        let s3 = s3_client(&self.env.aws).await;
        let mut after: Option<String> = None;
        let mut keys = Vec::new();
        loop {
            let r = s3
                .list_objects_v2()
                .bucket(&self.names.bucket_out)
                .prefix("out/")
                .set_start_after(after.clone())
                .send()
                .await?;
            for o in r.contents() {
                let k = o.key().unwrap_or_default().to_string();
                after = Some(k.clone());
                if !k.contains("/_tmp/") && !k.starts_with("out/_tmp") {
                    keys.push(k);
                }
            }
            if r.is_truncated() != Some(true) {
                break;
            }
        }
        let mut seen = Seen::new();
        for k in keys {
            if !self.s3_cache.contains_key(&k) {
                let o = s3
                    .get_object()
                    .bucket(&self.names.bucket_out)
                    .key(&k)
                    .send()
                    .await?;
                let body = o.body.collect().await?.into_bytes();
                let mut t = Seen::new();
                tokens(&body, &mut t);
                self.s3_cache.insert(k.clone(), t);
            }
            merge(&mut seen, &self.s3_cache[&k]);
        }
        Ok(seen)
    }

    async fn kinesis(&self) -> Result<Seen> {
        use aws_sdk_kinesis::types::ShardIteratorType;
        let k = kinesis_client(&self.env.aws).await;
        let shards = k
            .list_shards()
            .stream_name(&self.names.kin_out)
            .send()
            .await?;
        let mut seen = Seen::new();
        for s in shards.shards() {
            let mut it = k
                .get_shard_iterator()
                .stream_name(&self.names.kin_out)
                .shard_id(s.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator
                .context("no shard iterator")?;
            loop {
                let r = k
                    .get_records()
                    .shard_iterator(&it)
                    .limit(10_000)
                    .send()
                    .await?;
                if r.records.is_empty() {
                    break;
                }
                for rec in &r.records {
                    tokens(rec.data.as_ref(), &mut seen);
                }
                match r.next_shard_iterator {
                    Some(n) => it = n,
                    None => break,
                }
            }
        }
        Ok(seen)
    }
}

/// Result of one check: lost per (source, sink), duplicates, and samples of missing ids.
struct Check {
    lost: u64,
    duplicates: u64,
    lines: Vec<String>,
    uncounted: Vec<String>,
}

fn check(fed: &BTreeMap<char, u64>, outputs: &BTreeMap<&'static str, Seen>) -> Check {
    let mut c = Check {
        lost: 0,
        duplicates: 0,
        lines: Vec::new(),
        uncounted: Vec::new(),
    };
    for (letter, sinks) in ROUTES {
        let counted = SOURCES
            .iter()
            .any(|(l, _, counted)| l == letter && *counted);
        let n = fed[letter];
        for sink in *sinks {
            let seen = &outputs[sink];
            let mut missing = Vec::new();
            let mut dups = 0;
            for i in 1..=n {
                match seen.get(&record(*letter, i)) {
                    None => missing.push(i),
                    Some(&k) if k > 1 => dups += k - 1,
                    _ => {}
                }
            }
            if counted {
                c.lost += missing.len() as u64;
                c.duplicates += dups;
                if !missing.is_empty() {
                    let sample: Vec<String> = missing
                        .iter()
                        .take(20)
                        .map(|i| record(*letter, *i))
                        .collect();
                    c.lines.push(format!(
                        "{letter} -> {sink}: {} of {n} missing (first: {})",
                        missing.len(),
                        sample.join(" ")
                    ));
                }
            } else {
                c.uncounted.push(format!(
                    "{letter} -> {sink}: {}/{n} arrived",
                    n - missing.len() as u64
                ));
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            say!("ERROR: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let minutes: f64 = std::env::args()
        .nth(1)
        .context("usage: soak MINUTES")?
        .parse()
        .context("MINUTES must be a number")?;
    let rate: f64 = env_or("SOAK_RATE", 10.0);
    let kill_every = Duration::from_secs_f64(env_or("SOAK_KILL_SECS", 10.0));
    let restart_every = Duration::from_secs_f64(env_or("SOAK_RESTART_SECS", 120.0));
    let drain = Duration::from_secs(env_or("SOAK_DRAIN_SECS", 300));
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let tag = format!("soak{}_{}", std::process::id(), stamp % 1_000_000);
    let dir = match std::env::var("SOAK_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(format!("/tmp/{tag}")),
    };
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::create_dir_all(dir.join("state"))?;
    let bin_dir = match std::env::var("SOAK_BIN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .to_path_buf(),
    };
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    say!(
        "{minutes} minutes, {rate} records/s per source, a SIGKILL every {kill_every:?}, a service restart every {restart_every:?}; logs in {}",
        dir.display()
    );

    let mut redis = PrivateRedis::start(&dir)?;
    let pg = PrivatePostgres::start(&dir)?;
    let env = Env {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        amqp: std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        aws: std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into()),
        redis: redis.url(),
        pg: pg.url(),
    };
    let names = Names::new(&tag);
    let rt = rt();
    rt.block_on(create_resources(&names, &env))
        .context("create topics, queues, tables, buckets, streams")?;

    // UDP: where udp_source listens, and our receiver of udp_sink's datagrams.
    let udp_in = {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?.port()
    };
    let udp_rx = UdpSocket::bind("127.0.0.1:0")?;
    udp_rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    let udp_out = udp_rx.local_addr()?.port();
    let udp_seen = Arc::new(Mutex::new(Seen::new()));
    let all_done = Arc::new(AtomicBool::new(false));
    {
        let seen = udp_seen.clone();
        let done = all_done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, _)) = udp_rx.recv_from(&mut buf) {
                    tokens(&buf[..n], &mut seen.lock().unwrap());
                }
            }
        });
    }

    let mut ports = Ports::new();
    let app = dir.join("app.toml");
    std::fs::write(
        &app,
        application(&names, &env, &dir, &mut ports, udp_in, udp_out),
    )?;
    let collect_file = dir.join("collect.out");

    // The processes: sinks first, then the engine, then the sources.
    let app_s = app.display().to_string();
    let connector = |program: &str, name: &str| -> Proc {
        Proc {
            name: name.to_string(),
            program: bin_dir.join(program),
            args: vec![
                "--application-module".into(),
                app_s.clone(),
                "--connector".into(),
                name.into(),
                "--stats-interval".into(),
                "60".into(),
            ],
            stdout_file: None,
            piped_stdin: false,
            log: dir.join("logs").join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    };
    let mut procs: Vec<Proc> = vec![
        connector("kafka_sink", "kafka_out"),
        connector("redis_stream_sink", "redis_out"),
        connector("redis_hash_sink", "hash_out"),
        connector("rabbitmq_sink", "rabbit_out"),
        connector("postgres_sink", "pg_out"),
        connector("s3_sink", "s3_out"),
        connector("kinesis_sink", "kin_out"),
        {
            let mut p = connector("stdout_sink", "collect");
            p.stdout_file = Some(collect_file.clone());
            p
        },
        connector("udp_sink", "udp_out"),
        Proc {
            name: "engine".into(),
            program: bin_dir.join("engine"),
            args: vec![
                "--application-module".into(),
                app_s.clone(),
                "--resilience-dir".into(),
                dir.join("engine-state").display().to_string(),
                "--stats-interval".into(),
                "60".into(),
            ],
            stdout_file: None,
            piped_stdin: false,
            log: dir.join("logs").join("engine.log"),
            child: None,
            starts: 0,
        },
        connector("kafka_source", "kafka_in"),
        connector("redis_stream_source", "redis_in"),
        connector("redis_subscriber_source", "pubsub_in"),
        connector("rabbitmq_source", "rabbit_in"),
        connector("postgres_source", "pg_in"),
        connector("kinesis_source", "kin_in"),
        connector("s3_source", "s3_in"),
        {
            let mut p = connector("stdin_source", "stdin_in");
            p.piped_stdin = true;
            p
        },
        connector("udp_source", "udp_in"),
    ];
    // Never SIGKILLed: what they read and did not send has no upstream copy.
    let unkillable = ["stdin_in", "udp_in", "pubsub_in"];
    let stdin_pipe: Arc<Mutex<Option<ChildStdin>>> = Arc::new(Mutex::new(None));
    for p in procs.iter_mut() {
        let stdin = p.start()?;
        if p.piped_stdin {
            *stdin_pipe.lock().unwrap() = stdin;
        }
        if p.name == "engine" {
            for port in ports
                .map
                .iter()
                .filter(|(n, _)| n.ends_with("_in"))
                .map(|(_, p)| *p)
            {
                if !testkit::wait_for_port(port, Duration::from_secs(30)) {
                    bail!(
                        "the engine did not listen on {port}: see {}",
                        p.log.display()
                    );
                }
            }
        }
    }
    say!("{} processes started; feeding", procs.len());

    // Feeders.
    let fed: Counters = Arc::new(
        SOURCES
            .iter()
            .map(|(l, _, _)| (*l, AtomicU64::new(0)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut feeders = Vec::new();
    {
        let (s, f) = (stop.clone(), fed.clone());
        let (b, t) = (env.brokers.clone(), names.kafka_in.clone());
        feeders.push(std::thread::spawn(move || feed_kafka(b, t, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        let (u, n) = (env.redis.clone(), Names::new(&tag));
        feeders.push(std::thread::spawn(move || feed_redis(u, n, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        let (u, q) = (env.amqp.clone(), names.queue_in.clone());
        feeders.push(std::thread::spawn(move || feed_rabbit(u, q, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        let (u, t) = (env.pg.clone(), names.pg_in.clone());
        feeders.push(std::thread::spawn(move || feed_pg(u, t, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        let (a, k) = (env.aws.clone(), names.kin_in.clone());
        feeders.push(std::thread::spawn(move || feed_kinesis(a, k, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        let (a, b) = (env.aws.clone(), names.bucket_in.clone());
        feeders.push(std::thread::spawn(move || feed_s3(a, b, rate, s, f)));
        let (s, f, p) = (stop.clone(), fed.clone(), stdin_pipe.clone());
        feeders.push(std::thread::spawn(move || feed_stdin(p, rate, s, f)));
        let (s, f) = (stop.clone(), fed.clone());
        feeders.push(std::thread::spawn(move || feed_udp(udp_in, rate, s, f)));
    }

    // Chaos.
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let mut rng = Rng(stamp | 1);
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    let mut restarts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut next_kill = start + kill_every;
    let mut next_restart = start + restart_every;
    let mut restart_turn = 0u64;
    let mut last_report = start;
    let supervise = |procs: &mut Vec<Proc>, unexpected: &mut Vec<String>| -> Result<()> {
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                say!(
                    "{} exited by itself ({status}); starting it again (see {})",
                    p.name,
                    p.log.display()
                );
                unexpected.push(format!("{}: {status}", p.name));
                p.child = None;
                let stdin = p.start()?;
                if p.piped_stdin {
                    *stdin_pipe.lock().unwrap() = stdin;
                }
            }
        }
        Ok(())
    };
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        supervise(&mut procs, &mut unexpected)?;
        let now = Instant::now();
        if now >= next_kill {
            next_kill = now + kill_every;
            // The engine is the hub: it gets three tickets, every other process one.
            let killable: Vec<usize> = (0..procs.len())
                .filter(|i| !unkillable.contains(&procs[*i].name.as_str()))
                .flat_map(|i| {
                    let tickets = if procs[i].name == "engine" { 3 } else { 1 };
                    std::iter::repeat_n(i, tickets)
                })
                .collect();
            let i = killable[(rng.next() % killable.len() as u64) as usize];
            let p = &mut procs[i];
            p.kill9();
            *kills.entry(p.name.clone()).or_default() += 1;
            p.start()?;
        }
        if now >= next_restart {
            next_restart = now + restart_every;
            restart_turn += 1;
            // Redis and PostgreSQL in turn, each alternately a clean stop and a crash.
            let crash = restart_turn % 4 >= 2;
            if restart_turn % 2 == 1 {
                let (signal, how) = if crash {
                    (libc::SIGKILL, "SIGKILL")
                } else {
                    (libc::SIGTERM, "SIGTERM")
                };
                say!("restarting the private Redis ({how})");
                redis.restart(signal)?;
                *restarts.entry("redis").or_default() += 1;
            } else {
                let mode = if crash { "immediate" } else { "fast" };
                say!("restarting the private PostgreSQL (-m {mode})");
                pg.pg_ctl("restart", mode)?;
                *restarts.entry("postgres").or_default() += 1;
            }
        }
        if now - last_report >= Duration::from_secs(60) {
            last_report = now;
            let f: Vec<String> = SOURCES
                .iter()
                .map(|(l, name, _)| format!("{name}={}", fed[l].load(Ordering::Relaxed)))
                .collect();
            say!(
                "{:.1} min: fed {}; kills {}; restarts {}",
                (now - start).as_secs_f64() / 60.0,
                f.join(" "),
                kills.values().sum::<u64>(),
                restarts.values().sum::<u64>()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in feeders {
        let _ = f.join();
    }
    let fed_now: BTreeMap<char, u64> = fed
        .iter()
        .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
        .collect();
    say!("feeding stopped: {fed_now:?}; draining (up to {drain:?})");

    // Drain: read every output until nothing is missing or the drain time is over.
    let mut readers = Readers {
        names: Names::new(&tag),
        env: Env {
            brokers: env.brokers.clone(),
            amqp: env.amqp.clone(),
            aws: env.aws.clone(),
            redis: env.redis.clone(),
            pg: env.pg.clone(),
        },
        collect_file,
        udp_seen,
        s3_cache: HashMap::new(),
        rabbit: Seen::new(),
    };
    let drain_end = Instant::now() + drain;
    let result = loop {
        std::thread::sleep(Duration::from_secs(10));
        supervise(&mut procs, &mut unexpected)?;
        let outputs = match rt.block_on(readers.read_all()) {
            Ok(o) => o,
            Err(e) => {
                say!("reading the outputs failed: {e:#}; again");
                if Instant::now() > drain_end {
                    bail!("cannot read the outputs: {e:#}");
                }
                continue;
            }
        };
        let c = check(&fed_now, &outputs);
        if c.lost == 0 || Instant::now() > drain_end {
            break c;
        }
        say!("still missing {} ({}); waiting", c.lost, c.lines.join("; "));
    };

    all_done.store(true, Ordering::Relaxed);
    for p in procs.iter_mut().rev() {
        p.terminate(Duration::from_secs(5));
    }
    rt.block_on(delete_resources(&names, &env));
    drop(pg);

    for l in &result.lines {
        say!("LOST {l}");
    }
    for u in &result.uncounted {
        say!("not counted (lossy by design): {u}");
    }
    for u in &unexpected {
        say!("unexpected exit: {u}");
    }
    let per_source: Vec<String> = SOURCES
        .iter()
        .filter(|(_, _, counted)| *counted)
        .map(|(l, name, _)| format!("{name}={}", fed_now[l]))
        .collect();
    let total: u64 = SOURCES
        .iter()
        .filter(|(_, _, counted)| *counted)
        .map(|(l, _, _)| fed_now[l])
        .sum();
    let kill_list: Vec<String> = kills.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let restart_list: Vec<String> = restarts.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let line = format!(
        "SOAK RESULT: minutes={minutes} messages_in={total} ({}) kills={} ({}) restarts={} ({}) unexpected_exits={} lost={} duplicates={}",
        per_source.join(" "),
        kills.values().sum::<u64>(),
        kill_list.join(" "),
        restarts.values().sum::<u64>(),
        restart_list.join(" "),
        unexpected.len(),
        result.lost,
        result.duplicates
    );
    println!("{line}");
    let _ = std::fs::write(dir.join("result.txt"), format!("{line}\n"));
    if let Ok(mut f) = File::create(dir.join("uncounted.txt")) {
        let _ = writeln!(f, "{}", result.uncounted.join("\n"));
    }
    Ok(result.lost == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_cut_lines_and_count_repeats() {
        let mut seen = Seen::new();
        tokens(
            b"k-00000001\nk-0000k-00000002\nk-00000002\nx-123456789\n",
            &mut seen,
        );
        assert_eq!(seen.get("k-00000001"), Some(&1));
        assert_eq!(seen.get("k-00000002"), Some(&2));
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn check_reports_missing_ids_and_duplicates() {
        let fed: BTreeMap<char, u64> = SOURCES.iter().map(|(l, _, _)| (*l, 3)).collect();
        let mut outputs: BTreeMap<&'static str, Seen> = BTreeMap::new();
        for (letter, sinks) in ROUTES {
            for sink in *sinks {
                let seen = outputs.entry(sink).or_default();
                for i in 1..=3 {
                    seen.insert(record(*letter, i), 1);
                }
            }
        }
        let c = check(&fed, &outputs);
        assert_eq!((c.lost, c.duplicates), (0, 0));
        outputs.get_mut("pg_out").unwrap().remove("k-00000002");
        outputs
            .get_mut("collect")
            .unwrap()
            .insert("i-00000003".into(), 3);
        // Lossy by design: not counted.
        outputs.get_mut("udp_out").unwrap().remove("u-00000001");
        let c = check(&fed, &outputs);
        assert_eq!((c.lost, c.duplicates), (1, 2));
        assert!(c.lines[0].contains("k -> pg_out") && c.lines[0].contains("k-00000002"));
        assert!(c.uncounted.iter().any(|u| u == "u -> udp_out: 2/3 arrived"));
    }
}
