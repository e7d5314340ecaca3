//! The two traits a connector file implements, and the drivers that run them.
//!
//! A source connector only talks to its upstream: [`SourceConnector::read`] fills a
//! [`Batch`] with records (each with an opaque commit token), and
//! [`SourceConnector::commit`] gets the tokens back, in order per stream, once the engine
//! acknowledged them. Everything about delivery (the connection, credits, one ledger per
//! stream, replay after a reconnect, RESTART, draining and EOS) is the driver's.
//!
//! A sink connector only writes: [`SinkConnector::write`] gets a batch and says, per record,
//! written / retry / refused. The driver retries with one back-off policy, dead-letters
//! refusals and acknowledges the batch to the engine once every record is settled.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::client::{ShuttingDown, SourceClient, StreamHandle};
use crate::context::Context;
use crate::sink::{Sink, SinkMessage};
use framing::Backoff;

/// How long a pending `read` may hold back the commit of acknowledged records before it is
/// interrupted (see [`SourceConnector::read`]). Each interruption doubles the wait for the
/// next read (up to [`MAX_COMMIT_DELAY`]) and a read that completes resets it, so a read that
/// takes longer (a query, a listing) still finishes.
pub const COMMIT_DELAY: Duration = Duration::from_millis(10);

/// The longest a pending `read` holds back commits after repeated interruptions.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_secs(1);

/// An upstream system that records are read from: the Rust counterpart of the seed's
/// `SourceConnector`.
#[allow(async_fn_in_trait)]
pub trait SourceConnector {
    /// What the upstream needs to commit one record (an offset, a delivery tag, an entry
    /// id, `()` when there is nothing to commit).
    type Token;

    /// Waits for upstream records and pushes them into `out` (and opens and ends streams).
    ///
    /// Cancel safety: when acknowledged records wait for [`SourceConnector::commit`] and the
    /// read has waited for [`COMMIT_DELAY`] (doubled after each interruption, up to
    /// [`MAX_COMMIT_DELAY`]), or on shutdown, the runtime drops this future at its current
    /// `.await`. Push each record into `out` before the next `.await` and move your upstream
    /// cursor only after pushing, as with tokio's `recv`: what was pushed is kept, nothing
    /// else is lost. Work that must not be cut short (a query whose rows are only usable
    /// whole) can run in a spawned task whose result the next `read` picks up.
    async fn read(&mut self, out: &mut Batch<Self::Token>) -> Result<()>;

    /// The engine answered the NOTIFY of a stream opened with [`Batch::open`]: position the
    /// upstream after `stream.resume` (records up to it are not sent again anyway).
    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        let _ = stream;
        Ok(())
    }

    /// Commits upstream the records the engine acknowledged: every token in order per
    /// stream, never one whose predecessors were not acknowledged.
    async fn commit(&mut self, tokens: Vec<Self::Token>) -> Result<()> {
        let _ = tokens;
        Ok(())
    }

    /// Called once at the end, after the last commit (leave a consumer group, close a
    /// channel).
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// How long to wait for the engine's acknowledgements at shutdown, at the end of the
    /// input and when a stream ends, when the connector has its own setting for it;
    /// `None`: the common `--drain-timeout`.
    fn drain_timeout(&self) -> Option<Duration> {
        None
    }
}

/// How the runtime groups the engine's messages for [`SinkConnector::write`].
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most records in one call.
    pub max: usize,
    /// After the first record arrives, how long to wait for more (fewer, larger writes).
    pub linger: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max: 4096,
            linger: Duration::ZERO,
        }
    }
}

/// What became of one record of a [`SinkConnector::write`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed by the external system.
    Written,
    /// Not written this time (a transient failure): the runtime writes it again later.
    Retry(String),
    /// The external system will never take it: the runtime dead-letters it (or stops).
    Refused(String),
}

/// One [`Outcome`] per record of a batch, [`Outcome::Written`] unless marked otherwise.
#[derive(Debug, Default)]
pub struct Outcomes {
    list: Vec<Outcome>,
}

impl Outcomes {
    /// `n` outcomes, all [`Outcome::Written`] (for a connector's unit tests).
    pub fn new(n: usize) -> Self {
        let mut o = Outcomes::default();
        o.reset(n);
        o
    }

    fn reset(&mut self, n: usize) {
        self.list.clear();
        self.list.resize(n, Outcome::Written);
    }

    /// Record `i` of the batch must be written again.
    pub fn retry(&mut self, i: usize, why: impl Into<String>) {
        if let Some(o) = self.list.get_mut(i) {
            *o = Outcome::Retry(why.into());
        }
    }

    /// Record `i` of the batch is refused for good.
    pub fn refuse(&mut self, i: usize, why: impl Into<String>) {
        if let Some(o) = self.list.get_mut(i) {
            *o = Outcome::Refused(why.into());
        }
    }

    /// Every record of the batch must be written again.
    pub fn retry_all(&mut self, why: &str) {
        for o in &mut self.list {
            *o = Outcome::Retry(why.to_string());
        }
    }

    /// The outcome of record `i`.
    pub fn get(&self, i: usize) -> Option<&Outcome> {
        self.list.get(i)
    }
}

/// An external system that the engine's output is written to: the Rust counterpart of the
/// seed's `SinkConnector`.
#[allow(async_fn_in_trait)]
pub trait SinkConnector {
    /// Writes `batch` and waits for the external system to confirm it. Mark what was not
    /// written in `outcomes`; an `Err` stops the sink (nothing of the batch is acknowledged,
    /// so the engine sends it again to the next sink).
    async fn write(&mut self, batch: &[SinkMessage], outcomes: &mut Outcomes) -> Result<()>;

    /// How to group the engine's messages.
    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// Called once at the end (flush, close connections).
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Why a read ended.
enum ReadEnd {
    Done(Result<()>),
    Commit,
    Shutdown,
}

/// Runs a source connector until shutdown, the end of its input or an error.
pub(crate) async fn run_source<S: SourceConnector>(
    ctx: &Context,
    connector: &mut S,
    client: &mut SourceClient<S::Token>,
) -> Result<()> {
    let mut batch = client.batch(ctx.options.format);
    let end = match source_loop(ctx, connector, client, &mut batch).await {
        Ok(end) => end,
        // Shutdown while waiting for credits or for the engine: drain like any shutdown.
        Err(e) if e.downcast_ref::<ShuttingDown>().is_some() => LoopEnd::Shutdown,
        Err(e) => {
            // The engine connection or a commit failed: keep what was acknowledged, stop.
            let _ = commit_released(client, connector).await;
            let _ = connector.close().await;
            return Err(e);
        }
    };
    // Shutdown, end of input or a failed read: send what was read, let the engine
    // acknowledge it, commit, then end the streams (or report the read's error).
    if let Err(e) = client.send(&mut batch).await {
        if e.downcast_ref::<ShuttingDown>().is_none() {
            tracing::warn!("records read before the end not sent: {e:#}");
        }
    }
    let timeout = drain_timeout(ctx, connector);
    let left = client
        .drain(None, timeout)
        .await
        .unwrap_or_else(|_| client.in_flight());
    commit_released(client, connector).await?;
    if left > 0 {
        tracing::warn!(
            "{left} records were not acknowledged by the engine within {timeout:?}; they were not committed upstream"
        );
    }
    if let LoopEnd::ReadFailed(e) = end {
        let _ = connector.close().await;
        return Err(e);
    }
    for id in client.stream_ids() {
        client.end(id).await?;
    }
    if left == 0 && matches!(end, LoopEnd::Finished) {
        tracing::info!("input finished and everything acknowledged");
    }
    connector.close().await
}

/// Why the read loop ended without an error of the runtime's own.
enum LoopEnd {
    /// The connector called [`Batch::finish`].
    Finished,
    /// SIGTERM / Ctrl-C.
    Shutdown,
    /// The connector's `read` failed: what it pushed before is still sent and committed.
    ReadFailed(anyhow::Error),
}

/// Hands the connector the tokens the engine acknowledged since the last commit, if any.
async fn commit_released<S: SourceConnector>(
    client: &mut SourceClient<S::Token>,
    connector: &mut S,
) -> Result<()> {
    let tokens = client.take_released();
    if tokens.is_empty() {
        return Ok(());
    }
    connector.commit(tokens).await
}

/// The connector's drain timeout, else `--drain-timeout`.
fn drain_timeout<S: SourceConnector>(ctx: &Context, connector: &S) -> Duration {
    connector
        .drain_timeout()
        .unwrap_or(ctx.options.drain_timeout)
}

/// The read loop, until the input finishes, shutdown or a failed read.
async fn source_loop<S: SourceConnector>(
    ctx: &Context,
    connector: &mut S,
    client: &mut SourceClient<S::Token>,
    batch: &mut Batch<S::Token>,
) -> Result<LoopEnd> {
    let shutdown: &CancellationToken = &ctx.shutdown;
    let mut patience = COMMIT_DELAY;
    loop {
        // Between reads: open, send, end, commit.
        for (name, hint) in std::mem::take(&mut batch.opens) {
            let stream = client.open(&name, hint).await?;
            connector.opened(&stream).await?;
        }
        client.send(batch).await?;
        for id in std::mem::take(&mut batch.ends) {
            let left = client
                .drain(Some(id), drain_timeout(ctx, connector))
                .await?;
            if left > 0 {
                tracing::warn!("stream {id} ended with {left} records not acknowledged; the upstream delivers them again");
            }
            commit_released(client, connector).await?;
            client.end(id).await?;
        }
        commit_released(client, connector).await?;
        if batch.finished {
            return Ok(LoopEnd::Finished);
        }
        // Read, following the engine meanwhile (acknowledgements, a lost connection).
        let end = {
            let read = connector.read(batch);
            tokio::pin!(read);
            let started = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break ReadEnd::Shutdown,
                    r = &mut read => break ReadEnd::Done(r),
                    lost = client.next_event() => if lost {
                        client.recover().await?;
                    },
                    _ = tokio::time::sleep_until(started + patience), if client.has_released() => {
                        break ReadEnd::Commit;
                    }
                }
            }
        };
        match end {
            ReadEnd::Done(Ok(())) => patience = COMMIT_DELAY,
            ReadEnd::Done(Err(e)) => return Ok(LoopEnd::ReadFailed(e)),
            ReadEnd::Commit => patience = (patience * 2).min(MAX_COMMIT_DELAY),
            ReadEnd::Shutdown => return Ok(LoopEnd::Shutdown),
        }
    }
}

/// Runs a sink connector until its input ends or shutdown.
pub(crate) async fn run_sink<K: SinkConnector>(
    ctx: &Context,
    connector: &mut K,
    sink: &mut Sink,
) -> Result<()> {
    let batching = connector.batching();
    let mut outcomes = Outcomes::default();
    let mut backoff = Backoff::default();
    let external = ctx.external();
    while let Some(batch) = sink.read_batch_linger(batching.max, batching.linger).await {
        // The batch itself first; then only the records to write again.
        let mut retry: Option<Vec<SinkMessage>> = None;
        loop {
            let todo = retry.as_deref().unwrap_or(&batch);
            outcomes.reset(todo.len());
            let started = Instant::now();
            connector.write(todo, &mut outcomes).await?;
            let took = started.elapsed();
            let (mut written, mut bytes) = (0u64, 0u64);
            let mut again = Vec::new();
            let mut why_retry = None;
            for (msg, outcome) in todo.iter().zip(outcomes.list.drain(..)) {
                match outcome {
                    Outcome::Written => {
                        written += 1;
                        bytes += msg.payload.len() as u64;
                    }
                    Outcome::Refused(reason) => ctx.dead_letter(msg, &reason).await?,
                    Outcome::Retry(why) => {
                        why_retry.get_or_insert(why);
                        again.push(msg.clone());
                    }
                }
            }
            ctx.metrics.messages_out.add(written);
            ctx.metrics.bytes_out.add(bytes);
            ctx.metrics.latency.observe_n(took, written);
            let Some(why) = why_retry else {
                external.up();
                backoff.reset();
                break;
            };
            ctx.metrics.error("retry");
            external.down(format!(
                "writes failing ({why}); {} records waiting to be written again",
                again.len()
            ));
            let delay = backoff.next_delay();
            if backoff.attempts() == 1 || backoff.attempts() % 10 == 0 {
                tracing::warn!(
                    "{} records not written ({why}); writing them again in {delay:?} (attempt {})",
                    again.len(),
                    backoff.attempts()
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Not acknowledged: the engine sends them again to the next sink.
                _ = ctx.shutdown.cancelled() => return connector.close().await,
            }
            retry = Some(again);
        }
        sink.ack_all(&batch);
    }
    connector.close().await
}
