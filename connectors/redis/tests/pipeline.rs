//! redis_stream_source -> engine -> redis_hash_sink + redis_stream_sink against the real
//! Redis: bytes and keys preserved, every entry acknowledged (XACK) at the end, and nothing
//! lost when the source or the engine is killed with SIGKILL mid-run.
//!
//! Build first: `cargo build -p engine -p redis-connectors --bins`.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn relays_100k_entries_to_a_hash_and_a_stream_with_bytes_and_keys_intact() {
    let _lock = heavy();
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let (input_stream, hash, output_stream) = (
        testkit::unique("in"),
        testkit::unique("hash"),
        testkit::unique("out"),
    );
    let group = testkit::unique("group");
    let input: Vec<Msg> = (0..100_000).map(message).collect();
    r.xadd_all(&input_stream, &input);
    let mut p = Pipeline::start(
        &url,
        (
            "redis_stream_source",
            &["--in-stream", &input_stream, "--in-group", &group],
        ),
        &[
            ("redis_hash_sink", "h", &["--h-key", &hash]),
            ("redis_stream_sink", "o", &["--o-stream", &output_stream]),
        ],
        "",
    );
    let logs = || p.logs();
    wait_for(
        "100k entries in the output stream",
        Duration::from_secs(120),
        logs,
        || r.xlen(&output_stream) >= input.len(),
    );
    wait_for(
        "100k fields in the hash",
        Duration::from_secs(30),
        logs,
        || r.hlen(&hash) >= input.len(),
    );
    wait_for(
        "every input entry XACKed",
        Duration::from_secs(30),
        logs,
        || r.pending(&input_stream, &group) == 0,
    );
    p.stop();

    // The stream sink: every message once, in input order, bytes and keys unchanged.
    let output = r.read_stream(&output_stream);
    assert_eq!(output.len(), input.len());
    assert_all_delivered(&input, &output, 0);
    assert!(
        output == input,
        "output stream order differs from the input order"
    );

    // The hash sink: field = key, value = payload, for every message.
    let h = r.hash(&hash);
    assert_eq!(h.len(), input.len());
    for (k, v) in &input {
        assert_eq!(
            h.get(k),
            Some(v),
            "hash field {:?}",
            String::from_utf8_lossy(k)
        );
    }
    r.del(&[&input_stream, &hash, &output_stream]);
}

#[test]
fn stream_source_loses_nothing_when_it_or_the_engine_is_killed() {
    let _lock = heavy();
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let (input_stream, output_stream) = (testkit::unique("kin"), testkit::unique("kout"));
    let group = testkit::unique("kgroup");
    let input: Vec<Msg> = (0..100_000).map(message).collect();
    r.xadd_all(&input_stream, &input);
    let mut p = Pipeline::start(
        &url,
        (
            "redis_stream_source",
            // Small reads so that a kill lands in the middle of the run.
            &[
                "--in-stream",
                &input_stream,
                "--in-group",
                &group,
                "--in-count",
                "200",
            ],
        ),
        &[("redis_stream_sink", "o", &["--o-stream", &output_stream])],
        "",
    );
    let mut kills = Vec::new();
    for (at, what) in [(15_000, "source"), (40_000, "engine"), (65_000, "source")] {
        wait_for(
            &format!("{at} entries out"),
            Duration::from_secs(90),
            || p.logs(),
            || r.xlen(&output_stream) >= at,
        );
        let before = r.xlen(&output_stream);
        match what {
            "source" => p.restart_source_hard(),
            _ => p.restart_engine_hard(),
        }
        kills.push((what, before));
    }
    // Duplicates are possible, so "done" is: every input entry XACKed and, since the group
    // has read the whole stream, nothing left pending.
    wait_for(
        "every input entry XACKed",
        Duration::from_secs(120),
        || p.logs(),
        || {
            let v: redis::Value = r.cmd(redis::cmd("XINFO").arg("GROUPS").arg(&input_stream));
            let lag = redis_connectors::group_info(v, &group).and_then(|g| g.lag);
            lag == Some(0) && r.pending(&input_stream, &group) == 0
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    p.stop();
    let output = r.read_stream(&output_stream);
    // Each kill can repeat at most what was in flight: the engine's credits (1000) plus
    // what the sink side held unacknowledged; 5000 per kill is a generous bound.
    let dups = assert_all_delivered(&input, &output, 3 * 5000);
    eprintln!(
        "kills at {kills:?}: {} entries out for {} in, {dups} duplicates",
        output.len(),
        input.len()
    );
    r.del(&[&input_stream, &output_stream]);
}

#[test]
fn entries_the_protocol_cannot_carry_are_dead_lettered_and_xacked() {
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let (input_stream, output_stream) = (testkit::unique("dlin"), testkit::unique("dlout"));
    let group = testkit::unique("dlgroup");
    let big = |p: &[u8]| (vec![b'K'; 70_000], p.to_vec());
    // A key over 65535 bytes between two normal entries, and one more as the last entry:
    // no later acknowledgement ever covers that one.
    let input: Vec<Msg> = vec![
        (b"a".to_vec(), b"1".to_vec()),
        big(b"2"),
        (b"c".to_vec(), b"3".to_vec()),
        big(b"4"),
    ];
    r.xadd_all(&input_stream, &input);
    let dead = tempfile::tempdir().unwrap();
    let dead_dir = dead.path().display().to_string();
    let mut p = Pipeline::start(
        &url,
        (
            "redis_stream_source",
            &[
                "--in-stream",
                &input_stream,
                "--in-group",
                &group,
                "--dead-letter",
                &dead_dir,
            ],
        ),
        &[("redis_stream_sink", "o", &["--o-stream", &output_stream])],
        "",
    );
    wait_for(
        "the normal entries out",
        Duration::from_secs(30),
        || p.logs(),
        || r.xlen(&output_stream) >= 2,
    );
    wait_for(
        "nothing pending",
        Duration::from_secs(30),
        || p.logs(),
        || r.pending(&input_stream, &group) == 0,
    );
    p.stop();
    assert_eq!(
        r.read_stream(&output_stream),
        vec![input[0].clone(), input[2].clone()]
    );
    let index = std::fs::read_to_string(dead.path().join("in.jsonl")).unwrap();
    assert_eq!(index.lines().count(), 2, "{index}");
    assert!(index.contains("65535"), "{index}");
    r.del(&[&input_stream, &output_stream]);
}
