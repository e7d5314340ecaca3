//! Single-connector behaviour against the real broker, without the engine (`--to stdout`,
//! `--from stdin`): rejected deliveries go to the queue's dead-letter exchange, unroutable
//! publishes are retried then dead-lettered, configuration errors are one clear line, and an
//! unreachable broker is waited for.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lapin::ExchangeKind;
use testkit::Proc;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn oversized_delivery_is_nacked_to_the_dead_letter_exchange() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let (dlx, dlq, q) = (
        testkit::unique("dlx"),
        testkit::unique("dlq"),
        testkit::unique("reject_in"),
    );
    amqp.exchange(&dlx, ExchangeKind::Fanout);
    amqp.queue(&dlq, None);
    amqp.bind(&dlq, &dlx, "");
    let dir = tempfile::tempdir().unwrap();
    let url = testkit::amqp_url();
    // The source declares the queue with its dead-letter exchange.
    let mut src = Proc::spawn(
        dir.path(),
        "source",
        &testkit::bin("rabbitmq_source"),
        &args(&[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--format",
            "kv",
            "--stats-interval",
            "0",
            "--in-amqpurl",
            &url,
            "--in-queue",
            &q,
            "--in-declare",
            "true",
            "--in-dead_letter_exchange",
            &dlx,
            "--in-max_bytes",
            "100",
        ]),
    );
    assert!(
        testkit::wait_until(Duration::from_secs(20), || amqp.counts(&q).1 == 1),
        "source did not start consuming: {}",
        src.stderr()
    );
    let mut input: Vec<Msg> = (0..10)
        .map(|i| (q.clone(), format!("small {i}").into_bytes()))
        .collect();
    input.insert(5, (q.clone(), vec![b'x'; 101]));
    amqp.publish("", &input);
    assert!(
        testkit::wait_until(Duration::from_secs(20), || {
            String::from_utf8_lossy(&src.stdout()).lines().count() == 10
        }),
        "expected 10 records on stdout: {:?}\n{}",
        String::from_utf8_lossy(&src.stdout()),
        src.stderr()
    );
    amqp.wait_count(&dlq, 1, Duration::from_secs(20), || src.stderr());
    let status = src.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", src.stderr());
    let out = String::from_utf8(src.stdout()).unwrap();
    let want: String = (0..10).map(|i| format!("{q}\tsmall {i}\n")).collect();
    assert_eq!(out, want, "key TAB payload, in order");
    assert_eq!(amqp.count(&q), 0, "every delivery acknowledged or rejected");
    let dead = amqp.drain(&dlq);
    assert_eq!(dead, vec![(q.clone(), vec![b'x'; 101])]);
    assert!(
        src.stderr().contains("over max_bytes 100"),
        "{}",
        src.stderr()
    );
    amqp.delete_queue(&q);
    amqp.delete_queue(&dlq);
    amqp.delete_exchange(&dlx);
}

#[test]
fn unroutable_message_is_retried_then_dead_lettered() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let (x, q) = (testkit::unique("mand_x"), testkit::unique("mand_q"));
    amqp.exchange(&x, ExchangeKind::Direct);
    amqp.queue(&q, None);
    amqp.bind(&q, &x, "ok");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.kv");
    std::fs::write(
        &input,
        b"ok\tfirst\nnowhere\tlost?\nok\tsecond\nbad\xff\tx\n",
    )
    .unwrap();
    let dead = dir.path().join("dead");
    let url = testkit::amqp_url();
    let mut cmd = Command::new(testkit::bin("rabbitmq_sink"));
    cmd.args(args(&[
        "--connector",
        "out",
        "--from",
        "stdin",
        "--format",
        "kv",
        "--stats-interval",
        "0",
        "--out-amqpurl",
        &url,
        "--out-exchange",
        &x,
        "--out-mandatory",
        "true",
        "--out-retries",
        "2",
        "--dead-letter",
        &dead.display().to_string(),
    ]))
    .stdin(Stdio::from(File::open(&input).unwrap()));
    let mut sink = Proc::spawn_with(dir.path(), "sink", &mut cmd);
    let status = sink.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        sink.stderr()
    );
    let got = amqp.drain(&q);
    assert_eq!(
        got,
        vec![
            ("ok".to_string(), b"first".to_vec()),
            ("ok".to_string(), b"second".to_vec())
        ]
    );
    let index = std::fs::read_to_string(dead.join("out.jsonl")).unwrap();
    let lines: Vec<&str> = index.lines().collect();
    assert_eq!(lines.len(), 2, "{index}");
    assert!(
        index.contains("\"key\":\"nowhere\"")
            && index.contains("NO_ROUTE")
            && index.contains("3 times"),
        "{index}"
    );
    assert!(index.contains("is not UTF-8"), "{index}");
    amqp.delete_queue(&q);
    amqp.delete_exchange(&x);
}

#[test]
fn a_missing_queue_is_one_clear_error() {
    let _lock = broker_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let url = testkit::amqp_url();
    let q = testkit::unique("missing");
    let out = Command::new(testkit::bin("rabbitmq_source"))
        .args(args(&[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--stats-interval",
            "0",
            "--in-amqpurl",
            &url,
            "--in-queue",
            &q,
        ]))
        .env_remove("RUST_LOG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot consume from queue `{q}`: it does not exist"
        )),
        "{err}"
    );
    // --check says the same, as a FAIL line.
    let out = Command::new(testkit::bin("rabbitmq_source"))
        .args(args(&[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--check",
            "--in-amqpurl",
            &url,
            "--in-queue",
            &q,
        ]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL") && text.contains("does not exist"),
        "{text}"
    );
    // A malformed URL names the flag.
    let out = Command::new(testkit::bin("rabbitmq_sink"))
        .args(args(&[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--out-amqpurl",
            "http://x",
        ]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --out-amqpurl"), "{err}");
}

#[test]
fn waits_for_an_unreachable_broker_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let mut src = Proc::spawn(
        dir.path(),
        "source",
        &testkit::bin("rabbitmq_source"),
        &args(&[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--stats-interval",
            "0",
            "--in-amqpurl",
            &url,
            "--in-queue",
            "q",
        ]),
    );
    assert!(
        testkit::wait_until(Duration::from_secs(10), || src
            .stderr()
            .contains("retrying every")),
        "{}",
        src.stderr()
    );
    assert!(src.is_running());
    let status = src.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} {}",
        src.stderr()
    );
}

#[test]
fn a_delivery_lapin_cannot_parse_stops_the_source_with_one_line() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let (x, q) = (testkit::unique("poison_x"), testkit::unique("poison_q"));
    amqp.exchange(&x, ExchangeKind::Fanout);
    amqp.queue(&q, None);
    amqp.bind(&q, &x, "");
    amqp.publish(&x, &[("before".into(), b"m1".to_vec())]);
    publish_raw(&x, b"bad\xff", b"poison");
    amqp.publish(&x, &[("after".into(), b"m3".to_vec())]);
    let dir = tempfile::tempdir().unwrap();
    let url = testkit::amqp_url();
    let mut cmd = Command::new(testkit::bin("rabbitmq_source"));
    cmd.args(args(&[
        "--connector",
        "in",
        "--to",
        "stdout",
        "--format",
        "kv",
        "--stats-interval",
        "0",
        "--in-amqpurl",
        &url,
        "--in-queue",
        &q,
    ]));
    let mut src = Proc::spawn_with(dir.path(), "source", &mut cmd);
    // Not a reconnect loop that delivers `before` again and again: no reconnect, one clear
    // line, exit 1.
    let status = src.wait_timeout(Duration::from_secs(20));
    let err = src.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(!err.contains("lost the broker connection"), "{err}");
    let fatal: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("rabbitmq_source: "))
        .collect();
    assert_eq!(fatal.len(), 1, "{err}");
    assert!(
        fatal[0].contains(&format!("cannot consume from queue `{q}`"))
            && fatal[0].contains("not UTF-8")
            && fatal[0].contains("remove it from the queue"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&src.stdout()).into_owned();
    assert!(out.is_empty() || out == "before\tm1\n", "{out:?}");
    assert_eq!(amqp.count(&q), 3, "nothing acknowledged or lost");
    amqp.delete_queue(&q);
    amqp.delete_exchange(&x);
}
