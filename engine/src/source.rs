//! Source side: the listener of each source connector and one session per connection.
//!
//! A session reads big buffers, decodes every complete frame in them, runs the pipelines
//! on each fresh MESSAGE (outputs go straight into the sinks' buffers), then, once per
//! batch, records marks for the acknowledgement tracker, wakes the sink writers and sends
//! whatever ACK / NOTIFY_ACK frames are due. Any protocol error closes that connection only,
//! after an ERROR frame naming the cause and one warning line in the log.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use framing::{check_hello, Frame, FrameError, Tag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::acks::ConnId;
use crate::core::Core;
use crate::net::{Listener, Reader, Writer};
use crate::pipeline::{Emitter, Input};

const READ_BUF: usize = 512 * 1024;
const MIN_READ: usize = 128 * 1024;

/// Accepts connections for source `idx` forever.
pub(crate) async fn accept_loop(core: Rc<RefCell<Core>>, idx: usize, listener: Listener) {
    loop {
        match listener.accept().await {
            Ok((rd, wr, peer)) => {
                core.borrow().metrics.connections.inc();
                tokio::task::spawn_local(session(core.clone(), idx, rd, wr, peer));
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A protocol error: its metric kind and the message for the ERROR frame and the log.
struct ProtoError {
    kind: &'static str,
    message: String,
    /// Whether an ERROR frame can still reach the peer.
    send: bool,
}

impl ProtoError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        ProtoError {
            kind,
            message: message.into(),
            send: true,
        }
    }
}

fn frame_error_kind(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLarge { .. } => "oversize_frame",
        FrameError::Empty | FrameError::Truncated { .. } | FrameError::TrailingBytes { .. } => {
            "truncated_frame"
        }
        FrameError::UnknownTag(_) => "unknown_tag",
        FrameError::NotUtf8 { .. } | FrameError::FieldTooLong { .. } => "bad_field",
        FrameError::EndedMidFrame(_) => "ended_mid_frame",
        FrameError::Io(_) => "io",
    }
}

impl From<FrameError> for ProtoError {
    fn from(e: FrameError) -> Self {
        ProtoError::new(frame_error_kind(&e), e.to_string())
    }
}

/// Per-connection session state (the read side).
struct Session {
    conn: ConnId,
    source: usize,
    hello_done: bool,
    /// (stream_id, last fresh id, fresh count) touched in the current batch.
    touched: Vec<(u64, u64, u64)>,
    msgs: u64,
    bytes: u64,
    dups: u64,
    out_msgs: u64,
    out_bytes: u64,
    out_errors: u64,
    /// Credits left, cached for the batch (written back in `finish_batch`).
    credits_left: u64,
    /// Credits spent in this batch.
    spent: u64,
}

async fn session(core: Rc<RefCell<Core>>, source: usize, mut rd: Reader, wr: Writer, peer: String) {
    let (conn, wake) = core.borrow_mut().open_conn(source);
    let name = core.borrow().sources[source].name.clone();
    let writer = tokio::task::spawn_local(write_loop(core.clone(), conn, wake, wr));
    let mut s = Session {
        conn,
        source,
        hello_done: false,
        touched: Vec::new(),
        msgs: 0,
        bytes: 0,
        dups: 0,
        out_msgs: 0,
        out_bytes: 0,
        out_errors: 0,
        credits_left: 0,
        spent: 0,
    };
    let max_frame = core.borrow().max_frame;
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let result: Result<(), ProtoError> = loop {
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(READ_BUF);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                if buf.is_empty() {
                    break Ok(());
                }
                let e = FrameError::EndedMidFrame(buf.len());
                break Err(ProtoError {
                    send: false,
                    ..e.into()
                });
            }
            Ok(_) => {}
            Err(e) => {
                break Err(ProtoError {
                    send: false,
                    ..ProtoError::new("io", format!("read error: {e}"))
                })
            }
        }
        let r = {
            let mut c = core.borrow_mut();
            let r = process(&mut c, &mut s, &mut buf, max_frame);
            finish_batch(&mut c, &mut s);
            r
        };
        if let Err(e) = r {
            break Err(e);
        }
    };
    if result.is_ok() {
        // A connector may half-close after EOS and still read its final ACK: keep the
        // connection until the ended streams are acknowledged (bounded wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while core.borrow().tracker.eos_pending(conn)
            && core.borrow().conns.contains_key(&conn)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    {
        let mut c = core.borrow_mut();
        c.tracker.release(conn);
        match &result {
            Ok(()) => debug!("source `{name}` connection from {peer} closed"),
            Err(e) => {
                c.metrics.error(e.kind);
                warn!(
                    "source `{name}` connection from {peer}: {}; connection closed",
                    e.message
                );
                if e.send {
                    c.send(conn, &Frame::error(e.message.clone()));
                }
            }
        }
        if let Some(co) = c.conns.get_mut(&conn) {
            co.closing = true;
            co.wake.notify_one();
        }
    }
    let _ = writer.await;
}

async fn write_loop(
    core: Rc<RefCell<Core>>,
    conn: ConnId,
    wake: Rc<tokio::sync::Notify>,
    mut wr: Writer,
) {
    loop {
        wake.notified().await;
        let (out, closing) = {
            let mut c = core.borrow_mut();
            match c.conns.get_mut(&conn) {
                Some(co) => (co.out.split(), co.closing),
                None => break,
            }
        };
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            break;
        }
        if closing {
            // Send anything queued meanwhile, then close.
            let rest = core
                .borrow_mut()
                .conns
                .get_mut(&conn)
                .map(|co| co.out.split());
            if let Some(rest) = rest {
                let _ = wr.write_all(&rest).await;
            }
            let _ = wr.shutdown().await;
            break;
        }
    }
    core.borrow_mut().conns.remove(&conn);
}

/// Decodes and handles every complete frame in `buf`.
fn process(
    c: &mut Core,
    s: &mut Session,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<(), ProtoError> {
    let Some(co) = c.conns.get(&s.conn) else {
        return Err(ProtoError {
            send: false,
            ..ProtoError::new("io", "connection lost: writing to the connector failed")
        });
    };
    s.credits_left = co.credits.balance();
    s.spent = 0;
    let mut off = 0usize;
    let result = loop {
        let avail = buf.len() - off;
        if avail < 4 {
            break Ok(());
        }
        let b = &buf[off..];
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len > max_frame {
            break Err(FrameError::TooLarge {
                len,
                max: max_frame,
            }
            .into());
        }
        if avail < 4 + len {
            buf.reserve(4 + len - avail);
            break Ok(());
        }
        let body = &b[4..4 + len];
        off += 4 + len;
        if let Err(e) = frame(c, s, body) {
            break Err(e);
        }
    };
    buf.advance(off);
    result
}

#[inline]
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Handles one frame body (tag + fields).
#[inline]
fn frame(c: &mut Core, s: &mut Session, body: &[u8]) -> Result<(), ProtoError> {
    // Hot path: MESSAGE parsed in place, no allocation.
    if s.hello_done && body.len() >= 27 && body[0] == Tag::Message as u8 {
        let stream_id = be_u64(body, 1);
        let message_id = be_u64(body, 9);
        let event_time = be_u64(body, 17) as i64;
        let klen = u16::from_be_bytes([body[25], body[26]]) as usize;
        if body.len() < 27 + klen {
            return Err(FrameError::Truncated {
                frame: "MESSAGE",
                field: "key",
                needed: 27 + klen - body.len(),
            }
            .into());
        }
        return message(
            c,
            s,
            Input {
                stream_id,
                message_id,
                event_time,
                key: &body[27..27 + klen],
                payload: &body[27 + klen..],
            },
        );
    }
    let f = Frame::decode(Bytes::copy_from_slice(body))?;
    if !s.hello_done {
        let Frame::Hello(h) = f else {
            return Err(ProtoError::new(
                "no_hello",
                format!("expected HELLO as the first frame, got {:?}", f.tag()),
            ));
        };
        if let Err(m) = check_hello(&h, &c.cookie) {
            return Err(ProtoError::new("bad_hello", m));
        }
        s.hello_done = true;
        let credits = c.sources[s.source].max_credits;
        c.send(
            s.conn,
            &Frame::Ok {
                initial_credits: credits,
            },
        );
        if let Some(co) = c.conns.get_mut(&s.conn) {
            co.ready = true;
        }
        return Ok(());
    }
    match f {
        Frame::Notify {
            stream_id,
            stream_name,
            point_of_ref,
        } => {
            spend(c, s)?;
            let r = c.tracker.notify(s.conn, stream_id, &stream_name, point_of_ref);
            if !r.success {
                warn!(
                    "source `{}`: stream {stream_id} ({stream_name}) is active on another connection; NOTIFY refused",
                    c.sources[s.source].name
                );
            }
            c.send(
                s.conn,
                &Frame::NotifyAck {
                    success: r.success,
                    stream_id,
                    point_of_ref: r.point,
                },
            );
            Ok(())
        }
        Frame::Message(m) => message(
            c,
            s,
            Input {
                stream_id: m.stream_id,
                message_id: m.message_id,
                event_time: m.event_time,
                key: &m.key,
                payload: &m.payload,
            },
        ),
        Frame::Eos { stream_id } => c
            .tracker
            .eos(s.conn, stream_id)
            .map_err(|e| ProtoError::new("not_notified", e.to_string())),
        Frame::Error { message } => Err(ProtoError {
            send: false,
            ..ProtoError::new("peer_error", format!("connector sent ERROR: {message}"))
        }),
        other => Err(ProtoError::new(
            "unexpected_frame",
            format!(
                "unexpected {:?} frame from a source connector (it may send HELLO, NOTIFY, MESSAGE, EOS)",
                other.tag()
            ),
        )),
    }
}

#[inline]
fn spend(c: &mut Core, s: &mut Session) -> Result<(), ProtoError> {
    if c.conns
        .get_mut(&s.conn)
        .is_some_and(|co| co.credits.spend())
    {
        Ok(())
    } else {
        Err(ProtoError::new(
            "credits_overspent",
            "credits overspent: NOTIFY/MESSAGE sent with no credit left (wait for an ACK granting credits)",
        ))
    }
}

#[inline]
fn message(c: &mut Core, s: &mut Session, input: Input<'_>) -> Result<(), ProtoError> {
    spend(c, s)?;
    match c.tracker.accept(s.conn, input.stream_id, input.message_id) {
        Err(e) => return Err(ProtoError::new("not_notified", e.to_string())),
        Ok(false) => {
            s.dups += 1;
            return Ok(());
        }
        Ok(true) => {}
    }
    s.msgs += 1;
    s.bytes += input.payload.len() as u64;
    match s.touched.last_mut() {
        Some(t) if t.0 == input.stream_id => {
            t.1 = input.message_id;
            t.2 += 1;
        }
        _ => match s.touched.iter_mut().find(|t| t.0 == input.stream_id) {
            Some(t) => {
                t.1 = input.message_id;
                t.2 += 1;
            }
            None => s.touched.push((input.stream_id, input.message_id, 1)),
        },
    }
    let Core { sources, sinks, .. } = c;
    for p in sources[s.source].pipelines.iter_mut() {
        let mut em = Emitter {
            sinks: sinks.as_mut_slice(),
            targets: &p.targets,
            event_time: input.event_time,
            count: 0,
            bytes: 0,
            errors: 0,
        };
        (p.runner)(&input, &mut em);
        s.out_msgs += em.count;
        s.out_bytes += em.bytes;
        s.out_errors += em.errors;
    }
    Ok(())
}

/// Once per batch: credits, marks for the ack tracker, metrics, wake the sinks, send ACKs.
fn finish_batch(c: &mut Core, s: &mut Session) {
    if s.spent > 0 {
        if let Some(co) = c.conns.get_mut(&s.conn) {
            for _ in 0..s.spent {
                co.credits.spend();
            }
        }
        s.spent = 0;
    }
    if s.out_msgs > 0 {
        c.metrics.messages_out.add(s.out_msgs);
        c.metrics.bytes_out.add(s.out_bytes);
        s.out_msgs = 0;
        s.out_bytes = 0;
    }
    if s.out_errors > 0 {
        warn!(
            "{} output(s) could not be encoded (key longer than 65535 bytes); dropped",
            s.out_errors
        );
        c.metrics.error("output_too_large");
        s.out_errors = 0;
    }
    if !s.touched.is_empty() {
        let src = &c.sources[s.source];
        let mut wm = vec![0u64; c.sinks.len()];
        for &t in &src.targets {
            wm[t] = c.sinks[t].next_id - 1;
        }
        let wm: Box<[u64]> = wm.into_boxed_slice();
        for &(sid, last, count) in &s.touched {
            c.tracker.push_mark(sid, last, count, c.epoch, wm.clone());
        }
        s.touched.clear();
        c.dirty = true;
        for &t in &c.sources[s.source].targets {
            if !c.sinks[t].pending.is_empty() {
                c.sinks[t].wake.notify_one();
            }
        }
    }
    if s.msgs > 0 {
        c.metrics.messages_in.add(s.msgs);
        c.metrics.bytes_in.add(s.bytes);
        s.msgs = 0;
        s.bytes = 0;
    }
    if s.dups > 0 {
        c.metrics.duplicates.add(s.dups);
        s.dups = 0;
    }
    c.flush_acks();
}
