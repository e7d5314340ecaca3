//! Borrowed, zero-copy views of frames: splitting a buffer into frames and reading a
//! MESSAGE in place.
//!
//! This is the one implementation of the length header and of the MESSAGE layout: the
//! codecs ([`crate::ProtocolCodec`], [`crate::PlainCodec`], [`crate::Frame::decode`]) are
//! built on it, and so is any receiver that parses frames straight out of its read buffer
//! (the engine's data path) without allocating.

use crate::error::FrameError;
use crate::frame::{Message, Tag};

/// Bytes of the `u32` length header in front of every frame.
pub const LENGTH_HEADER: usize = 4;

/// Bytes of a MESSAGE frame besides its key and payload: length header, tag, stream id,
/// message id, event time and key length.
pub const MESSAGE_OVERHEAD: usize = LENGTH_HEADER + 1 + 8 + 8 + 8 + 2;

/// Encoded size (length header included) of a MESSAGE frame with a key of `key_len` bytes
/// and a payload of `payload_len` bytes.
#[inline]
pub const fn message_frame_len(key_len: usize, payload_len: usize) -> usize {
    MESSAGE_OVERHEAD + key_len + payload_len
}

/// Reads the length header at the start of `buf` and checks it against `max_frame`.
///
/// Returns the whole size of the frame, header included (`LENGTH_HEADER + length`), or
/// `None` while fewer than [`LENGTH_HEADER`] bytes are available. The frame itself may not
/// be complete yet: compare the size with `buf.len()` (this is how a reader knows how much
/// to reserve). A length above `max_frame` is [`FrameError::TooLarge`], reported before
/// anything of the body is read or allocated.
#[inline]
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<LENGTH_HEADER>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(len.saturating_add(LENGTH_HEADER)))
}

/// Splits the first complete frame off `buf` without copying.
///
/// Returns the frame's body (everything after the length header: for a protocol frame, its
/// tag and fields; for a plain frame, the payload) and the number of bytes the frame
/// occupies in `buf`, or `None` when `buf` does not hold a complete frame yet. A length
/// above `max_frame` is [`FrameError::TooLarge`].
#[inline]
pub fn split_frame(buf: &[u8], max_frame: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(total) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    Ok(buf.get(LENGTH_HEADER..total).map(|body| (body, total)))
}

/// A MESSAGE read in place: key and payload borrow the buffer the frame was read into.
///
/// The borrowed counterpart of [`Message`]; [`Frame::decode`](crate::Frame::decode) parses
/// MESSAGE through it, so both agree byte for byte and error for error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// Stream this message belongs to (announced by NOTIFY).
    pub stream_id: u64,
    /// Strictly increasing within a stream.
    pub message_id: u64,
    /// Event time chosen by the sender (milliseconds since the epoch by convention, 0 if none).
    pub event_time: i64,
    /// Routing key; empty means no key.
    pub key: &'a [u8],
    /// The record itself.
    pub payload: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Parses the fields of a MESSAGE: its body after the tag byte (`u64 stream_id`,
    /// `u64 message_id`, `i64 event_time`, `short_bytes key`, payload = the rest).
    ///
    /// A body too short for its fields is [`FrameError::Truncated`], naming the first field
    /// that does not fit and how many bytes it misses.
    #[inline]
    pub fn parse(fields: &'a [u8]) -> Result<MessageView<'a>, FrameError> {
        let (stream_id, rest) = fields
            .split_first_chunk::<8>()
            .ok_or_else(|| truncated("stream_id", 8, fields.len()))?;
        let (message_id, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| truncated("message_id", 8, rest.len()))?;
        let (event_time, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| truncated("event_time", 8, rest.len()))?;
        let (key_len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| truncated("key", 2, rest.len()))?;
        let key_len = usize::from(u16::from_be_bytes(*key_len));
        let (key, payload) = rest
            .split_at_checked(key_len)
            .ok_or_else(|| truncated("key", key_len, rest.len()))?;
        Ok(MessageView {
            stream_id: u64::from_be_bytes(*stream_id),
            message_id: u64::from_be_bytes(*message_id),
            event_time: i64::from_be_bytes(*event_time),
            key,
            payload,
        })
    }

    /// Parses a frame body (tag byte + fields, as returned by [`split_frame`]) when it is a
    /// MESSAGE; `Ok(None)` for an empty body or any other tag, which the caller decodes
    /// otherwise (e.g. with [`Frame::decode`](crate::Frame::decode)).
    #[inline]
    pub fn from_frame_body(body: &'a [u8]) -> Result<Option<MessageView<'a>>, FrameError> {
        match body.split_first() {
            Some((&tag, fields)) if tag == Tag::Message as u8 => Self::parse(fields).map(Some),
            _ => Ok(None),
        }
    }
}

/// A MESSAGE field that does not fit: `need` bytes wanted, `have` left.
#[cold]
fn truncated(field: &'static str, need: usize, have: usize) -> FrameError {
    FrameError::Truncated {
        frame: "MESSAGE",
        field,
        needed: need.saturating_sub(have),
    }
}

impl Message {
    /// This message as a borrowed [`MessageView`].
    #[inline]
    pub fn view(&self) -> MessageView<'_> {
        MessageView {
            stream_id: self.stream_id,
            message_id: self.message_id,
            event_time: self.event_time,
            key: &self.key,
            payload: &self.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::{encode_ack, encode_message, Frame, ProtocolCodec};

    fn message(key: &[u8], payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, 7, 104, -3, key, payload).unwrap();
        buf
    }

    #[test]
    fn message_round_trips_through_the_view() {
        let mut buf = message(b"key", b"payload");
        assert_eq!(buf.len(), message_frame_len(3, 7));
        encode_message(&mut buf, 8, 208, 0, b"", b"").unwrap();
        buf.put_u8(0); // start of a third frame: incomplete

        let (body, used) = split_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!(used, message_frame_len(3, 7));
        let m = MessageView::from_frame_body(body).unwrap().unwrap();
        assert_eq!(
            m,
            MessageView {
                stream_id: 7,
                message_id: 104,
                event_time: -3,
                key: b"key",
                payload: b"payload",
            }
        );
        // Zero copy: key and payload point into the buffer.
        assert!(buf.as_ptr_range().contains(&m.payload.as_ptr()));

        let rest = &buf[used..];
        let (body, used2) = split_frame(rest, 1024).unwrap().unwrap();
        assert_eq!(used2, message_frame_len(0, 0));
        let m = MessageView::from_frame_body(body).unwrap().unwrap();
        assert_eq!(
            (m.stream_id, m.message_id, m.key, m.payload),
            (8, 208, &b""[..], &b""[..])
        );
        assert_eq!(split_frame(&rest[used2..], 1024).unwrap(), None);
        assert_eq!(frame_len(&rest[used2..], 1024).unwrap(), None);
    }

    #[test]
    fn view_agrees_with_the_codec() {
        let buf = message(b"k", b"the payload");
        let frame = ProtocolCodec::default()
            .decode(&mut buf.clone())
            .unwrap()
            .unwrap();
        let Frame::Message(owned) = frame else {
            panic!("expected MESSAGE, got {frame:?}");
        };
        let (body, _) = split_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!(
            Some(owned.view()),
            MessageView::from_frame_body(body).unwrap()
        );
    }

    #[test]
    fn incomplete_frame_is_none_with_its_size() {
        let buf = message(b"k", b"payload");
        for cut in 0..buf.len() {
            assert_eq!(
                split_frame(&buf[..cut], 1024).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(frame_len(&buf[..3], 1024).unwrap(), None);
        assert_eq!(frame_len(&buf[..4], 1024).unwrap(), Some(buf.len()));
    }

    #[test]
    fn oversize_frame_is_refused_from_its_header() {
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        buf.put_u8(Tag::Message as u8);
        match split_frame(&buf, 1024) {
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            frame_len(&u32::MAX.to_be_bytes(), usize::MAX),
            Ok(Some(_))
        ));
        assert!(matches!(
            frame_len(&u32::MAX.to_be_bytes(), 1 << 24),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_key_is_an_error() {
        // Key length 9, but only 3 bytes follow.
        let mut fields = Vec::new();
        fields.extend_from_slice(&1u64.to_be_bytes());
        fields.extend_from_slice(&2u64.to_be_bytes());
        fields.extend_from_slice(&0i64.to_be_bytes());
        fields.extend_from_slice(&9u16.to_be_bytes());
        fields.extend_from_slice(b"abc");
        match MessageView::parse(&fields) {
            Err(FrameError::Truncated {
                frame: "MESSAGE",
                field: "key",
                needed: 6,
            }) => {}
            other => panic!("expected a truncated key, got {other:?}"),
        }
    }

    #[test]
    fn every_truncation_names_its_field_as_the_codec_does() {
        let buf = message(b"key", b"");
        let (body, _) = split_frame(&buf, 1024).unwrap().unwrap();
        for cut in 1..body.len() {
            let view = MessageView::from_frame_body(&body[..cut]).unwrap_err();
            let decoded = Frame::decode(Bytes::copy_from_slice(&body[..cut])).unwrap_err();
            assert_eq!(view.to_string(), decoded.to_string(), "cut at {cut}");
            let field = match cut - 1 {
                0..=7 => "stream_id",
                8..=15 => "message_id",
                16..=23 => "event_time",
                _ => "key",
            };
            assert!(
                matches!(view, FrameError::Truncated { frame: "MESSAGE", field: f, .. } if f == field),
                "cut at {cut}: {view:?}"
            );
        }
        assert!(MessageView::from_frame_body(body).is_ok());
    }

    #[test]
    fn other_tags_are_not_messages() {
        assert_eq!(MessageView::from_frame_body(&[]).unwrap(), None);
        assert_eq!(
            MessageView::from_frame_body(&[Tag::Eos as u8]).unwrap(),
            None
        );
        assert_eq!(MessageView::from_frame_body(&[200, 1, 2]).unwrap(), None);
    }

    #[test]
    fn ack_encodes_as_the_frame_does() {
        let pairs = [(1u64, 10u64), (2, 20), (u64::MAX - 1, 0)];
        let mut built = BytesMut::new();
        encode_ack(&mut built, 77, pairs.iter().copied());
        let mut typed = BytesMut::new();
        Frame::Ack {
            credits: 77,
            acks: pairs.to_vec(),
        }
        .encode(&mut typed)
        .unwrap();
        assert_eq!(built, typed);
        let decoded = ProtocolCodec::default().decode(&mut built).unwrap();
        assert_eq!(
            decoded,
            Some(Frame::Ack {
                credits: 77,
                acks: pairs.to_vec()
            })
        );
        let mut empty = BytesMut::new();
        encode_ack(&mut empty, 5, std::iter::empty());
        assert_eq!(&empty[..], &[0, 0, 0, 9, 6, 0, 0, 0, 5, 0, 0, 0, 0]);
    }
}
