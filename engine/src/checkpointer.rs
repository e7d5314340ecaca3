//! Checkpoint scheduling and recovery: restores the newest valid snapshot at start, and
//! every interval takes a consistent snapshot on the data thread, writes it on a blocking
//! thread and then releases the acknowledgements that waited for it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use telemetry::NOTICE;
use tracing::{error, info, warn};

use crate::checkpoint::{self, Snapshot, SnapshotWriter};
use crate::core::Core;
use crate::error::EngineError;
use crate::partition::StateStore;

/// Loads the newest valid snapshot of `dir` into the core and the state stores.
pub(crate) fn restore(
    core: &mut Core,
    stores: &[Rc<dyn StateStore>],
    dir: &Path,
) -> Result<(), EngineError> {
    let err = |message: String| EngineError::Resilience {
        dir: dir.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
    checkpoint::remove_temp_files(dir);
    let snap = Snapshot::load_latest(dir, |path, why| {
        error!(
            "snapshot {} is unusable: {why}; trying the previous one",
            path.display()
        );
    })
    .map_err(err)?;
    let Some(snap) = snap else {
        info!(
            target: NOTICE,
            "engine: no snapshot in {}: starting from an empty state",
            dir.display()
        );
        return Ok(());
    };
    for (id, name, point) in &snap.points {
        core.restore_stream(*id, name.clone(), *point);
    }
    let mut keys = 0;
    for s in stores {
        let name = s.name();
        match snap.states.iter().find(|(n, _)| *n == name) {
            Some((_, bytes)) => {
                s.restore(bytes)
                    .map_err(|e| err(format!("state `{name}` in snapshot {}: {e}", snap.epoch)))?;
                keys += s.keys();
            }
            None => warn!("state `{name}` is not in the snapshot: it starts empty"),
        }
    }
    for (name, frames) in &snap.outputs {
        let Some(sink) = core.sink_named_mut(name) else {
            if !frames.is_empty() {
                warn!("snapshot holds outputs for sink `{name}`, which the application no longer declares: dropped");
            }
            continue;
        };
        let n = sink.replay_frames(frames).map_err(|e| {
            err(format!(
                "outputs for sink `{name}` in snapshot {}: {e}",
                snap.epoch
            ))
        })?;
        if n > 0 {
            info!(target: NOTICE, "engine: re-sending {n} output(s) to `{name}` that it had not acknowledged before the restart");
        }
    }
    core.restored_epoch(snap.epoch);
    info!(
        target: NOTICE,
        "engine: restored snapshot {} from {}: {} stream(s), {} key(s)",
        snap.epoch,
        dir.display(),
        snap.points.len(),
        keys
    );
    Ok(())
}

/// Takes a checkpoint every `interval`, forever.
pub(crate) async fn checkpoint_loop(
    core: Rc<RefCell<Core>>,
    stores: Vec<Rc<dyn StateStore>>,
    dir: PathBuf,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut size_hint = 0usize;
    loop {
        tick.tick().await;
        checkpoint_once(&core, &stores, &dir, &mut size_hint).await;
    }
}

/// Takes one checkpoint if anything changed: snapshot on the data thread (consistent:
/// between batches), write + fsync + rename on a blocking thread, then mark the epoch
/// durable and release the acknowledgements it was holding.
async fn checkpoint_once(
    core: &Rc<RefCell<Core>>,
    stores: &[Rc<dyn StateStore>],
    dir: &Path,
    size_hint: &mut usize,
) {
    let t0 = Instant::now();
    let (epoch, bytes, keys) = {
        let mut c = core.borrow_mut();
        if !c.is_dirty() {
            return;
        }
        let points = c.processed_points();
        let mut w = SnapshotWriter::new(c.epoch(), &points, *size_hint);
        let mut keys = 0;
        for s in stores {
            keys += s.keys();
            if let Err(e) = w.state(&s.name(), |b| s.snapshot_into(b)) {
                error!("checkpoint: cannot serialize state `{}`: {e}", s.name());
                c.metrics().checkpoint_failures.inc();
                return;
            }
        }
        for sink in c.sinks() {
            w.outputs(&sink.name, |b| sink.unacked_frames(b));
        }
        let e = c.epoch();
        c.close_epoch();
        (e, w.finish(), keys)
    };
    let snap_time = t0.elapsed();
    *size_hint = bytes.len();
    let len = bytes.len();
    let d = dir.to_path_buf();
    let r = tokio::task::spawn_blocking(move || checkpoint::write_atomic(&d, epoch, &bytes)).await;
    let mut c = core.borrow_mut();
    match r {
        Ok(Ok(())) => {
            let total = t0.elapsed();
            c.set_durable(epoch);
            let m = c.metrics();
            m.checkpoint_written(total, snap_time, len);
            info!(
                "checkpoint {epoch}: {keys} keys, {len} bytes, snapshot {:.1} ms, total {:.1} ms",
                snap_time.as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3
            );
            c.flush_acks();
        }
        Ok(Err(e)) => {
            c.metrics().checkpoint_failures.inc();
            c.mark_dirty();
            error!("checkpoint {epoch} could not be written to {}: {e}; acknowledgements wait for the next one", dir.display());
        }
        Err(e) => {
            c.metrics().checkpoint_failures.inc();
            c.mark_dirty();
            error!("checkpoint {epoch} failed: {e}");
        }
    }
}
