//! Both connectors survive a broker restart (`rabbitmqctl stop_app` / `start_app`) in the
//! middle of a run with nothing lost.
//!
//! RabbitMQ here is the machine's shared instance: this test holds the exclusive side of the
//! lock every RabbitMQ test takes (so no other test's connections are cut), is the only test
//! of its binary, and starts the broker again when it ends, even when it fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Restarts the broker's application; `Drop` makes sure it runs again whatever happens.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]);
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run rabbitmqctl {args:?}: {e} (the test needs rabbitmqctl on PATH)")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_connectors_survive_a_broker_restart_with_nothing_lost() {
    let _lock = broker_lock(true);
    let mut amqp = Amqp::connect();
    let t = Topology::new(&amqp, "restart");
    let n = 50_000;
    let input: Vec<Msg> = (0..n).map(message).collect();
    amqp.publish(&t.x_in, &input);
    let mut p = Pipeline::start(&t, &[]);
    amqp.wait_count(&t.q_out, 10_000, Duration::from_secs(60), || p.logs());
    let at_stop = {
        let stopped = BrokerStopped::stop();
        let at_stop = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            p.source.is_running(),
            "source exited while the broker was down\n{}",
            p.logs()
        );
        assert!(
            p.sink.is_running(),
            "sink exited while the broker was down\n{}",
            p.logs()
        );
        drop(stopped);
        at_stop
    };
    eprintln!("broker back after {:.1} s", at_stop.elapsed().as_secs_f64());
    let before = amqp.count(&t.q_out);
    assert!(
        before < n as u32,
        "the run was over before the restart ({before} messages out): nothing was tested"
    );
    // Idle = input drained, output no longer growing.
    amqp.wait_count(&t.q_out, n as u32, Duration::from_secs(120), || p.logs());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (u32::MAX, Instant::now());
    loop {
        let (ready_in, out) = (amqp.count(&t.q_in), amqp.count(&t.q_out));
        if out != last.0 {
            last = (out, Instant::now());
        } else if ready_in == 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline never went idle\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (src_log, sink_log) = (p.source.stderr(), p.sink.stderr());
    p.stop();
    assert_eq!(amqp.count(&t.q_in), 0);
    let output = amqp.drain(&t.q_out);
    // At most the source's prefetch comes again, plus the sink's unconfirmed batch.
    let dups = assert_all_delivered(&input, &output, 1000 + 8192);
    eprintln!(
        "broker restarted: {} messages out, {dups} duplicates",
        output.len()
    );
    for line in src_log.lines().chain(sink_log.lines()) {
        if line.contains("lost the broker") || line.contains("connected again") {
            eprintln!("{line}");
        }
    }
    assert!(
        src_log.contains("connected again"),
        "source did not reconnect:\n{}",
        tail(&src_log)
    );
    assert!(
        sink_log.contains("connected again"),
        "sink did not reconnect:\n{}",
        tail(&sink_log)
    );
    t.delete(&mut amqp);
}
