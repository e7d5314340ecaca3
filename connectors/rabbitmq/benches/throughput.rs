//! Throughput of rabbitmq_sink, rabbitmq_source and the whole relay, each beside a plain
//! lapin program doing the same work in the same run (same broker, same messages).
//!
//! ```text
//! CARGO_TARGET_DIR=target-rabbitmq cargo build --release -p engine -p rabbitmq-connectors --bins
//! CARGO_TARGET_DIR=target-rabbitmq cargo bench -p rabbitmq-connectors --bench throughput
//! ```
//! `BENCH_N` (default 200000) messages of `BENCH_BYTES` (default 100) bytes, persistent, to
//! durable queues, publisher confirms and manual acks everywhere.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WINDOW: usize = 4096;
const PREFETCH: u16 = 1000;

fn main() {
    let n: usize = env_or("BENCH_N", 200_000);
    let size: usize = env_or("BENCH_BYTES", 100);
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let url = testkit::amqp_url();
    let queues: Vec<String> = (0..6)
        .map(|i| testkit::unique(&format!("bench{i}")))
        .collect();
    for q in &queues {
        amqp.queue(q, None);
    }
    let [qa, qb, qc, qd, qe, qf] = [0, 1, 2, 3, 4, 5].map(|i| queues[i].clone());
    let body = |i: usize| {
        let mut b = format!("{i:012}").into_bytes();
        b.resize(size, b'x');
        b
    };
    let msgs: Vec<Vec<u8>> = (0..n).map(body).collect();
    let mb = (n * size) as f64 / 1e6;
    let mut rows = Vec::new();
    let mut row = |what: &str, secs: f64| {
        let line = format!(
            "| {what} | {:.0} | {:.1} | {:.2} |",
            n as f64 / secs,
            mb / secs,
            secs
        );
        eprintln!("{line}");
        rows.push(line);
    };

    // Publishing: plain lapin vs rabbitmq_sink (--from stdin).
    let secs = amqp.rt.block_on(raw_publish(&url, &qa, &msgs));
    row("plain lapin publisher (confirms, 4096 in flight)", secs);
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("input.frames");
    let mut buf = Vec::with_capacity(n * (size + 4));
    for m in &msgs {
        buf.extend_from_slice(&(m.len() as u32).to_be_bytes());
        buf.extend_from_slice(m);
    }
    std::fs::write(&frames, &buf).unwrap();
    let start = Instant::now();
    let status = Command::new(testkit::bin("rabbitmq_sink"))
        .args([
            "--connector",
            "out",
            "--from",
            "stdin",
            "--format",
            "frames",
            "--stats-interval",
            "0",
            "--out-amqpurl",
            &url,
            "--out-routing_key",
            &qb,
        ])
        .stdin(std::fs::File::open(&frames).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    row("rabbitmq_sink --from stdin", start.elapsed().as_secs_f64());
    assert_eq!(amqp.count(&qb) as usize, n);

    // Consuming: plain lapin vs rabbitmq_source (--to stdout).
    let secs = amqp.rt.block_on(raw_consume(&url, &qa, n));
    row("plain lapin consumer (prefetch 1000, multiple acks)", secs);
    let start = Instant::now();
    let mut src = Command::new(testkit::bin("rabbitmq_source"))
        .args([
            "--connector",
            "in",
            "--to",
            "stdout",
            "--format",
            "frames",
            "--stats-interval",
            "0",
            "--in-amqpurl",
            &url,
            "--in-queue",
            &qb,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = src.stdout.take().unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    while got < n * (size + 4) {
        let k = out.read(&mut chunk).unwrap();
        assert!(k > 0, "rabbitmq_source stopped early");
        got += k;
    }
    row("rabbitmq_source --to stdout", start.elapsed().as_secs_f64());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(src.id() as i32, libc::SIGTERM) };
    let _ = src.wait();

    // Relay queue -> queue: plain lapin consume+publish+ack-after-confirm vs
    // rabbitmq_source -> engine -> rabbitmq_sink.
    amqp.publish(
        "",
        &msgs
            .iter()
            .map(|m| (qc.clone(), m.clone()))
            .collect::<Vec<_>>(),
    );
    let secs = amqp.rt.block_on(raw_relay(&url, &qc, &qd, n));
    row(
        "plain lapin relay (consume, publish, ack after confirm)",
        secs,
    );
    amqp.publish(
        "",
        &msgs
            .iter()
            .map(|m| (qe.clone(), m.clone()))
            .collect::<Vec<_>>(),
    );
    let t = Topology {
        x_in: String::new(),
        q_in: qe.clone(),
        x_out: String::new(),
        q_out: qf.clone(),
    };
    let start = Instant::now();
    let mut p = Pipeline::start_with_sink(&t, &[], &["--out-routing_key", &qf]);
    amqp.wait_count(&qf, n as u32, Duration::from_secs(600), || p.logs());
    row(
        "rabbitmq_source -> engine -> rabbitmq_sink",
        start.elapsed().as_secs_f64(),
    );
    p.stop();

    for q in &queues {
        amqp.delete_queue(q);
    }
    println!("\n{n} messages of {size} bytes, persistent, durable queues\n");
    println!("| what | msg/s | MB/s | seconds |\n|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Publishes with confirms, `WINDOW` messages in flight, persistent.
async fn raw_publish(url: &str, queue: &str, msgs: &[Vec<u8>]) -> f64 {
    let (_conn, ch) = channel(url).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let start = Instant::now();
    for chunk in msgs.chunks(WINDOW) {
        for m in chunk {
            let c = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    m,
                    props.clone(),
                )
                .await
                .unwrap();
            drop(c);
        }
        assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    }
    start.elapsed().as_secs_f64()
}

/// Consumes `n` messages, acknowledging (multiple) every 100.
async fn raw_consume(url: &str, queue: &str, n: usize) -> f64 {
    let (_conn, ch) = channel(url).await;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut c = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 1..=n {
        let d = c.next().await.unwrap().unwrap();
        if i % 100 == 0 || i == n {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    start.elapsed().as_secs_f64()
}

/// Consumes from `from`, publishes to `to` with confirms, acknowledges each batch after its
/// confirms: what the connector pair does, in one process.
async fn raw_relay(url: &str, from: &str, to: &str, n: usize) -> f64 {
    let (_c1, inp) = channel(url).await;
    let (_c2, out) = channel(url).await;
    inp.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let start = Instant::now();
    let mut c = inp
        .basic_consume(
            from.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut done = 0;
    while done < n {
        let mut batch = vec![c.next().await.unwrap().unwrap()];
        while let Some(Some(Ok(d))) = futures::FutureExt::now_or_never(c.next()) {
            batch.push(d);
        }
        for d in &batch {
            let p = out
                .basic_publish(
                    "".into(),
                    to.into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    props.clone(),
                )
                .await
                .unwrap();
            drop(p);
        }
        assert!(out.wait_for_confirms().await.unwrap().is_empty());
        let last = batch.last().unwrap();
        last.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .unwrap();
        done += batch.len();
    }
    start.elapsed().as_secs_f64()
}
