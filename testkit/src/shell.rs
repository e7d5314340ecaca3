//! Helpers for tests of shell pipelines and metrics: run a bash script with the built
//! binaries on hand, keep a process's standard input open, scrape and read `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::Proc;

/// Runs `script` with `bash -c` (`set -o pipefail` is NOT set: the script decides), with
/// `$ENGINE`, `$STDIN_SOURCE`, `$STDOUT_SINK`, `$TEMPLATE_SOURCE`, `$TEMPLATE_SINK`,
/// `$UDP_SINK` pointing at the built binaries.
pub fn bash(dir: &Path, script: &str) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).current_dir(dir);
    for (var, name) in [
        ("ENGINE", "engine"),
        ("STDIN_SOURCE", "stdin_source"),
        ("STDOUT_SINK", "stdout_sink"),
        ("TEMPLATE_SOURCE", "template_source"),
        ("TEMPLATE_SINK", "template_sink"),
        ("UDP_SINK", "udp_sink"),
    ] {
        // Only the binaries that were built: a script using a missing one fails with
        // "command not found", and the test says which.
        let path = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join(name)));
        if let Some(path) = path.filter(|p| p.exists()) {
            cmd.env(var, path);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}

/// A process whose standard input stays open until [`OpenStdin::close`] (or drop).
pub struct OpenStdin {
    /// The process.
    pub proc: Proc,
    writer: Option<UnixStream>,
}

impl OpenStdin {
    /// Starts `program args` with a socket as its standard input.
    pub fn spawn(dir: &Path, name: &str, program: &Path, args: &[String]) -> OpenStdin {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::from(OwnedFd::from(theirs)));
        let proc = Proc::spawn_with(dir, name, &mut cmd);
        OpenStdin {
            proc,
            writer: Some(ours),
        }
    }

    /// Writes bytes to the process's standard input.
    pub fn write(&mut self, bytes: &[u8]) {
        self.writer
            .as_mut()
            .expect("stdin still open")
            .write_all(bytes)
            .expect("write to stdin");
    }

    /// Closes standard input (end of file for the process).
    pub fn close(&mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// GETs `/metrics` from 127.0.0.1:`port`; the body, or "" when nothing answers.
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics").1
}

/// GETs `path` from 127.0.0.1:`port`: the status code and the body, or `(0, "")` when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(request.as_bytes());
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of the series `name` whose labels include every `labels` pair (`k="v"`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<&str> = rest.split(',').collect();
        labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// `metric`, panicking with the whole scrape when the series is missing.
pub fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{text}"))
}

/// The last 3000 characters of a (log) text, for assertion messages.
pub fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(3000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}

/// Asserts `got == want` for long texts, reporting sizes and the first differing line
/// instead of both texts.
#[track_caller]
pub fn assert_same_text(got: &str, want: &str, context: &str) {
    if got == want {
        return;
    }
    let first = got
        .lines()
        .zip(want.lines())
        .position(|(g, w)| g != w)
        .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
    panic!(
        "texts differ: got {} lines / {} bytes, want {} lines / {} bytes; first difference at line {}: got {:?}, want {:?}\n{context}",
        got.lines().count(),
        got.len(),
        want.lines().count(),
        want.len(),
        first + 1,
        got.lines().nth(first),
        want.lines().nth(first),
    );
}
