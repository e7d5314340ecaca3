//! The template connectors as a user runs them: through the engine (a pass-through pipeline),
//! in a shell pipeline with `grep`, under `| head`, and with `--check`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use testkit::shell::bash;
use testkit::{bin, free_port, start_connector, start_engine, wait_until, AppFile};

/// `n` numbered lines of varying length.
fn numbered(n: usize) -> String {
    (1..=n)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 40)))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A pass-through application (source `lines` with `source_extra` settings, sink `copy`),
/// template_sink writing `out.txt` and the engine, started in `dir`. Returns the application
/// file, the sink's output file and the processes.
fn sink_and_engine(
    dir: &Path,
    source_extra: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    testkit::Proc,
    testkit::Proc,
) {
    let (src_port, sink_port) = (free_port(), free_port());
    let app = AppFile::new("template pass-through")
        .source("lines", src_port, source_extra)
        .sink("copy", sink_port, "")
        .pipeline("lines", &["copy"])
        .write(dir);
    let out = dir.join("out.txt");
    let sink = start_connector(
        dir,
        "template_sink",
        &app,
        "copy",
        &["--copy-file".into(), out.display().to_string()],
    );
    let engine = start_engine(dir, "engine", &app, &[], &[src_port]);
    (app, out, sink, engine)
}

fn run_source(dir: &Path, app: &Path) -> Output {
    Command::new(bin("template_source"))
        .args(["--application-module", &app.display().to_string()])
        .args(["--connector", "lines", "--stats-interval", "0"])
        .args(["--lines-file", "in.txt", "--lines-offset_file", "in.offset"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run template_source")
}

#[test]
fn template_source_to_engine_to_template_sink() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered(100_000);
    std::fs::write(dir.path().join("in.txt"), &input).unwrap();
    let (app, out, mut sink, _engine) = sink_and_engine(dir.path(), "");

    // The source sends the whole file and exits 0 once the engine acknowledged all of it,
    // which the engine does only after the sink acknowledged its writes.
    let run = run_source(dir.path(), &app);
    assert!(run.status.success(), "template_source: {run:?}");
    testkit::shell::assert_same_text(
        &read(&out),
        &input,
        &format!(
            "every line once, in order; sink: {}",
            testkit::shell::tail(&sink.stderr())
        ),
    );
    // The upstream commit: the offset file holds the end of the file.
    assert_eq!(
        read(&dir.path().join("in.offset")).trim(),
        input.len().to_string()
    );

    // A second run resumes after the committed offset: nothing is sent again.
    let run = run_source(dir.path(), &app);
    assert!(run.status.success(), "second run: {run:?}");
    std::thread::sleep(Duration::from_millis(300));
    testkit::shell::assert_same_text(&read(&out), &input, "nothing re-sent after a complete run");

    // New lines appended upstream are sent on the next run, and only those.
    let more = "appended 1\nappended 2\n";
    let mut all = input.clone();
    all.push_str(more);
    std::fs::write(dir.path().join("in.txt"), &all).unwrap();
    let run = run_source(dir.path(), &app);
    assert!(run.status.success(), "third run: {run:?}");
    assert!(
        wait_until(Duration::from_secs(10), || read(&out) == all),
        "{}",
        read(&out).len()
    );
    assert!(sink.is_running(), "{}", sink.stderr());
}

#[test]
fn template_source_to_grep_to_template_sink() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered(20_000);
    std::fs::write(dir.path().join("in.txt"), &input).unwrap();
    let out = bash(
        dir.path(),
        r#"set -o pipefail
        "$TEMPLATE_SOURCE" --connector lines --lines-file in.txt --to stdout \
          | grep ' 7' \
          | "$TEMPLATE_SINK" --connector copy --copy-file out.txt --copy-sync true --from stdin"#,
    );
    assert!(out.status.success(), "{out:?}");
    let expected: String = input
        .lines()
        .filter(|l| l.contains(" 7"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(expected.lines().count() > 1000);
    assert_eq!(read(&dir.path().join("out.txt")), expected);
}

#[test]
fn closed_stdout_commits_only_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered(300_000);
    std::fs::write(dir.path().join("in.txt"), &input).unwrap();
    let script = r#""$TEMPLATE_SOURCE" --connector lines --lines-file in.txt \
          --lines-offset_file in.offset --to stdout | head -n 3
        echo "status ${PIPESTATUS[0]}" >&2"#;
    let out = bash(dir.path(), script);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 1 x\nline 2 xx\nline 3 xxx\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status 0"),
        "a closed stdout is a clean end: {out:?}"
    );
    // Committed: what was written to the pipe before `head` closed it, so at most a prefix
    // of the file ending at a line boundary (possibly nothing: a write that the closed pipe
    // interrupted is not acknowledged), never the whole file.
    let committed_at = |dir: &Path| -> usize {
        let text = read(&dir.join("in.offset"));
        if text.is_empty() {
            0
        } else {
            text.trim().parse().expect("a byte offset")
        }
    };
    let committed = committed_at(dir.path());
    assert!(committed < input.len(), "committed {committed}");
    assert!(committed == 0 || &input[committed - 1..committed] == "\n");
    // The next run starts right after the committed line.
    let out = bash(dir.path(), script);
    let next_line = input[committed..].lines().next().unwrap();
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(String::from);
    assert_eq!(first.as_deref(), Some(next_line));
    assert!(committed_at(dir.path()) >= committed);
    // Without `head` the rest of the file is written and committed.
    let out = bash(
        dir.path(),
        r#""$TEMPLATE_SOURCE" --connector lines --lines-file in.txt \
          --lines-offset_file in.offset --to stdout > rest.txt"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(committed_at(dir.path()), input.len());
    let rest = read(&dir.path().join("rest.txt"));
    assert!(input.ends_with(&rest) && !rest.is_empty());
}

#[test]
fn template_check_reports_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let check = |program: &str, args: &[&str]| {
        let out = Command::new(bin(program))
            .args(args)
            .arg("--check")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code(), text)
    };
    // Missing required parameter: named, with the three ways to give it.
    let (code, text) = check("template_sink", &["--connector", "copy", "--from", "stdin"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  parameter --copy-file: missing") && text.contains("COPY_FILE"),
        "{text}"
    );
    // The connector's own check: the output file cannot be created.
    let (code, text) = check(
        "template_sink",
        &[
            "--connector",
            "copy",
            "--from",
            "stdin",
            "--copy-file",
            "/nonexistent/dir/out.txt",
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  output file /nonexistent/dir/out.txt can be appended to"),
        "{text}"
    );
    let (code, text) = check(
        "template_source",
        &[
            "--connector",
            "lines",
            "--to",
            "stdout",
            "--lines-file",
            "missing.txt",
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  input file missing.txt is readable"),
        "{text}"
    );
    // All good.
    std::fs::write(dir.path().join("in.txt"), "a\n").unwrap();
    let (code, text) = check(
        "template_source",
        &[
            "--connector",
            "lines",
            "--to",
            "stdout",
            "--lines-file",
            "in.txt",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok    ")), "{text}");
}

/// SIGTERM while the source waits for credits (the engine grants 4 at a time): it still
/// drains, so everything the sink wrote is committed in the offset file.
#[test]
fn sigterm_while_waiting_for_credits_commits_everything_the_sink_wrote() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), numbered(2_000_000)).unwrap();
    let (app, out, _sink, _engine) =
        sink_and_engine(dir.path(), "max_credits = 4\nrefill_credits = 2");
    let mut source = start_connector(
        dir.path(),
        "template_source",
        &app,
        "lines",
        &[
            "--lines-file".into(),
            dir.path().join("in.txt").display().to_string(),
            "--lines-offset_file".into(),
            dir.path().join("in.offset").display().to_string(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || read(&out).lines().count()
            > 5000),
        "nothing flowed: {}",
        source.stderr()
    );
    let status = source.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", source.stderr());
    let written = read(&out);
    let committed: usize = read(&dir.path().join("in.offset"))
        .trim()
        .parse()
        .expect("a byte offset");
    assert_eq!(
        committed,
        written.len(),
        "the offset file holds exactly what the sink wrote"
    );
}

/// A read that fails (a truncated frame on standard input) still sends what came before it.
#[test]
fn records_read_before_a_failed_read_are_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    for i in 0..1999u32 {
        let payload = format!("record {i:05} {}", "y".repeat(5));
        input.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        input.extend_from_slice(payload.as_bytes());
    }
    let complete = input.len();
    input.extend_from_slice(&[0, 0, 0, 9, b'x']); // a frame cut short
    std::fs::write(dir.path().join("in.frames"), &input).unwrap();
    let out = bash(
        dir.path(),
        r#""$STDIN_SOURCE" --connector in --to stdout --format frames < in.frames > out.frames"#,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let written = std::fs::read(dir.path().join("out.frames")).unwrap();
    assert_eq!(written.len(), complete, "every complete frame is written");
    assert_eq!(&written[..], &input[..complete]);
}
