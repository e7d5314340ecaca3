//! The `engine` binary as a real process: errors are one clear line and a non-zero exit,
//! `--check`, Unix socket handling (mode 0600, stale file replaced, removed on exit), and
//! one warning line per bad connection.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use framing::Frame;

const ENGINE: &str = env!("CARGO_BIN_EXE_engine");

fn write_app(dir: &std::path::Path, src: &str, sink: &str) -> std::path::PathBuf {
    let p = dir.join("app.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"bin\"\n[source_connectors.in]\n{src}\n[sink_connectors.out]\n{sink}\n[[pipelines]]\nsource = \"in\"\nsinks = [\"out\"]\n"
        ),
    )
    .unwrap();
    p
}

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn bad_application_file_is_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Command::new(ENGINE)
        .args(["--application-module", "/nonexistent/app.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let lines = stderr_lines(&missing);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cannot read application file"),
        "{lines:?}"
    );

    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "name = \"x\"\n[[pipelines]]\nsource = \"nope\"\n").unwrap();
    let bad = Command::new(ENGINE)
        .arg("--application-module")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let lines = stderr_lines(&bad);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("`nope`"), "{lines:?}");
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("panicked"));
}

#[test]
fn bind_failure_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let app = write_app(
        dir.path(),
        &format!("port = {port}"),
        &format!("path = \"{}\"", dir.path().join("sink.sock").display()),
    );
    let out = Command::new(ENGINE)
        .arg("--application-module")
        .arg(&app)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "cannot listen for source connector `in` on 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn check_reports_each_sink() {
    let dir = tempfile::tempdir().unwrap();
    let sink_path = dir.path().join("sink.sock");
    let app = write_app(
        dir.path(),
        &format!("path = \"{}\"", dir.path().join("src.sock").display()),
        &format!("path = \"{}\"", sink_path.display()),
    );
    let down = Command::new(ENGINE)
        .arg("--application-module")
        .arg(&app)
        .arg("--check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&down.stdout);
    assert!(!down.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL sink `out`")),
        "{text}"
    );
    let _sink = TestSink::start(sink_path);
    let up = Command::new(ENGINE)
        .arg("--application-module")
        .arg(&app)
        .arg("--check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok ")), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn unix_socket_mode_stale_file_and_cleanup_and_one_log_line_per_bad_connection() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.sock");
    let sink = TestSink::start(dir.path().join("sink.sock"));
    // a stale socket file: bound once, nobody listening any more
    drop(std::os::unix::net::UnixListener::bind(&src).unwrap());
    assert!(src.exists());
    let app = write_app(
        dir.path(),
        &format!("path = \"{}\"", src.display()),
        &format!("path = \"{}\"", sink.path.display()),
    );
    let mut child = Command::new(ENGINE)
        .arg("--application-module")
        .arg(&app)
        .args(["--stats-interval", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until it serves
    let mut good = Raw::connect(&src);
    good.hello("");
    let mode = std::fs::metadata(&src).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    good.notify(1, "one", u64::MAX);
    good.send(&msg(1, 1, b"", b"x"));
    good.wait_ack(1, 1, Duration::from_secs(10));
    for bad in [&[0u8, 0, 0, 1, 99][..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut r = Raw::connect(&src);
        r.send_raw(bad).unwrap();
        assert!(matches!(
            r.recv(Duration::from_secs(5)),
            Some(Frame::Error { .. })
        ));
    }
    good.send(&msg(1, 2, b"", b"y"));
    good.wait_ack(1, 2, Duration::from_secs(10));
    // SIGTERM: clean exit, socket file removed
    unsafe_kill(child.id(), 15);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "engine did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!src.exists(), "socket file left behind");
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let warns: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 2, "one line per bad connection:\n{err}");
    assert!(warns[0].contains("unknown frame tag 99"), "{err}");
    assert!(warns[1].contains("exceeds the maximum"), "{err}");
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
