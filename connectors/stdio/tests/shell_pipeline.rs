//! Shell pipelines with real processes: `--to stdout` / `--from stdin` in place of the engine,
//! `grep` in between, a closed stdout (`| head`), and the same binaries through the engine.

use std::time::{Duration, Instant};

use testkit::shell::{bash, OpenStdin};
use testkit::{bin, free_port, start_connector, start_engine, wait_until, AppFile};

/// `key TAB value` lines for three users; returns the text and the lines for `alice`.
fn transactions(n: usize) -> (String, String) {
    let users = ["alice", "bob", "carol"];
    let mut all = String::new();
    let mut alice = String::new();
    for i in 0..n {
        let user = users[i % users.len()];
        let line = format!(
            "{user}\t{{\"user\":\"{user}\",\"amount\":{}}}\n",
            i * 7 % 1000
        );
        if user == "alice" {
            alice.push_str(&line);
        }
        all.push_str(&line);
    }
    (all, alice)
}

#[test]
fn kv_pipeline_through_grep() {
    let dir = tempfile::tempdir().unwrap();
    let (all, alice) = transactions(3000);
    std::fs::write(dir.path().join("in.kv"), &all).unwrap();
    let out = bash(
        dir.path(),
        r#"set -o pipefail
        "$STDIN_SOURCE" --connector in --to stdout --format kv < in.kv \
          | grep alice \
          | "$STDOUT_SINK" --connector out --from stdin --format kv > out.kv"#,
    );
    assert!(out.status.success(), "pipeline failed: {out:?}");
    let got = std::fs::read_to_string(dir.path().join("out.kv")).unwrap();
    assert_eq!(got.lines().count(), 1000);
    assert_eq!(got, alice, "keys and values pass through grep unchanged");
}

#[test]
fn frames_are_binary_safe_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..500u32 {
        // Newlines, tabs and zero bytes: only `frames` carries these unchanged.
        let p: Vec<u8> = (0..(i % 97)).map(|j| ((i + j) % 256) as u8).collect();
        frames.extend_from_slice(&(p.len() as u32).to_be_bytes());
        frames.extend_from_slice(&p);
        payloads.push(p);
    }
    std::fs::write(dir.path().join("in.frames"), &frames).unwrap();
    let out = bash(
        dir.path(),
        r#"set -o pipefail
        "$STDIN_SOURCE" --connector in --to stdout --format frames < in.frames \
          | "$STDOUT_SINK" --connector out --from stdin --format frames > out.frames"#,
    );
    assert!(out.status.success(), "pipeline failed: {out:?}");
    assert_eq!(
        std::fs::read(dir.path().join("out.frames")).unwrap(),
        frames
    );
}

#[test]
fn closed_stdout_ends_the_source_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // `head` exits after 5 lines; the source must notice the closed pipe, stop reading its
    // input and exit 0 (a closed stdout is a normal end, not an error).
    let out = bash(
        dir.path(),
        r#"seq 1 5000000 | "$STDIN_SOURCE" --connector in --to stdout | head -n 5
        echo "status ${PIPESTATUS[1]}" >&2"#,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n4\n5\n");
    assert!(
        stderr.contains("status 0"),
        "stdin_source exit status: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the source kept running after its stdout closed"
    );
    // The same for a sink writing to a closed stdout.
    let out = bash(
        dir.path(),
        r#"seq 1 2000000 | "$STDOUT_SINK" --connector out --from stdin | head -n 2
        echo "status ${PIPESTATUS[1]}" >&2"#,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status 0"),
        "stdout_sink: {out:?}"
    );
}

#[test]
fn bad_input_is_an_error_not_an_end() {
    let dir = tempfile::tempdir().unwrap();
    // A frame header announcing 9 bytes, then only 2: truncated input.
    std::fs::write(dir.path().join("bad.frames"), b"\0\0\0\x09ab").unwrap();
    for program in [
        "$STDIN_SOURCE --connector in --to stdout",
        "$STDOUT_SINK --connector out --from stdin",
    ] {
        let out = bash(
            dir.path(),
            &format!(r#"{program} --format frames < bad.frames"#),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program}: {out:?}");
        assert!(stderr.contains("standard input"), "{program}: {stderr}");
    }
}

#[test]
fn stdin_source_to_engine_to_stdout_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("stdio pass-through")
        .source("in", src_port, "max_credits = 64")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let kv = |p| vec!["--format".to_string(), "kv".to_string(), p];
    let mut sink = start_connector(
        dir.path(),
        "stdout_sink",
        &app,
        "out",
        &kv("--from=engine".into()),
    );
    let _engine = start_engine(dir.path(), "engine", &app, &[], &[src_port]);
    let (all, _) = transactions(5000);
    let mut source = OpenStdin::spawn(
        dir.path(),
        "stdin_source",
        &bin("stdin_source"),
        &[
            "--application-module".into(),
            app.display().to_string(),
            "--connector".into(),
            "in".into(),
            "--format".into(),
            "kv".into(),
            "--stats-interval".into(),
            "0".into(),
        ],
    );
    source.write(all.as_bytes());
    source.close();
    // The source exits 0 once the engine acknowledged everything, which it does only after
    // the sink acknowledged its writes.
    let status = source.proc.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "stdin_source: {status:?}\n{}",
        source.proc.stderr()
    );
    assert!(wait_until(Duration::from_secs(10), || sink.stdout().len() >= all.len()));
    testkit::shell::assert_same_text(
        &String::from_utf8_lossy(&sink.stdout()),
        &all,
        &format!(
            "everything arrives once, in order, keys intact; sink: {}",
            testkit::shell::tail(&sink.stderr())
        ),
    );
    assert!(sink.is_running());
}

#[test]
fn a_sink_reading_an_open_idle_stdin_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = OpenStdin::spawn(
        dir.path(),
        "stdout_sink",
        &bin("stdout_sink"),
        &[
            "--connector".into(),
            "out".into(),
            "--from".into(),
            "stdin".into(),
            "--stats-interval".into(),
            "0".into(),
        ],
    );
    sink.write(b"one\ntwo\n");
    assert!(
        wait_until(Duration::from_secs(10), || sink.proc.stdout()
            == b"one\ntwo\n"),
        "{}",
        sink.proc.stderr()
    );
    // stdin stays open and idle: SIGTERM must still end the process.
    let status = sink.proc.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "still running or failed after SIGTERM: {status:?} {}",
        sink.proc.stderr()
    );
}

#[test]
fn logs_written_to_a_file_or_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppFile::new("colours")
        .source("a", free_port(), "")
        .sink("b", free_port(), "")
        .pipeline("a", &["b"])
        .write(dir.path());
    let out = bash(
        dir.path(),
        &format!(
            r#"printf 'a\nb\n' | RUST_LOG=info "$STDIN_SOURCE" --connector in --to stdout > out.txt 2> source.log
            RUST_LOG=info timeout -s TERM 1 "$ENGINE" --application-module {} 2> engine.log"#,
            app.display()
        ),
    );
    for log in ["source.log", "engine.log"] {
        let text = std::fs::read(dir.path().join(log)).unwrap();
        assert!(!text.is_empty(), "{log} is empty: {out:?}");
        assert!(
            !text.contains(&0x1b),
            "{log} holds escape bytes: {}",
            String::from_utf8_lossy(&text)
        );
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = bash(
        dir.path(),
        r#"printf 'a\nb\n' | RUST_LOG=info "$STDIN_SOURCE" --connector in --to stdout --log-format json > out.txt 2> source.log"#,
    );
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(dir.path().join("source.log")).unwrap();
    assert!(!log.is_empty(), "no log lines");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    let bad = bash(
        dir.path(),
        r#""$STDIN_SOURCE" --connector in --to stdout --log-format xml < /dev/null"#,
    );
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
