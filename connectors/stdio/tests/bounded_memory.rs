//! Bounded memory: stdin_source -> engine -> stdout_sink with a producer that never waits
//! (far more than 10x faster than the reader) and a reader taking 1.3 MB/s, for 60 s
//! (`BOUNDED_MEMORY_SECS` to change). With the application file's default `in_flight_bytes`
//! every process stays under 64 MiB of resident memory, sampled all along, and the reader
//! gets the producer's lines in order with none missing.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{bin, free_port, start_engine, AppFile};

const LINE: usize = 100;
const READER_BYTES_PER_SEC: f64 = 1.3e6;
const MAX_RSS_KIB: u64 = 64 * 1024;

/// Line `i`: its number, then filler, 100 bytes with the newline.
fn line(i: u64, out: &mut Vec<u8>) {
    let start = out.len();
    write!(out, "{i:020} ").unwrap();
    out.resize(start + LINE - 1, b'x');
    out.push(b'\n');
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connector(program: &str, app: &std::path::Path, name: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin(program));
    c.args(["--application-module", &app.display().to_string()])
        .args(["--connector", name, "--stats-interval", "0"])
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{program}.stderr"))).unwrap(),
        ));
    c
}

#[test]
fn every_process_stays_under_64_mib_with_a_slow_reader() {
    let secs: u64 = std::env::var("BOUNDED_MEMORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let (src_port, sink_port) = (free_port(), free_port());
    // No in_flight_bytes: the default bound is what is tested.
    let app = AppFile::new("bounded memory")
        .source("in", src_port, "")
        .sink("out", sink_port, "")
        .pipeline("in", &["out"])
        .write(dir.path());
    let mut sink = Killed(
        connector("stdout_sink", &app, "out", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let engine = start_engine(dir.path(), "engine", &app, &[], &[src_port]);
    let mut source = Killed(
        connector("stdin_source", &app, "in", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));

    // The producer: numbered lines, as fast as the pipe takes them. It counts the time it
    // waits for the pipe: waiting nearly all the time means it could go many times faster.
    let mut stdin = source.0.stdin.take().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let waited_us = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, produced, waited_us) = (stop.clone(), produced.clone(), waited_us.clone());
        thread::spawn(move || {
            let mut block = Vec::with_capacity(1000 * LINE);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                block.clear();
                for _ in 0..1000 {
                    line(i, &mut block);
                    i += 1;
                }
                let t = Instant::now();
                if stdin.write_all(&block).is_err() {
                    break;
                }
                waited_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                produced.store(i, Ordering::Relaxed);
            }
        })
    };

    // The reader: 1.3 MB/s, checking every line against the producer's sequence.
    let mut stdout = sink.0.stdout.take().unwrap();
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<u64, String> {
            let started = Instant::now();
            let (mut got, mut next) = (0u64, 0u64);
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending: Vec<u8> = Vec::new();
            let mut expected = Vec::with_capacity(LINE);
            while !stop.load(Ordering::Relaxed) {
                let allowed = (READER_BYTES_PER_SEC * started.elapsed().as_secs_f64()) as u64;
                let want = allowed.saturating_sub(got).min(buf.len() as u64) as usize;
                if want == 0 {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let n = match stdout.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(format!("stdout_sink closed its output after {next} lines"))
                    }
                    Ok(n) => n,
                    Err(e) => return Err(e.to_string()),
                };
                got += n as u64;
                pending.extend_from_slice(&buf[..n]);
                let whole = pending.len() - pending.len() % LINE;
                for l in pending[..whole].chunks(LINE) {
                    expected.clear();
                    line(next, &mut expected);
                    if l != expected.as_slice() {
                        return Err(format!(
                            "line {next} is {:?}, expected {:?}",
                            String::from_utf8_lossy(l),
                            String::from_utf8_lossy(&expected)
                        ));
                    }
                    next += 1;
                }
                pending.drain(..whole);
            }
            Ok(next)
        })
    };

    // Sample every process's resident memory for the whole run.
    let pids = [
        ("stdin_source", source.0.id()),
        ("engine", engine.pid()),
        ("stdout_sink", sink.0.id()),
    ];
    let mut peak = [0u64; 3];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        for (i, (_, pid)) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_kib(*pid));
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let lines = reader.join().unwrap();
    // Unblock and end the producer.
    drop(source);
    let _ = producer.join();
    drop(sink);
    let produced = produced.load(Ordering::Relaxed);
    let waited = waited_us.load(Ordering::Relaxed) as f64 / 1e6;
    let report: Vec<String> = pids
        .iter()
        .zip(peak)
        .map(|((name, _), kib)| format!("{name} {:.1} MiB", kib as f64 / 1024.0))
        .collect();
    eprintln!(
        "{secs} s: peak RSS {}; reader got {:?} lines ({:.2} MB/s), producer wrote {produced} and waited for the pipe {waited:.1} s",
        report.join(", "),
        lines,
        lines.as_ref().map_or(0.0, |l| (*l * LINE as u64) as f64 / elapsed / 1e6),
    );
    let lines = lines.unwrap_or_else(|e| panic!("output differs from input: {e}"));
    assert!(
        lines as f64 > 0.8 * READER_BYTES_PER_SEC * elapsed / LINE as f64,
        "the reader got only {lines} lines in {elapsed:.0} s"
    );
    // Waiting over 90% of the time: it could have produced more than 10x as fast.
    assert!(
        waited > 0.9 * elapsed,
        "the producer did not outrun the reader: it waited for the pipe {waited:.1} s of {elapsed:.1} s ({produced} lines written, {lines} read)"
    );
    for ((name, _), kib) in pids.iter().zip(peak) {
        assert!(
            kib > 0 && kib < MAX_RSS_KIB,
            "{name} reached {kib} KiB of resident memory (bound {MAX_RSS_KIB} KiB)"
        );
    }
}
