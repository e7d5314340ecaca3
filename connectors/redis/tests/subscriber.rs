//! redis_subscriber_source -> engine -> redis_stream_sink + redis_hash_sink against the real
//! Redis: 100,000 messages published on two channels (PSUBSCRIBE pattern) all arrive, payload
//! bytes unchanged, the channel name as the key, in publication order per channel; the hash
//! holds the last message of each channel.
//!
//! Publishing is paced (at most 10,000 messages ahead of the output): pub/sub has no flow
//! control, and a subscriber that falls 32 MB behind is disconnected by Redis (the documented
//! at-most-once limit, not what this test is about).
//!
//! Build first: `cargo build -p engine -p redis-connectors --bins`.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn subscriber_source_delivers_published_messages_through_the_engine() {
    let _lock = heavy();
    let url = testkit::redis_url();
    let mut r = Client::connect(&url);
    let prefix = testkit::unique("chan");
    let output_stream = testkit::unique("subout");
    let pattern = format!("{prefix}.*");
    let hash = testkit::unique("subhash");
    let mut p = Pipeline::start(
        &url,
        (
            "redis_subscriber_source",
            &["--in-topic", &pattern, "--in-pattern", "true"],
        ),
        &[
            ("redis_stream_sink", "o", &["--o-stream", &output_stream]),
            ("redis_hash_sink", "h", &["--h-key", &hash]),
        ],
        "",
    );
    wait_for(
        "the subscription",
        Duration::from_secs(20),
        || p.logs(),
        || p.source.proc.stderr().contains("subscribed to patterns"),
    );
    let mut publisher = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap();
    let mut input: Vec<Msg> = Vec::new();
    for chunk in (0..100_000).collect::<Vec<usize>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let channel = format!("{prefix}.{}", ["a", "b"][i % 2]);
            let payload = message(i).1;
            pipe.cmd("PUBLISH").arg(&channel).arg(&payload).ignore();
            input.push((channel.into_bytes(), payload));
        }
        let () = pipe.query(&mut publisher).unwrap();
        let ahead = input.len().saturating_sub(10_000);
        wait_for(
            "the output to catch up",
            Duration::from_secs(60),
            || p.logs(),
            || r.xlen(&output_stream) >= ahead,
        );
    }
    wait_for(
        "100k messages out",
        Duration::from_secs(60),
        || p.logs(),
        || r.xlen(&output_stream) >= input.len(),
    );
    // The hash holds the latest value per key: the last message of each channel.
    let latest: Vec<Msg> = ["a", "b"]
        .iter()
        .map(|ch| {
            let name = format!("{prefix}.{ch}").into_bytes();
            input.iter().rev().find(|m| m.0 == name).unwrap().clone()
        })
        .collect();
    wait_for(
        "the last value of each channel in the hash",
        Duration::from_secs(30),
        || p.logs(),
        || {
            let h = r.hash(&hash);
            latest.iter().all(|(k, v)| h.get(k) == Some(v)) && h.len() == 2
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    p.stop();
    let output = r.read_stream(&output_stream);
    assert_all_delivered(&input, &output, 0);
    // Per channel, the order of publication is kept.
    for ch in ["a", "b"] {
        let name = format!("{prefix}.{ch}").into_bytes();
        let sent: Vec<&Msg> = input.iter().filter(|m| m.0 == name).collect();
        let got: Vec<&Msg> = output.iter().filter(|m| m.0 == name).collect();
        assert!(sent == got, "channel {ch}: order changed");
    }
    r.del(&[&output_stream, &hash]);
}
