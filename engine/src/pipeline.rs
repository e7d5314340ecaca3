//! The builder API: pipelines written in Rust.
//!
//! ```text
//! App::new()
//!   .pipeline("source")          -> PipelineStart
//!   .decode(fn(&[u8]) -> Result<T, E>)   -> Stream<T>
//!   .to(fn(T) -> Option<U>) / .map / .filter / .to_many   -> Stream<U>
//!   .key_by(fn(&T) -> K) .state(fn(T, &mut S) -> Option<U>)  -> Stream<U>
//!   .encode(fn(&T) -> (key, payload)) / .encode_with(fn(&T, &mut OutBuf))  -> Encoded
//!   .to_sink("sink") / .to_sinks(&["a", "b"])
//! ```
//!
//! Each stage is a closure wrapped around the previous one; a message runs through the whole
//! pipeline synchronously and its outputs are encoded straight into the sinks' buffers.

use std::cell::RefCell;
use std::fmt::Display;
use std::rc::Rc;

use application::StateScope;
use bytes::Bytes;
use telemetry::{Counter, Registry};
use tracing::warn;

use crate::partition::{Key, Partitioned, State, StateStore};
use crate::sink_buffer::SinkOut;

/// One source message as a pipeline sees it: the MESSAGE frame read in place by
/// [`framing::MessageView`] (key and payload borrow the read buffer: no copy). Its event
/// time is passed through to the outputs.
pub type Input<'a> = framing::MessageView<'a>;

/// Writes outputs of one message into the buffers of the pipeline's sinks.
pub struct Emitter<'a> {
    pub(crate) sinks: &'a mut [SinkOut],
    pub(crate) targets: &'a [usize],
    pub(crate) event_time: i64,
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
}

impl Emitter<'_> {
    /// Emits one output (key, payload) to every sink of the pipeline; the event time of
    /// the input is passed through.
    #[inline]
    pub fn emit(&mut self, key: &[u8], payload: &[u8]) {
        for &t in self.targets {
            match self.sinks[t].emit(self.event_time, key, payload) {
                Ok(()) => {
                    self.count += 1;
                    self.bytes += payload.len() as u64;
                }
                Err(_) => self.errors += 1,
            }
        }
    }
}

/// A type-erased pipeline: runs one message, emitting its outputs.
pub(crate) type Runner = Box<dyn FnMut(&Input<'_>, &mut Emitter<'_>)>;

type Flow<T> = Box<dyn FnMut(&Input<'_>, &mut dyn FnMut(T))>;

/// A pipeline as declared: source name, sink names and its runner.
pub(crate) struct PipelineDef {
    pub source: String,
    pub sinks: Vec<String>,
    pub runner: Runner,
}

/// The application: its pipelines and keyed state stores. Build it, then [`crate::run`] it.
pub struct App {
    pub(crate) defs: Vec<PipelineDef>,
    pub(crate) stores: Vec<Rc<dyn StateStore>>,
    pub(crate) registry: Registry,
    /// The scope asked for with [`App::state_scope`] (else the application file's).
    pub(crate) state_scope: Option<StateScope>,
    decode_errors: Counter,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An application with no pipelines yet.
    pub fn new() -> App {
        Self::with_registry(Registry::default())
    }

    /// An application reporting its metrics into `registry` (shared with the caller).
    pub fn with_registry(registry: Registry) -> App {
        let decode_errors = registry.counter(
            "engine_errors_total",
            "Errors by kind.",
            &[("kind", "decode")],
        );
        App {
            defs: Vec::new(),
            stores: Vec::new(),
            registry,
            state_scope: None,
            decode_errors,
        }
    }

    /// Scopes keyed state per source stream (or per engine), whatever the application
    /// file's `state_scope` says.
    pub fn state_scope(&mut self, scope: StateScope) -> &mut Self {
        self.state_scope = Some(scope);
        self
    }

    /// Starts a pipeline reading from the source connector `source`.
    pub fn pipeline(&mut self, source: &str) -> PipelineStart<'_> {
        PipelineStart {
            app: self,
            source: source.to_string(),
        }
    }

    /// Adds a pass-through pipeline: key and payload go unchanged from `source` to `sinks`.
    pub fn pass_through(&mut self, source: &str, sinks: &[&str]) {
        self.defs.push(PipelineDef {
            source: source.to_string(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            runner: Box::new(|input, em| em.emit(input.key, input.payload)),
        });
    }

    /// The metrics registry the engine reports into (add your own counters here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Number of pipelines declared.
    pub fn pipeline_count(&self) -> usize {
        self.defs.len()
    }
}

/// A pipeline before its decode step.
pub struct PipelineStart<'a> {
    app: &'a mut App,
    source: String,
}

impl<'a> PipelineStart<'a> {
    /// Decodes each payload. A decode error is logged (rate-limited) and counted, and the
    /// message is acknowledged with no output: replaying it could never succeed.
    pub fn decode<T: 'static, E: Display + 'static>(
        self,
        mut f: impl FnMut(&[u8]) -> Result<T, E> + 'static,
    ) -> Stream<'a, T> {
        self.decode_input(move |input: &Input<'_>| f(input.payload))
    }

    /// Like [`PipelineStart::decode`], with access to the whole input (key, ids, event time).
    pub fn decode_input<T: 'static, E: Display + 'static>(
        self,
        mut f: impl FnMut(&Input<'_>) -> Result<T, E> + 'static,
    ) -> Stream<'a, T> {
        let errors = self.app.decode_errors.clone();
        let source = self.source.clone();
        let mut seen = 0u64;
        let mut next_log = 1u64;
        let flow: Flow<T> = Box::new(move |input, emit| match f(input) {
            Ok(t) => emit(t),
            Err(e) => {
                errors.inc();
                seen += 1;
                if seen <= 5 || seen >= next_log {
                    next_log = seen + 10_000;
                    warn!(
                        "pipeline from `{source}`: cannot decode message {} of stream {} ({e}); acknowledged and skipped ({seen} so far)",
                        input.message_id, input.stream_id
                    );
                }
            }
        });
        Stream {
            app: self.app,
            source: self.source,
            flow,
        }
    }
}

/// A pipeline producing values of type `T`.
pub struct Stream<'a, T> {
    app: &'a mut App,
    source: String,
    flow: Flow<T>,
}

impl<'a, T: 'static> Stream<'a, T> {
    fn then<U: 'static>(
        self,
        mut step: impl FnMut(T, &mut dyn FnMut(U)) + 'static,
    ) -> Stream<'a, U> {
        let mut prev = self.flow;
        Stream {
            app: self.app,
            source: self.source,
            flow: Box::new(move |input, emit| prev(input, &mut |t| step(t, emit))),
        }
    }

    /// A computation that may drop a value (`None`) or transform it.
    pub fn to<U: 'static>(self, mut f: impl FnMut(T) -> Option<U> + 'static) -> Stream<'a, U> {
        self.then(move |t, emit| {
            if let Some(u) = f(t) {
                emit(u)
            }
        })
    }

    /// A computation that produces any number of values.
    pub fn to_many<U: 'static, I: IntoIterator<Item = U>>(
        self,
        mut f: impl FnMut(T) -> I + 'static,
    ) -> Stream<'a, U> {
        self.then(move |t, emit| {
            for u in f(t) {
                emit(u)
            }
        })
    }

    /// A computation that transforms every value.
    pub fn map<U: 'static>(self, mut f: impl FnMut(T) -> U + 'static) -> Stream<'a, U> {
        self.then(move |t, emit| emit(f(t)))
    }

    /// Keeps only values for which `f` is true.
    pub fn filter(self, mut f: impl FnMut(&T) -> bool + 'static) -> Stream<'a, T> {
        self.then(move |t, emit| {
            if f(&t) {
                emit(t)
            }
        })
    }

    /// Partitions by key; follow with [`Keyed::state`].
    pub fn key_by<K: Key>(self, f: impl FnMut(&T) -> K + 'static) -> Keyed<'a, T, K> {
        Keyed {
            stream: self,
            key: Box::new(f),
        }
    }

    /// Encodes each value as an output (key, payload).
    pub fn encode(self, mut f: impl FnMut(&T) -> (Bytes, Bytes) + 'static) -> Encoded<'a> {
        let mut prev = self.flow;
        Encoded {
            app: self.app,
            source: self.source,
            runner: Box::new(move |input, em| {
                prev(input, &mut |t| {
                    let (k, p) = f(&t);
                    em.emit(&k, &p)
                })
            }),
        }
    }

    /// Encodes each value by writing key and payload into reused buffers (no allocation
    /// per message). Both buffers are empty when `f` is called.
    pub fn encode_with(self, mut f: impl FnMut(&T, &mut OutBuf) + 'static) -> Encoded<'a> {
        let mut prev = self.flow;
        let mut buf = OutBuf::default();
        Encoded {
            app: self.app,
            source: self.source,
            runner: Box::new(move |input, em| {
                prev(input, &mut |t| {
                    buf.key.clear();
                    buf.payload.clear();
                    f(&t, &mut buf);
                    em.emit(&buf.key, &buf.payload)
                })
            }),
        }
    }
}

/// Reusable output buffers for [`Stream::encode_with`].
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Output key (empty = none).
    pub key: Vec<u8>,
    /// Output payload.
    pub payload: Vec<u8>,
}

/// A keyed pipeline waiting for its state computation.
pub struct Keyed<'a, T, K> {
    stream: Stream<'a, T>,
    key: Box<dyn FnMut(&T) -> K>,
}

impl<'a, T: 'static, K: Key> Keyed<'a, T, K> {
    /// A state computation: one `S::default()` per key, created on first use, updated by
    /// `f` for every value of that key, in order. `f` may return an output.
    ///
    /// Keys are spread over the engine's partitions; the state is checkpointed with the
    /// checkpoint store and restored on restart. In stream scope ([`App::state_scope`])
    /// each source stream has its own keys, which travel with the stream to the engine
    /// that takes it over. The store is named `"<source>#<n>"` (n = order of declaration
    /// in the application).
    pub fn state<S: State, U: 'static>(
        self,
        mut f: impl FnMut(T, &mut S) -> Option<U> + 'static,
    ) -> Stream<'a, U> {
        let Stream { app, source, flow } = self.stream;
        let name = format!("{}#{}", source, app.stores.len());
        let store: Rc<RefCell<Partitioned<K, S>>> =
            Rc::new(RefCell::new(Partitioned::new(name, 1)));
        app.stores.push(store.clone());
        let mut key = self.key;
        let mut prev = flow;
        Stream {
            app,
            source,
            flow: Box::new(move |input, emit| {
                let stream = input.stream_id;
                prev(input, &mut |t| {
                    let k = key(&t);
                    let out = {
                        let mut st = store.borrow_mut();
                        f(t, st.get_or_default_in(stream, k))
                    };
                    if let Some(u) = out {
                        emit(u)
                    }
                })
            }),
        }
    }
}

/// An encoded pipeline waiting for its sinks.
pub struct Encoded<'a> {
    app: &'a mut App,
    source: String,
    runner: Runner,
}

impl Encoded<'_> {
    /// Sends the outputs to the sink connector `sink`.
    pub fn to_sink(self, sink: &str) {
        self.to_sinks(&[sink])
    }

    /// Sends every output to each of `sinks`.
    pub fn to_sinks(self, sinks: &[&str]) {
        self.app.defs.push(PipelineDef {
            source: self.source,
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            runner: self.runner,
        });
    }
}
