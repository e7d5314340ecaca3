//! Integration-test helpers shared by every crate's tests.
//!
//! Tests run the real binaries (engine, connectors) as processes on loopback against real
//! services. Binaries come from the workspace target directory: build them first with
//! `cargo build --workspace --bins` (the test script does). Services are located through
//! environment variables set by `scripts/services.sh`, with loopback defaults; a service that
//! is not reachable fails the test with a message saying how to start it.

pub mod proxy;
pub mod s3;
pub mod shell;

pub use proxy::Proxy;

use std::fs::File;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`engine`, `kafka_source`, ...). Panics with what to do
/// when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-xxxx -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A name unique to this test run, for topics, queues, tables, buckets and sockets.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A service address from `var` (default `default`), checked reachable: the test fails
/// with instructions when it is not.
pub fn service(var: &str, default: &str, host_port: impl Fn(&str) -> String, name: &str) -> String {
    let value = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let addr = host_port(&value);
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        .unwrap_or(false);
    assert!(
        reachable,
        "{name} is not reachable at {addr} ({var}={value}): start it with `bash scripts/services.sh` (the test script does)"
    );
    value
}

/// Redis URL (`REDIS_URL`, default `redis://127.0.0.1:6379`), checked reachable.
pub fn redis_url() -> String {
    service(
        "REDIS_URL",
        "redis://127.0.0.1:6379",
        |v| host_port_of_url(v, 6379),
        "Redis",
    )
}

/// AMQP URL (`AMQP_URL`, default guest on 127.0.0.1:5672), checked reachable.
pub fn amqp_url() -> String {
    service(
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        |v| host_port_of_url(v, 5672),
        "RabbitMQ",
    )
}

/// PostgreSQL connection string (`PG_URL`, default trust on 127.0.0.1:5432, db test).
pub fn pg_url() -> String {
    service(
        "PG_URL",
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        |_| "127.0.0.1:5432".to_string(),
        "PostgreSQL",
    )
}

/// Kafka bootstrap brokers (`KAFKA_BROKERS`, default 127.0.0.1:9092), checked reachable.
pub fn kafka_brokers() -> String {
    service(
        "KAFKA_BROKERS",
        "127.0.0.1:9092",
        |v| v.split(',').next().unwrap_or(v).to_string(),
        "Kafka broker",
    )
}

/// S3/Kinesis endpoint (`AWS_ENDPOINT_URL`, default moto on http://127.0.0.1:5000).
pub fn aws_endpoint() -> String {
    service(
        "AWS_ENDPOINT_URL",
        "http://127.0.0.1:5000",
        |v| host_port_of_url(v, 80),
        "S3/Kinesis (moto)",
    )
}

fn host_port_of_url(url: &str, default_port: u16) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    }
}

/// A child process that is killed (SIGKILL) when dropped; its stdout and stderr go to
/// files so a chatty process never blocks on a full pipe.
pub struct Proc {
    /// Name used in messages.
    pub name: String,
    child: Child,
    /// File receiving stdout.
    pub stdout_path: PathBuf,
    /// File receiving stderr.
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`; logs go to `dir`.
    pub fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> Proc {
        Self::spawn_with(dir, name, Command::new(program).args(args))
    }

    /// Starts a prepared command (env, stdin, ...); stdout/stderr are redirected to files.
    pub fn spawn_with(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdout(Stdio::from(
                File::create(&stdout_path).expect("create stdout file"),
            ))
            .stderr(Stdio::from(
                File::create(&stderr_path).expect("create stderr file"),
            ))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for exit; returns the exit code (None = still running or signal).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_timeout(timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        std::fs::read(&self.stdout_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_ok())
}

/// Builds an application TOML file for a test.
pub struct AppFile {
    text: String,
}

impl AppFile {
    /// A new application named `name`.
    pub fn new(name: &str) -> AppFile {
        AppFile {
            text: format!("name = \"{name}\"\n"),
        }
    }

    /// Adds a raw TOML line at the top level (before any table), e.g. `cookie = "x"`.
    pub fn top(mut self, line: &str) -> AppFile {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// Declares a source connector the engine listens for on a TCP port.
    pub fn source(mut self, name: &str, port: u16, extra: &str) -> AppFile {
        self.text.push_str(&format!(
            "\n[source_connectors.{name}]\nport = {port}\n{extra}\n"
        ));
        self
    }

    /// Declares a sink connector that listens on a TCP port.
    pub fn sink(mut self, name: &str, port: u16, extra: &str) -> AppFile {
        self.text.push_str(&format!(
            "\n[sink_connectors.{name}]\nport = {port}\n{extra}\n"
        ));
        self
    }

    /// Adds a pass-through pipeline.
    pub fn pipeline(mut self, source: &str, sinks: &[&str]) -> AppFile {
        let sinks: Vec<String> = sinks.iter().map(|s| format!("\"{s}\"")).collect();
        self.text.push_str(&format!(
            "\n[[pipelines]]\nsource = \"{source}\"\nsinks = [{}]\n",
            sinks.join(", ")
        ));
        self
    }

    /// Writes the file into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("app.toml");
        std::fs::write(&path, &self.text).expect("write application file");
        path
    }
}

/// Starts the `engine` binary on `app` (extra args appended); waits until every TCP
/// port in `ports` is listening.
pub fn start_engine(dir: &Path, name: &str, app: &Path, extra: &[&str], ports: &[u16]) -> Proc {
    let mut args = vec![
        "--application-module".to_string(),
        app.display().to_string(),
        "--stats-interval".to_string(),
        "0".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Proc::spawn(dir, name, &bin("engine"), &args);
    for port in ports {
        if !wait_for_port(*port, Duration::from_secs(20)) {
            let err = p.stderr();
            p.kill9();
            panic!("engine did not listen on {port}: {err}");
        }
    }
    p
}

/// Starts a connector binary with `--application-module app --connector name` plus `args`.
pub fn start_connector(
    dir: &Path,
    program: &str,
    app: &Path,
    connector: &str,
    args: &[String],
) -> Proc {
    let mut all = vec![
        "--application-module".to_string(),
        app.display().to_string(),
        "--connector".to_string(),
        connector.to_string(),
        "--stats-interval".to_string(),
        "0".to_string(),
    ];
    all.extend(args.iter().cloned());
    Proc::spawn(dir, &format!("{program}-{connector}"), &bin(program), &all)
}
