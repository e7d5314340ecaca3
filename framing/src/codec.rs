//! `tokio_util::codec` implementations for both framings of the spec.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;
use crate::frame::Frame;
use crate::view::{frame_len, LENGTH_HEADER};

/// Default maximum frame length (16 MiB), counted after the length header.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Splits the first complete frame (header included) off `src`, using the same header
/// check as [`split_frame`](crate::split_frame): the length is checked against `max` before
/// anything is allocated, and an incomplete frame reserves room for the rest of it.
fn take_frame(src: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    let Some(total) = frame_len(src, max)? else {
        return Ok(None);
    };
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    Ok(Some(src.split_to(total)))
}

fn check_eof(src: &BytesMut) -> Result<(), FrameError> {
    if src.is_empty() {
        Ok(())
    } else {
        Err(FrameError::EndedMidFrame(src.len()))
    }
}

/// Codec for connector-protocol frames (`u32` length + tag + body).
#[derive(Debug, Clone, Copy)]
pub struct ProtocolCodec {
    max_frame: usize,
}

impl ProtocolCodec {
    /// A codec that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        ProtocolCodec { max_frame }
    }
}

impl Default for ProtocolCodec {
    fn default() -> Self {
        ProtocolCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for ProtocolCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match take_frame(src, self.max_frame)? {
            None => Ok(None),
            Some(mut whole) => {
                whole.advance(LENGTH_HEADER);
                Frame::decode(whole.freeze()).map(Some)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None => check_eof(src).map(|_| None),
        }
    }
}

impl Encoder<Frame> for ProtocolCodec {
    type Error = FrameError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst)
    }
}

impl Encoder<&Frame> for ProtocolCodec {
    type Error = FrameError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst)
    }
}

/// Codec for plain frames (`u32` length + payload), as used by `--protocol framed`,
/// `--format frames` and Wallaroo's plain TCP source and sink.
#[derive(Debug, Clone, Copy)]
pub struct PlainCodec {
    max_frame: usize,
}

impl PlainCodec {
    /// A codec that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        PlainCodec { max_frame }
    }
}

impl Default for PlainCodec {
    fn default() -> Self {
        PlainCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for PlainCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(take_frame(src, self.max_frame)?.map(|mut whole| {
            whole.advance(LENGTH_HEADER);
            whole.freeze()
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None => check_eof(src).map(|_| None),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for PlainCodec {
    type Error = FrameError;
    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let item = item.as_ref();
        if item.len() > self.max_frame {
            return Err(FrameError::TooLarge {
                len: item.len(),
                max: self.max_frame,
            });
        }
        dst.reserve(4 + item.len());
        dst.put_u32(item.len() as u32);
        dst.put_slice(item);
        Ok(())
    }
}
