//! End-to-end throughput with acknowledgements on: the runtime's source client (batches of
//! 4096 records sent and their tokens released as the source driver does) -> the engine
//! (pass-through) -> the runtime's sink server, each on its own single-threaded runtime and
//! thread, over Unix sockets and TCP on loopback. Prints messages/s and MB/s.
//!
//! `cargo bench -p connector-runtime --bench end_to_end` (BENCH_MESSAGES, BENCH_PAYLOAD to change).

use std::path::Path;
use std::time::{Duration, Instant};

use application::{Application, Direction, Endpoint};
use connector_runtime::client::SourceClient;
use connector_runtime::format::Format;
use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::sink::{Sink, SinkServerConfig};
use framing::{Hello, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn run(label: &str, unix: bool, messages: u64, payload: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src_ep, sink_ep, toml) = if unix {
        let s = dir.path().join("feed.sock");
        let k = dir.path().join("out.sock");
        (
            Endpoint::Unix(s.clone()),
            Endpoint::Unix(k.clone()),
            format!(
                "name = \"bench\"\n[source_connectors.feed]\npath = \"{}\"\nmax_credits = 65536\nrefill_credits = 32768\n[sink_connectors.out]\npath = \"{}\"\nmax_credits = 65536\n[[pipelines]]\nsource = \"feed\"\nsinks = [\"out\"]\n",
                s.display(),
                k.display()
            ),
        )
    } else {
        let (a, b) = (free_port(), free_port());
        (
            Endpoint::Tcp { host: "127.0.0.1".into(), port: a },
            Endpoint::Tcp { host: "127.0.0.1".into(), port: b },
            format!(
                "name = \"bench\"\n[source_connectors.feed]\nport = {a}\nmax_credits = 65536\nrefill_credits = 32768\n[sink_connectors.out]\nport = {b}\nmax_credits = 65536\n[[pipelines]]\nsource = \"feed\"\nsinks = [\"out\"]\n",
            ),
        )
    };
    let config = Application::parse(&toml, Path::new("bench.toml")).expect("config");

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink_thread = std::thread::spawn(move || {
        rt().block_on(async move {
            let mut sink = Sink::listen(
                SinkServerConfig {
                    endpoint: sink_ep,
                    cookie: String::new(),
                    max_credits: 65536,
                    max_frame: 1 << 24,
                },
                ConnectorMetrics::new("bench_sink", "out", Direction::Sink),
                CancellationToken::new(),
            )
            .await
            .expect("sink listens");
            let _ = ready_tx.send(());
            let mut got = 0u64;
            let mut bytes = 0u64;
            while got < messages {
                let Some(batch) = sink.read_batch(8192).await else {
                    break;
                };
                got += batch.len() as u64;
                bytes += batch.iter().map(|m| m.payload.len() as u64).sum::<u64>();
                sink.ack_all(&batch);
            }
            // Give the last ACK time to leave.
            tokio::time::sleep(Duration::from_millis(50)).await;
            (got, bytes)
        })
    });
    ready_rx.recv().expect("sink ready");
    let options = engine::RunOptions {
        stats_interval: Duration::ZERO,
        ..Default::default()
    };
    let engine = engine::spawn(
        || {
            let mut app = engine::App::new();
            app.pass_through("feed", &["out"]);
            app
        },
        config,
        options,
    )
    .expect("engine starts");

    let body = vec![b'x'; payload];
    let started = Instant::now();
    let unacked = rt().block_on(async move {
        let hello = Hello {
            version: PROTOCOL_VERSION.into(),
            cookie: String::new(),
            program_name: "bench".into(),
            instance_name: "feed".into(),
        };
        let mut source: SourceClient<u64> = SourceClient::engine(
            src_ep,
            hello,
            1 << 24,
            ConnectorMetrics::new("bench_source", "feed", Direction::Source),
            CancellationToken::new(),
        );
        let s = source
            .open(&format!("bench-{unix}"), None)
            .await
            .expect("open");
        let mut batch = source.batch(Format::Lines);
        let mut released = 0u64;
        let mut id = 0u64;
        while id < messages {
            while batch.len() < 4096 && id < messages {
                id += 1;
                batch.push(s.id, id, b"", &body, id);
            }
            source.send(&mut batch).await.expect("send");
            released += source.take_released().len() as u64;
        }
        let left = source
            .drain(None, Duration::from_secs(120))
            .await
            .expect("drain");
        released += source.take_released().len() as u64;
        assert_eq!(released + left as u64, messages, "tokens released in full");
        left
    });
    let elapsed = started.elapsed();
    let (got, bytes) = sink_thread.join().expect("sink thread");
    drop(engine);
    assert_eq!(got, messages, "every message reaches the sink");
    assert_eq!(unacked, 0, "every message is acknowledged end to end");
    let secs = elapsed.as_secs_f64();
    println!(
        "{label:<5} {payload:>5} B  {messages:>10} msgs  {:>6.2} s  {:>12.0} msgs/s  {:>8.1} MB/s (acked end to end)",
        secs,
        messages as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less args; keep it quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let messages: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 100_000 } else { 10_000_000 });
    let payload: usize = std::env::var("BENCH_PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let only = std::env::var("BENCH_TRANSPORT").unwrap_or_default();
    if only.is_empty() || only == "unix" {
        run("unix", true, messages, payload);
    }
    if only.is_empty() || only == "tcp" {
        run("tcp", false, messages, payload);
    }
}
