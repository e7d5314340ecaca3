//! Checks that the broker the tests run against supports what they need: topics with
//! several partitions, produce with acks=all and idempotence, consumer groups with
//! partition assignment, offset commits read back, and two members splitting partitions.

mod common;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[test]
fn broker_supports_groups_commits_and_partitions() {
    let brokers = testkit::kafka_brokers();
    let topic = testkit::unique("probe");
    let _cleanup = common::cleanup(&brokers, &[&topic]);
    common::create_topic(&brokers, &topic, 4);
    let sent = common::produce(&brokers, &topic, 4, 40, 10);
    assert_eq!(sent, 40);

    let group = testkit::unique("probe_group");
    let c: BaseConsumer = common::consumer_config(&brokers, &group).create().unwrap();
    c.subscribe(&[&topic]).unwrap();
    let got = common::poll_n(&c, 40, Duration::from_secs(30));
    assert_eq!(got.len(), 40, "consumed {} of 40", got.len());
    let mut parts: Vec<i32> = got.iter().map(|r| r.partition).collect();
    parts.sort();
    parts.dedup();
    assert_eq!(parts, vec![0, 1, 2, 3]);

    // Commit offset 5 on each partition, read it back.
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, Offset::Offset(5))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
    let back = c.committed(Duration::from_secs(10)).unwrap();
    for p in 0..4 {
        let e = back.find_partition(&topic, p).unwrap();
        assert_eq!(e.offset(), Offset::Offset(5), "partition {p}");
    }
    // A TopicPartitionList from the consumer can hold librdkafka partition references: drop
    // it before the consumer, or rd_kafka_destroy waits for it forever.
    drop(back);
    drop(c);

    // A new member of the group resumes at the committed offsets: 4 x 5 records left.
    let c: BaseConsumer = common::consumer_config(&brokers, &group).create().unwrap();
    c.subscribe(&[&topic]).unwrap();
    let got = common::poll_n(&c, 20, Duration::from_secs(30));
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|r| r.offset >= 5), "{got:?}");
    drop(c);

    // Two members of a fresh group split the 4 partitions.
    let group = testkit::unique("probe_split");
    let a: BaseConsumer = common::consumer_config(&brokers, &group).create().unwrap();
    let b: BaseConsumer = common::consumer_config(&brokers, &group).create().unwrap();
    a.subscribe(&[&topic]).unwrap();
    b.subscribe(&[&topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut na, mut nb) = (0, 0);
    while std::time::Instant::now() < deadline {
        let _ = a.poll(Duration::from_millis(100));
        let _ = b.poll(Duration::from_millis(100));
        na = a.assignment().unwrap().count();
        nb = b.assignment().unwrap().count();
        if na + nb == 4 && na > 0 && nb > 0 {
            break;
        }
    }
    assert!(
        na > 0 && nb > 0 && na + nb == 4,
        "assignment split {na}/{nb}"
    );
}
