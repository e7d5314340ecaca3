//! S3 helpers: object names, prefix placeholders, record formats, streaming compression and
//! decompression, and splitting an object's bytes back into records with their offsets.
//!
//! - [`bucket`]: the parameters both binaries share and the client they make.
//! - [`writer`]: s3_sink's objects (batch windows, multipart, in-order names per prefix).
//! - [`reader`]: s3_source's listing, object streams and checkpoint.

pub mod bucket;
pub mod reader;
pub mod writer;

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{anyhow, bail, Result};
use bytes::{Buf, Bytes, BytesMut};

/// Size of each part of a multipart upload, and the batch size above which one is used.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// How records are laid out in an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// Payloads concatenated as they are (a reader splits by size only).
    Raw,
    /// Each payload followed by `\n` (payloads must not contain `\n`).
    Lines,
    /// Each payload as a `u32` big-endian length + bytes (binary safe).
    Frames,
}

impl FromStr for RecordFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "raw" => Ok(RecordFormat::Raw),
            "lines" => Ok(RecordFormat::Lines),
            "frames" => Ok(RecordFormat::Frames),
            other => bail!("format {other:?}: expected raw, lines or frames"),
        }
    }
}

impl RecordFormat {
    /// File extension (without the dot).
    pub fn extension(&self) -> &'static str {
        match self {
            RecordFormat::Raw => "raw",
            RecordFormat::Lines => "lines",
            RecordFormat::Frames => "frames",
        }
    }

    /// Appends one record; refuses a payload the format cannot carry.
    pub fn encode(&self, payload: &[u8], dst: &mut Vec<u8>) -> std::result::Result<(), String> {
        match self {
            RecordFormat::Raw => dst.extend_from_slice(payload),
            RecordFormat::Lines => {
                if payload.contains(&b'\n') {
                    return Err(
                        "payload contains a newline, which the `lines` format cannot carry (use format frames)"
                            .into(),
                    );
                }
                dst.extend_from_slice(payload);
                dst.push(b'\n');
            }
            RecordFormat::Frames => {
                let len = u32::try_from(payload.len())
                    .map_err(|_| "payload over 4 GiB cannot be framed".to_string())?;
                dst.extend_from_slice(&len.to_be_bytes());
                dst.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    /// Bytes one record adds before compression.
    pub fn encoded_len(&self, payload_len: usize) -> usize {
        match self {
            RecordFormat::Raw => payload_len,
            RecordFormat::Lines => payload_len + 1,
            RecordFormat::Frames => payload_len + 4,
        }
    }
}

/// Object compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

impl FromStr for Compression {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            other => bail!("compression {other:?}: expected none, gzip or zstd"),
        }
    }
}

impl Compression {
    /// Extension including the dot (`""` for none).
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// The compression an object key's extension names.
    pub fn from_key(key: &str) -> Compression {
        let k = key.to_ascii_lowercase();
        if k.ends_with(".gz") || k.ends_with(".gzip") {
            Compression::Gzip
        } else if k.ends_with(".zst") || k.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// `Content-Encoding` header value, if any.
    pub fn content_encoding(&self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

/// Strips a compression extension from a key.
fn strip_compression(key: &str) -> &str {
    for ext in [".gz", ".gzip", ".zst", ".zstd"] {
        if key.len() > ext.len() && key.to_ascii_lowercase().ends_with(ext) {
            return &key[..key.len() - ext.len()];
        }
    }
    key
}

/// The source's `format` parameter: a fixed format or `auto` (by extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// `.frames` -> frames, `.raw`/`.bin` -> raw, anything else -> lines (after removing a
    /// compression extension).
    Auto,
    /// Always this format.
    Fixed(RecordFormat),
}

impl FromStr for SourceFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(SourceFormat::Auto);
        }
        s.parse()
            .map(SourceFormat::Fixed)
            .map_err(|_| anyhow!("format {s:?}: expected auto, raw, lines or frames"))
    }
}

impl SourceFormat {
    /// The format to split object `key` with.
    pub fn for_key(&self, key: &str) -> RecordFormat {
        match self {
            SourceFormat::Fixed(f) => *f,
            SourceFormat::Auto => {
                let k = strip_compression(key).to_ascii_lowercase();
                if k.ends_with(".frames") {
                    RecordFormat::Frames
                } else if k.ends_with(".raw") || k.ends_with(".bin") {
                    RecordFormat::Raw
                } else {
                    RecordFormat::Lines
                }
            }
        }
    }
}

/// A streaming compressor whose output can be taken out piece by piece (for multipart
/// uploads) while it keeps compressing.
pub enum Compressor {
    /// No compression.
    None(Vec<u8>),
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    /// A new compressor.
    pub fn new(c: Compression) -> Result<Compressor> {
        Ok(match c {
            Compression::None => Compressor::None(Vec::new()),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Compression::Zstd => {
                Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?)
            }
        })
    }

    /// Feeds uncompressed bytes.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Compressor::None(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            Compressor::Gzip(e) => e.write_all(data),
            Compressor::Zstd(e) => e.write_all(data),
        }
    }

    /// Compressed bytes produced and not yet taken.
    pub fn output_len(&self) -> usize {
        match self {
            Compressor::None(v) => v.len(),
            Compressor::Gzip(e) => e.get_ref().len(),
            Compressor::Zstd(e) => e.get_ref().len(),
        }
    }

    /// Takes the compressed bytes produced so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        match self {
            Compressor::None(v) => std::mem::take(v),
            Compressor::Gzip(e) => std::mem::take(e.get_mut()),
            Compressor::Zstd(e) => std::mem::take(e.get_mut()),
        }
    }

    /// Ends the stream; returns the remaining compressed bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Compressor::None(v) => Ok(v),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

/// A streaming decompressor fed with chunks of an object.
pub enum Decompressor {
    /// No compression.
    None,
    /// gzip (concatenated members allowed).
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    /// zstd (concatenated frames allowed).
    Zstd(Box<ZstdStream>),
}

/// A zstd decoder that knows whether the input stopped at the end of a frame, so a
/// truncated object is an error instead of a silently shorter one.
pub struct ZstdStream {
    raw: zstd::stream::raw::Decoder<'static>,
    scratch: Vec<u8>,
    /// No frame is half read (true before the first byte and after each frame's end).
    at_frame_end: bool,
}

impl ZstdStream {
    fn new() -> std::io::Result<ZstdStream> {
        Ok(ZstdStream {
            raw: zstd::stream::raw::Decoder::new()?,
            scratch: vec![0; 128 * 1024],
            at_frame_end: true,
        })
    }

    /// Decodes `data`, appending the output to `out`.
    fn feed(&mut self, data: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut input = InBuffer::around(data);
        loop {
            let consumed = input.pos();
            let mut output = OutBuffer::around(&mut self.scratch[..]);
            let hint = self.raw.run(&mut input, &mut output)?;
            let produced = output.pos();
            out.extend_from_slice(&self.scratch[..produced]);
            if input.pos() > consumed || produced > 0 {
                // 0: a frame was fully decoded and flushed.
                self.at_frame_end = hint == 0;
            }
            if input.pos() == data.len() && produced < self.scratch.len() {
                return Ok(());
            }
        }
    }

    /// At the end of the object: an error when it ends inside a frame (all the output was
    /// already drained by `feed`).
    fn finish(&self) -> std::io::Result<()> {
        if self.at_frame_end {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "zstd data ends inside a frame (truncated object?)",
            ))
        }
    }
}

impl Decompressor {
    /// A new decompressor.
    pub fn new(c: Compression) -> Result<Decompressor> {
        Ok(match c {
            Compression::None => Decompressor::None,
            Compression::Gzip => {
                Decompressor::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            Compression::Zstd => Decompressor::Zstd(Box::new(ZstdStream::new()?)),
        })
    }

    /// Feeds compressed bytes; appends the decompressed bytes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Decompressor::None => out.extend_from_slice(data),
            Decompressor::Gzip(d) => {
                d.write_all(data)?;
                out.extend_from_slice(d.get_ref());
                d.get_mut().clear();
            }
            Decompressor::Zstd(d) => d.feed(data, out)?,
        }
        Ok(())
    }

    /// At the end of the object: flushes what is left into `out`.
    pub fn finish(&mut self, out: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Decompressor::None => {}
            Decompressor::Gzip(d) => {
                d.try_finish()?;
                out.extend_from_slice(d.get_ref());
                d.get_mut().clear();
            }
            Decompressor::Zstd(d) => d.finish()?,
        }
        Ok(())
    }
}

/// Splits the (decompressed) bytes of an object into records, each with the offset just
/// after it: that offset is the record's message id, strictly increasing within the object.
#[derive(Debug)]
pub struct Splitter {
    format: RecordFormat,
    buf: BytesMut,
    /// Offset of `buf[0]` in the object.
    offset: u64,
    chunk: usize,
    max_record: usize,
}

impl Splitter {
    /// A splitter that starts at byte `offset` of the object (a record boundary). `chunk` is
    /// the record size of the raw format; `max_record` bounds lines and frames.
    pub fn new(format: RecordFormat, offset: u64, chunk: usize, max_record: usize) -> Splitter {
        Splitter {
            format,
            buf: BytesMut::new(),
            offset,
            chunk: chunk.max(1),
            max_record,
        }
    }

    /// The buffer to append object bytes to.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Offset just after the last record returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn take(&mut self, n: usize, skip_after: usize) -> (u64, Bytes) {
        let rec = self.buf.split_to(n).freeze();
        self.buf.advance(skip_after);
        self.offset += (n + skip_after) as u64;
        (self.offset, rec)
    }

    /// The next complete record, if the buffer holds one.
    pub fn next_record(&mut self) -> std::result::Result<Option<(u64, Bytes)>, String> {
        match self.format {
            RecordFormat::Raw => {
                if self.buf.len() >= self.chunk {
                    return Ok(Some(self.take(self.chunk, 0)));
                }
                Ok(None)
            }
            RecordFormat::Lines => match self.buf.iter().position(|b| *b == b'\n') {
                Some(i) => Ok(Some(self.take(i, 1))),
                None if self.buf.len() > self.max_record => Err(format!(
                    "line at offset {} is longer than {} bytes",
                    self.offset, self.max_record
                )),
                None => Ok(None),
            },
            RecordFormat::Frames => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.max_record {
                    return Err(format!(
                        "frame at offset {} claims {len} bytes, more than the {} allowed (not a frames object?)",
                        self.offset, self.max_record
                    ));
                }
                if self.buf.len() < 4 + len {
                    return Ok(None);
                }
                self.buf.advance(4);
                self.offset += 4;
                Ok(Some(self.take(len, 0)))
            }
        }
    }

    /// At the end of the object: the last record without a terminator (lines, raw), or an
    /// error for a truncated frame.
    pub fn finish(&mut self) -> std::result::Result<Option<(u64, Bytes)>, String> {
        if let Some(r) = self.next_record()? {
            return Ok(Some(r));
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        match self.format {
            RecordFormat::Raw | RecordFormat::Lines => {
                let n = self.buf.len();
                Ok(Some(self.take(n, 0)))
            }
            RecordFormat::Frames => Err(format!(
                "truncated frame at offset {} ({} bytes left)",
                self.offset,
                self.buf.len()
            )),
        }
    }
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds since the epoch now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Percent-encodes everything but `A-Z a-z 0-9 - _ .` (and `/` when `keep_slash`).
pub fn percent_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.')
            || (keep_slash && *b == b'/')
        {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A prefix template with `{date}` (YYYY-MM-DD), `{hour}` (HH), `{connector}` and `{key}`.
#[derive(Debug, Clone)]
pub struct PrefixTemplate {
    template: String,
    uses_time: bool,
    uses_key: bool,
}

impl PrefixTemplate {
    /// Parses a template; unknown `{...}` placeholders are an error.
    pub fn new(template: &str) -> Result<PrefixTemplate> {
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            let after = &rest[i + 1..];
            let Some(j) = after.find('}') else {
                bail!("prefix {template:?}: unclosed `{{`");
            };
            let name = &after[..j];
            if !matches!(name, "date" | "hour" | "connector" | "key") {
                bail!("prefix {template:?}: unknown placeholder {{{name}}} (known: {{date}} {{hour}} {{connector}} {{key}})");
            }
            rest = &after[j + 1..];
        }
        Ok(PrefixTemplate {
            template: template.to_string(),
            uses_time: template.contains("{date}") || template.contains("{hour}"),
            uses_key: template.contains("{key}"),
        })
    }

    /// Whether the prefix depends on the message key.
    pub fn uses_key(&self) -> bool {
        self.uses_key
    }

    /// Renders the prefix for a message. Time placeholders use `time_ms` (the message's event
    /// time when it has one, else now), in UTC. The key as [`key_segment`] renders it.
    pub fn render(&self, connector: &str, key: &[u8], time_ms: i64) -> String {
        let mut s = self.template.replace("{connector}", connector);
        if self.uses_time {
            let secs = time_ms.div_euclid(1000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let hour = secs.rem_euclid(86_400) / 3600;
            s = s
                .replace("{date}", &format!("{y:04}-{m:02}-{d:02}"))
                .replace("{hour}", &format!("{hour:02}"));
        }
        if self.uses_key {
            s = s.replace("{key}", &key_segment(key));
        }
        s
    }
}

/// A MESSAGE key as one path segment that readers do not skip: percent-encoded (`/`
/// included), a leading `_` or `.` encoded too (`%5F`, `%2E`), an empty key as `-` (and the
/// key `-` as `%2D`, so different keys never share a segment).
pub fn key_segment(key: &[u8]) -> String {
    match key {
        b"" => "-".to_string(),
        b"-" => "%2D".to_string(),
        k => visible_path(&percent_encode(k, false)),
    }
}

/// Percent-encodes what would hide a path from [`is_hidden`]: the leading `_` or `.` of each
/// `/`-separated segment, and a trailing `/`.
pub fn visible_path(path: &str) -> String {
    let (body, slash) = match path.strip_suffix('/') {
        Some(b) => (b, "%2F"),
        None => (path, ""),
    };
    let segments: Vec<String> = body
        .split('/')
        .map(|seg| match seg.as_bytes().first() {
            Some(b'_') => format!("%5F{}", &seg[1..]),
            Some(b'.') => format!("%2E{}", &seg[1..]),
            _ => seg.to_string(),
        })
        .collect();
    segments.join("/") + slash
}

/// `YYYYMMDDTHHMMSS.ffffffZ` (UTC, microseconds): fixed width, so names that start with it
/// sort by time.
pub fn utc_stamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let day_secs = secs.rem_euclid(86_400);
    format!(
        "{y:04}{mo:02}{d:02}T{:02}{:02}{:02}.{:06}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        micros.rem_euclid(1_000_000)
    )
}

/// A clock for object names: microseconds since the epoch, strictly increasing within the
/// process even when the system clock stands still or steps back.
#[derive(Debug, Default)]
pub struct NameClock(AtomicI64);

impl NameClock {
    /// The next time: now, or just after the previous one when that is later.
    pub fn next(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let prev = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(prev + 1)
    }
}

/// Name of the object holding a batch: `<prefix><UTC time>-<stream>-<first id>-<last id>`.
/// The time (from a [`NameClock`], taken when the final write starts) leads, so within one
/// prefix an object written later sorts after every object written before it, whatever the
/// stream ids of the engine's incarnations; stream and ids show which messages it holds.
pub fn batch_object_key(
    prefix: &str,
    time_us: i64,
    stream_id: u64,
    first: u64,
    last: u64,
    format: RecordFormat,
    compression: Compression,
) -> String {
    format!(
        "{prefix}{}-{stream_id:016x}-{first:020}-{last:020}.{}{}",
        utc_stamp(time_us),
        format.extension(),
        compression.extension()
    )
}

/// Where a multipart batch is assembled before it is copied to its final name (the last id is
/// not known when the upload starts): `<dir of prefix>_tmp/<rest of prefix><stream>-<first>...`.
/// Readers skip it: a path segment starting with `_` is hidden.
pub fn temp_object_key(prefix: &str, stream_id: u64, first: u64) -> String {
    let (dir, base) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    format!("{dir}_tmp/{base}{stream_id:016x}-{first:020}.multipart")
}

/// Whether a listed key is hidden from readers: a path segment after `list_prefix` starting
/// with `_` or `.` (temporary and marker objects), or a "directory" placeholder (ending in
/// `/`). s3_sink never writes such a name but for its `_tmp/` objects.
pub fn is_hidden(key: &str, list_prefix: &str) -> bool {
    if key.ends_with('/') {
        return true;
    }
    let rest = key.strip_prefix(list_prefix).unwrap_or(key);
    // The segment the prefix ends inside of is the user's, not ours.
    let segments: Vec<&str> = rest.split('/').collect();
    segments.iter().enumerate().any(|(i, s)| {
        (i > 0 || list_prefix.is_empty() || list_prefix.ends_with('/'))
            && (s.starts_with('_') || s.starts_with('.'))
    })
}

/// Encodes records into a plain buffer (tests and the benchmark).
pub fn encode_all(format: RecordFormat, payloads: &[Bytes]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in payloads {
        let _ = format.encode(p, &mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let t = PrefixTemplate::new("out/{connector}/{date}/{hour}/{key}/").unwrap();
        // 2024-02-29T13:05:00Z
        let ms = (19_782i64 * 86_400 + 13 * 3600 + 300) * 1000;
        assert_eq!(
            t.render("s3", b"a b/c", ms),
            "out/s3/2024-02-29/13/a%20b%2Fc/"
        );
        assert_eq!(t.render("s3", b"", ms), "out/s3/2024-02-29/13/-/");
        assert_eq!(t.render("s3", b"_x", ms), "out/s3/2024-02-29/13/%5Fx/");
        assert!(PrefixTemplate::new("x/{minute}").is_err());
        assert!(PrefixTemplate::new("x/{date").is_err());
    }

    #[test]
    fn names_sort_by_time_first_and_temp_is_hidden() {
        // 2024-02-29T13:05:00.000042Z
        let us = (19_782i64 * 86_400 + 13 * 3600 + 300) * 1_000_000 + 42;
        assert_eq!(utc_stamp(us), "20240229T130500.000042Z");
        assert_eq!(utc_stamp(0), "19700101T000000.000000Z");
        let a = batch_object_key("p/", us, 1, 9, 20, RecordFormat::Frames, Compression::Gzip);
        assert_eq!(
            a,
            "p/20240229T130500.000042Z-0000000000000001-00000000000000000009-00000000000000000020.frames.gz"
        );
        // A later write sorts after, even from a stream whose id sorts first and whose ids
        // start again (a restarted engine).
        let b = batch_object_key(
            "p/",
            us + 1,
            0,
            1,
            5,
            RecordFormat::Frames,
            Compression::Gzip,
        );
        assert!(a < b);
        let t = temp_object_key("p/x-", 1, 9);
        assert!(t.starts_with("p/_tmp/x-"));
        assert!(is_hidden(&t, "p/"));
        assert!(is_hidden(&t, ""));
        assert!(!is_hidden(&a, "p/"));
        assert!(!is_hidden("p/_a", "p/_"));
        assert!(is_hidden("dir/", ""));
    }

    #[test]
    fn name_clock_only_moves_forward() {
        let c = NameClock::default();
        let mut last = c.next();
        assert!(last > 1_700_000_000_000_000, "microseconds since the epoch");
        for _ in 0..10_000 {
            let t = c.next();
            assert!(t > last);
            last = t;
        }
    }

    #[test]
    fn rendered_keys_are_never_hidden() {
        let keys: [&[u8]; 9] = [
            b"",
            b"-",
            b"_",
            b"_internal",
            b".cfg",
            b"..",
            b"a/_b",
            b"ok",
            b"%5F",
        ];
        let segs: Vec<String> = keys.iter().map(|k| key_segment(k)).collect();
        assert_eq!(
            segs,
            [
                "-",
                "%2D",
                "%5F",
                "%5Finternal",
                "%2Ecfg",
                "%2E.",
                "a%2F_b",
                "ok",
                "%255F"
            ]
        );
        for s in &segs {
            assert!(!is_hidden(&format!("by-key/{s}/x.lines"), "by-key/"), "{s}");
        }
        // Distinct keys, distinct segments.
        let unique: std::collections::HashSet<&String> = segs.iter().collect();
        assert_eq!(unique.len(), segs.len());
        for (path, want) in [
            ("user/_draft", "user/%5Fdraft"),
            (".a/b/.c", "%2Ea/b/%2Ec"),
            ("dir/", "dir%2F"),
            ("a//b", "a//b"),
            ("plain", "plain"),
        ] {
            assert_eq!(visible_path(path), want);
            assert!(!is_hidden(&format!("pm/{want}"), "pm/"), "{want}");
            assert!(!is_hidden(&format!("pm/{want}.gz"), "pm/"), "{want}");
        }
    }

    #[test]
    fn auto_format_and_compression_by_extension() {
        assert_eq!(Compression::from_key("a.frames.gz"), Compression::Gzip);
        assert_eq!(Compression::from_key("a.lines.zst"), Compression::Zstd);
        assert_eq!(
            SourceFormat::Auto.for_key("a.frames.zst"),
            RecordFormat::Frames
        );
        assert_eq!(SourceFormat::Auto.for_key("a.csv"), RecordFormat::Lines);
        assert_eq!(SourceFormat::Auto.for_key("a.raw"), RecordFormat::Raw);
    }

    fn round_trip(format: RecordFormat, c: Compression, payloads: &[Bytes]) -> Vec<(u64, Bytes)> {
        let mut comp = Compressor::new(c).unwrap();
        let mut object = Vec::new();
        for p in payloads {
            let mut v = Vec::new();
            format.encode(p, &mut v).unwrap();
            comp.write(&v).unwrap();
            object.extend(comp.take_output());
        }
        object.extend(comp.finish().unwrap());
        let mut d =
            Decompressor::new(Compression::from_key(&format!("x{}", c.extension()))).unwrap();
        let mut s = Splitter::new(format, 0, 3, 1 << 20);
        let mut out = Vec::new();
        for chunk in object.chunks(7) {
            d.feed(chunk, s.buffer()).unwrap();
            while let Some(r) = s.next_record().unwrap() {
                out.push(r);
            }
        }
        d.finish(s.buffer()).unwrap();
        while let Some(r) = s.finish().unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn a_truncated_compressed_object_is_an_error_and_concatenated_frames_are_not() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let frame = |text: &[u8]| {
                let mut comp = Compressor::new(c).unwrap();
                comp.write(text).unwrap();
                comp.finish().unwrap()
            };
            let mut two = frame(b"one\n");
            two.extend(frame(b"two\n"));
            let mut d = Decompressor::new(c).unwrap();
            let mut out = BytesMut::new();
            d.feed(&two, &mut out).unwrap();
            d.finish(&mut out).unwrap();
            assert_eq!(&out[..], b"one\ntwo\n", "{c:?}");

            let whole = frame(&b"0123456789".repeat(1000));
            let mut d = Decompressor::new(c).unwrap();
            let mut out = BytesMut::new();
            let fed = d.feed(&whole[..whole.len() - 3], &mut out);
            assert!(
                fed.and_then(|()| d.finish(&mut out)).is_err(),
                "{c:?}: a truncated object must not end quietly"
            );
        }
    }

    #[test]
    fn formats_and_compressions_round_trip_with_offsets() {
        let payloads: Vec<Bytes> = (0..200)
            .map(|i| Bytes::from(format!("record-{i}-{}", "z".repeat(i % 17))))
            .collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for f in [RecordFormat::Lines, RecordFormat::Frames] {
                let out = round_trip(f, c, &payloads);
                assert_eq!(out.len(), payloads.len(), "{f:?} {c:?}");
                let mut expect_end = 0u64;
                for (i, (end, p)) in out.iter().enumerate() {
                    assert_eq!(p, &payloads[i]);
                    expect_end += f.encoded_len(p.len()) as u64;
                    assert_eq!(*end, expect_end);
                }
            }
            let raw = round_trip(RecordFormat::Raw, c, &payloads);
            let joined: Vec<u8> = raw.iter().flat_map(|(_, p)| p.to_vec()).collect();
            assert_eq!(joined, encode_all(RecordFormat::Raw, &payloads));
            assert!(raw.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn lines_refuse_newlines_and_frames_detect_truncation() {
        let mut v = Vec::new();
        assert!(RecordFormat::Lines.encode(b"a\nb", &mut v).is_err());
        let mut s = Splitter::new(RecordFormat::Frames, 0, 1, 100);
        s.buffer().extend_from_slice(&[0, 0, 0, 5, b'a']);
        assert_eq!(s.next_record().unwrap(), None);
        assert!(s.finish().is_err());
        let mut s = Splitter::new(RecordFormat::Frames, 0, 1, 100);
        s.buffer().extend_from_slice(&[0, 0, 1, 0]);
        assert!(s.next_record().is_err());
        // A splitter resuming mid-object reports absolute offsets.
        let mut s = Splitter::new(RecordFormat::Lines, 100, 1, 100);
        s.buffer().extend_from_slice(b"ab\nc");
        assert_eq!(s.next_record().unwrap(), Some((103, Bytes::from("ab"))));
        assert_eq!(s.finish().unwrap(), Some((104, Bytes::from("c"))));
    }
}
