//! kafka_sink's side of the producer: [`Writer`] writes one batch at a time and waits for
//! its delivery reports, collected from the producer context.
//!
//! Every record is handed to librdkafka with its index in the batch (and the batch's round
//! number) as delivery opaque; the writer then waits until every record of the batch has
//! its report. Reports of an earlier round (a write given up at shutdown) are ignored.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::SinkMessage;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Notify;

/// Bits of a delivery opaque that hold the record's index; the others hold the round.
const HALF: u32 = usize::BITS / 2;
const LOW: usize = (1 << HALF) - 1;

/// The delivery reports of the current batch.
#[derive(Default)]
struct Round {
    /// Number of the batch being written; reports of other rounds are stale.
    number: u32,
    /// Per record: reported (delivered or failed).
    reported: Vec<bool>,
    /// Records reported so far.
    count: usize,
    /// Wake the writer when `count` reaches this.
    want: usize,
    /// The failed records and why.
    failed: Vec<(usize, KafkaError)>,
}

/// Delivery reports on their way from librdkafka's polling thread to the sink.
#[derive(Default)]
pub(crate) struct Deliveries {
    round: Mutex<Round>,
    wake: Notify,
}

impl Deliveries {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a batch of `n` records; returns its round number (for [`Deliveries::opaque`]).
    pub fn start(&self, n: usize) -> u32 {
        let mut r = self.lock();
        r.number = r.number.wrapping_add(1);
        r.reported.clear();
        r.reported.resize(n, false);
        r.count = 0;
        r.want = usize::MAX;
        r.failed.clear();
        r.number
    }

    /// The delivery opaque of record `i` of round `round`: the round in the high half, the
    /// index in the low half.
    pub fn opaque(round: u32, i: usize) -> usize {
        ((round as usize & LOW) << HALF) | (i & LOW)
    }

    /// Records the outcome of one record (from a delivery report, or a send refused at once).
    pub fn report(&self, opaque: usize, result: Result<(), KafkaError>) {
        let wake = {
            let mut r = self.lock();
            let i = opaque & LOW;
            if opaque >> HALF != r.number as usize & LOW || r.reported.get(i).is_none_or(|d| *d) {
                return;
            }
            r.reported[i] = true;
            r.count += 1;
            if let Err(e) = result {
                r.failed.push((i, e));
            }
            r.count >= r.want
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits until `n` records of the round were reported (cancel safe).
    pub async fn until(&self, n: usize) {
        loop {
            {
                let mut r = self.lock();
                if r.count >= n {
                    return;
                }
                r.want = n;
            }
            self.wake.notified().await;
        }
    }

    /// Records reported so far.
    pub fn reported(&self) -> usize {
        self.lock().count
    }

    /// The failed records and why, then the records without a report, of this round.
    pub fn take(&self) -> (Vec<(usize, KafkaError)>, Vec<usize>) {
        let mut r = self.lock();
        let missing = (r.reported.iter().enumerate())
            .filter(|(_, d)| !**d)
            .map(|(i, _)| i)
            .collect();
        (std::mem::take(&mut r.failed), missing)
    }
}

/// The producer context: logs, errors, and delivery reports for [`Deliveries`].
pub(crate) struct SinkContext {
    deliveries: Arc<Deliveries>,
    metrics: ConnectorMetrics,
}

impl SinkContext {
    /// A context reporting to `metrics` and handing delivery reports to `deliveries`.
    pub(crate) fn new(deliveries: Arc<Deliveries>, metrics: ConnectorMetrics) -> Self {
        SinkContext {
            deliveries,
            metrics,
        }
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_error(&self.metrics, &error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        self.deliveries.report(opaque, outcome);
    }
}

/// What became of a batch: the records Kafka refused and why, and those without a delivery
/// report (given up at shutdown).
pub struct Written {
    /// Index in the batch and the error of every failed record.
    pub failed: Vec<(usize, KafkaError)>,
    /// Index in the batch of every record not confirmed.
    pub unconfirmed: Vec<usize>,
}

/// A producer writing to one topic, one batch at a time.
pub struct Writer {
    producer: ThreadedProducer<SinkContext>,
    deliveries: Arc<Deliveries>,
    topic: String,
}

impl Writer {
    /// Creates the producer from `config`; its errors are counted in `metrics`.
    pub fn new(
        config: &ClientConfig,
        topic: String,
        metrics: ConnectorMetrics,
    ) -> KafkaResult<Writer> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = config.create_with_context(SinkContext::new(deliveries.clone(), metrics))?;
        Ok(Writer {
            producer,
            deliveries,
            topic,
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// librdkafka's fatal error, if the producer hit one: `(code, reason)`.
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.producer.client().fatal_error()
    }

    /// Hands every message of `batch` to librdkafka (key -> record key when not empty,
    /// payload -> value; waiting for delivery reports while its queue is full) and waits for
    /// their delivery reports, or until `give_up` completes.
    pub async fn write(&self, batch: &[SinkMessage], give_up: impl Future<Output = ()>) -> Written {
        let mut give_up = pin!(give_up);
        let deliveries = &*self.deliveries;
        let round = deliveries.start(batch.len());
        let mut all_sent = true;
        'send: for (i, msg) in batch.iter().enumerate() {
            let opaque = Deliveries::opaque(round, i);
            let mut record =
                BaseRecord::with_opaque_to(&self.topic, opaque).payload(&msg.payload[..]);
            if !msg.key.is_empty() {
                record = record.key(&msg.key[..]);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        // librdkafka's queue is full: wait for a delivery report.
                        record = r;
                        tokio::select! {
                            _ = deliveries.until(deliveries.reported() + 1) => {}
                            _ = &mut give_up => {
                                all_sent = false;
                                break 'send;
                            }
                        }
                    }
                    Err((e, _)) => break deliveries.report(opaque, Err(e)),
                }
            }
        }
        if all_sent {
            tokio::select! {
                _ = deliveries.until(batch.len()) => {}
                _ = &mut give_up => {}
            }
        }
        let (failed, unconfirmed) = deliveries.take();
        Written {
            failed,
            unconfirmed,
        }
    }

    /// Connects and learns the topic's partitions before the first message arrives
    /// (otherwise the first messages wait for that), and says early when the topic is
    /// missing. Never fails: librdkafka keeps retrying on its own.
    pub async fn warm_up(&self) {
        let (topic, p, t) = (&self.topic, self.producer.clone(), self.topic.clone());
        let md = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Duration::from_secs(10))
                .map(|md| {
                    md.topics()
                        .first()
                        .map(|t| (t.error().is_none(), t.partitions().len()))
                })
        })
        .await;
        match md {
        Ok(Ok(Some((true, n)))) => tracing::info!("topic `{topic}` has {n} partitions"),
        Ok(Ok(_)) => tracing::warn!(
            "topic `{topic}` does not exist (yet): its messages will be refused unless the broker creates it"
        ),
        Ok(Err(e)) => {
            tracing::warn!("Kafka metadata not available yet ({e}); retrying in the background")
        }
        Err(_) => {}
    }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_counted_once_and_only_for_the_current_round() {
        let d = Deliveries::default();
        let first = d.start(2);
        d.report(Deliveries::opaque(first, 0), Ok(()));
        let second = d.start(3);
        // A late report of the first round.
        d.report(Deliveries::opaque(first, 1), Ok(()));
        assert_eq!(d.reported(), 0);
        d.report(Deliveries::opaque(second, 2), Err(KafkaError::Canceled));
        d.report(Deliveries::opaque(second, 2), Ok(()));
        d.report(Deliveries::opaque(second, 7), Ok(()));
        assert_eq!(d.reported(), 1);
        let (failed, unconfirmed) = d.take();
        assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2]);
        assert_eq!(unconfirmed, vec![0, 1]);
    }
}
