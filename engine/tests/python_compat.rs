//! Wallaroo's Python source client (emulated with the stdlib in `wallaroo_client.py`)
//! works against the engine unchanged: byte-offset ids, key = stream name, exact-id ACKs,
//! OK with v3's (empty) stream and source lists, 0 ("the start") for streams never seen, ACK
//! after EOS, resume after a dropped connection.

mod common;

use std::time::Duration;

use application::Endpoint;
use common::*;

#[test]
fn wallaroo_python_source_client_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(dir.path().join("sink.sock"));
    let config = app_file(
        dir.path(),
        &format!(
            r#"
name = "compat"
[source_connectors.feed]
port = 0
max_credits = 500
refill_credits = 100
[sink_connectors.out]
path = "{}"
[[pipelines]]
source = "feed"
sinks = ["out"]
"#,
            sink.path.display()
        ),
    );
    let engine = pass_through(config);
    let Some(Endpoint::Tcp { host, port }) = engine.source_endpoint("feed").cloned() else {
        panic!("no TCP endpoint")
    };
    let (streams, records) = (3usize, 4000usize);
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/wallaroo_client.py"
        ))
        .args([
            host,
            port.to_string(),
            streams.to_string(),
            records.to_string(),
        ])
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: 3 streams x 4000 records"), "{stdout}");
    // every record reached the sink exactly once, in order per stream, keyed by stream name
    sink.wait_count(streams * records, Duration::from_secs(10));
    let got = sink.received.lock().unwrap().clone();
    assert_eq!(got.len(), streams * records, "replays were de-duplicated");
    for k in 0..streams {
        let name = format!("compat-stream-{k}");
        let payloads: Vec<String> = got
            .iter()
            .filter(|o| o.key == name.as_bytes())
            .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
            .collect();
        assert_eq!(payloads.len(), records);
        for (i, p) in payloads.iter().enumerate() {
            assert!(p.starts_with(&format!("{name} record {i} ")), "{p}");
        }
    }
    engine.stop().unwrap();
}
