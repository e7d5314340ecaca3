//! TLS: a throwaway `redis-server` with a TLS port and a test CA made with the `openssl`
//! command; the stream sink writes over TLS (`tls` + `tls_ca`), the stream source reads back
//! over TLS (`rediss://` URL + `tls_ca`), and an untrusted certificate stops a binary at once
//! with the reason instead of retrying forever.
//!
//! Build first: `cargo build -p redis-connectors --bins`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use testkit::Proc;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the openssl command (apt-get install openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn run_with_stdin(program: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(testkit::bin(program))
        .args(args)
        .args(["--stats-interval", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sink_and_source_over_tls_and_untrusted_certificates_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = testkit::free_port();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        &p("server.pem"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Proc::spawn(
        dir.path(),
        "redis-server",
        &PathBuf::from("redis-server"),
        &args,
    );
    assert!(
        testkit::wait_for_port(port, Duration::from_secs(10)),
        "redis-server with TLS did not start: {}",
        server.stderr()
    );
    let ca = p("ca.pem");
    let port_s = port.to_string();

    let input: Vec<Msg> = (1..=1000)
        .map(|i| (format!("k{i}").into_bytes(), format!("v {i} ").into_bytes()))
        .collect();
    let mut kv = Vec::new();
    for (k, v) in &input {
        kv.extend_from_slice(k);
        kv.push(b'\t');
        kv.extend_from_slice(v);
        kv.push(b'\n');
    }
    let out = run_with_stdin(
        "redis_stream_sink",
        &[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--format",
            "kv",
            "--out-stream",
            "t",
            "--out-port",
            &port_s,
            "--out-tls",
            "true",
            "--out-tls_ca",
            &ca,
        ],
        &kv,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let url = format!("rediss://127.0.0.1:{port}");
    let mut source = Proc::spawn(
        dir.path(),
        "source",
        &testkit::bin("redis_stream_source"),
        &[
            "--connector",
            "in",
            "--to",
            "stdout",
            "--format",
            "kv",
            "--stats-interval",
            "0",
            "--in-stream",
            "t",
            "--in-url",
            &url,
            "--in-tls_ca",
            &ca,
        ]
        .map(String::from),
    );
    wait_for(
        "1000 records over TLS",
        Duration::from_secs(20),
        || source.stderr(),
        || source.stdout().iter().filter(|&&b| b == b'\n').count() >= 1000,
    );
    source.terminate(Duration::from_secs(10));
    assert_eq!(source.stdout(), kv, "bytes differ after the TLS round trip");

    // The system's roots do not know the test CA: a permanent error, not a retry loop.
    let out = run_with_stdin(
        "redis_hash_sink",
        &[
            "--connector",
            "out",
            "--from",
            "stdin",
            "--format",
            "kv",
            "--out-key",
            "h",
            "--out-port",
            &port_s,
            "--out-tls",
            "true",
        ],
        b"a\t1\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "{err}"
    );
}
