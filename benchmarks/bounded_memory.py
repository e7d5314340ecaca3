#!/usr/bin/env python3
"""Bounded memory: stdin_source -> engine -> stdout_sink with a producer much faster than
the reader of stdout_sink's output; samples every process's VmRSS and counts what the
reader got (and checks it is the producer's lines, in order, none missing).

    python3 benchmarks/bounded_memory.py [--bin target/release] [--seconds 60]
        [--rate 1300000] [--bound BYTES|default] ...

--rate is the reader's bytes per second (0 = as fast as it can: throughput). --bound sets
`in_flight_bytes` on both connectors (omitted or `default`: the application file's default).
Several --rate and --bound values run one after the other (each rate with each bound) in the
same invocation. The producer is a separate process writing as fast as its pipe takes.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

LINE = 100  # bytes per line, newline included


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def line(i):
    head = b"%020d " % i
    return head + b"x" * (LINE - len(head) - 1) + b"\n"


def lines(first, n):
    return b"".join(line(i) for i in range(first, first + n))


def produce():
    """Writes numbered 100-byte lines to stdout as fast as the pipe takes them."""
    i = 0
    out = sys.stdout.buffer
    try:
        while True:
            out.write(lines(i, 1000))
            i += 1000
    except (BrokenPipeError, OSError):
        pass


def run(bin_dir, seconds, rate, bound):
    d = tempfile.mkdtemp(prefix="boundedmem")
    src_port, sink_port = free_port(), free_port()
    extra = "" if bound is None else f"in_flight_bytes = {bound}\n"
    app = os.path.join(d, "app.toml")
    with open(app, "w") as f:
        f.write(
            f'name = "bounded"\n[source_connectors.in]\nport = {src_port}\n{extra}'
            f"[sink_connectors.out]\nport = {sink_port}\n{extra}"
            '[[pipelines]]\nsource = "in"\nsinks = ["out"]\n'
        )
    common = ["--application-module", app, "--stats-interval", "0"]
    log = lambda n: open(os.path.join(d, n + ".log"), "w")
    sink = subprocess.Popen(
        [os.path.join(bin_dir, "stdout_sink"), *common, "--connector", "out"],
        stdout=subprocess.PIPE,
        stderr=log("sink"),
    )
    engine = subprocess.Popen(
        [os.path.join(bin_dir, "engine"), *common], stderr=log("engine")
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", src_port)).close()
            break
        except OSError:
            time.sleep(0.05)
    prod = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--produce"], stdout=subprocess.PIPE
    )
    source = subprocess.Popen(
        [os.path.join(bin_dir, "stdin_source"), *common, "--connector", "in"],
        stdin=prod.stdout,
        stderr=log("source"),
    )
    prod.stdout.close()
    procs = {"stdin_source": source, "engine": engine, "stdout_sink": sink}
    peak = {n: 0 for n in procs}
    got = 0
    expect = 0
    bad = None
    pending = b""
    start = time.monotonic()
    next_sample = start
    out = sink.stdout
    os.set_blocking(out.fileno(), False)
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now >= next_sample:
            for n, p in procs.items():
                peak[n] = max(peak[n], rss_kib(p.pid))
            next_sample = now + 0.1
        # Read at `rate` bytes/s (0: everything available).
        want = 1 << 20 if rate == 0 else max(0, int(rate * (now - start)) - got)
        chunk = b""
        if want > 0:
            try:
                chunk = out.read(min(want, 1 << 20)) or b""
            except BlockingIOError:
                chunk = b""
        if chunk:
            got += len(chunk)
            pending += chunk
            n = len(pending) // LINE
            if bad is None and pending[: n * LINE] != lines(expect, n):
                for k in range(n):
                    if pending[k * LINE : (k + 1) * LINE] != line(expect + k):
                        bad = f"line {expect + k}: {pending[k * LINE:(k + 1) * LINE][:40]!r}"
                        break
            expect += n
            pending = pending[n * LINE :]
        else:
            time.sleep(0.002 if rate == 0 else 0.01)
    elapsed = time.monotonic() - start
    for p in (prod, source, engine, sink):
        p.kill()
        p.wait()
    return {
        "bound": "default" if bound is None else bound,
        "seconds": round(elapsed, 1),
        "lines": expect,
        "lines_per_s": round(expect / elapsed),
        "MB_per_s": round(got / elapsed / 1e6, 2),
        "in_order_none_missing": bad is None,
        "first_bad": bad,
        "peak_rss_mib": {n: round(v / 1024, 1) for n, v in peak.items()},
    }


def main():
    if sys.argv[1:] == ["--produce"]:
        return produce()
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, action="append")
    ap.add_argument("--bound", action="append")
    a = ap.parse_args()
    for rate in a.rate or [1.3e6]:
        for b in a.bound or ["default"]:
            r = run(a.bin, a.seconds, rate, None if b == "default" else int(b))
            r["reader_rate"] = "unlimited" if rate == 0 else f"{rate / 1e6:g} MB/s"
            print(r, flush=True)


if __name__ == "__main__":
    sys.exit(main())
