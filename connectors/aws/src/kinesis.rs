//! Kinesis helpers: shard listing, sequence numbers, partition keys and PutRecords batches.

use std::cmp::Ordering;
use std::collections::VecDeque;

use anyhow::Result;
use aws_sdk_kinesis::types::PutRecordsResultEntry;
use bytes::Bytes;
use connector_runtime::Context;

use crate::client::{classify_code, retry, Failure};

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

/// A record waiting to be written, with whatever the caller needs to acknowledge it.
#[derive(Debug, Clone)]
pub struct Outgoing<T> {
    /// Caller's handle (e.g. an acknowledgement ticket).
    pub item: T,
    /// Partition key.
    pub partition_key: String,
    /// Record data.
    pub data: Bytes,
    /// Failed attempts so far.
    pub attempts: u32,
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

/// What became of each record of a PutRecords call.
#[derive(Debug)]
pub struct BatchOutcome<T> {
    /// Written: acknowledge these.
    pub written: Vec<Outgoing<T>>,
    /// Failed with a retryable per-record error (throttling, internal failure).
    pub retry: Vec<Outgoing<T>>,
    /// Refused for good by a per-record error: dead-letter these.
    pub refused: Vec<(Outgoing<T>, String)>,
    /// Whether any record was throttled (back off before the retry).
    pub throttled: bool,
}

/// Splits a batch by the per-record results of PutRecords (same order as the request).
/// A result list of the wrong length retries every record.
pub fn apply_results<T>(
    batch: Vec<Outgoing<T>>,
    results: &[PutRecordsResultEntry],
) -> BatchOutcome<T> {
    let mut out = BatchOutcome {
        written: Vec::new(),
        retry: Vec::new(),
        refused: Vec::new(),
        throttled: false,
    };
    if results.len() != batch.len() {
        out.retry = batch;
        return out;
    }
    for (mut rec, res) in batch.into_iter().zip(results) {
        match res.error_code() {
            None | Some("") if res.sequence_number().is_some() => out.written.push(rec),
            None | Some("") => {
                rec.attempts += 1;
                out.retry.push(rec);
            }
            Some(code) => {
                let msg = format!("{code}: {}", res.error_message().unwrap_or(""));
                rec.attempts += 1;
                match classify_code(code, msg) {
                    Failure::Throttled(_) => {
                        out.throttled = true;
                        out.retry.push(rec);
                    }
                    Failure::Transient(_) => out.retry.push(rec),
                    Failure::Permanent(m) => out.refused.push((rec, m)),
                }
            }
        }
    }
    out
}

/// Puts retried records back at the front of the queue, keeping their order.
pub fn requeue_front<T>(queue: &mut VecDeque<Outgoing<T>>, records: Vec<Outgoing<T>>) {
    for r in records.into_iter().rev() {
        queue.push_front(r);
    }
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
            attempts: 0,
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
    fn partial_failure_retries_only_failed_records_in_order() {
        let batch: Vec<_> = (0..5).map(|i| rec(i, 10)).collect();
        let results = vec![
            ok("1"),
            err("ProvisionedThroughputExceededException"),
            ok("2"),
            err("InternalFailure"),
            err("KMSAccessDeniedException"),
        ];
        let out = apply_results(batch, &results);
        let w: Vec<u32> = out.written.iter().map(|r| r.item).collect();
        let r: Vec<u32> = out.retry.iter().map(|r| r.item).collect();
        assert_eq!(w, vec![0, 2]);
        assert_eq!(r, vec![1, 3]);
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.refused[0].0.item, 4);
        assert!(out.throttled);
        assert!(out.retry.iter().all(|r| r.attempts == 1));

        let mut q: VecDeque<_> = (10..12).map(|i| rec(i, 1)).collect();
        requeue_front(&mut q, out.retry);
        let order: Vec<u32> = q.iter().map(|r| r.item).collect();
        assert_eq!(order, vec![1, 3, 10, 11]);
    }

    #[test]
    fn wrong_result_count_retries_everything() {
        let batch: Vec<_> = (0..3).map(|i| rec(i, 10)).collect();
        let out = apply_results(batch, &[ok("1")]);
        assert_eq!(out.retry.len(), 3);
        assert!(out.written.is_empty());
    }

    #[test]
    fn validation_messages_name_the_record() {
        let m = "1 validation error detected: Value at 'records.2.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576";
        assert_eq!(validation_record_index(m), Some(1));
        assert_eq!(validation_record_index("something else"), None);
    }
}
