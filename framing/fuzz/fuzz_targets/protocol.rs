//! Fuzzes the connector-protocol decoders with arbitrary bytes (a stream as read from a
//! socket): `ProtocolCodec` (`decode`, `decode_eof`), `split_frame` + `Frame::decode`, and
//! `MessageView::from_frame_body`. Besides "never panics", it checks on every input that
//!
//! - a step consumes exactly the frame its header announces (never more than it was given),
//!   and nothing when it returns `None`; it reserves no more than the frame limit allows;
//! - the borrowed path (`split_frame`, `MessageView`) agrees with the codec frame for frame
//!   and error for error;
//! - every decoded frame re-encodes to the bytes it was read from (except where the spec
//!   lets the reader be lenient: OK without its v3 lists, a non-UTF-8 ERROR text, a
//!   NOTIFY_ACK success byte other than 0/1), and re-decodes to the same frame;
//! - delivering the same bytes in small chunks yields the same frames and the same error;
//! - at end of input, `decode_eof` reports a partial frame as `EndedMidFrame`.
//!
//! Run with `scripts/fuzz.sh SECONDS protocol`.
#![no_main]

use bytes::{Bytes, BytesMut};
use framing::{split_frame, Frame, FrameError, MessageView, ProtocolCodec, LENGTH_HEADER};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 1 << 16;

/// What one decode step produced, comparable across the paths.
#[derive(Debug, PartialEq)]
enum Step {
    Frame(Frame, usize),
    Incomplete,
    Error(String),
}

fn decode_all(data: &[u8]) -> Vec<Step> {
    let mut codec = ProtocolCodec::new(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    let mut steps = Vec::new();
    let mut offset = 0;
    loop {
        let before = buf.len();
        let rest = &data[offset..];
        assert_eq!(&buf[..], rest);
        let borrowed = split_frame(rest, MAX_FRAME);
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let (body, split_used) = borrowed
                    .expect("split_frame refused a frame the codec accepted")
                    .expect("split_frame found no frame where the codec did");
                assert_eq!(used, split_used, "codec and split_frame disagree on size");
                assert!(used >= LENGTH_HEADER && used <= before);
                let header = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(used, LENGTH_HEADER + header);
                assert_eq!(body, &rest[LENGTH_HEADER..used]);
                check_view(body, Ok(&frame));
                check_reencode(&frame, &rest[..used]);
                offset += used;
                steps.push(Step::Frame(frame, used));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "decode returned None but consumed bytes");
                assert!(matches!(borrowed, Ok(None)), "split_frame: {borrowed:?}");
                // Room is reserved for the rest of an announced frame, never past the limit.
                assert!(
                    buf.capacity() <= 2 * (MAX_FRAME + LENGTH_HEADER) + data.len(),
                    "reserved {} bytes",
                    buf.capacity()
                );
                steps.push(Step::Incomplete);
                match codec.decode_eof(&mut buf) {
                    Ok(None) => assert!(buf.is_empty()),
                    Err(FrameError::EndedMidFrame(n)) => assert_eq!(n, before),
                    other => panic!("decode_eof after None: {other:?}"),
                }
                break;
            }
            Err(e) => {
                match (&e, borrowed) {
                    (
                        FrameError::TooLarge { len, max },
                        Err(FrameError::TooLarge { len: l2, .. }),
                    ) => {
                        assert!(*len > *max && *len == l2);
                    }
                    (_, Ok(Some((body, _)))) => {
                        check_view(body, Err(&e));
                        let again = Frame::decode(Bytes::copy_from_slice(body)).unwrap_err();
                        assert_eq!(again.to_string(), e.to_string());
                    }
                    (_, other) => panic!("codec error {e:?} but split_frame {other:?}"),
                }
                steps.push(Step::Error(e.to_string()));
                break;
            }
        }
    }
    steps
}

/// `MessageView` agrees with the codec's result for this frame body.
fn check_view(body: &[u8], codec: Result<&Frame, &FrameError>) {
    match (MessageView::from_frame_body(body), codec) {
        (Ok(Some(view)), Ok(Frame::Message(m))) => assert_eq!(view, m.view()),
        (Ok(None), Ok(frame)) => assert!(!matches!(frame, Frame::Message(_))),
        (Ok(None), Err(_)) => assert_ne!(body.first(), Some(&5)),
        (Err(v), Err(c)) => assert_eq!(v.to_string(), c.to_string()),
        (view, codec) => panic!("MessageView {view:?} but codec {codec:?}"),
    }
}

/// The frame re-encodes to `wire` (where the format is canonical) and re-decodes to itself.
fn check_reencode(frame: &Frame, wire: &[u8]) {
    let mut again = BytesMut::new();
    frame
        .encode(&mut again)
        .expect("a decoded frame re-encodes");
    let canonical = match frame {
        // OK may come without the v3 lists; the encoder always writes them (empty).
        Frame::Ok { .. } => wire.len() == LENGTH_HEADER + 1 + 12,
        // ERROR text is decoded lossily.
        Frame::Error { .. } => std::str::from_utf8(&wire[LENGTH_HEADER + 3..]).is_ok(),
        // Any non-zero success byte reads as true; the encoder writes 1.
        Frame::NotifyAck { .. } => wire[LENGTH_HEADER + 1] <= 1,
        _ => true,
    };
    if canonical {
        assert_eq!(&again[..], wire, "re-encoding of {frame:?} differs");
    }
    let redecoded = ProtocolCodec::new(usize::MAX)
        .decode(&mut again)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert!(again.is_empty());
    match (frame, &redecoded) {
        (Frame::Error { message: a }, Frame::Error { message: b }) => {
            // Re-encoding cuts a text longer than a short_bytes at a char boundary.
            assert!(a.starts_with(b.as_str()), "{a:?} vs {b:?}")
        }
        _ => assert_eq!(frame, &redecoded),
    }
}

/// Feeds `data` in chunks (sizes taken from the data itself), as a socket would deliver it.
fn decode_chunked(data: &[u8]) -> Vec<Step> {
    let mut codec = ProtocolCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut chunk = 1 + usize::from(data.last().copied().unwrap_or(0) % 7);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = fed - consumed - buf.len();
                consumed += used;
                steps.push(Step::Frame(frame, used));
            }
            Ok(None) if fed < data.len() => {
                let end = (fed + chunk).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
                chunk = chunk % 13 + 1;
            }
            Ok(None) => {
                steps.push(Step::Incomplete);
                break;
            }
            Err(e) => {
                steps.push(Step::Error(e.to_string()));
                break;
            }
        }
    }
    steps
}

fuzz_target!(|data: &[u8]| {
    let whole = decode_all(data);
    let chunked = decode_chunked(data);
    assert_eq!(whole, chunked, "chunked delivery decodes differently");
});
