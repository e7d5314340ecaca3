//! Sink side: the client task that connects out to a sink connector (with back-off),
//! handshakes, resends what the sink has not acknowledged, writes batches within the sink's
//! credits and reads its ACKs.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use framing::{Backoff, Frame, ProtocolCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tracing::{info, warn};

use crate::core::Core;
use crate::net::{self, Reader, Writer};

/// Reads one protocol frame (used during the handshake).
async fn read_frame(
    rd: &mut Reader,
    buf: &mut BytesMut,
    codec: &mut ProtocolCodec,
) -> Result<Frame, String> {
    loop {
        match codec.decode(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed by the sink".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn handshake(
    core: &Rc<RefCell<Core>>,
    idx: usize,
    rd: &mut Reader,
    wr: &mut Writer,
    buf: &mut BytesMut,
    codec: &mut ProtocolCodec,
) -> Result<(), String> {
    let (hello, notify) = {
        let c = core.borrow();
        let s = c.sink(idx);
        (
            Frame::Hello(c.sink_hello()),
            Frame::Notify {
                stream_id: s.stream_id,
                stream_name: s.stream_name.clone(),
                point_of_ref: s.acked(),
            },
        )
    };
    let mut out = BytesMut::new();
    hello.encode(&mut out).map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut credits = match read_frame(rd, buf, codec).await? {
        Frame::Ok { initial_credits } => initial_credits,
        Frame::Error { message } => return Err(format!("sink refused HELLO: {message}")),
        f => return Err(format!("expected OK after HELLO, got {:?}", f.tag())),
    };
    out.clear();
    notify.encode(&mut out).map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    loop {
        match read_frame(rd, buf, codec).await? {
            Frame::NotifyAck {
                success,
                stream_id,
                point_of_ref,
            } => {
                let mut c = core.borrow_mut();
                let s = c.sink_mut(idx);
                if stream_id != s.stream_id {
                    return Err(format!("NOTIFY_ACK for unknown stream {stream_id}"));
                }
                if !success {
                    return Err("sink refused the output stream (NOTIFY_ACK success=0)".into());
                }
                // NOTIFY cost one credit (the spec charges every NOTIFY and MESSAGE).
                s.on_connected(u64::from(credits).saturating_sub(1), point_of_ref);
                break;
            }
            // A sink may grant more credits before answering NOTIFY.
            Frame::Ack { credits: more, .. } => credits = credits.saturating_add(more),
            Frame::Error { message } => return Err(format!("sink error: {message}")),
            f => return Err(format!("expected NOTIFY_ACK, got {:?}", f.tag())),
        }
    }
    let mut c = core.borrow_mut();
    c.metrics().sink_credits.set(credits as i64);
    c.flush_acks();
    Ok(())
}

async fn read_loop(
    core: &Rc<RefCell<Core>>,
    idx: usize,
    rd: &mut Reader,
    buf: &mut BytesMut,
    codec: &mut ProtocolCodec,
) -> String {
    loop {
        loop {
            let frame = match codec.decode(buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("bad frame from sink: {e}"),
            };
            match frame {
                Frame::Ack { credits, acks } => {
                    let mut c = core.borrow_mut();
                    let credits_now = c.sink_mut(idx).on_sink_ack(credits, &acks);
                    c.metrics().sink_credits.set(credits_now as i64);
                    c.flush_acks();
                }
                Frame::Error { message } => return format!("sink sent ERROR: {message}"),
                Frame::Restart { .. } => return "sink asked for a RESTART".into(),
                f => return format!("unexpected {:?} frame from sink", f.tag()),
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) => return "connection closed by the sink".into(),
            Ok(_) => {}
            Err(e) => return format!("read error: {e}"),
        }
    }
}

async fn write_loop(core: &Rc<RefCell<Core>>, idx: usize, wr: &mut Writer) -> String {
    let wake = core.borrow().sink(idx).waker();
    let mut slices = Vec::new();
    loop {
        {
            let mut c = core.borrow_mut();
            c.sink_mut(idx).take_sendable(&mut slices);
        }
        if slices.is_empty() {
            wake.notified().await;
            continue;
        }
        for s in slices.drain(..) {
            if let Err(e) = wr.write_all(&s).await {
                return format!("write error: {e}");
            }
        }
    }
}

/// Runs forever: keeps sink `idx` connected and fed.
pub(crate) async fn sink_task(core: Rc<RefCell<Core>>, idx: usize) {
    let (name, endpoint, max_frame) = {
        let c = core.borrow();
        (
            c.sink(idx).name.clone(),
            c.sink(idx).endpoint.clone(),
            c.max_frame(),
        )
    };
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(2));
    let mut next_report = 0u32;
    let readiness = core.borrow().metrics().readiness.clone();
    let part = format!("sink `{name}`");
    readiness.not_ready(&part, format!("not connected to {endpoint} yet"));
    loop {
        let (mut rd, mut wr) = match net::connect(&endpoint).await {
            Ok(x) => x,
            Err(e) => {
                readiness.not_ready(&part, format!("{endpoint} unreachable ({e}); retrying"));
                let delay = backoff.next_delay();
                if backoff.attempts() == 1 || backoff.attempts() == next_report {
                    next_report = backoff.attempts() + 50;
                    warn!("sink `{name}` at {endpoint} unreachable ({e}); retrying with back-off");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let mut codec = ProtocolCodec::new(max_frame);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let hs = tokio::time::timeout(
            Duration::from_secs(10),
            handshake(&core, idx, &mut rd, &mut wr, &mut buf, &mut codec),
        )
        .await
        .unwrap_or_else(|_| Err("no answer to HELLO/NOTIFY within 10 s".into()));
        if let Err(e) = hs {
            readiness.not_ready(
                &part,
                format!("handshake with {endpoint} failed ({e}); retrying"),
            );
            core.borrow().metrics().error("sink_handshake");
            warn!("sink `{name}` at {endpoint}: {e}; retrying with back-off");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        if backoff.attempts() > 0 {
            info!("sink `{name}` connected at {endpoint}");
        }
        backoff.reset();
        next_report = 0;
        readiness.ready(&part);
        core.borrow().sink(idx).wake();
        tracing::debug!(
            "sink `{name}` connected; resending from {}",
            core.borrow().sink(idx).acked()
        );
        let reason = tokio::select! {
            r = read_loop(&core, idx, &mut rd, &mut buf, &mut codec) => r,
            w = write_loop(&core, idx, &mut wr) => w,
        };
        {
            let mut c = core.borrow_mut();
            c.sink_mut(idx).on_disconnected();
            c.metrics().reconnects.inc();
            c.metrics().error("sink_disconnected");
        }
        readiness.not_ready(
            &part,
            format!("connection to {endpoint} lost ({reason}); reconnecting"),
        );
        warn!("sink `{name}` at {endpoint}: {reason}; reconnecting");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
