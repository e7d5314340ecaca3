//! Kinesis helpers: shard listing, sequence numbers, partition keys and PutRecords batches
//! with per-record results; [`reader`]: the shard reader of `kinesis_source`.

use std::cmp::Ordering;
use std::collections::VecDeque;

use anyhow::{bail, Result};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, PutRecordsResultEntry};
use bytes::Bytes;
use connector_runtime::{Context, Outcome, Outcomes};

use crate::client::{classify, classify_code, retry, throttled as throttled_call, Failure};

pub mod reader;

/// Most records in one PutRecords call.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes (data + partition keys) in one PutRecords call.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Default largest record (data + partition key) a stream accepts.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records one GetRecords call returns.
pub const MAX_GET_RECORDS: i32 = 10_000;

/// One shard as listed by ListShards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-000000000000`.
    pub id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<String>,
    /// Set once the shard is closed (split or merged): its last possible sequence number.
    pub ending_seq: Option<String>,
}

impl ShardInfo {
    /// Both parents, when present.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent
            .as_deref()
            .into_iter()
            .chain(self.adjacent_parent.as_deref())
    }

    /// Whether the shard is closed (no new records will arrive).
    pub fn is_closed(&self) -> bool {
        self.ending_seq.is_some()
    }
}

/// Lists every shard of `stream` (all pages), retrying throttling and network errors.
pub async fn list_shards(
    ctx: &Context,
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<ShardInfo>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry(ctx, "ListShards", || {
            let req = client.list_shards();
            // With a NextToken the stream name must not be repeated.
            let req = match &token {
                Some(t) => req.next_token(t.clone()),
                None => req.stream_name(stream),
            };
            req.send()
        })
        .await?;
        for s in page.shards() {
            out.push(ShardInfo {
                id: s.shard_id().to_string(),
                parent: s.parent_shard_id().map(String::from),
                adjacent_parent: s.adjacent_parent_shard_id().map(String::from),
                ending_seq: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .map(String::from),
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Compares two Kinesis sequence numbers (decimal strings of any length, no leading zeros).
pub fn seq_cmp(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition key of a message: its key when that is valid UTF-8 of 1 to 256 characters,
/// else the hex FNV-1a hash of the key (other keys) or of the payload (empty key).
pub fn partition_key(key: &[u8], payload: &[u8]) -> String {
    if key.is_empty() {
        return format!("{:016x}", fnv1a64(payload));
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().count() <= 256 => s.to_string(),
        _ => format!("{:016x}", fnv1a64(key)),
    }
}

/// A record waiting to be written, with whatever the caller needs to settle it.
#[derive(Debug, Clone)]
pub struct Outgoing<T> {
    /// Caller's handle (e.g. the record's index in the sink's batch).
    pub item: T,
    /// Partition key.
    pub partition_key: String,
    /// Record data.
    pub data: Bytes,
}

impl<T> Outgoing<T> {
    /// Size as Kinesis counts it against the record and request limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// Takes the next PutRecords batch off the front of `queue`: at most `max_records` records
/// and `max_bytes` bytes (always at least one record).
pub fn take_batch<T>(
    queue: &mut VecDeque<Outgoing<T>>,
    max_records: usize,
    max_bytes: usize,
) -> Vec<Outgoing<T>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(front) = queue.front() {
        if !out.is_empty() && (out.len() >= max_records || bytes + front.size() > max_bytes) {
            break;
        }
        bytes += front.size();
        if let Some(r) = queue.pop_front() {
            out.push(r);
        }
    }
    out
}

/// What became of each of the `n` records of a PutRecords call, from its per-record results
/// (same order as the request): written, retry (throttling, internal failure) or refused
/// (any other error code); and whether any was throttled. A result list of the wrong length
/// retries every record.
pub fn record_outcomes(n: usize, results: &[PutRecordsResultEntry]) -> (Vec<Outcome>, bool) {
    if results.len() != n {
        let why = format!(
            "PutRecords answered {} results for {n} records",
            results.len()
        );
        return (vec![Outcome::Retry(why); n], false);
    }
    let mut throttled = false;
    let outcomes = results
        .iter()
        .map(|res| match res.error_code() {
            None | Some("") if res.sequence_number().is_some() => Outcome::Written,
            None | Some("") => Outcome::Retry("PutRecords returned no sequence number".into()),
            Some(code) => {
                let msg = format!("{code}: {}", res.error_message().unwrap_or(""));
                match classify_code(code, msg) {
                    Failure::Throttled(m) => {
                        throttled = true;
                        Outcome::Retry(m)
                    }
                    Failure::Transient(m) => Outcome::Retry(m),
                    Failure::Permanent(m) => Outcome::Refused(m),
                }
            }
        })
        .collect();
    (outcomes, throttled)
}

/// Writes `records` (each `item` an index into the sink's batch) to `stream` with one
/// PutRecords call and marks in `outcomes` what was not written: failed records are retried
/// (throttling, internal failure) or refused (anything else); a call the service refuses
/// naming one record refuses that record and retries the others; a throttled or failed call
/// retries them all. Returns whether every record was settled without a retry. A call refused
/// for good without naming a record (missing stream, access denied) is an error.
pub async fn put_records(
    ctx: &Context,
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[Outgoing<usize>],
    outcomes: &mut Outcomes,
) -> Result<bool> {
    let entries = records
        .iter()
        .map(|r| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(r.data.to_vec()))
                .partition_key(r.partition_key.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sent = client
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await;
    let e = match sent {
        Ok(out) => {
            let (results, throttled) = record_outcomes(records.len(), out.records());
            if throttled {
                throttled_call(ctx, "PutRecords");
            }
            let mut all = true;
            for (r, outcome) in records.iter().zip(results) {
                match outcome {
                    Outcome::Written => {}
                    Outcome::Retry(why) => {
                        all = false;
                        outcomes.retry(r.item, why);
                    }
                    Outcome::Refused(why) => outcomes.refuse(r.item, why),
                }
            }
            return Ok(all);
        }
        Err(e) => e,
    };
    let failure = classify(&e);
    let named = validation_record_index(failure.message()).filter(|i| *i < records.len());
    match (failure, named) {
        (Failure::Permanent(m), Some(bad)) => {
            // The call names the record it refuses (too large, bad key): refuse that one,
            // send the others again.
            for (i, r) in records.iter().enumerate() {
                if i == bad {
                    outcomes.refuse(r.item, m.clone());
                } else {
                    let why = "sent again without a record the service refused";
                    outcomes.retry(r.item, why);
                }
            }
        }
        (Failure::Permanent(m), None) => bail!("PutRecords to stream `{stream}` failed: {m}"),
        (f, _) => {
            if matches!(f, Failure::Throttled(_)) {
                throttled_call(ctx, "PutRecords");
            } else {
                ctx.metrics.reconnects.inc();
                ctx.metrics.error("aws");
            }
            for r in records {
                outcomes.retry(r.item, format!("PutRecords: {}", f.message()));
            }
        }
    }
    Ok(false)
}

/// The 0-based index of the record a request-level validation error names
/// (`... 'records.3.member.data' ...` is the third record), if any.
pub fn validation_record_index(message: &str) -> Option<usize> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("records.")? + "records.".len();
    let digits: String = lower[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n: usize = digits.parse().ok()?;
    n.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32, size: usize) -> Outgoing<u32> {
        Outgoing {
            item: i,
            partition_key: "k".into(),
            data: Bytes::from(vec![b'x'; size]),
        }
    }

    #[test]
    fn sequence_numbers_compare_numerically() {
        assert_eq!(seq_cmp("9", "10"), Ordering::Less);
        assert_eq!(
            seq_cmp(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692540925702759324208523137515618"
            ),
            Ordering::Less
        );
        assert_eq!(seq_cmp("0", "0"), Ordering::Equal);
        assert_eq!(seq_cmp("100", "99"), Ordering::Greater);
    }

    #[test]
    fn partition_keys() {
        assert_eq!(partition_key(b"user-1", b"x"), "user-1");
        let h = partition_key(b"", b"payload");
        assert_eq!(h.len(), 16);
        assert_eq!(h, partition_key(b"", b"payload"));
        assert_ne!(h, partition_key(b"", b"payload2"));
        assert_eq!(partition_key(&[0xff, 0xfe], b"x").len(), 16);
        assert_eq!(partition_key("a".repeat(300).as_bytes(), b"x").len(), 16);
    }

    #[test]
    fn batches_respect_record_and_byte_limits() {
        let mut q: VecDeque<_> = (0..1200).map(|i| rec(i, 10)).collect();
        assert_eq!(take_batch(&mut q, 500, MAX_BATCH_BYTES).len(), 500);
        let mut q: VecDeque<_> = (0..10).map(|i| rec(i, 1024 * 1024 - 1)).collect();
        let b = take_batch(&mut q, 500, MAX_BATCH_BYTES);
        assert_eq!(b.len(), 5);
        assert!(b.iter().map(|r| r.size()).sum::<usize>() <= MAX_BATCH_BYTES);
        // One record over the byte limit still goes alone (the service refuses it).
        let mut q: VecDeque<_> = vec![rec(0, 6 * 1024 * 1024), rec(1, 1)].into();
        assert_eq!(take_batch(&mut q, 500, MAX_BATCH_BYTES).len(), 1);
    }

    fn ok(seq: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::builder()
            .sequence_number(seq)
            .shard_id("shardId-000000000000")
            .build()
    }

    fn err(code: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::builder()
            .error_code(code)
            .error_message("boom")
            .build()
    }

    #[test]
    fn partial_failure_retries_only_failed_records() {
        let results = vec![
            ok("1"),
            err("ProvisionedThroughputExceededException"),
            ok("2"),
            err("InternalFailure"),
            err("KMSAccessDeniedException"),
        ];
        let (out, throttled) = record_outcomes(5, &results);
        assert!(throttled);
        assert_eq!(out[0], Outcome::Written);
        assert!(matches!(&out[1], Outcome::Retry(m) if m.contains("ProvisionedThroughput")));
        assert_eq!(out[2], Outcome::Written);
        assert!(matches!(&out[3], Outcome::Retry(_)));
        assert!(matches!(&out[4], Outcome::Refused(m) if m.contains("KMSAccessDenied")));
    }

    #[test]
    fn wrong_result_count_retries_everything() {
        let (out, _) = record_outcomes(3, &[ok("1")]);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| matches!(o, Outcome::Retry(_))));
    }

    #[test]
    fn validation_messages_name_the_record() {
        let m = "1 validation error detected: Value at 'records.2.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576";
        assert_eq!(validation_record_index(m), Some(1));
        assert_eq!(validation_record_index("something else"), None);
    }
}
