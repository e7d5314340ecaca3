//! `--check`: one line per check on stdout, what to fix on each failed one, exit 0 only if
//! every check passed.

use std::process::{Command, Output};

use testkit::{bin, free_port, start_engine, AppFile};

fn check(program: &str, args: &[&str]) -> Output {
    Command::new(bin(program))
        .args(args)
        .arg("--check")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run --check")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn app(dir: &std::path::Path, src_port: u16, sink_port: u16) -> String {
    AppFile::new("check")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir)
        .display()
        .to_string()
}

#[test]
fn check_fails_for_an_unreachable_engine() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let app = app(dir.path(), port, free_port());
    let out = check(
        "stdin_source",
        &["--application-module", &app, "--connector", "in"],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(lines[0].starts_with("ok    application file"), "{lines:?}");
    let fail = lines
        .iter()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line: {lines:?}"));
    assert!(fail.contains(&format!("127.0.0.1:{port}")), "{fail}");
    assert!(fail.contains("start the engine"), "says what to do: {fail}");
}

#[test]
fn check_passes_when_the_engine_is_up_and_the_sink_address_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    let app_path = app(dir.path(), src_port, sink_port);
    let _engine = start_engine(
        dir.path(),
        "engine",
        std::path::Path::new(&app_path),
        &[],
        &[src_port],
    );
    let out = check(
        "stdin_source",
        &["--application-module", &app_path, "--connector", "in"],
    );
    assert!(out.status.success(), "{out:?}");
    let lines = stdout_lines(&out);
    assert!(lines.iter().all(|l| l.starts_with("ok    ")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("engine accepts `in` at 127.0.0.1:{src_port}"))),
        "{lines:?}"
    );
    let out = check(
        "stdout_sink",
        &["--application-module", &app_path, "--connector", "out"],
    );
    assert!(out.status.success(), "{out:?}");
    // The sink's address taken by someone else: fails, naming the address.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", sink_port));
    // (The engine may already be connected to nothing there; we hold the port either way.)
    let out = check(
        "stdout_sink",
        &["--application-module", &app_path, "--connector", "out"],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL  can listen at") && l.contains(&sink_port.to_string())),
        "{lines:?}"
    );
}

#[test]
fn check_fails_for_a_bad_application_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"x\"\n[source_connectors.in]\nprot = 7100\n").unwrap();
    let path = path.display().to_string();
    let out = check(
        "stdin_source",
        &["--application-module", &path, "--connector", "in"],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].starts_with("FAIL  "), "{lines:?}");
    assert!(lines[0].contains(&path), "names the file: {lines:?}");
    assert!(lines[0].contains("prot"), "names the bad field: {lines:?}");
    // A missing file too.
    let out = check(
        "stdout_sink",
        &[
            "--application-module",
            "/nonexistent/app.toml",
            "--connector",
            "out",
        ],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        lines[0].starts_with("FAIL  ") && lines[0].contains("cannot read application file"),
        "{lines:?}"
    );
}

#[test]
fn check_fails_for_an_unknown_connector_name() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path(), free_port(), free_port());
    let out = check(
        "stdin_source",
        &["--application-module", &app, "--connector", "inn"],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("unknown connector `inn`"), "{lines:?}");
    assert!(
        lines[0].contains("declared sources: in"),
        "lists the valid names: {lines:?}"
    );
    // The name of a sink given to a source binary.
    let out = check(
        "stdin_source",
        &["--application-module", &app, "--connector", "out"],
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(lines[0].contains("declared as a sink"), "{lines:?}");
}
