//! The stream-processing engine.
//!
//! The engine listens for every source connector of an [`application::Application`], connects
//! out to every sink connector, runs the application's pipelines on each message and turns
//! sink acknowledgements (and, with a resilience directory, checkpoints) into end-to-end
//! acknowledgements to the sources. See `shared/spec/connector-protocol.md`.
//!
//! Pipelines are written with the builder API ([`App`]):
//!
//! ```no_run
//! use bytes::Bytes;
//! let mut app = engine::App::new();
//! app.pipeline("transactions")
//!     .decode(|b: &[u8]| std::str::from_utf8(b).map(|s| s.to_string()))
//!     .key_by(|line: &String| line.split(',').next().unwrap_or("").to_string())
//!     .state(|line: String, count: &mut u64| {
//!         *count += 1;
//!         Some(format!("{line} seen {count} times"))
//!     })
//!     .encode(|s: &String| (Bytes::new(), Bytes::from(s.clone())))
//!     .to_sink("out");
//! let config = application::Application::load("app.toml").unwrap();
//! engine::run(app, config, engine::RunOptions::default()).unwrap();
//! ```
//!
//! The engine runs on one thread (a `current_thread` tokio runtime): with connectors in their
//! own processes on a small machine that is the fastest layout, and it makes per-key ordering
//! trivial (see `shared/ENVIRONMENT.md`).

#![warn(missing_docs)]

mod acks;
mod check;
pub mod checkpoint;
mod checkpointer;
mod core;
mod error;
mod handoff;
mod metrics;
mod net;
pub mod options;
pub mod partition;
mod pipeline;
mod run;
mod sink;
mod sink_buffer;
pub mod slice;
mod source;
pub mod store;

pub use check::check;
pub use error::EngineError;
pub use options::{EngineArgs, RunOptions};
pub use partition::{partition_of, Key, State};
pub use pipeline::{App, Emitter, Encoded, Input, Keyed, OutBuf, PipelineStart, Stream};
pub use run::{run, spawn, EngineHandle};
