//! The connector protocol of `shared/spec/connector-protocol.md`.
//!
//! This crate is the single owner of the wire format spoken between connectors and the
//! engine: typed [`Frame`]s, the [`ProtocolCodec`] and [`PlainCodec`] codecs for
//! `tokio_util::codec`, borrowed zero-copy views ([`view`]: [`split_frame`] and
//! [`MessageView`]) for receivers that parse frames in place, and small I/O-free state
//! machines ([`session`]) that both ends use for the handshake, credits and per-stream
//! de-duplication, and the reconnect policy both ends follow ([`Backoff`]).

pub mod backoff;
pub mod codec;
pub mod error;
pub mod frame;
pub mod session;
pub mod view;

pub use backoff::Backoff;
pub use codec::{PlainCodec, ProtocolCodec, DEFAULT_MAX_FRAME};
pub use error::FrameError;
pub use frame::{encode_ack, encode_message, Frame, Hello, Message, Tag, PROTOCOL_VERSION};
pub use session::{
    check_hello, stream_id_for, Credits, StreamError, StreamIdHasher, StreamMap, StreamState,
    StreamTable, NOTHING_PROCESSED,
};
pub use view::{
    frame_len, message_frame_len, split_frame, MessageView, LENGTH_HEADER, MESSAGE_OVERHEAD,
};
