//! kafka_source's side of the consumer group: the consumer context (logs, errors, lag,
//! rebalance callbacks), the partitions this process reads, and the offset commits.
//!
//! librdkafka runs the rebalance callbacks inside the consumer's poll, that is inside the
//! source's `read`. A revoke commits synchronously, right there, what the engine already
//! acknowledged for the revoked partitions; both kinds are then queued as [`Event`]s that
//! [`Partitions::rebalance`] applies at the start of the next `read`: a revoked partition's
//! stream is ended (the runtime drains it, commits and sends EOS), an assigned one is
//! opened with the group's committed offset - 1 as hint and positioned in
//! [`Partitions::opened`] at the later of that offset and the engine's resume point + 1.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::prelude::stream_id_for;
use connector_runtime::{Batch, Counter, StreamHandle};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::stream_name;

/// The consumer kafka_source reads with.
pub type KafkaConsumer = StreamConsumer<SourceContext>;

/// What the runtime hands back to `commit` for one record: its stream id and its offset.
pub type Token = (u64, i64);

/// Acknowledgements and commits of one partition, seen by the source and the callbacks.
struct Progress {
    topic: String,
    partition: i32,
    /// Last offset the engine acknowledged.
    acked: Option<i64>,
    /// Offset committed to the group (the next one to read).
    committed: Option<i64>,
    /// Its stream was ended: forgotten after one last commit.
    ended: bool,
}

/// A rebalance seen by the callbacks, applied by [`Partitions::rebalance`].
enum Event {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<u64>),
}

#[derive(Default)]
struct State {
    /// By stream id: the partitions opened and not forgotten yet.
    progress: HashMap<u64, Progress>,
    events: VecDeque<Event>,
}

impl State {
    /// Offsets due for commit (of `only`, or of every partition still ours), recorded as
    /// committed.
    fn due(&mut self, only: Option<&[u64]>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (id, p) in self.progress.iter_mut() {
            if only.map_or(p.ended, |ids| !ids.contains(id)) {
                continue;
            }
            let Some(next) = p.acked.map(|a| a + 1) else {
                continue;
            };
            if p.committed.is_some_and(|c| c >= next) {
                continue;
            }
            if tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(next))
                .is_ok()
            {
                p.committed = Some(next);
            }
        }
        tpl
    }
}

/// State shared by the source and its consumer context (the callbacks run inside the
/// consumer's poll, on the source's thread: the lock is never contended for long).
#[derive(Default)]
pub struct Group {
    state: Mutex<State>,
    changed: Notify,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: Event) {
        self.lock().events.push_back(event);
        self.changed.notify_one();
    }

    /// Whether a rebalance waits to be applied.
    pub fn pending(&self) -> bool {
        !self.lock().events.is_empty()
    }

    /// Waits for a rebalance (cancel safe).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The consumer context: logs, errors, lag from statistics, and the rebalance hooks.
pub struct SourceContext {
    group: Arc<Group>,
    metrics: ConnectorMetrics,
}

impl SourceContext {
    /// A context reporting to `metrics` and sharing `group` with the source.
    pub fn new(group: Arc<Group>, metrics: ConnectorMetrics) -> Self {
        SourceContext { group, metrics }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_error(&self.metrics, &error, reason);
    }

    fn stats(&self, stats: Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.metrics.readiness.ready("kafka");
        }
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.lag.set(lag);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let ids: Vec<u64> = tpl
                    .elements()
                    .iter()
                    .map(|e| stream_id_for(&stream_name(e.topic(), e.partition())))
                    .collect();
                // What the engine acknowledged so far: the next owner starts after it.
                let commit = self.group.lock().due(Some(&ids));
                if commit.count() > 0 {
                    match consumer.commit(&commit, CommitMode::Sync) {
                        Ok(()) => {
                            tracing::info!("partitions revoked; committed {}", describe(&commit))
                        }
                        Err(e) => {
                            self.metrics.error("commit");
                            tracing::warn!(
                                "partitions revoked; commit of {} failed: {e} (their unacknowledged records will be read again)",
                                describe(&commit)
                            )
                        }
                    }
                }
                self.group.push(Event::Revoked(ids));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                self.metrics.error("rebalance");
                tracing::warn!("rebalance error: {e}");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            self.group.push(Event::Assigned(parts));
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Err(e) = result else { return };
        // A commit of partitions no longer ours (drained after a revoke) may fail: their
        // next owner reads what it missed again.
        let ours = {
            let state = self.group.lock();
            offsets.elements().iter().any(|e| {
                let id = stream_id_for(&stream_name(e.topic(), e.partition()));
                state.progress.get(&id).is_some_and(|p| !p.ended)
            })
        };
        if ours {
            self.metrics.error("commit");
            tracing::warn!("offset commit of {} failed: {e}", describe(offsets));
        } else {
            tracing::debug!("late commit of {} failed: {e}", describe(offsets));
        }
    }
}

/// `topic/partition@offset, ...` for logs.
fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
            other => format!("{}/{}@{other:?}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A partition this process reads.
struct Part {
    topic: String,
    partition: i32,
    stream: u64,
    /// First offset still to push: anything below was pushed or processed already.
    next: i64,
    /// The group's committed offset when the partition was assigned.
    committed: Option<i64>,
}

/// The partitions this process reads and their commits.
pub struct Partitions {
    group: Arc<Group>,
    /// A short list: records come in runs from one partition, so the last one found is
    /// checked first.
    list: Vec<Part>,
    last: usize,
    commit_every: Duration,
    last_commit: Instant,
    skipped: Counter,
}

impl Partitions {
    /// No partitions yet; offsets are committed every `commit_every` (and at revoke and
    /// close).
    pub fn new(group: Arc<Group>, commit_every: Duration, metrics: &ConnectorMetrics) -> Self {
        let skipped = metrics.registry.counter(
            "kafka_records_skipped_total",
            "Records not sent because the engine had already processed them.",
            &[],
        );
        Partitions {
            group,
            list: Vec::new(),
            last: 0,
            commit_every,
            last_commit: Instant::now(),
            skipped,
        }
    }

    /// The shared state the consumer context needs.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Applies the rebalances seen since the last call: ends the streams of revoked
    /// partitions and opens those of assigned ones. `true` when a stream was opened or
    /// ended: return from `read`, so that the runtime announces or drains them first.
    pub fn rebalance(&mut self, consumer: &KafkaConsumer, out: &mut Batch<Token>) -> bool {
        // Streams ended at the last read were drained and their tokens committed since:
        // commit that upstream one last time and forget them.
        let ended: Vec<u64> = {
            let state = self.group.lock();
            let ids = state.progress.iter().filter(|(_, p)| p.ended);
            ids.map(|(id, _)| *id).collect()
        };
        if !ended.is_empty() {
            let tpl = self.group.lock().due(Some(&ended));
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!("late commit of {} failed: {e}", describe(&tpl));
                }
            }
            let mut state = self.group.lock();
            ended.iter().for_each(|id| drop(state.progress.remove(id)));
        }
        let mut changed = false;
        loop {
            let Some(event) = self.group.lock().events.pop_front() else {
                return changed;
            };
            match event {
                Event::Revoked(ids) => {
                    for id in ids {
                        let before = self.list.len();
                        self.list.retain(|p| p.stream != id);
                        self.last = 0;
                        if self.list.len() != before {
                            out.end(id);
                        }
                        if let Some(p) = self.group.lock().progress.get_mut(&id) {
                            p.ended = true;
                        }
                    }
                    // A partition assigned again is opened once this stream has ended.
                    return true;
                }
                Event::Assigned(list) => changed |= self.assign(consumer, out, list),
            }
        }
    }

    /// Opens the streams of newly assigned partitions, with the group's committed offset
    /// - 1 as resume hint.
    fn assign(
        &mut self,
        consumer: &KafkaConsumer,
        out: &mut Batch<Token>,
        list: Vec<(String, i32)>,
    ) -> bool {
        // A partition announced already (assigned again without a revoke) stays as is.
        let list: Vec<(String, i32)> = list
            .into_iter()
            .filter(|(t, p)| !self.list.iter().any(|a| a.partition == *p && a.topic == *t))
            .collect();
        if list.is_empty() {
            return false;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &list {
            tpl.add_partition(t, *p);
        }
        // Copy the offsets out: a TopicPartitionList from the consumer must not outlive it.
        let committed: HashMap<(String, i32), i64> = match consumer
            .committed_offsets(tpl, Duration::from_secs(10))
        {
            Ok(c) => c
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!("cannot read the group's committed offsets ({e}); using the engine's resume points and `start`");
                HashMap::new()
            }
        };
        for (topic, partition) in list {
            let name = stream_name(&topic, partition);
            let committed = committed.get(&(topic.clone(), partition)).copied();
            let hint = committed.filter(|c| *c > 0).map(|c| (c - 1) as u64);
            let stream = out.open(&name, hint);
            self.group.lock().progress.insert(
                stream,
                Progress {
                    topic: topic.clone(),
                    partition,
                    acked: None,
                    committed,
                    ended: false,
                },
            );
            self.list.push(Part {
                topic,
                partition,
                stream,
                next: committed.unwrap_or(0),
                committed,
            });
        }
        true
    }

    /// The engine answered the NOTIFY: start the partition at the later of the group's
    /// committed offset and the engine's resume point + 1.
    pub fn opened(&mut self, consumer: &KafkaConsumer, stream: &StreamHandle) {
        let Some(part) = self.list.iter_mut().find(|p| p.stream == stream.id) else {
            return;
        };
        let engine_next = stream.resume.map(|r| r as i64 + 1);
        let start = match (part.committed, engine_next) {
            (Some(c), Some(e)) => Some(c.max(e)),
            (c, e) => c.or(e),
        };
        if let Some(s) = start.filter(|s| *s > part.next) {
            part.next = s;
            // Records below `start` are skipped in `push` anyway; seeking saves reading them.
            let to = Offset::Offset(s);
            if let Err(e) = consumer.seek(&part.topic, part.partition, to, Duration::from_secs(5)) {
                tracing::debug!(
                    "seek {} to {s}: {e} (records before it will be skipped)",
                    stream.name
                );
            }
        }
        tracing::info!(
            "partition {} assigned: starting at {} (group committed {}, engine processed up to {})",
            stream.name,
            start.map_or("`start`".to_string(), |s| s.to_string()),
            part.committed
                .map_or("nothing".to_string(), |c| c.to_string()),
            stream
                .resume
                .map_or("nothing".to_string(), |r| r.to_string()),
        );
        if let Some(p) = self.group.lock().progress.get_mut(&stream.id) {
            // Processed by the engine: committed with the next commit even if nothing new
            // is read.
            p.acked = stream.resume.map(|r| r as i64);
        }
    }

    /// Pushes one record, unless its partition is no longer ours (its next owner reads it)
    /// or it is below the partition's start.
    pub fn push(&mut self, out: &mut Batch<Token>, msg: &BorrowedMessage<'_>) {
        let (topic, partition) = (msg.topic(), msg.partition());
        let hit = |a: &Part| a.partition == partition && a.topic == topic;
        if !self.list.get(self.last).is_some_and(hit) {
            match self.list.iter().position(hit) {
                Some(i) => self.last = i,
                None => return,
            }
        }
        let part = &mut self.list[self.last];
        let offset = msg.offset();
        if offset < part.next {
            self.skipped.inc();
            return;
        }
        let event_time = msg.timestamp().to_millis().unwrap_or(0);
        let (key, payload) = (
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
        );
        out.push_at(
            part.stream,
            offset as u64,
            event_time,
            key,
            payload,
            (part.stream, offset),
        );
        part.next = offset + 1;
    }

    /// Records what the engine acknowledged (tokens in order per stream); commits when the
    /// commit interval has passed.
    pub fn acknowledged(&mut self, consumer: &KafkaConsumer, tokens: &[Token]) {
        {
            let mut state = self.group.lock();
            let mut last: Option<&mut Progress> = None;
            let mut last_id = None;
            for &(id, offset) in tokens {
                if last_id != Some(id) {
                    last = state.progress.get_mut(&id);
                    last_id = Some(id);
                }
                if let Some(p) = last.as_deref_mut() {
                    p.acked = Some(p.acked.map_or(offset, |a| a.max(offset)));
                }
            }
        }
        if self.last_commit.elapsed() >= self.commit_every {
            self.commit(consumer, CommitMode::Async);
        }
    }

    /// Commits every acknowledged offset of the partitions still ours that is not
    /// committed yet.
    pub fn commit(&mut self, consumer: &KafkaConsumer, mode: CommitMode) {
        self.last_commit = Instant::now();
        let tpl = self.group.lock().due(None);
        if tpl.count() == 0 {
            return;
        }
        tracing::debug!("committing {}", describe(&tpl));
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!("offset commit of {} failed: {e}", describe(&tpl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(partition: i32, acked: Option<i64>, committed: Option<i64>) -> Progress {
        Progress {
            topic: "t".into(),
            partition,
            acked,
            committed,
            ended: false,
        }
    }

    fn offsets(tpl: &TopicPartitionList) -> Vec<(i32, Offset)> {
        let mut v: Vec<_> = tpl
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    #[test]
    fn only_acknowledged_offsets_are_committed_once_and_forward() {
        let mut state = State::default();
        state.progress.insert(0, progress(0, Some(9), None));
        state.progress.insert(1, progress(1, None, Some(5)));
        state.progress.insert(2, progress(2, Some(3), Some(5)));
        state.progress.insert(3, progress(3, Some(20), Some(5)));
        state.progress.get_mut(&3).unwrap().ended = true;
        // The next offset to read, of the partitions still ours.
        assert_eq!(offsets(&state.due(None)), vec![(0, Offset::Offset(10))]);
        assert_eq!(state.due(None).count(), 0);
        // A revoked (ended) partition only when asked for.
        assert_eq!(
            offsets(&state.due(Some(&[3]))),
            vec![(3, Offset::Offset(21))]
        );
    }
}
