#!/usr/bin/env python3
"""A source client that behaves like Wallaroo's AtLeastOnceSourceConnector (connector
protocol v3), written with the standard library only.

What it does, as Wallaroo's client does:
- HELLO costs no credit; NOTIFY and MESSAGE cost one each; EOS costs none.
- message ids are byte offsets: the offset just after each record in its stream's "file".
- the MESSAGE key is the stream name on every message.
- OK is read as protocol v3 lays it out: credits, then a credit_list and a source_list, each a
  u32 count and its entries (Wallaroo's `Ok.decode` fails on an OK without them).
- NOTIFY carries the stream's current position (its byte offset: 0 at the start), and the
  client seeks to the NOTIFY_ACK point whenever it differs from that position
  (`MultiSourceConnector.stream_added` -> `FramedFileReader.reset`): 0 is the start, anything
  else must be a record boundary. u64::MAX cannot be seeked to: fatal, as in Wallaroo.
- an ACK pair carrying u64::MAX, going backwards, going past the last id sent, or naming an id
  that was never sent is fatal.
- after EOS it waits for an ACK whose point equals its last message id.

Usage: wallaroo_client.py HOST PORT STREAMS RECORDS
Phase 1 sends the first half of every stream and drops the connection without waiting.
Phase 2 reconnects, re-NOTIFYs, resumes from the engine's points, sends the rest, EOS, and
waits for the final ACKs. Phase 3 reconnects and checks the resume points equal the last ids.
"""
import socket
import struct
import sys
import time

U64_MAX = 2**64 - 1
HELLO, OK, ERROR, NOTIFY, NOTIFY_ACK, MESSAGE, ACK, RESTART, EOS = range(9)


def fatal(msg):
    print("FATAL: " + msg, file=sys.stderr)
    sys.exit(1)


def short(b):
    return struct.pack(">H", len(b)) + b


def frame(tag, body):
    return struct.pack(">IB", len(body) + 1, tag) + body


def record(stream, i):
    # variable length records, ~100 bytes
    return ("%s record %d " % (stream, i)).encode() + b"x" * (60 + (i * 7) % 50)


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & U64_MAX
    return h


class Stream:
    def __init__(self, name, n):
        self.name = name
        self.id = fnv1a(name)
        self.records = [record(name, i) for i in range(n)]
        self.offsets = []
        off = 0
        for r in self.records:
            off += len(r)
            self.offsets.append(off)
        self.sent_ids = set()
        self.last_sent = None
        self.last_ack = None


class Client:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.credits = 0

    def send(self, data):
        self.sock.sendall(data)

    def read_frame(self, timeout=20.0):
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    f = self.buf[4:4 + n]
                    self.buf = self.buf[4 + n:]
                    return f[0], f[1:]
            chunk = self.sock.recv(65536)
            if not chunk:
                fatal("engine closed the connection")
            self.buf += chunk

    def hello(self):
        body = short(b"0.0.1") + short(b"") + short(b"wallaroo_client") + short(b"compat")
        self.send(frame(HELLO, body))
        tag, body = self.read_frame()
        if tag != OK:
            fatal("expected OK, got tag %d %r" % (tag, body))
        self.credits, n_streams = struct.unpack(">II", body[:8])
        rest = body[8:]
        for _ in range(n_streams):
            (name_len,) = struct.unpack(">H", rest[8:10])
            rest = rest[10 + name_len + 8:]
        (n_sources,) = struct.unpack(">I", rest[:4])
        rest = rest[4:]
        for _ in range(n_sources):
            for _ in range(2):
                (n,) = struct.unpack(">H", rest[:2])
                rest = rest[2 + n:]
        if rest:
            fatal("OK has %d bytes after its lists" % len(rest))

    def handle(self, tag, body, streams):
        if tag == ACK:
            credits, n = struct.unpack(">II", body[:8])
            self.credits += credits
            for k in range(n):
                sid, point = struct.unpack(">QQ", body[8 + 16 * k:24 + 16 * k])
                s = streams.get(sid)
                if s is None:
                    fatal("ACK for unknown stream %d" % sid)
                if point == U64_MAX:
                    fatal("ACK with u64::MAX for %s" % s.name)
                if s.last_ack is not None and point < s.last_ack:
                    fatal("ACK went backwards for %s: %d < %d" % (s.name, point, s.last_ack))
                if s.last_sent is None or point > s.last_sent:
                    fatal("ACK %d past the last id sent (%r) for %s" % (point, s.last_sent, s.name))
                if point not in s.sent_ids:
                    fatal("ACK %d is not the id of a message sent on %s" % (point, s.name))
                s.last_ack = point
        elif tag == ERROR:
            fatal("engine sent ERROR: %r" % body)
        elif tag == NOTIFY_ACK:
            return struct.unpack(">BQQ", body)
        else:
            fatal("unexpected frame tag %d" % tag)
        return None

    def wait_credit(self, streams):
        while self.credits <= 0:
            tag, body = self.read_frame()
            self.handle(tag, body, streams)

    def notify(self, s, position, streams):
        self.wait_credit(streams)
        self.send(frame(NOTIFY, struct.pack(">Q", s.id) + short(s.name.encode()) + struct.pack(">Q", position)))
        self.credits -= 1
        while True:
            tag, body = self.read_frame()
            r = self.handle(tag, body, streams)
            if r is not None:
                ok, sid, point = r
                if sid != s.id:
                    fatal("NOTIFY_ACK for the wrong stream")
                if not ok:
                    fatal("NOTIFY refused for %s" % s.name)
                return point

    def send_records(self, s, start, end, streams):
        i = start
        while i < end:
            self.wait_credit(streams)
            out = []
            while i < end and self.credits > 0:
                mid = s.offsets[i]
                body = struct.pack(">QQQ", s.id, mid, int(time.time() * 1000)) + short(s.name.encode()) + s.records[i]
                out.append(frame(MESSAGE, body))
                s.sent_ids.add(mid)
                s.last_sent = mid
                self.credits -= 1
                i += 1
            self.send(b"".join(out))
            # drain whatever ACKs are already there, without blocking
            self.sock.setblocking(False)
            try:
                while True:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        fatal("engine closed the connection")
                    self.buf += chunk
            except (BlockingIOError, socket.timeout):
                pass
            self.sock.setblocking(True)
            while len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack(">I", self.buf[:4])[0]:
                tag, body = self.read_frame()
                self.handle(tag, body, streams)


def resume_index(s, point):
    if point == U64_MAX:
        fatal("NOTIFY_ACK point u64::MAX for %s: cannot seek there" % s.name)
    if point == 0:
        return 0
    if point not in s.offsets:
        fatal("NOTIFY_ACK point %d is not a record boundary of %s" % (point, s.name))
    return s.offsets.index(point) + 1


def main():
    host, port, nstreams, nrec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    streams = {}
    for k in range(nstreams):
        s = Stream("compat-stream-%d" % k, nrec)
        streams[s.id] = s

    # phase 1: first half, then vanish
    c = Client(host, port)
    c.hello()
    for s in streams.values():
        p = c.notify(s, 0, streams)
        if p != 0:
            fatal("NOTIFY_ACK for a stream never seen must be 0 (the start), got %d" % p)
    for s in streams.values():
        c.send_records(s, 0, nrec // 2, streams)
    c.sock.close()
    time.sleep(0.2)

    # phase 2: resume from the engine's points, finish, EOS, wait for the last ids
    c = Client(host, port)
    c.hello()
    for s in streams.values():
        s.last_ack = None
        s.sent_ids = set()
        s.last_sent = None
        # The position reached in phase 1: the engine's answer says where to go back to.
        p = c.notify(s, s.offsets[nrec // 2 - 1], streams)
        start = resume_index(s, p)
        if p != 0:
            s.last_ack = p
        c.send_records(s, start, nrec, streams)
    for s in streams.values():
        c.send(frame(EOS, struct.pack(">Q", s.id)))
    deadline = time.time() + 30
    while any(s.last_ack != s.offsets[-1] for s in streams.values()):
        if time.time() > deadline:
            fatal("no final ACK: %r" % [(s.name, s.last_ack, s.offsets[-1]) for s in streams.values()])
        tag, body = c.read_frame()
        c.handle(tag, body, streams)
    c.sock.close()
    time.sleep(0.1)

    # phase 3: the engine remembers where every stream ended
    c = Client(host, port)
    c.hello()
    for s in streams.values():
        p = c.notify(s, s.offsets[-1], streams)
        if p != s.offsets[-1]:
            fatal("resume point %d != last id %d for %s" % (p, s.offsets[-1], s.name))
    c.sock.close()
    print("ok: %d streams x %d records acknowledged" % (nstreams, nrec))


if __name__ == "__main__":
    main()
