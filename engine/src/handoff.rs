//! Stream scope (`state_scope = "stream"`): keyed state that follows its source stream from
//! engine to engine through the checkpoint store.
//!
//! - **Take-over.** A NOTIFY for a stream this engine does not hold (or holds at a version
//!   the store no longer has) loads the stream's slice, replaces whatever memory held for
//!   it, claims it by writing the slice back with the next generation (a conditional write
//!   on the version read) and only then answers NOTIFY_ACK, with the slice's point: the
//!   connector resumes exactly where the state stands.
//! - **Checkpoints.** Every interval (and at once after an EOS), each stream that processed
//!   something gets a new slice: its keys and its last processed id, taken between batches.
//!   A slice is written once every sink confirmed the outputs emitted up to it (a slice
//!   carries no outputs: its next owner does not re-send them), with a conditional write on
//!   the version this engine last wrote. Acknowledgements of a stream wait for its slice.
//! - **Fencing.** A conditional write refused because the object changed means another
//!   engine took the stream over: this engine logs it, drops the stream's state and its
//!   unacknowledged progress (the new owner processes those messages again from its slice)
//!   and closes the connection that still sent it.
//! - **End.** Once an EOS is answered (its final slice durable), the stream is forgotten.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framing::NOTHING_PROCESSED;
use rustc_hash::{FxHashMap, FxHashSet};
use telemetry::NOTICE;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use crate::acks::ConnId;
use crate::core::Core;
use crate::slice::{slice_key, Slice};
use crate::store::{CheckpointStore, Expect, StoreError, Version};

/// A stream this engine owns in the store: the generation it claimed and the version of
/// the slice it last wrote (the condition of its next write).
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub generation: u64,
    pub version: Version,
}

/// A NOTIFY waiting for its stream's slice.
#[derive(Debug)]
pub(crate) struct TakeOver {
    pub conn: ConnId,
    pub stream: u64,
    pub name: String,
    pub asked: u64,
}

/// The stream-scope bookkeeping the core keeps.
pub(crate) struct StreamScope {
    /// Where slices live; `None` runs in memory (no hand-off).
    pub store: Option<Arc<dyn CheckpointStore>>,
    /// This engine as named in the slices it writes.
    pub owner: String,
    /// Streams whose slice this engine owns.
    pub owned: FxHashMap<u64, Owned>,
    /// Streams that processed something since their last slice.
    pub dirty: FxHashSet<u64>,
    /// Streams that ended (EOS) and wait for their final, released slice.
    pub ending: FxHashSet<u64>,
    /// How long a take-over waits for the previous owner to release the stream.
    pub takeover_wait: Duration,
    /// The engine is stopping: slices written now are final (released).
    pub stopping: bool,
    /// Previous owners that did not release a stream within `takeover_wait`: their other
    /// unreleased slices are taken at once.
    pub gone: FxHashSet<String>,
    /// NOTIFYs for the take-over task.
    pub requests: mpsc::UnboundedSender<TakeOver>,
    /// Wakes the checkpointer before its interval (after an EOS).
    pub checkpoint_now: Rc<Notify>,
}

impl StreamScope {
    /// Bookkeeping for `owner`; returns it with the receiving end of the take-over queue.
    pub fn new(
        store: Option<Arc<dyn CheckpointStore>>,
        owner: String,
        takeover_wait: Duration,
    ) -> (StreamScope, mpsc::UnboundedReceiver<TakeOver>) {
        let (requests, rx) = mpsc::unbounded_channel();
        (
            StreamScope {
                store,
                owner,
                owned: FxHashMap::default(),
                dirty: FxHashSet::default(),
                ending: FxHashSet::default(),
                takeover_wait,
                stopping: false,
                gone: FxHashSet::default(),
                requests,
                checkpoint_now: Rc::new(Notify::new()),
            },
            rx,
        )
    }
}

/// How this engine signs its slices: `worker@host pid N`.
pub(crate) fn owner_name(worker: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{worker}@{host} pid {}", std::process::id())
}

fn point_text(p: u64) -> String {
    if p == NOTHING_PROCESSED {
        "nothing processed".into()
    } else {
        format!("point {p}")
    }
}

/// Serves NOTIFYs of streams to take over, each in its own task (a take-over may wait for
/// the previous owner), forever.
pub(crate) async fn takeover_loop(
    core: Rc<RefCell<Core>>,
    store: Arc<dyn CheckpointStore>,
    mut rx: mpsc::UnboundedReceiver<TakeOver>,
) {
    while let Some(req) = rx.recv().await {
        let (core, store) = (core.clone(), store.clone());
        tokio::task::spawn_local(async move { take_over(&core, &*store, req).await });
    }
}

/// Attempts at a take-over before the connection is closed with the reason.
const ATTEMPTS: u32 = 8;
/// How often a take-over looks again for the previous owner's release.
const RELEASE_POLL: Duration = Duration::from_millis(50);

/// What the store holds for a stream, as a take-over sees it.
enum Found {
    /// The slice this engine wrote last: the stream is still ours.
    Ours,
    /// A slice to take over (or none: `Slice::default()` and `Expect::Absent`).
    Take(Box<Slice>, Expect),
    /// Another engine's slice, not released yet: wait for it a little.
    Held(Box<Slice>, Version),
}

/// Loads the stream's slice and says what to do with it; `Err` for an unusable object.
async fn look(
    core: &Rc<RefCell<Core>>,
    store: &dyn CheckpointStore,
    req: &TakeOver,
    key: &str,
) -> Result<Result<Found, String>, StoreError> {
    let loaded = store.load(key).await?;
    let mine = core.borrow().owned(req.stream).map(|o| o.version.clone());
    let Some((bytes, version)) = loaded else {
        let fresh = Slice {
            stream: req.name.clone(),
            point: NOTHING_PROCESSED,
            ..Slice::default()
        };
        return Ok(Ok(Found::Take(Box::new(fresh), Expect::Absent)));
    };
    if mine.as_deref() == Some(version.as_str()) {
        return Ok(Ok(Found::Ours));
    }
    let slice = match Slice::decode(&bytes) {
        Ok(s) if s.stream == req.name => s,
        Ok(s) => {
            return Ok(Err(format!(
                "the slice at `{key}` in {} belongs to stream `{}`",
                store.describe(),
                s.stream
            )))
        }
        Err(e) => {
            return Ok(Err(format!(
                "its slice `{key}` in {} is unusable: {e} (move it away to start the stream's state from nothing)",
                store.describe()
            )))
        }
    };
    let own_name = core.borrow().stream_owner_name();
    if !slice.released && slice.generation > 0 && slice.owner != own_name {
        return Ok(Ok(Found::Held(Box::new(slice), version)));
    }
    Ok(Ok(Found::Take(Box::new(slice), Expect::Version(version))))
}

async fn take_over(core: &Rc<RefCell<Core>>, store: &dyn CheckpointStore, req: TakeOver) {
    let key = slice_key(&req.name);
    let t0 = Instant::now();
    let wait = core.borrow().takeover_wait();
    let mut last_error = String::new();
    let mut attempt = 0;
    let mut waiting = false;
    while attempt < ATTEMPTS {
        if !core.borrow().conn_open(req.conn) {
            return;
        }
        let found = match look(core, store, &req, &key).await {
            Ok(Ok(f)) => f,
            Ok(Err(why)) => {
                refuse(&mut core.borrow_mut(), &req, why);
                return;
            }
            Err(e) => {
                warn!(
                    "stream `{}`: cannot load its slice from {}: {e}; retrying",
                    req.name,
                    store.describe()
                );
                last_error = e.to_string();
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                continue;
            }
        };
        let (slice, expect) = match found {
            Found::Ours => {
                // A connector reconnecting: memory is ahead of the slice, keep it.
                let mut c = core.borrow_mut();
                if c.conn_open(req.conn) {
                    c.notify_stream(req.conn, req.stream, &req.name, req.asked);
                    c.flush_acks();
                }
                return;
            }
            Found::Held(slice, _)
                if t0.elapsed() < wait && !core.borrow().gave_up_on(&slice.owner) =>
            {
                if !waiting {
                    waiting = true;
                    info!(
                        "stream `{}`: waiting up to {wait:?} for {} (generation {}) to release it",
                        req.name, slice.owner, slice.generation
                    );
                }
                tokio::time::sleep(RELEASE_POLL).await;
                continue;
            }
            Found::Held(slice, version) => {
                // Its other streams are taken without waiting again (a connector NOTIFYs
                // them one after the other): the owner is gone or stalled.
                core.borrow_mut().give_up_on(&slice.owner);
                warn!(
                    "stream `{}`: {} (generation {}) did not release it within {wait:?}: taking it over from its last slice ({}); that engine's later writes will be refused",
                    req.name,
                    slice.owner,
                    slice.generation,
                    point_text(slice.point)
                );
                (*slice, Expect::Version(version))
            }
            Found::Take(slice, expect) => (*slice, expect),
        };
        {
            let mut c = core.borrow_mut();
            if !c.conn_open(req.conn) {
                return;
            }
            // Whatever memory held for the stream is older than the slice: replace it.
            c.forget_stream(req.stream);
            if let Err(e) = c.restore_slice(req.stream, &slice) {
                refuse(
                    &mut c,
                    &req,
                    format!("its slice `{key}` in {}: {e}", store.describe()),
                );
                return;
            }
        }
        let previous = (slice.generation, slice.owner.clone());
        let claim = Slice {
            generation: slice.generation + 1,
            released: false,
            owner: core.borrow().stream_owner_name(),
            ..slice
        };
        match store.save(&key, claim.encode(), expect).await {
            Ok(version) => {
                let mut c = core.borrow_mut();
                let keys = c.stream_keys(req.stream);
                c.own(
                    req.stream,
                    Owned {
                        generation: claim.generation,
                        version,
                    },
                );
                c.metrics().takeovers.inc();
                c.metrics().takeover_duration.observe(t0.elapsed());
                info!(
                    target: NOTICE,
                    "engine: took over stream `{}` at {} with {keys} key(s) in {:.1} ms (generation {}{})",
                    req.name,
                    point_text(claim.point),
                    t0.elapsed().as_secs_f64() * 1e3,
                    claim.generation,
                    if previous.0 == 0 { String::new() } else { format!(", from {}", previous.1) }
                );
                if c.conn_open(req.conn) {
                    c.notify_stream(req.conn, req.stream, &req.name, req.asked);
                    c.flush_acks();
                }
                return;
            }
            Err(StoreError::Conflict) => {
                // Another engine wrote it between our read and our write: read again.
                core.borrow_mut().forget_stream(req.stream);
                last_error = "another engine wrote the slice at the same time".into();
            }
            Err(e) => {
                core.borrow_mut().forget_stream(req.stream);
                warn!(
                    "stream `{}`: cannot claim its slice in {}: {e}; retrying",
                    req.name,
                    store.describe()
                );
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
        }
        attempt += 1;
    }
    let mut c = core.borrow_mut();
    refuse(
        &mut c,
        &req,
        format!("cannot take it over after {ATTEMPTS} attempts: {last_error}"),
    );
}

/// Closes the connection of a NOTIFY that cannot be served, naming the cause.
fn refuse(c: &mut Core, req: &TakeOver, why: String) {
    let message = format!("stream `{}`: {why}", req.name);
    error!("{message}; closing the connection");
    c.metrics().error("takeover_failed");
    c.close_conn(req.conn, Some(message));
}

/// Takes a slice of every stream that changed, every `interval` (or at once when woken).
pub(crate) async fn checkpoint_loop(
    core: Rc<RefCell<Core>>,
    store: Arc<dyn CheckpointStore>,
    interval: Duration,
    now: Rc<Notify>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = now.notified() => {}
        }
        checkpoint_once(&core, &*store).await;
    }
}

/// One stream slice to write.
struct Pending {
    stream: u64,
    name: String,
    generation: u64,
    released: bool,
    key: String,
    bytes: Vec<u8>,
    expect: Expect,
}

async fn checkpoint_once(core: &Rc<RefCell<Core>>, store: &dyn CheckpointStore) {
    let t0 = Instant::now();
    let (epoch, mut pending, watermarks) = {
        let mut c = core.borrow_mut();
        let pending = match c.take_stream_slices() {
            Ok(p) if p.is_empty() => return,
            Ok(p) => p,
            Err(e) => {
                error!("checkpoint: cannot serialize a stream's state: {e}");
                c.metrics().checkpoint_failures.inc();
                return;
            }
        };
        let pending: Vec<Pending> = pending
            .into_iter()
            .map(|(stream, slice, expect)| Pending {
                stream,
                key: slice_key(&slice.stream),
                name: slice.stream.clone(),
                generation: slice.generation,
                released: slice.released,
                bytes: slice.encode(),
                expect,
            })
            .collect();
        let wm: Vec<u64> = c.sinks().iter().map(|s| s.last_id()).collect();
        let e = c.epoch();
        c.close_epoch();
        (e, pending, wm)
    };
    let snap_time = t0.elapsed();
    // A slice carries no outputs: write it once the sinks confirmed what it emitted.
    loop {
        let delivered = {
            let c = core.borrow();
            c.sinks()
                .iter()
                .zip(&watermarks)
                .all(|(s, w)| s.acked() >= *w)
        };
        if delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let bytes: usize = pending.iter().map(|p| p.bytes.len()).sum();
    let writes = pending
        .iter_mut()
        .map(|p| store.save(&p.key, std::mem::take(&mut p.bytes), p.expect.clone()));
    let results = futures::future::join_all(writes).await;
    let mut c = core.borrow_mut();
    let mut failed = false;
    for (p, r) in pending.iter().zip(results) {
        match r {
            Ok(version) => c.slice_written(p.stream, p.generation, version, epoch, p.released),
            Err(StoreError::Conflict) => {
                c.fence(p.stream, &p.name, p.generation, &store.describe())
            }
            Err(e) => {
                failed = true;
                c.slice_failed(p.stream);
                error!(
                    "checkpoint of stream `{}` could not be written to {}: {e}; its acknowledgements wait for the next one",
                    p.name,
                    store.describe()
                );
            }
        }
    }
    let m = c.metrics();
    if failed {
        m.checkpoint_failures.inc();
        m.readiness.not_ready(
            "checkpoint store",
            format!("{} refuses writes; acknowledgements wait", store.describe()),
        );
    } else {
        m.readiness.ready("checkpoint store");
        let total = t0.elapsed();
        m.checkpoint_written(total, snap_time, bytes);
        tracing::debug!(
            "checkpoint {epoch}: {} stream slice(s), {bytes} bytes, snapshot {:.1} ms, total {:.1} ms",
            pending.len(),
            snap_time.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }
    c.flush_acks();
}

/// At shutdown: writes the final, released slice of every stream this engine owns (once
/// the sinks confirmed their outputs), so that their next owners need not wait for it;
/// gives up after `limit` (the next owners then wait `--takeover-wait`).
pub(crate) async fn release_all(
    core: &Rc<RefCell<Core>>,
    store: &dyn CheckpointStore,
    limit: Duration,
) {
    let n = core.borrow_mut().release_all();
    if n == 0 {
        return;
    }
    match tokio::time::timeout(limit, checkpoint_once(core, store)).await {
        Ok(()) => info!(target: NOTICE, "engine: released {n} stream(s): their final slices are in {}", store.describe()),
        Err(_) => warn!("engine: could not release {n} stream(s) within {limit:?}: their next owners wait --takeover-wait for them"),
    }
}
