//! Errors that stop the engine from starting or running.

use std::path::PathBuf;

use thiserror::Error;

/// Why the engine could not start or had to stop. Each message is one line for stderr.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The application file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] application::ConfigError),
    /// A pipeline refers to a connector the application file does not declare.
    #[error("{0}")]
    Pipeline(String),
    /// A source listener could not be bound.
    #[error("cannot listen for source connector `{name}` on {endpoint}: {source}")]
    Bind {
        /// Connector name.
        name: String,
        /// Endpoint as written in the application file.
        endpoint: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The resilience directory or its snapshots cannot be used.
    #[error("resilience directory {dir}: {message}")]
    Resilience {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint store cannot be used (bad URL, unreachable, wrong scope).
    #[error("{0}")]
    Store(String),
    /// Any other I/O error (runtime creation, metrics endpoint...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}
