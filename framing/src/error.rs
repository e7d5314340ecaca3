//! Typed decode errors: every way bytes from a peer can be wrong.

use thiserror::Error;

/// Why a frame could not be read. Every variant names the cause so that the receiver can
/// log one clear line and send it back in an ERROR frame.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length header announces more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes (raise --max-frame-bytes if this is intended)")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A protocol frame with length 0 has no room for its tag.
    #[error("empty protocol frame: a frame needs at least a one-byte tag")]
    Empty,
    /// The tag byte is not one of the spec's frame types.
    #[error(
        "unknown frame tag {0} (expected 0..=8); is the peer speaking the connector protocol?"
    )]
    UnknownTag(u8),
    /// The body ended before all the fields of its frame type were read.
    #[error("truncated {frame} frame: needed {needed} more bytes for {field}")]
    Truncated {
        /// Frame type being decoded.
        frame: &'static str,
        /// Field being decoded.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes were left over after the last field of a fixed-size frame.
    #[error("{frame} frame has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Frame type being decoded.
        frame: &'static str,
        /// Extra bytes.
        extra: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("{frame} frame field {field} is not valid UTF-8")]
    NotUtf8 {
        /// Frame type being decoded.
        frame: &'static str,
        /// Field being decoded.
        field: &'static str,
    },
    /// A string field is longer than a `short_bytes` can carry.
    #[error("field {field} is {len} bytes; short_bytes fields hold at most 65535")]
    FieldTooLong {
        /// Field being encoded.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes of it received)")]
    EndedMidFrame(usize),
    /// An I/O error from the underlying transport.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
