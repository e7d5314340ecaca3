//! Record formats for shell pipelines (`--to stdout`, `--from stdin`).
//!
//! - `lines`: the payload followed by `\n` (payloads must not contain newlines).
//! - `frames`: plain length-prefixed frames (`u32` big-endian length + payload): binary safe.
//! - `kv`: `key TAB payload \n` per line; on input the key ends at the first TAB (a line
//!   without a TAB has an empty key).

use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use framing::{FrameError, PlainCodec};
use tokio_util::codec::{Decoder, Encoder};

/// A record format for standard input/output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One payload per line.
    #[default]
    Lines,
    /// Plain length-prefixed frames.
    Frames,
    /// `key<TAB>payload` per line.
    Kv,
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lines" => Ok(Format::Lines),
            "frames" => Ok(Format::Frames),
            "kv" => Ok(Format::Kv),
            other => Err(anyhow::anyhow!(
                "--format {other}: expected lines, frames or kv"
            )),
        }
    }
}

impl Format {
    /// The name used on the command line (`lines`, `frames`, `kv`).
    pub fn name(&self) -> &'static str {
        match self {
            Format::Lines => "lines",
            Format::Frames => "frames",
            Format::Kv => "kv",
        }
    }

    /// Appends one record in this format.
    pub fn encode(&self, key: &[u8], payload: &[u8], dst: &mut BytesMut) {
        match self {
            Format::Lines => {
                dst.reserve(payload.len() + 1);
                dst.put_slice(payload);
                dst.put_u8(b'\n');
            }
            Format::Frames => {
                dst.reserve(payload.len() + 4);
                dst.put_u32(payload.len() as u32);
                dst.put_slice(payload);
            }
            Format::Kv => {
                dst.reserve(key.len() + payload.len() + 2);
                dst.put_slice(key);
                dst.put_u8(b'\t');
                dst.put_slice(payload);
                dst.put_u8(b'\n');
            }
        }
    }

    /// A decoder yielding `(key, payload)` records of this format.
    pub fn decoder(&self, max_frame: usize) -> RecordDecoder {
        RecordDecoder {
            format: *self,
            plain: PlainCodec::new(max_frame),
            max: max_frame,
        }
    }
}

/// Splits a byte stream into `(key, payload)` records of one [`Format`].
#[derive(Debug)]
pub struct RecordDecoder {
    format: Format,
    plain: PlainCodec,
    max: usize,
}

impl RecordDecoder {
    fn line(&self, src: &mut BytesMut, eof: bool) -> Result<Option<Bytes>, FrameError> {
        match src.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut line = src.split_to(i + 1);
                line.truncate(i);
                Ok(Some(line.freeze()))
            }
            None if src.len() > self.max => Err(FrameError::TooLarge {
                len: src.len(),
                max: self.max,
            }),
            None if eof && !src.is_empty() => Ok(Some(src.split().freeze())),
            None => Ok(None),
        }
    }

    fn record(
        &mut self,
        src: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<(Bytes, Bytes)>, FrameError> {
        match self.format {
            Format::Frames => {
                let f = if eof {
                    self.plain.decode_eof(src)?
                } else {
                    self.plain.decode(src)?
                };
                Ok(f.map(|p| (Bytes::new(), p)))
            }
            Format::Lines => Ok(self.line(src, eof)?.map(|l| (Bytes::new(), l))),
            Format::Kv => {
                Ok(self
                    .line(src, eof)?
                    .map(|mut l| match l.iter().position(|b| *b == b'\t') {
                        Some(i) => {
                            let key = l.split_to(i);
                            bytes::Buf::advance(&mut l, 1);
                            (key, l)
                        }
                        None => (Bytes::new(), l),
                    }))
            }
        }
    }
}

impl Decoder for RecordDecoder {
    type Item = (Bytes, Bytes);
    type Error = FrameError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        self.record(src, false)
    }
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        self.record(src, true)
    }
}

impl Encoder<(Bytes, Bytes)> for Format {
    type Error = FrameError;
    fn encode(&mut self, item: (Bytes, Bytes), dst: &mut BytesMut) -> Result<(), FrameError> {
        Format::encode(self, &item.0, &item.1, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: Format, records: &[(&[u8], &[u8])]) -> Vec<(Bytes, Bytes)> {
        let mut buf = BytesMut::new();
        for (k, v) in records {
            format.encode(k, v, &mut buf);
        }
        let mut d = format.decoder(1 << 20);
        let mut out = Vec::new();
        while let Some(r) = d.decode_eof(&mut buf).unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn kv_splits_at_first_tab() {
        let out = round_trip(Format::Kv, &[(b"alice", b"1\t2"), (b"", b"x")]);
        assert_eq!(out[0], (Bytes::from("alice"), Bytes::from("1\t2")));
        assert_eq!(out[1], (Bytes::new(), Bytes::from("x")));
    }

    #[test]
    fn frames_are_binary_safe() {
        let out = round_trip(Format::Frames, &[(b"", b"a\nb\0"), (b"", b"")]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, Bytes::from_static(b"a\nb\0"));
    }

    #[test]
    fn lines_keep_trailing_spaces_and_last_unterminated_line() {
        let mut buf = BytesMut::from(&b"a  \nb"[..]);
        let mut d = Format::Lines.decoder(100);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().1, Bytes::from("a  "));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.decode_eof(&mut buf).unwrap().unwrap().1, Bytes::from("b"));
    }
}
