//! rabbitmq_source -> engine -> rabbitmq_sink against the real broker: bytes and routing keys
//! preserved, nothing lost when the source or the engine is killed with SIGKILL.
//!
//! Build first: `cargo build -p engine -p rabbitmq-connectors --bins`.

mod common;

use std::time::Duration;

use common::*;

/// Deliveries the broker lets the source hold unacknowledged (the source's default).
const PREFETCH: usize = 1000;

#[test]
fn relays_100k_messages_with_bytes_and_routing_keys_intact() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let t = Topology::new(&amqp, "relay");
    let input: Vec<Msg> = (0..100_000).map(message).collect();
    amqp.publish(&t.x_in, &input);
    // declare=true re-declares what the test declared (same settings): exercises that path.
    let mut p = Pipeline::start(
        &t,
        &[
            "--in-declare",
            "true",
            "--in-exchange",
            &t.x_in,
            "--in-exchange_type",
            "topic",
        ],
    );
    amqp.wait_count(
        &t.q_out,
        input.len() as u32,
        Duration::from_secs(150),
        || p.logs(),
    );
    std::thread::sleep(Duration::from_millis(500));
    p.stop();
    // Everything was acknowledged to the broker: nothing went back to the input queue.
    assert_eq!(
        amqp.count(&t.q_in),
        0,
        "input queue not empty: acks missing"
    );
    let output = amqp.drain(&t.q_out);
    let dups = assert_all_delivered(&input, &output, 0);
    assert_eq!(dups, 0);
    assert_eq!(output.len(), input.len());
    t.delete(&mut amqp);
}

#[test]
fn nothing_lost_when_the_source_is_killed_with_sigkill() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let t = Topology::new(&amqp, "killsrc");
    let input: Vec<Msg> = (0..50_000).map(message).collect();
    amqp.publish(&t.x_in, &input);
    let mut p = Pipeline::start(&t, &[]);
    amqp.wait_count(&t.q_out, 10_000, Duration::from_secs(60), || p.logs());
    p.restart_source_hard();
    amqp.wait_count(&t.q_out, 25_000, Duration::from_secs(60), || p.logs());
    p.restart_source_hard();
    // Duplicates are possible, so "done" is: input drained and nothing unacknowledged left.
    wait_drained(&mut amqp, &t, &p);
    p.stop();
    assert_eq!(amqp.count(&t.q_in), 0);
    let output = amqp.drain(&t.q_out);
    let dups = assert_all_delivered(&input, &output, 2 * PREFETCH);
    eprintln!(
        "source killed twice: {} messages out, {dups} duplicates",
        output.len()
    );
    t.delete(&mut amqp);
}

#[test]
fn nothing_lost_when_the_engine_is_killed_with_sigkill() {
    let _lock = broker_lock(false);
    let mut amqp = Amqp::connect();
    let t = Topology::new(&amqp, "killeng");
    let input: Vec<Msg> = (0..50_000).map(message).collect();
    amqp.publish(&t.x_in, &input);
    let mut p = Pipeline::start(&t, &[]);
    amqp.wait_count(&t.q_out, 10_000, Duration::from_secs(60), || p.logs());
    p.restart_engine_hard();
    amqp.wait_count(&t.q_out, 25_000, Duration::from_secs(60), || p.logs());
    p.restart_engine_hard();
    wait_drained(&mut amqp, &t, &p);
    p.stop();
    assert_eq!(amqp.count(&t.q_in), 0);
    let output = amqp.drain(&t.q_out);
    let dups = assert_all_delivered(&input, &output, 2 * PREFETCH);
    eprintln!(
        "engine killed twice: {} messages out, {dups} duplicates",
        output.len()
    );
    t.delete(&mut amqp);
}

/// Waits until the output holds at least every input message, the input queue is empty and
/// the output stopped growing for 2 s: the pipeline is idle, every delivery was processed.
fn wait_drained(amqp: &mut Amqp, t: &Topology, p: &Pipeline) {
    amqp.wait_count(&t.q_out, 50_000, Duration::from_secs(120), || p.logs());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (u32::MAX, std::time::Instant::now());
    loop {
        let (ready_in, out) = (amqp.count(&t.q_in), amqp.count(&t.q_out));
        if out != last.0 {
            last = (out, std::time::Instant::now());
        } else if ready_in == 0 && last.1.elapsed() > Duration::from_secs(2) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline never went idle ({ready_in} left in {})\n{}",
            t.q_in,
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
