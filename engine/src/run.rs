//! Wiring: builds the core from the application file and the [`App`], restores the last
//! checkpoint, binds the source listeners, starts the sink clients, the checkpointer, the
//! stats line and the metrics endpoint, and runs until shutdown.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use application::{Application, Endpoint, StateScope};
use tokio::task::LocalSet;
use tracing::{info, warn};

use crate::checkpointer;
use crate::core::{BoundPipeline, Core, SourceDef};
use crate::error::EngineError;
use crate::handoff::{self, owner_name, StreamScope};
use crate::metrics::Metrics;
use crate::net::Listener;
use crate::options::RunOptions;
use crate::pipeline::App;
use crate::sink::sink_task;
use crate::sink_buffer::SinkOut;
use crate::source::accept_loop;
use crate::store::{CheckpointStore, StoreUrl};

/// A running engine started with [`spawn`]; stops it when dropped.
pub struct EngineHandle {
    sources: BTreeMap<String, Endpoint>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), EngineError>>>,
}

impl EngineHandle {
    /// Where source connector `name` can connect (the bound address: useful with port 0).
    pub fn source_endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.sources.get(name)
    }

    /// Stops the engine and waits for its thread.
    pub fn stop(mut self) -> Result<(), EngineError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), EngineError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, EngineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| EngineError::Io {
            context: "cannot create the runtime".into(),
            source,
        })
}

/// Starts the engine on its own thread (for tests and embedding). `make_app` runs on that
/// thread (pipelines need not be `Send`). Returns once every listener is bound.
pub fn spawn<F>(
    make_app: F,
    config: Application,
    options: RunOptions,
) -> Result<EngineHandle, EngineError>
where
    F: FnOnce() -> App + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Ok(());
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, async move {
                match start(make_app(), &config, &options).await {
                    Ok(started) => {
                        let _ = ready_tx.send(Ok(started.bound));
                        let _ = stop_rx.await;
                        Ok(())
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = ready_tx.send(Err(msg));
                        Err(e)
                    }
                }
            })
        })
        .map_err(|source| EngineError::Io {
            context: "cannot start the engine thread".into(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(sources)) => Ok(EngineHandle {
            sources,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(_)) | Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(EngineError::Pipeline(
                "the engine thread failed to start".into(),
            )),
        },
    }
}

/// Runs the application until SIGINT or SIGTERM, on a single-threaded runtime.
pub fn run(app: App, config: Application, options: RunOptions) -> Result<(), EngineError> {
    let rt = runtime()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let started = start(app, &config, &options).await?;
        wait_for_signal().await;
        tracing::info!(target: telemetry::NOTICE, "engine: shutting down");
        if let Some((core, store)) = started.slices {
            handoff::release_all(&core, &*store, SHUTDOWN_RELEASE).await;
        }
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Where checkpoints go, by state scope.
enum Checkpoints {
    /// Engine scope: today's snapshots in a directory, or nothing (in memory).
    Engine(Option<PathBuf>),
    /// Stream scope: one slice per stream in a store, or nothing (in memory).
    Stream(Option<Arc<dyn CheckpointStore>>),
}

impl Checkpoints {
    /// Resolves the scope (builder, else application file) and the store of the options.
    async fn choose(
        app: &App,
        config: &Application,
        options: &RunOptions,
    ) -> Result<Checkpoints, EngineError> {
        let url = match (&options.checkpoint_store, &options.resilience_dir) {
            (Some(u), _) => Some(StoreUrl::parse(u).map_err(EngineError::Store)?),
            (None, Some(d)) => Some(StoreUrl::Dir(d.clone())),
            (None, None) => None,
        };
        match (app.state_scope.unwrap_or(config.state_scope), url) {
            (StateScope::Engine, None) => Ok(Checkpoints::Engine(None)),
            (StateScope::Engine, Some(StoreUrl::Dir(d))) => Ok(Checkpoints::Engine(Some(d))),
            (StateScope::Engine, Some(StoreUrl::S3(l))) => Err(EngineError::Store(format!(
                "checkpoint store s3://{}: an object store holds per-stream slices: set state_scope = \"stream\" in {} (state that follows its stream), or keep engine-wide state in a local directory with --resilience-dir DIR",
                l.bucket,
                config.file.display()
            ))),
            (StateScope::Stream, None) => Ok(Checkpoints::Stream(None)),
            (StateScope::Stream, Some(url)) => {
                let store = url.open().await.map_err(EngineError::Store)?;
                info!(
                    target: telemetry::NOTICE,
                    "engine: keyed state per source stream, checkpointed in {}",
                    store.describe()
                );
                Ok(Checkpoints::Stream(Some(store)))
            }
        }
    }
}

/// How long a stopping engine tries to release its streams (write their final slices).
const SHUTDOWN_RELEASE: Duration = Duration::from_secs(10);

/// What a started engine hands back to its caller.
struct Started {
    /// The bound address of each source connector.
    bound: BTreeMap<String, Endpoint>,
    /// Stream scope with a store: what releasing the streams at shutdown needs.
    slices: Option<SliceStore>,
}

/// The core and the store its stream slices go to.
type SliceStore = (Rc<RefCell<Core>>, Arc<dyn CheckpointStore>);

/// Builds everything and spawns the tasks on the current `LocalSet`.
async fn start(
    app: App,
    config: &Application,
    options: &RunOptions,
) -> Result<Started, EngineError> {
    let checkpoints = Checkpoints::choose(&app, config, options).await?;
    let source_names: Vec<String> = config.source_connectors.keys().cloned().collect();
    let sink_names: Vec<String> = config.sink_connectors.keys().cloned().collect();
    let mut sources: Vec<SourceDef> = config
        .source_connectors
        .iter()
        .map(|(name, c)| SourceDef {
            name: name.clone(),
            max_credits: c.max_credits,
            refill_mark: c.refill_mark(),
            in_flight_bytes: c.in_flight_bytes,
            pipelines: Vec::new(),
            targets: Vec::new(),
        })
        .collect();
    for def in app.defs {
        let si = source_names
            .iter()
            .position(|n| *n == def.source)
            .ok_or_else(|| {
                EngineError::Pipeline(format!(
                    "a pipeline reads from `{}`, which is not a source connector of {} (declared: {})",
                    def.source,
                    config.file.display(),
                    names(source_names.iter())
                ))
            })?;
        let mut targets = Vec::new();
        for s in &def.sinks {
            let ti = sink_names.iter().position(|n| n == s).ok_or_else(|| {
                EngineError::Pipeline(format!(
                    "a pipeline writes to `{s}`, which is not a sink connector of {} (declared: {})",
                    config.file.display(),
                    names(sink_names.iter())
                ))
            })?;
            targets.push(ti);
            if !sources[si].targets.contains(&ti) {
                sources[si].targets.push(ti);
            }
        }
        sources[si].pipelines.push(BoundPipeline {
            runner: def.runner,
            targets,
        });
    }
    for s in &sources {
        if s.pipelines.is_empty() {
            warn!(
                "source connector `{}` feeds no pipeline: its messages are acknowledged and dropped",
                s.name
            );
        }
    }
    let start_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sinks: Vec<SinkOut> = config
        .sink_connectors
        .iter()
        .filter_map(|(name, c)| {
            c.endpoint().map(|ep| {
                let mut s = SinkOut::new(
                    name.clone(),
                    ep,
                    format!("{}/{}@{}", config.name, name, start_nanos),
                );
                let bound = options
                    .sink_buffer_bytes
                    .unwrap_or(usize::try_from(c.in_flight_bytes).unwrap_or(usize::MAX));
                s.set_limit(bound);
                s
            })
        })
        .collect();
    let metrics = Metrics::new(app.registry.clone());
    let mut core = Core::new(
        config.name.clone(),
        config.worker_name.clone(),
        config.cookie.clone(),
        options
            .max_frame_bytes
            .unwrap_or_else(|| config.max_frame()),
        sources,
        sinks,
        options.resilience_dir.is_some() || options.checkpoint_store.is_some(),
        options.max_in_flight,
        metrics.clone(),
    );
    for s in &app.stores {
        s.set_partitions(options.partitions);
    }
    core.set_stores(app.stores.clone());
    let mut takeovers = None;
    match &checkpoints {
        Checkpoints::Engine(Some(dir)) => checkpointer::restore(&mut core, &app.stores, dir)?,
        Checkpoints::Engine(None) => {}
        Checkpoints::Stream(store) => {
            let (scope, rx) = StreamScope::new(
                store.clone(),
                owner_name(&config.worker_name),
                options.takeover_wait,
            );
            core.set_stream_scope(scope);
            takeovers = Some(rx);
        }
    }
    // Bind every listener before starting anything, so a bind failure is a clean error.
    let mut listeners = Vec::new();
    let mut bound = BTreeMap::new();
    for (name, c) in &config.source_connectors {
        let Some(ep) = c.endpoint() else { continue };
        let l = Listener::bind(&ep)
            .await
            .map_err(|source| EngineError::Bind {
                name: name.clone(),
                endpoint: ep.to_string(),
                source,
            })?;
        bound.insert(name.clone(), l.local_endpoint());
        listeners.push(l);
    }
    let core = Rc::new(RefCell::new(core));
    for i in 0..config.sink_connectors.len() {
        tokio::task::spawn_local(sink_task(core.clone(), i));
    }
    for (i, l) in listeners.into_iter().enumerate() {
        tokio::task::spawn_local(accept_loop(core.clone(), i, l));
    }
    let mut slices = None;
    match checkpoints {
        Checkpoints::Engine(Some(dir)) => {
            tokio::task::spawn_local(checkpointer::checkpoint_loop(
                core.clone(),
                app.stores.clone(),
                dir,
                options.checkpoint_interval,
            ));
        }
        Checkpoints::Stream(Some(store)) => {
            slices = Some((core.clone(), store.clone()));
            let now = core.borrow().checkpoint_now();
            if let Some(rx) = takeovers {
                tokio::task::spawn_local(handoff::takeover_loop(core.clone(), store.clone(), rx));
            }
            tokio::task::spawn_local(handoff::checkpoint_loop(
                core.clone(),
                store,
                options.checkpoint_interval,
                now,
            ));
        }
        Checkpoints::Engine(None) | Checkpoints::Stream(None) => info!(
            target: telemetry::NOTICE,
            "engine: no --resilience-dir or --checkpoint-store: running in memory (state is lost when the engine stops)"
        ),
    }
    if let Some(addr) = options.metrics_addr {
        let (registry, readiness) = (metrics.registry.clone(), metrics.readiness.clone());
        let at = telemetry::serve_ops(addr, registry, readiness)
            .await
            .map_err(|source| EngineError::Io {
                context: format!("cannot serve metrics on {addr}"),
                source,
            })?;
        info!("metrics on http://{at}/metrics");
    }
    let lag = telemetry::Gauge::default();
    lag.set(-1);
    telemetry::spawn_stats_reporter(
        telemetry::StatsSource {
            label: format!("engine {}", config.name),
            messages: metrics.messages_in.clone(),
            bytes: metrics.bytes_in.clone(),
            acked: metrics.acked.clone(),
            in_flight: metrics.in_flight.clone(),
            lag,
            latency: metrics.latency.clone(),
        },
        options.stats_interval,
    );
    for (name, ep) in &bound {
        info!("listening for source `{name}` on {ep}");
    }
    Ok(Started { bound, slices })
}
