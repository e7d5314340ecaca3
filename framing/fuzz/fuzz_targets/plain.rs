//! Fuzzes the plain-frame decoder (`u32` length + payload: `--protocol framed`,
//! `--format frames`) with arbitrary bytes: `PlainCodec` (`decode`, `decode_eof`) and
//! `split_frame`. Besides "never panics", it checks on every input that
//!
//! - each payload is exactly the bytes its header announces, and a step consumes exactly
//!   header + payload (never more than it was given), nothing when it returns `None`;
//! - `split_frame` agrees with the codec, frame for frame and error for error;
//! - every payload re-encodes (`PlainCodec` as an encoder) to the bytes it was read from;
//! - delivering the same bytes in small chunks yields the same payloads and the same error;
//! - at end of input, `decode_eof` reports a partial frame as `EndedMidFrame`.
//!
//! Run with `scripts/fuzz.sh SECONDS plain`.
#![no_main]

use bytes::{Bytes, BytesMut};
use framing::{split_frame, FrameError, PlainCodec, LENGTH_HEADER};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// Small enough that the fuzzer reaches both sides of the limit.
const MAX_FRAME: usize = 4096;

#[derive(Debug, PartialEq)]
enum Step {
    Payload(Bytes),
    Incomplete,
    Error(String),
}

fn decode_all(data: &[u8]) -> Vec<Step> {
    let mut codec = PlainCodec::new(MAX_FRAME);
    let mut buf = BytesMut::from(data);
    let mut steps = Vec::new();
    let mut offset = 0;
    loop {
        let before = buf.len();
        let rest = &data[offset..];
        let borrowed = split_frame(rest, MAX_FRAME);
        match codec.decode(&mut buf) {
            Ok(Some(payload)) => {
                let used = before - buf.len();
                assert_eq!(used, LENGTH_HEADER + payload.len());
                assert!(payload.len() <= MAX_FRAME);
                let header = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(payload.len(), header);
                assert_eq!(&payload[..], &rest[LENGTH_HEADER..used]);
                assert_eq!(
                    borrowed.expect("split_frame refused a frame the codec accepted"),
                    Some((&payload[..], used))
                );
                let mut again = BytesMut::new();
                codec
                    .encode(&payload[..], &mut again)
                    .expect("a decoded payload re-encodes");
                assert_eq!(&again[..], &rest[..used]);
                offset += used;
                steps.push(Step::Payload(payload));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "decode returned None but consumed bytes");
                assert_eq!(&buf[..], rest);
                assert!(matches!(borrowed, Ok(None)), "split_frame: {borrowed:?}");
                steps.push(Step::Incomplete);
                match codec.decode_eof(&mut buf) {
                    Ok(None) => assert!(buf.is_empty()),
                    Err(FrameError::EndedMidFrame(n)) => assert_eq!(n, before),
                    other => panic!("decode_eof after None: {other:?}"),
                }
                break;
            }
            Err(e) => {
                let FrameError::TooLarge { len, max } = e else {
                    panic!("the plain decoder's only error is TooLarge, got {e:?}");
                };
                assert!(len > max && max == MAX_FRAME);
                assert!(
                    matches!(borrowed, Err(FrameError::TooLarge { len: l, .. }) if l == len),
                    "split_frame: {borrowed:?}"
                );
                // An oversize frame is refused from its header, before any of it is kept.
                assert!(buf.capacity() <= data.len().max(2 * (MAX_FRAME + LENGTH_HEADER)));
                // The encoder refuses a payload over the limit too.
                let over = vec![0u8; MAX_FRAME + 1];
                assert!(codec.encode(&over[..], &mut BytesMut::new()).is_err());
                steps.push(Step::Error(e.to_string()));
                break;
            }
        }
    }
    steps
}

/// Feeds `data` in chunks (sizes taken from the data itself), as a pipe would deliver it.
fn decode_chunked(data: &[u8]) -> Vec<Step> {
    let mut codec = PlainCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    let mut fed = 0;
    let mut chunk = 1 + usize::from(data.last().copied().unwrap_or(0) % 7);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(payload)) => steps.push(Step::Payload(payload)),
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
