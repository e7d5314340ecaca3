//! The Redis sources without the engine (`--to stdout`): re-delivery of this consumer's
//! pending entries, claiming a dead consumer's entries, JSON for entries without the payload
//! field, and plain-channel subscriptions.
//!
//! Build first: `cargo build -p redis-connectors --bins`.

mod common;

use std::time::Duration;

use common::*;
use testkit::Proc;

fn spawn(dir: &std::path::Path, program: &str, args: &[&str]) -> Proc {
    let mut all: Vec<String> = ["--to", "stdout", "--format", "kv", "--stats-interval", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn(dir, program, &testkit::bin(program), &all)
}

fn lines(p: &Proc) -> Vec<String> {
    String::from_utf8_lossy(&p.stdout())
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn stream_source_redelivers_pending_claims_dead_consumers_and_sends_json() {
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let dir = tempfile::tempdir().unwrap();
    let stream = testkit::unique("claim");
    let group = "g";
    for i in 1..=3 {
        let _: String = r.cmd(
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("key")
                .arg(format!("k{i}"))
                .arg("payload")
                .arg(format!("p{i}")),
        );
    }
    let _: () = r.cmd(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(group)
            .arg("0"),
    );
    // A consumer that read two entries and died; then this consumer read one and crashed.
    let _: redis::Value = r.cmd(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("ghost")
            .arg("COUNT")
            .arg(2)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">"),
    );
    let _: redis::Value = r.cmd(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("in")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">"),
    );
    // Two more entries, one without the payload field.
    let _: String = r.cmd(
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("key")
            .arg("k4")
            .arg("payload")
            .arg("p4"),
    );
    let _: String = r.cmd(
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("temp")
            .arg("21.5")
            .arg("unit")
            .arg("C"),
    );
    assert_eq!(r.pending(&stream, group), 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut p = spawn(
        dir.path(),
        "redis_stream_source",
        &[
            "--connector",
            "in",
            "--in-url",
            &url,
            "--in-stream",
            &stream,
            "--in-group",
            group,
            "--in-claim_idle_ms",
            "200",
        ],
    );
    wait_for(
        "5 records",
        Duration::from_secs(20),
        || p.stderr(),
        || lines(&p).len() >= 5,
    );
    wait_for(
        "nothing pending",
        Duration::from_secs(20),
        || p.stderr(),
        || r.pending(&stream, group) == 0,
    );
    let status = p.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", p.stderr());
    let got = lines(&p);
    // Own pending entry first, then the claimed ones, then new entries.
    assert_eq!(
        got,
        vec![
            "k3\tp3",
            "k1\tp1",
            "k2\tp2",
            "k4\tp4",
            "\t{\"temp\":\"21.5\",\"unit\":\"C\"}",
        ],
        "{}",
        p.stderr()
    );
    r.del(&[&stream]);
}

#[test]
fn subscriber_source_forwards_subscribed_channels_only() {
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let dir = tempfile::tempdir().unwrap();
    let (c1, c2, c3) = (
        testkit::unique("c1"),
        testkit::unique("c2"),
        testkit::unique("c3"),
    );
    let topics = format!("{c1},{c2}");
    let mut p = spawn(
        dir.path(),
        "redis_subscriber_source",
        &[
            "--connector",
            "sub",
            "--sub-url",
            &url,
            "--sub-topic",
            &topics,
        ],
    );
    wait_for(
        "the subscription",
        Duration::from_secs(20),
        || p.stderr(),
        || p.stderr().contains("subscribed to channels"),
    );
    for (ch, msg) in [
        (&c3, "not me"),
        (&c1, "one"),
        (&c2, "two  "),
        (&c1, "three"),
    ] {
        let _: i64 = r.cmd(redis::cmd("PUBLISH").arg(ch).arg(msg));
    }
    wait_for(
        "3 records",
        Duration::from_secs(20),
        || p.stderr(),
        || lines(&p).len() >= 3,
    );
    let status = p.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", p.stderr());
    assert_eq!(
        lines(&p),
        vec![
            format!("{c1}\tone"),
            format!("{c2}\ttwo  "),
            format!("{c1}\tthree")
        ]
    );
}

#[test]
fn subscriber_source_keeps_channel_names_as_bytes() {
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let dir = tempfile::tempdir().unwrap();
    let prefix = testkit::unique("bin");
    let pattern = format!("{prefix}.*");
    let mut p = spawn(
        dir.path(),
        "redis_subscriber_source",
        &[
            "--connector",
            "sub",
            "--sub-url",
            &url,
            "--sub-topic",
            &pattern,
            "--sub-pattern",
            "true",
        ],
    );
    wait_for(
        "the subscription",
        Duration::from_secs(20),
        || p.stderr(),
        || p.stderr().contains("subscribed to patterns"),
    );
    let channels: Vec<Vec<u8>> = [&b"\xff\xfe"[..], "café".as_bytes(), b"\xff"]
        .iter()
        .map(|suffix| [format!("{prefix}.").as_bytes(), suffix].concat())
        .collect();
    for (i, ch) in channels.iter().enumerate() {
        let _: i64 = r.cmd(redis::cmd("PUBLISH").arg(ch).arg(format!("v{i}")));
    }
    let want: Vec<u8> = channels
        .iter()
        .enumerate()
        .flat_map(|(i, ch)| [&ch[..], format!("\tv{i}\n").as_bytes()].concat())
        .collect();
    wait_for(
        "3 records",
        Duration::from_secs(20),
        || p.stderr(),
        || p.stdout().len() >= want.len(),
    );
    let status = p.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", p.stderr());
    assert_eq!(
        p.stdout().escape_ascii().to_string(),
        want.escape_ascii().to_string(),
        "channel names unchanged, not `?`"
    );
}
