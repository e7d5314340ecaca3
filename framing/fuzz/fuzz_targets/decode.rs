//! Fuzzes the protocol and plain decoders with arbitrary bytes: they must never panic,
//! never allocate past the frame limit, and every frame they accept must re-encode to the
//! same bytes. Run with `cargo +nightly fuzz run decode` from `framing/`.
#![no_main]

use bytes::BytesMut;
use framing::{Frame, PlainCodec, ProtocolCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = ProtocolCodec::new(1 << 16);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                let mut again = BytesMut::new();
                if let Frame::Error { .. } = frame {
                    // ERROR text is decoded lossily; no byte-exact round trip.
                    continue;
                }
                frame.encode(&mut again).expect("a decoded frame re-encodes");
                assert_eq!(&again[..], &before[..used], "re-encoding differs");
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut plain = PlainCodec::new(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = plain.decode(&mut buf) {}
    let _ = plain.decode_eof(&mut buf);
});
