//! Frame types of the connector protocol and their byte layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::view::{message_frame_len, MessageView, LENGTH_HEADER, MESSAGE_OVERHEAD};

/// The only protocol version this implementation speaks, matched exactly in HELLO.
pub const PROTOCOL_VERSION: &str = "0.0.1";

/// The tag byte that follows the length header of every protocol frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// Connecting side introduces itself.
    Hello = 0,
    /// Accepting side accepts, granting initial credits.
    Ok = 1,
    /// Either side reports a fatal problem before closing.
    Error = 2,
    /// Data sender announces a stream.
    Notify = 3,
    /// Data receiver answers a NOTIFY with the stream's resume point.
    NotifyAck = 4,
    /// One data message.
    Message = 5,
    /// Data receiver grants credits and acknowledges processed points.
    Ack = 6,
    /// Data receiver asks the sender to reconnect.
    Restart = 7,
    /// Data sender closes a stream.
    Eos = 8,
}

impl Tag {
    /// Maps a tag byte to a [`Tag`], or `None` when the byte is not a known tag.
    pub fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            0 => Tag::Hello,
            1 => Tag::Ok,
            2 => Tag::Error,
            3 => Tag::Notify,
            4 => Tag::NotifyAck,
            5 => Tag::Message,
            6 => Tag::Ack,
            7 => Tag::Restart,
            8 => Tag::Eos,
            _ => return None,
        })
    }
}

/// HELLO: the first frame on every connection, sent by the connecting side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version; must equal [`PROTOCOL_VERSION`].
    pub version: String,
    /// Shared secret; empty on both sides means none.
    pub cookie: String,
    /// Name of the connecting program (e.g. `udp_source`, or the application name).
    pub program_name: String,
    /// Name of the instance (e.g. the connector name, or the engine worker name).
    pub instance_name: String,
}

/// MESSAGE: one record of a stream. Key and payload are zero-copy slices of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stream this message belongs to (announced by NOTIFY).
    pub stream_id: u64,
    /// Strictly increasing within a stream.
    pub message_id: u64,
    /// Event time chosen by the sender (milliseconds since the epoch by convention, 0 if none).
    pub event_time: i64,
    /// Routing key; empty means no key.
    pub key: Bytes,
    /// The record itself.
    pub payload: Bytes,
}

/// Every frame of the protocol as a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// Handshake accepted; carries the initial credits.
    ///
    /// Encoded as Wallaroo's connector protocol v3 lays it out: the credits, then its
    /// `credit_list` and `source_list`, both empty (`u32` count 0 each): Wallaroo's Python
    /// client reads both lists. Decoding accepts that form (the lists' entries are checked
    /// and skipped) and the credits alone.
    Ok {
        /// Credits granted to the data sender.
        initial_credits: u32,
    },
    /// Human-readable fatal error; the sender closes after it.
    Error {
        /// What went wrong and what to do about it.
        message: String,
    },
    /// Announce a stream and the point it would resume from (0 if none).
    Notify {
        /// Deterministic id of the stream.
        stream_id: u64,
        /// Human-readable stream name (topic/partition, queue, shard, ...).
        stream_name: String,
        /// Point the sender would resume from.
        point_of_ref: u64,
    },
    /// Answer to NOTIFY: success and the point durably processed (`u64::MAX` = nothing yet).
    NotifyAck {
        /// Whether the stream was accepted.
        success: bool,
        /// The stream being answered.
        stream_id: u64,
        /// Durably processed point, or `u64::MAX`.
        point_of_ref: u64,
    },
    /// See [`Message`].
    Message(Message),
    /// Credits plus per-stream processed points.
    Ack {
        /// Credits added to the sender's balance.
        credits: u32,
        /// `(stream_id, point_of_ref)`: every message id <= point is safely processed.
        acks: Vec<(u64, u64)>,
    },
    /// Ask the sender to reconnect ("host:port", or empty for the same address).
    Restart {
        /// Address to reconnect to; empty means the same one.
        address: String,
    },
    /// End of a stream.
    Eos {
        /// The stream that ended.
        stream_id: u64,
    },
}

impl Frame {
    /// The tag of this frame.
    pub fn tag(&self) -> Tag {
        match self {
            Frame::Hello(_) => Tag::Hello,
            Frame::Ok { .. } => Tag::Ok,
            Frame::Error { .. } => Tag::Error,
            Frame::Notify { .. } => Tag::Notify,
            Frame::NotifyAck { .. } => Tag::NotifyAck,
            Frame::Message(_) => Tag::Message,
            Frame::Ack { .. } => Tag::Ack,
            Frame::Restart { .. } => Tag::Restart,
            Frame::Eos { .. } => Tag::Eos,
        }
    }

    /// Convenience constructor for an ERROR frame.
    pub fn error(message: impl Into<String>) -> Frame {
        Frame::Error {
            message: message.into(),
        }
    }

    /// Appends the whole frame (length header, tag, body) to `dst`.
    ///
    /// Fails only when a string field does not fit in `short_bytes`; ERROR messages are
    /// truncated to fit instead of failing, since they are best-effort diagnostics.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::Message(m) => {
                return encode_message(
                    dst,
                    m.stream_id,
                    m.message_id,
                    m.event_time,
                    &m.key,
                    &m.payload,
                )
            }
            Frame::Ack { credits, acks } => {
                encode_ack(dst, *credits, acks.iter().copied());
                return Ok(());
            }
            _ => {}
        }
        let start = dst.len();
        dst.put_u32(0); // patched below
        dst.put_u8(self.tag() as u8);
        match self {
            Frame::Hello(h) => {
                put_short(dst, "version", h.version.as_bytes())?;
                put_short(dst, "cookie", h.cookie.as_bytes())?;
                put_short(dst, "program_name", h.program_name.as_bytes())?;
                put_short(dst, "instance_name", h.instance_name.as_bytes())?;
            }
            Frame::Ok { initial_credits } => {
                dst.put_u32(*initial_credits);
                dst.put_u32(0); // credit_list: none
                dst.put_u32(0); // source_list: none
            }
            Frame::Error { message } => {
                let mut end = message.len().min(u16::MAX as usize);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                put_short(dst, "message", &message.as_bytes()[..end])?;
            }
            Frame::Notify {
                stream_id,
                stream_name,
                point_of_ref,
            } => {
                dst.put_u64(*stream_id);
                put_short(dst, "stream_name", stream_name.as_bytes())?;
                dst.put_u64(*point_of_ref);
            }
            Frame::NotifyAck {
                success,
                stream_id,
                point_of_ref,
            } => {
                dst.put_u8(u8::from(*success));
                dst.put_u64(*stream_id);
                dst.put_u64(*point_of_ref);
            }
            Frame::Restart { address } => {
                dst.put_u32(address.len() as u32);
                dst.put_slice(address.as_bytes());
            }
            Frame::Eos { stream_id } => dst.put_u64(*stream_id),
            Frame::Message(_) | Frame::Ack { .. } => {} // written above
        }
        let len = (dst.len() - start - LENGTH_HEADER) as u32;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Decodes a frame from its tag and body (everything after the length header).
    pub fn decode(mut body: Bytes) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Empty);
        }
        let tag_byte = body.get_u8();
        let tag = Tag::from_u8(tag_byte).ok_or(FrameError::UnknownTag(tag_byte))?;
        let mut r = Reader {
            buf: body,
            frame: tag_name(tag),
        };
        let frame = match tag {
            Tag::Hello => Frame::Hello(Hello {
                version: r.string("version")?,
                cookie: r.string("cookie")?,
                program_name: r.string("program_name")?,
                instance_name: r.string("instance_name")?,
            }),
            Tag::Ok => {
                let initial_credits = r.u32("initial_credits")?;
                if !r.buf.is_empty() {
                    skip_wallaroo_ok_lists(&mut r)?;
                }
                Frame::Ok { initial_credits }
            }
            Tag::Error => Frame::Error {
                message: String::from_utf8_lossy(&r.short("message")?).into_owned(),
            },
            Tag::Notify => Frame::Notify {
                stream_id: r.u64("stream_id")?,
                stream_name: r.string("stream_name")?,
                point_of_ref: r.u64("point_of_ref")?,
            },
            Tag::NotifyAck => Frame::NotifyAck {
                success: r.u8("success")? != 0,
                stream_id: r.u64("stream_id")?,
                point_of_ref: r.u64("point_of_ref")?,
            },
            Tag::Message => {
                let body = std::mem::take(&mut r.buf);
                let m = MessageView::parse(&body)?;
                Frame::Message(Message {
                    stream_id: m.stream_id,
                    message_id: m.message_id,
                    event_time: m.event_time,
                    key: body.slice_ref(m.key),
                    payload: body.slice_ref(m.payload),
                })
            }
            Tag::Ack => {
                let credits = r.u32("credits")?;
                let n = r.u32("n")? as usize;
                r.need("acks", n.saturating_mul(16))?;
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push((r.buf.get_u64(), r.buf.get_u64()));
                }
                Frame::Ack { credits, acks }
            }
            Tag::Restart => {
                let n = r.u32("addr_len")? as usize;
                r.need("addr", n)?;
                let addr = r.buf.split_to(n);
                Frame::Restart {
                    address: String::from_utf8(addr.to_vec()).map_err(|_| FrameError::NotUtf8 {
                        frame: "RESTART",
                        field: "addr",
                    })?,
                }
            }
            Tag::Eos => Frame::Eos {
                stream_id: r.u64("stream_id")?,
            },
        };
        if !r.buf.is_empty() {
            return Err(FrameError::TrailingBytes {
                frame: r.frame,
                extra: r.buf.len(),
            });
        }
        Ok(frame)
    }
}

/// Appends a MESSAGE frame built from borrowed parts, without constructing a [`Frame`].
/// This is the hot path of every sender.
pub fn encode_message(
    dst: &mut BytesMut,
    stream_id: u64,
    message_id: u64,
    event_time: i64,
    key: &[u8],
    payload: &[u8],
) -> Result<(), FrameError> {
    if key.len() > u16::MAX as usize {
        return Err(FrameError::FieldTooLong {
            field: "key",
            len: key.len(),
        });
    }
    let whole = message_frame_len(key.len(), payload.len());
    // The fixed part is assembled on the stack and appended at once: one capacity check
    // instead of one per field (this is most of the cost of a small message).
    let mut head = [0u8; MESSAGE_OVERHEAD];
    head[..4].copy_from_slice(&((whole - LENGTH_HEADER) as u32).to_be_bytes());
    head[4] = Tag::Message as u8;
    head[5..13].copy_from_slice(&stream_id.to_be_bytes());
    head[13..21].copy_from_slice(&message_id.to_be_bytes());
    head[21..29].copy_from_slice(&event_time.to_be_bytes());
    head[29..].copy_from_slice(&(key.len() as u16).to_be_bytes());
    dst.reserve(whole);
    dst.extend_from_slice(&head);
    dst.extend_from_slice(key);
    dst.extend_from_slice(payload);
    Ok(())
}

/// Appends an ACK frame: `credits`, then every `(stream_id, point_of_ref)` pair of `acks`,
/// without constructing a [`Frame`] (nor its `Vec` of pairs).
pub fn encode_ack<I>(dst: &mut BytesMut, credits: u32, acks: I)
where
    I: IntoIterator<Item = (u64, u64)>,
{
    let acks = acks.into_iter();
    let start = dst.len();
    dst.reserve(LENGTH_HEADER + 1 + 4 + 4 + 16 * acks.size_hint().0);
    dst.put_u32(0); // length, patched below
    dst.put_u8(Tag::Ack as u8);
    dst.put_u32(credits);
    dst.put_u32(0); // pair count, patched below
    let mut n = 0u32;
    for (stream_id, point_of_ref) in acks {
        dst.put_u64(stream_id);
        dst.put_u64(point_of_ref);
        n = n.wrapping_add(1);
    }
    let len = (dst.len() - start - LENGTH_HEADER) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    dst[start + 9..start + 13].copy_from_slice(&n.to_be_bytes());
}

fn put_short(dst: &mut BytesMut, field: &'static str, v: &[u8]) -> Result<(), FrameError> {
    if v.len() > u16::MAX as usize {
        return Err(FrameError::FieldTooLong {
            field,
            len: v.len(),
        });
    }
    dst.put_u16(v.len() as u16);
    dst.put_slice(v);
    Ok(())
}

fn tag_name(tag: Tag) -> &'static str {
    match tag {
        Tag::Hello => "HELLO",
        Tag::Ok => "OK",
        Tag::Error => "ERROR",
        Tag::Notify => "NOTIFY",
        Tag::NotifyAck => "NOTIFY_ACK",
        Tag::Message => "MESSAGE",
        Tag::Ack => "ACK",
        Tag::Restart => "RESTART",
        Tag::Eos => "EOS",
    }
}

/// Checks and skips the `credit_list` (stream id, name, point of reference) and
/// `source_list` (name, address) that follow the credits in a Wallaroo v3 OK.
fn skip_wallaroo_ok_lists(r: &mut Reader) -> Result<(), FrameError> {
    let streams = r.u32("credit_list")?;
    for _ in 0..streams {
        r.u64("credit_list stream_id")?;
        r.short("credit_list stream_name")?;
        r.u64("credit_list point_of_ref")?;
    }
    let sources = r.u32("source_list")?;
    for _ in 0..sources {
        r.short("source_list name")?;
        r.short("source_list address")?;
    }
    Ok(())
}

/// Bounds-checked field reader over a frame body.
struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    fn need(&self, field: &'static str, n: usize) -> Result<(), FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated {
                frame: self.frame,
                field,
                needed: n - self.buf.len(),
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.need(field, 8)?;
        Ok(self.buf.get_u64())
    }
    fn short(&mut self, field: &'static str) -> Result<Bytes, FrameError> {
        self.need(field, 2)?;
        let n = self.buf.get_u16() as usize;
        self.need(field, n)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let b = self.short(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::NotUtf8 {
            frame: self.frame,
            field,
        })
    }
}
