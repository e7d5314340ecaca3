//! Throughput of the toolkit's paths, beside the plain tools doing the same work in the same
//! run. Ignored by default; run it on release binaries:
//!
//! ```text
//! cargo build --release -p engine -p stdio-connectors -p connector-template --bins
//! cargo test --release -p connector-template --test bench -- --ignored --nocapture
//! ```
//!
//! No timing assertions: it prints messages/s and MB/s (results in benchmarks/connector-template.md).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::shell::bash;
use testkit::{bin, free_port, start_connector, start_engine, wait_until, AppFile};

const LINES: usize = 2_000_000;
const LINE_BYTES: usize = 100; // payload bytes per line, newline excluded

fn report(what: &str, messages: usize, payload_bytes: usize, took: Duration) {
    let s = took.as_secs_f64();
    println!(
        "{what:<58} {:>7.0}k msg/s {:>8.1} MB/s  ({:.2} s)",
        messages as f64 / s / 1e3,
        payload_bytes as f64 / s / 1e6,
        s
    );
}

fn input(dir: &Path) -> usize {
    let mut w = BufWriter::new(std::fs::File::create(dir.join("in.txt")).unwrap());
    for i in 0..LINES {
        let n = format!("{i:012} ");
        w.write_all(n.as_bytes()).unwrap();
        w.write_all(&[b'x'; LINE_BYTES][..LINE_BYTES - n.len()])
            .unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
    LINES * LINE_BYTES
}

#[test]
#[ignore]
fn bench_toolkit_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = input(dir.path());
    println!("{LINES} lines of {LINE_BYTES} bytes");

    // 1. Shell pipeline: source --to stdout | sink --from stdin, beside `cat | cat`.
    let t = Instant::now();
    let out = bash(dir.path(), "cat in.txt | cat > plain.txt");
    assert!(out.status.success());
    report("cat in.txt | cat", LINES, bytes, t.elapsed());
    let t = Instant::now();
    let out = bash(
        dir.path(),
        r#"set -o pipefail; "$STDIN_SOURCE" --connector in --to stdout --stats-interval 0 < in.txt \
           | "$STDOUT_SINK" --connector out --from stdin --stats-interval 0 > piped.txt"#,
    );
    assert!(out.status.success(), "{out:?}");
    report(
        "stdin_source --to stdout | stdout_sink --from stdin",
        LINES,
        bytes,
        t.elapsed(),
    );
    let t = Instant::now();
    let out = bash(
        dir.path(),
        r#"set -o pipefail; "$TEMPLATE_SOURCE" --connector l --l-file in.txt --to stdout --stats-interval 0 \
           | "$TEMPLATE_SINK" --connector c --c-file piped2.txt --from stdin --stats-interval 0"#,
    );
    assert!(out.status.success(), "{out:?}");
    report(
        "template_source --to stdout | template_sink --from stdin",
        LINES,
        bytes,
        t.elapsed(),
    );

    // 2. Through the engine: template_source -> engine -> template_sink, beside a plain
    //    line-by-line file copy in this process.
    let t = Instant::now();
    let mut w = BufWriter::new(std::fs::File::create(dir.path().join("copy.txt")).unwrap());
    for line in BufReader::new(std::fs::File::open(dir.path().join("in.txt")).unwrap()).lines() {
        w.write_all(line.unwrap().as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
    }
    w.flush().unwrap();
    drop(w);
    report(
        "plain Rust: BufReader lines -> BufWriter",
        LINES,
        bytes,
        t.elapsed(),
    );

    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("bench")
        .source("lines", src_port, "")
        .sink("copy", sink_port, "")
        .pipeline("lines", &["copy"])
        .write(dir.path());
    let out = dir.path().join("out.txt");
    let sink = start_connector(
        dir.path(),
        "template_sink",
        &app,
        "copy",
        &["--copy-file".into(), out.display().to_string()],
    );
    let _engine = start_engine(dir.path(), "engine", &app, &[], &[src_port]);
    let t = Instant::now();
    let run = Command::new(bin("template_source"))
        .args(["--application-module", &app.display().to_string()])
        .args([
            "--connector",
            "lines",
            "--stats-interval",
            "0",
            "--lines-file",
        ])
        .arg(dir.path().join("in.txt"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let took = t.elapsed();
    let size = || std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let want = (LINES * (LINE_BYTES + 1)) as u64;
    assert!(
        wait_until(Duration::from_secs(10), || size() == want),
        "out.txt has {} bytes, want {want}; sink: {}",
        size(),
        testkit::shell::tail(&sink.stderr())
    );
    report(
        "template_source -> engine -> template_sink (all acked)",
        LINES,
        bytes,
        took,
    );
}
