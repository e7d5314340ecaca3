//! What a connector body gets besides its source or sink: its name, parameters, metrics,
//! the shutdown signal and the dead-letter directory.

use anyhow::{bail, Result};
use application::Application;
use tokio_util::sync::CancellationToken;

use crate::args::{CommonOptions, Params};
use crate::deadletter::DeadLetters;
use crate::metrics::ConnectorMetrics;
use crate::sink::SinkMessage;

/// The connector's view of its configuration and surroundings.
#[derive(Clone)]
pub struct Context {
    /// Binary name, e.g. `kafka_source`.
    pub program: &'static str,
    /// The connector name (`--connector`).
    pub connector: String,
    /// Resolved `--NAME-PARAM` parameters, as strings (connectors get them typed).
    pub(crate) params: Params,
    /// The application description, when one was given.
    pub app: Option<Application>,
    /// Standard metrics (add your own series to `metrics.registry`).
    pub metrics: ConnectorMetrics,
    /// Cancelled on SIGINT/SIGTERM: stop reading upstream, drain, commit, return.
    pub shutdown: CancellationToken,
    /// Options common to every connector.
    pub options: CommonOptions,
    dead_letters: Option<DeadLetters>,
}

impl Context {
    pub(crate) fn new(
        program: &'static str,
        options: CommonOptions,
        params: Params,
        metrics: ConnectorMetrics,
        shutdown: CancellationToken,
    ) -> Result<Context> {
        let dead_letters = match &options.dead_letter {
            Some(dir) => Some(DeadLetters::open(dir, &options.connector)?),
            None => None,
        };
        Ok(Context {
            program,
            connector: options.connector.clone(),
            params,
            app: options.app.clone(),
            metrics,
            shutdown,
            options,
            dead_letters,
        })
    }

    /// Sets aside a message the external system permanently refused.
    ///
    /// With `--dead-letter DIR` the message is written there and `Ok` is returned: acknowledge
    /// it and go on. Without the flag this returns an error naming the message and the
    /// reason: the sink stops and the message is not acknowledged.
    pub async fn dead_letter(&self, msg: &SinkMessage, reason: &str) -> Result<()> {
        self.metrics.error("refused");
        match &self.dead_letters {
            Some(d) => {
                d.write(
                    msg.stream_id,
                    msg.message_id,
                    &msg.key,
                    &msg.payload,
                    reason,
                )
                .await?;
                self.metrics.dead_letters.inc();
                tracing::warn!(
                    "message {} (key {:?}) refused: {reason}; written to the dead-letter directory",
                    msg.message_id,
                    String::from_utf8_lossy(&msg.key)
                );
                Ok(())
            }
            None => bail!(
                "message {} (key {:?}) permanently refused: {reason}; pass --dead-letter DIR to set such messages aside and continue",
                msg.message_id,
                String::from_utf8_lossy(&msg.key)
            ),
        }
    }

    /// The dead-letter directory, when configured (handed to the [`crate::Source`]).
    pub(crate) fn dead_letters(&self) -> Option<DeadLetters> {
        self.dead_letters.clone()
    }

    /// Whether a dead-letter directory is configured.
    pub fn has_dead_letter(&self) -> bool {
        self.dead_letters.is_some()
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The external system's part of `/ready`, named after the program (`kafka` for
    /// `kafka_source`). The runtime marks it up once the connector was built and, for
    /// sinks, down while writes must be retried; a connector that reconnects on its own
    /// marks it down when it loses the connection and up once it has it again.
    pub fn external(&self) -> External {
        let system = self.program.split('_').next().unwrap_or(self.program);
        External {
            system: system.to_string(),
            readiness: self.metrics.readiness.clone(),
        }
    }
}

/// The external system's side of the connector's readiness (see [`Context::external`]).
#[derive(Debug, Clone)]
pub struct External {
    system: String,
    readiness: telemetry::Readiness,
}

impl External {
    /// The system's name, as `/ready` reports it.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// Connected and working.
    pub fn up(&self) {
        self.readiness.ready(&self.system);
    }

    /// Not usable, for `reason` (one line: what failed and what is being done about it).
    pub fn down(&self, reason: impl Into<String>) {
        self.readiness.not_ready(&self.system, reason);
    }
}
