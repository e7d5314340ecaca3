//! Stream entries: [`EntryId`] and its mapping to message ids, [`Entry`] and the parsing of
//! XREADGROUP, XRANGE, XAUTOCLAIM and XINFO GROUPS replies.

use std::fmt;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use redis::Value;

/// Bits of a message id that hold the entry id's sequence number.
pub const SEQ_BITS: u32 = 20;

/// A stream entry id `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// Parses `ms-seq` (or `ms`, sequence 0).
    pub fn parse(b: &[u8]) -> Option<EntryId> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The message id `ms << 20 | seq`, which orders like the entry ids; `None` when the
    /// entry id does not fit (sequence >= 2^20, or milliseconds >= 2^44, i.e. after the
    /// year 2527): such entries get the next id up instead (see [`next_message_id`]).
    pub fn message_id(self) -> Option<u64> {
        self.unfit()
            .is_none()
            .then_some((self.ms << SEQ_BITS) | self.seq)
    }

    /// Why the entry id does not fit a message id ([`EntryId::message_id`] is `None`), or
    /// `None` when it fits.
    pub fn unfit(self) -> Option<&'static str> {
        if self.ms >= 1 << (64 - SEQ_BITS) {
            Some("milliseconds >= 2^44, after the year 2527")
        } else if self.seq >= 1 << SEQ_BITS {
            Some("sequence >= 2^20")
        } else {
            None
        }
    }

    /// The entry id a message id made by [`EntryId::message_id`] came from.
    pub fn from_message_id(id: u64) -> EntryId {
        EntryId {
            ms: id >> SEQ_BITS,
            seq: id & ((1 << SEQ_BITS) - 1),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg_fmt(self);
    }
}

/// The message id for `entry` when the last id sent on the stream was `last`: the entry's
/// own id ([`EntryId::message_id`]) when that is above `last`, else `last + 1`. Ids stay
/// strictly increasing even for entries re-delivered or claimed behind newer ones.
pub fn next_message_id(last: u64, entry: EntryId) -> u64 {
    entry
        .message_id()
        .filter(|&m| m > last)
        .unwrap_or(last.saturating_add(1))
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its id.
    pub id: EntryId,
    /// Field/value pairs in stream order; `None` for a pending entry that was deleted from
    /// the stream (XDEL/trimming) before it was acknowledged.
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

impl Entry {
    /// The first value of field `name`.
    pub fn field(&self, name: &[u8]) -> Option<&Bytes> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(f, _)| f.as_ref() == name)
            .map(|(_, v)| v)
    }

    /// The message key (the `key_field` value, empty when absent) and payload (the
    /// `payload_field` value, or, when the entry has no such field, a JSON object of all its
    /// fields, values as strings with invalid UTF-8 replaced).
    pub fn key_and_payload(&self, key_field: &[u8], payload_field: &[u8]) -> (Bytes, Bytes) {
        let key = self.field(key_field).cloned().unwrap_or_default();
        if let Some(p) = self.field(payload_field) {
            return (key, p.clone());
        }
        let mut obj = serde_json::Map::new();
        for (f, v) in self.fields.iter().flatten() {
            obj.insert(
                String::from_utf8_lossy(f).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            );
        }
        let json = serde_json::Value::Object(obj).to_string();
        (key, Bytes::from(json))
    }
}

fn bulk(v: Value) -> Result<Bytes> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        Value::Int(i) => Ok(Bytes::from(i.to_string())),
        other => bail!("expected a string in the stream reply, got {other:?}"),
    }
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => bail!("expected an array in the stream reply, got {other:?}"),
    }
}

fn entry_id(v: Value) -> Result<EntryId> {
    let b = bulk(v)?;
    EntryId::parse(&b)
        .ok_or_else(|| anyhow!("bad stream entry id {:?}", String::from_utf8_lossy(&b)))
}

/// Parses a list of entries `[[id, [field, value, ...]], ...]` (a nil field list marks a
/// deleted pending entry).
pub fn parse_entries(v: Value) -> Result<Vec<Entry>> {
    array(v)?
        .into_iter()
        .map(|e| {
            let mut parts = array(e)?.into_iter();
            let id = entry_id(parts.next().ok_or_else(|| anyhow!("empty stream entry"))?)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Map(m)) => Some(
                    m.into_iter()
                        .map(|(f, v)| Ok((bulk(f)?, bulk(v)?)))
                        .collect::<Result<Vec<_>>>()?,
                ),
                Some(list) => {
                    let mut flat = array(list)?.into_iter();
                    let mut fields = Vec::new();
                    while let Some(f) = flat.next() {
                        let v = flat
                            .next()
                            .ok_or_else(|| anyhow!("odd field list in entry {id}"))?;
                        fields.push((bulk(f)?, bulk(v)?));
                    }
                    Some(fields)
                }
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// Parses an XREADGROUP/XREAD reply for one stream (nil = nothing within BLOCK).
pub fn parse_xread(v: Value) -> Result<Vec<Entry>> {
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.into_iter().map(|(_, entries)| entries).collect(),
        other => array(other)?
            .into_iter()
            .map(|s| {
                let mut parts = array(s)?.into_iter();
                parts.next();
                Ok(parts.next().unwrap_or(Value::Nil))
            })
            .collect::<Result<_>>()?,
    };
    let mut out = Vec::new();
    for s in streams {
        out.extend(parse_entries(s)?);
    }
    Ok(out)
}

/// An XAUTOCLAIM reply: the cursor to continue from (`0-0` when the scan is complete), the
/// claimed entries, and the ids of pending entries that no longer exist in the stream
/// (Redis removed them from the pending list).
pub fn parse_xautoclaim(v: Value) -> Result<(EntryId, Vec<Entry>, Vec<EntryId>)> {
    let mut parts = array(v)?.into_iter();
    let cursor = entry_id(
        parts
            .next()
            .ok_or_else(|| anyhow!("empty XAUTOCLAIM reply"))?,
    )?;
    let entries = parse_entries(parts.next().unwrap_or(Value::Nil))?;
    let deleted = match parts.next() {
        Some(v) => array(v)?.into_iter().map(entry_id).collect::<Result<_>>()?,
        None => Vec::new(),
    };
    Ok((cursor, entries, deleted))
}

/// What XINFO GROUPS says about one consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries not yet delivered to the group (Redis 7+; `None` when unknown).
    pub lag: Option<i64>,
    /// The last entry id delivered to any consumer of the group.
    pub last_delivered: Option<EntryId>,
}

/// Finds consumer group `group` in an XINFO GROUPS reply.
pub fn group_info(v: Value, group: &str) -> Option<GroupInfo> {
    for g in array(v).ok()? {
        let pairs: Vec<(Value, Value)> = match g {
            Value::Map(m) => m,
            other => {
                let mut flat = array(other).ok()?.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
        };
        let mut name = None;
        let mut info = GroupInfo::default();
        for (k, v) in pairs {
            match bulk(k).ok()?.as_ref() {
                b"name" => name = bulk(v).ok(),
                b"lag" => info.lag = if let Value::Int(i) = v { Some(i) } else { None },
                b"last-delivered-id" => info.last_delivered = entry_id(v).ok(),
                _ => {}
            }
        }
        if name.as_deref() == Some(group.as_bytes()) {
            return Some(info);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entry_ids_map_to_ordered_message_ids_and_back() {
        let a = EntryId::parse(b"1700000000000-0").unwrap();
        let b = EntryId::parse(b"1700000000000-7").unwrap();
        let c = EntryId::parse(b"1700000000001-0").unwrap();
        let (ma, mb, mc) = (
            a.message_id().unwrap(),
            b.message_id().unwrap(),
            c.message_id().unwrap(),
        );
        assert!(ma < mb && mb < mc);
        assert_eq!(EntryId::from_message_id(mb), b);
        assert_eq!(b.to_string(), "1700000000000-7");
        assert_eq!(EntryId::parse(b"5"), Some(EntryId { ms: 5, seq: 0 }));
        assert_eq!(EntryId::parse(b"x-1"), None);
        // Out of range: no direct id, the next one up instead.
        let big = EntryId {
            ms: 1,
            seq: 1 << SEQ_BITS,
        };
        assert_eq!(big.message_id(), None);
        assert_eq!(big.unfit(), Some("sequence >= 2^20"));
        assert_eq!(next_message_id(41, big), 42);
        let late = EntryId::parse(b"99999999999999-6").unwrap();
        assert_eq!(late.message_id(), None);
        assert_eq!(
            late.unfit(),
            Some("milliseconds >= 2^44, after the year 2527")
        );
        assert_eq!(a.unfit(), None);
        // Behind the last id sent (claimed or re-delivered): next one up.
        assert_eq!(next_message_id(mc, a), mc + 1);
        assert_eq!(next_message_id(ma, c), mc);
    }

    #[test]
    fn parses_xreadgroup_and_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bs("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bs("1-1"),
                    Value::Array(vec![bs("key"), bs("k1"), bs("payload"), bs("p \x00\n ")]),
                ]),
                Value::Array(vec![bs("1-2"), Value::Nil]),
                Value::Array(vec![
                    bs("1-3"),
                    Value::Array(vec![bs("a"), bs("1"), bs("b"), bs("two")]),
                ]),
            ]),
        ])]);
        let e = parse_xread(reply).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0].key_and_payload(b"key", b"payload"),
            (Bytes::from("k1"), Bytes::from("p \x00\n "))
        );
        assert_eq!(e[1].fields, None);
        let (k, p) = e[2].key_and_payload(b"key", b"payload");
        assert!(k.is_empty());
        let json: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(json, serde_json::json!({"a": "1", "b": "two"}));
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn parses_xautoclaim() {
        let reply = Value::Array(vec![
            bs("0-0"),
            Value::Array(vec![Value::Array(vec![
                bs("3-0"),
                Value::Array(vec![bs("payload"), bs("x")]),
            ])]),
            Value::Array(vec![bs("2-0")]),
        ]);
        let (cursor, entries, deleted) = parse_xautoclaim(reply).unwrap();
        assert_eq!(cursor, EntryId::default());
        assert_eq!(entries[0].id, EntryId { ms: 3, seq: 0 });
        assert_eq!(deleted, vec![EntryId { ms: 2, seq: 0 }]);
    }

    #[test]
    fn group_info_from_xinfo() {
        let reply = Value::Array(vec![
            Value::Array(vec![bs("name"), bs("other"), bs("lag"), Value::Int(9)]),
            Value::Array(vec![
                bs("name"),
                bs("g"),
                bs("last-delivered-id"),
                bs("7-1"),
                bs("lag"),
                Value::Int(3),
            ]),
        ]);
        assert_eq!(
            group_info(reply, "g"),
            Some(GroupInfo {
                lag: Some(3),
                last_delivered: Some(EntryId { ms: 7, seq: 1 })
            })
        );
    }
}
