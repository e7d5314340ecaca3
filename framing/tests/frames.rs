//! Byte-level tests of the wire format: the spec's worked example, round trips of every
//! frame type, and every malformed input the spec names.

use bytes::{BufMut, Bytes, BytesMut};
use framing::{Frame, FrameError, Hello, Message, PlainCodec, ProtocolCodec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes from hex digits; whitespace anywhere is ignored.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|d| {
            let pair = std::str::from_utf8(d).expect("ascii");
            u8::from_str_radix(pair, 16).expect("test vector is hex")
        })
        .collect()
}

const WORKED_EXAMPLE: &str = "00 00 00 24  00  00 05 30 2e 30 2e 31  00 00  00 0a 75 64 70 5f 73 6f 75 72 63 65  00 0c 63 65 6c 73 69 75 73 5f 66 65 65 64";

fn example_hello() -> Frame {
    Frame::Hello(Hello {
        version: "0.0.1".into(),
        cookie: "".into(),
        program_name: "udp_source".into(),
        instance_name: "celsius_feed".into(),
    })
}

#[test]
fn worked_example_encodes_to_spec_bytes() {
    let mut buf = BytesMut::new();
    example_hello().encode(&mut buf).unwrap();
    assert_eq!(&buf[..], &hex(WORKED_EXAMPLE)[..]);
}

#[test]
fn worked_example_decodes_from_spec_bytes() {
    let mut buf = BytesMut::from(&hex(WORKED_EXAMPLE)[..]);
    let frame = ProtocolCodec::default().decode(&mut buf).unwrap();
    assert_eq!(frame, Some(example_hello()));
    assert!(buf.is_empty());
}

#[test]
fn message_layout_matches_spec() {
    let mut buf = BytesMut::new();
    framing::encode_message(&mut buf, 7, 104, -1, b"k", b"payload").unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(&(1u32 + 8 + 8 + 8 + 2 + 1 + 7).to_be_bytes());
    want.push(5);
    want.extend_from_slice(&7u64.to_be_bytes());
    want.extend_from_slice(&104u64.to_be_bytes());
    want.extend_from_slice(&(-1i64).to_be_bytes());
    want.extend_from_slice(&[0, 1, b'k']);
    want.extend_from_slice(b"payload");
    assert_eq!(&buf[..], &want[..]);
}

#[test]
fn oversize_length_is_refused_before_reading_the_body() {
    let mut codec = ProtocolCodec::new(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1025);
    buf.put_u8(5);
    match codec.decode(&mut buf) {
        Err(FrameError::TooLarge {
            len: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The decoder must not have reserved the announced size.
    let mut huge = BytesMut::new();
    huge.put_u32(u32::MAX);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut huge),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(huge.capacity() < 1024 * 1024);
}

#[test]
fn truncated_body_is_an_error() {
    // NOTIFY whose length says 5: tag + 4 bytes, but stream_id needs 8.
    let mut buf = BytesMut::from(&[0, 0, 0, 5, 3, 0, 0, 0, 1][..]);
    match ProtocolCodec::default().decode(&mut buf) {
        Err(FrameError::Truncated {
            frame: "NOTIFY", ..
        }) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
    // short_bytes longer than the body.
    let mut buf = BytesMut::from(&[0, 0, 0, 3, 2, 0, 9][..]);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::Truncated { frame: "ERROR", .. })
    ));
    // ACK announcing more pairs than it carries.
    let mut buf = BytesMut::new();
    buf.put_u32(9);
    buf.put_u8(6);
    buf.put_u32(10);
    buf.put_u32(1_000_000);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::Truncated { frame: "ACK", .. })
    ));
}

#[test]
fn unknown_tag_and_empty_frame_are_errors() {
    let mut buf = BytesMut::from(&[0, 0, 0, 1, 42][..]);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::UnknownTag(42))
    ));
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::Empty)
    ));
}

#[test]
fn trailing_bytes_after_fixed_frame_are_errors() {
    let mut buf = BytesMut::from(&[0, 0, 0, 10, 8, 0, 0, 0, 0, 0, 0, 0, 1, 99][..]);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::TrailingBytes {
            frame: "EOS",
            extra: 1
        })
    ));
}

#[test]
fn ok_is_encoded_in_wallaroo_v3_layout_with_empty_lists() {
    let mut buf = BytesMut::new();
    Frame::Ok {
        initial_credits: 10,
    }
    .encode(&mut buf)
    .unwrap();
    // length 13 = tag + credits + empty credit_list + empty source_list
    assert_eq!(&buf[..], &hex("0000000d 01 0000000a 00000000 00000000")[..]);
}

#[test]
fn ok_is_decoded_with_or_without_wallaroo_lists() {
    let decode = |bytes: Vec<u8>| ProtocolCodec::default().decode(&mut BytesMut::from(&bytes[..]));
    // Credits alone.
    assert_eq!(
        decode(hex("00000005 01 00000007")).unwrap(),
        Some(Frame::Ok { initial_credits: 7 })
    );
    // Wallaroo v3: one credit_list entry (id 1, name "s", point 9), one source (a, b:1).
    let v3 = hex(
        "00000028 01 00000007 00000001 0000000000000001 0001 73 0000000000000009 \
         00000001 0001 61 0003 623a31",
    );
    assert_eq!(decode(v3).unwrap(), Some(Frame::Ok { initial_credits: 7 }));
    // A list announcing more entries than the frame carries.
    assert!(matches!(
        decode(hex("0000000d 01 00000007 00000005 00000000")),
        Err(FrameError::Truncated { frame: "OK", .. })
    ));
}

#[test]
fn eof_mid_frame_is_reported() {
    let mut buf = BytesMut::from(&[0, 0, 0, 20, 5, 1, 2][..]);
    let mut codec = ProtocolCodec::default();
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(FrameError::EndedMidFrame(7))
    ));
    let mut empty = BytesMut::new();
    assert!(matches!(codec.decode_eof(&mut empty), Ok(None)));
}

#[test]
fn invalid_utf8_in_hello_is_an_error() {
    let mut buf = BytesMut::new();
    buf.put_u32(1 + 2 + 1 + 2 + 2 + 2);
    buf.put_u8(0);
    buf.put_u16(1);
    buf.put_u8(0xff);
    buf.put_u16(0);
    buf.put_u16(0);
    buf.put_u16(0);
    assert!(matches!(
        ProtocolCodec::default().decode(&mut buf),
        Err(FrameError::NotUtf8 {
            frame: "HELLO",
            field: "version"
        })
    ));
}

#[test]
fn plain_codec_round_trips_and_limits() {
    let mut codec = PlainCodec::new(8);
    let mut buf = BytesMut::new();
    codec.encode(&b"abc"[..], &mut buf).unwrap();
    codec.encode(&b""[..], &mut buf).unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0][..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Bytes::from_static(b"abc"))
    );
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Bytes::new()));
    assert!(codec.encode(&[0u8; 9][..], &mut buf).is_err());
    let mut big = BytesMut::from(&[0, 0, 0, 9][..]);
    assert!(matches!(
        codec.decode(&mut big),
        Err(FrameError::TooLarge { .. })
    ));
}

fn short_string() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            short_string(),
            short_string(),
            short_string(),
            short_string()
        )
            .prop_map(
                |(version, cookie, program_name, instance_name)| Frame::Hello(Hello {
                    version,
                    cookie,
                    program_name,
                    instance_name
                })
            ),
        any::<u32>().prop_map(|initial_credits| Frame::Ok { initial_credits }),
        short_string().prop_map(|message| Frame::Error { message }),
        (any::<u64>(), short_string(), any::<u64>()).prop_map(
            |(stream_id, stream_name, point_of_ref)| {
                Frame::Notify {
                    stream_id,
                    stream_name,
                    point_of_ref,
                }
            }
        ),
        (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
            |(success, stream_id, point_of_ref)| {
                Frame::NotifyAck {
                    success,
                    stream_id,
                    point_of_ref,
                }
            }
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(
                |(stream_id, message_id, event_time, key, payload)| Frame::Message(Message {
                    stream_id,
                    message_id,
                    event_time,
                    key: key.into(),
                    payload: payload.into()
                })
            ),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20)
        )
            .prop_map(|(credits, acks)| Frame::Ack { credits, acks }),
        short_string().prop_map(|address| Frame::Restart { address }),
        any::<u64>().prop_map(|stream_id| Frame::Eos { stream_id }),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(frames in proptest::collection::vec(any_frame(), 1..10)) {
        let mut codec = ProtocolCodec::default();
        let mut buf = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn split_delivery_yields_the_same_frames(frame in any_frame(), cut in 0usize..600) {
        let mut codec = ProtocolCodec::default();
        let mut whole = BytesMut::new();
        codec.encode(&frame, &mut whole).unwrap();
        let cut = cut.min(whole.len());
        let mut buf = BytesMut::from(&whole[..cut]);
        let first = codec.decode(&mut buf).unwrap();
        if cut < whole.len() {
            prop_assert!(first.is_none());
            buf.extend_from_slice(&whole[cut..]);
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
        } else {
            prop_assert_eq!(first, Some(frame));
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut codec = ProtocolCodec::new(1 << 16);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}
