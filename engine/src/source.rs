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
use framing::{Frame, FrameError, MessageView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::acks::ConnId;
use crate::core::{Core, Emitted};
use crate::net::{Listener, Reader, Writer};
use crate::pipeline::Input;

const READ_BUF: usize = 512 * 1024;
const MIN_READ: usize = 128 * 1024;

/// Accepts connections for source `idx` forever.
pub(crate) async fn accept_loop(core: Rc<RefCell<Core>>, idx: usize, listener: Listener) {
    loop {
        match listener.accept().await {
            Ok((rd, wr, peer)) => {
                core.borrow().metrics().connections.inc();
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
    /// (stream_id, last fresh id, fresh count, their frame bytes) touched in the current
    /// batch.
    touched: Vec<(u64, u64, u64, u64)>,
    msgs: u64,
    bytes: u64,
    dups: u64,
    /// Outputs of the batch's messages.
    out: Emitted,
}

async fn session(core: Rc<RefCell<Core>>, source: usize, mut rd: Reader, wr: Writer, peer: String) {
    let (conn, wake) = core.borrow_mut().open_conn(source);
    let name = core.borrow().source_name(source).to_string();
    let writer = tokio::task::spawn_local(write_loop(core.clone(), conn, wake, wr));
    let mut s = Session {
        conn,
        source,
        hello_done: false,
        touched: Vec::new(),
        msgs: 0,
        bytes: 0,
        dups: 0,
        out: Emitted::default(),
    };
    let max_frame = core.borrow().max_frame();
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
        while core.borrow().eos_pending(conn) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    {
        let mut c = core.borrow_mut();
        let error = match result {
            Ok(()) => {
                debug!("source `{name}` connection from {peer} closed");
                None
            }
            Err(e) => {
                c.metrics().error(e.kind);
                warn!(
                    "source `{name}` connection from {peer}: {}; connection closed",
                    e.message
                );
                e.send.then_some(e.message)
            }
        };
        c.close_conn(conn, error);
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
        let Some((out, closing)) = core.borrow_mut().take_output(conn) else {
            break;
        };
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            break;
        }
        if closing {
            // Send anything queued meanwhile, then close.
            let rest = core.borrow_mut().take_output(conn);
            if let Some((rest, _)) = rest {
                let _ = wr.write_all(&rest).await;
            }
            let _ = wr.shutdown().await;
            break;
        }
    }
    core.borrow_mut().remove_conn(conn);
}

/// Decodes and handles every complete frame in `buf`.
fn process(
    c: &mut Core,
    s: &mut Session,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<(), ProtoError> {
    if !c.conn_open(s.conn) {
        return Err(ProtoError {
            send: false,
            ..ProtoError::new("io", "connection lost: writing to the connector failed")
        });
    }
    let mut off = 0usize;
    let result = loop {
        match framing::split_frame(&buf[off..], max_frame) {
            Ok(Some((body, used))) => {
                off += used;
                if let Err(e) = frame(c, s, body) {
                    break Err(e);
                }
            }
            Ok(None) => {
                // Incomplete frame: make room for the rest of it.
                if let Ok(Some(whole)) = framing::frame_len(&buf[off..], max_frame) {
                    let avail = buf.len() - off;
                    buf.reserve(whole.saturating_sub(avail));
                }
                break Ok(());
            }
            Err(e) => break Err(e.into()),
        }
    };
    buf.advance(off);
    result
}

/// Handles one frame body (tag + fields).
#[inline]
fn frame(c: &mut Core, s: &mut Session, body: &[u8]) -> Result<(), ProtoError> {
    // Hot path: MESSAGE read in place, no allocation.
    if s.hello_done {
        if let Some(m) = MessageView::from_frame_body(body)? {
            return message(c, s, m);
        }
    }
    let f = Frame::decode(Bytes::copy_from_slice(body))?;
    if !s.hello_done {
        let Frame::Hello(h) = f else {
            return Err(ProtoError::new(
                "no_hello",
                format!("expected HELLO as the first frame, got {:?}", f.tag()),
            ));
        };
        if let Err(m) = c.accept_hello(s.conn, s.source, &h) {
            return Err(ProtoError::new("bad_hello", m));
        }
        s.hello_done = true;
        return Ok(());
    }
    match f {
        Frame::Notify {
            stream_id,
            stream_name,
            point_of_ref,
        } => {
            spend(c, s)?;
            if c.hands_off() {
                // Answered by the take-over task once the stream's slice is loaded.
                c.request_takeover(s.conn, stream_id, &stream_name, point_of_ref);
                return Ok(());
            }
            if !c.notify_stream(s.conn, stream_id, &stream_name, point_of_ref) {
                warn!(
                    "source `{}`: stream {stream_id} ({stream_name}) is active on another connection; NOTIFY refused",
                    c.source_name(s.source)
                );
            }
            Ok(())
        }
        Frame::Message(m) => message(c, s, m.view()),
        Frame::Eos { stream_id } => c
            .end_stream(s.conn, stream_id)
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
    if c.spend_credit(s.conn) {
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
    match c.accept_message(s.conn, input.stream_id, input.message_id) {
        Err(e) => return Err(ProtoError::new("not_notified", e.to_string())),
        Ok(false) => {
            s.dups += 1;
            return Ok(());
        }
        Ok(true) => {}
    }
    s.msgs += 1;
    s.bytes += input.payload.len() as u64;
    // What the connector holds for replay until this is acknowledged (in_flight_bytes).
    let frame = framing::message_frame_len(input.key.len(), input.payload.len()) as u64;
    match s.touched.last_mut() {
        Some(t) if t.0 == input.stream_id => {
            t.1 = input.message_id;
            t.2 += 1;
            t.3 += frame;
        }
        _ => match s.touched.iter_mut().find(|t| t.0 == input.stream_id) {
            Some(t) => {
                t.1 = input.message_id;
                t.2 += 1;
                t.3 += frame;
            }
            None => s
                .touched
                .push((input.stream_id, input.message_id, 1, frame)),
        },
    }
    c.run_pipelines(s.source, &input, &mut s.out);
    Ok(())
}

/// Once per batch: credits, marks for the ack tracker, metrics, wake the sinks, send ACKs.
fn finish_batch(c: &mut Core, s: &mut Session) {
    let out = std::mem::take(&mut s.out);
    if out.count > 0 {
        c.metrics().messages_out.add(out.count);
        c.metrics().bytes_out.add(out.bytes);
    }
    if out.errors > 0 {
        warn!(
            "{} output(s) could not be encoded (key longer than 65535 bytes); dropped",
            out.errors
        );
        c.metrics().error("output_too_large");
    }
    if !s.touched.is_empty() {
        c.record_batch(s.source, &s.touched);
        s.touched.clear();
    }
    if s.msgs > 0 {
        c.metrics().messages_in.add(s.msgs);
        c.metrics().bytes_in.add(s.bytes);
        s.msgs = 0;
        s.bytes = 0;
    }
    if s.dups > 0 {
        c.metrics().duplicates.add(s.dups);
        s.dups = 0;
    }
    c.flush_acks();
}
