//! What `kafka_source` and `kafka_sink` share: building a librdkafka configuration from the
//! connector's parameters, forwarding librdkafka's logs and errors to `tracing` and the
//! connector's metrics, telling permanent produce errors from transient ones, and `--check`.
//! The consumer group side of `kafka_source` is in [`consumer`], the delivery reports of
//! `kafka_sink` in [`producer`].

pub mod consumer;
pub mod producer;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::Check;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// librdkafka settings a user may not override because they would break the connector's
/// delivery guarantee, with the reason shown in the error.
const LOCKED: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "kafka_source commits only what the engine acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "kafka_source commits only what the engine acknowledged",
    ),
];

/// Builds a client configuration: `bootstrap.servers`, then the connector's `defaults`, then
/// every `--NAME-option key=value` in order (so options override defaults).
///
/// Fails with a one-line reason on an option without `=` or on an attempt to change a
/// setting the connector's guarantee depends on.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    options: &[String],
    connector: &str,
) -> anyhow::Result<ClientConfig> {
    if brokers.trim().is_empty() {
        anyhow::bail!(
            "--{connector}-bootstrap_brokers is empty: give one broker or more as host:port, comma-separated"
        );
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for opt in options {
        let Some((k, v)) = opt.split_once('=') else {
            anyhow::bail!(
                "--{connector}-option {opt:?} is not key=value (e.g. --{connector}-option security.protocol=SASL_SSL)"
            );
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            anyhow::bail!("--{connector}-option {opt:?} has an empty key");
        }
        if let Some((_, why)) = LOCKED.iter().find(|(l, _)| *l == k) {
            if defaults.iter().any(|(d, dv)| d == &k && *dv != v) {
                anyhow::bail!("--{connector}-option {k}={v} is not allowed: {why}");
            }
        }
        config.set(k, v);
    }
    Ok(config)
}

/// Sets librdkafka's log level from the `tracing` filter (`RUST_LOG`), so librdkafka does
/// not format lines that would be dropped. Its debug contexts are switched on with
/// `--NAME-option debug=consumer,cgrp,...` plus `RUST_LOG=debug`.
pub fn set_log_level(config: &mut ClientConfig) {
    let level = if tracing::enabled!(tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    };
    config.set_log_level(level);
}

/// How often a repeated condition (a broker that refuses connections) is logged again.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// Whether a line of kind `key` may be logged now: the first one, then one every
/// [`REPEAT_EVERY`]. Returns how many were held back since the last one logged.
pub fn repeated(key: &str) -> Option<u64> {
    static SEEN: LazyLock<Mutex<HashMap<String, (Instant, u64)>>> = LazyLock::new(Mutex::default);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match seen.get_mut(key) {
        Some((last, held)) if now.duration_since(*last) < REPEAT_EVERY => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            let n = *held;
            (*last, *held) = (now, 0);
            Some(n)
        }
        None => {
            seen.insert(key.to_string(), (now, 0));
            Some(0)
        }
    }
}

/// " (N more like it held back)" when N > 0.
pub fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            " ({n} more like it in the last {}s)",
            REPEAT_EVERY.as_secs()
        )
    }
}

/// Forwards one librdkafka log line to `tracing`. Connection failures, which librdkafka
/// reports on every retry, are logged once per [`REPEAT_EVERY`].
pub fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    let msg = if fac == "FAIL" {
        match repeated("librdkafka FAIL") {
            Some(n) => format!("{msg}{}", held_back(n)),
            None => return,
        }
    } else {
        msg.to_string()
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
    }
}

/// Reports a client-level librdkafka error (broker down, authentication, ...): logged and
/// counted; a lost broker connection also counts as a reconnect.
pub fn client_error(metrics: &ConnectorMetrics, error: &KafkaError, reason: &str) {
    match error.rdkafka_error_code() {
        Some(
            code @ (RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown),
        ) => {
            if code == RDKafkaErrorCode::AllBrokersDown {
                metrics.readiness.not_ready(
                    "kafka",
                    format!("all brokers are down ({reason}); librdkafka keeps retrying"),
                );
            }
            metrics.reconnects.inc();
            metrics.error("kafka_transport");
            if let Some(n) = repeated("transport") {
                tracing::warn!(
                    "Kafka: {reason} (librdkafka keeps retrying){}",
                    held_back(n)
                );
            }
        }
        _ => {
            metrics.error("kafka");
            tracing::error!("Kafka: {error}: {reason}");
        }
    }
}

/// Reports an error the consumer returned instead of a record: counted, and logged once
/// per kind of error and [`REPEAT_EVERY`].
pub fn consume_error(metrics: &ConnectorMetrics, error: &KafkaError) {
    metrics.error("kafka_consume");
    if let Some(n) = repeated(&format!("consume {error}")) {
        tracing::warn!("Kafka consumer: {error}{}", held_back(n));
    }
}

/// How a failed produce should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The broker will never accept this message (too large, no such topic, not allowed,
    /// invalid): report it and set it aside (dead letter).
    Permanent,
    /// The producer itself is unusable (idempotence state lost, fenced): stop; the engine
    /// replays what was not acknowledged on the next start.
    Fatal,
    /// Anything else (timeouts, leader changes, not enough replicas): produce it again.
    Transient,
}

/// Classifies a produce error code.
pub fn classify(code: RDKafkaErrorCode) -> Failure {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::PolicyViolation
        | C::UnsupportedForMessageFormat
        | C::InvalidRequiredAcks
        | C::MessageBatchTooLarge => Failure::Permanent,
        C::Fatal
        | C::InvalidProducerEpoch
        | C::ProducerFenced
        | C::UnknownProducerId
        | C::OutOfOrderSequenceNumber
        | C::TransactionalIdAuthorizationFailed => Failure::Fatal,
        _ => Failure::Transient,
    }
}

/// Maps the `compression` parameter to librdkafka's `compression.codec`.
pub fn compression_codec(value: &str, connector: &str) -> anyhow::Result<&'static str> {
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "none" | "" => "none",
        "gzip" => "gzip",
        "snappy" => "snappy",
        "lz4" => "lz4",
        "zstd" => "zstd",
        other => anyhow::bail!(
            "invalid value {other:?} for --{connector}-compression: expected none, gzip, snappy, lz4 or zstd"
        ),
    })
}

/// Maps the `acks` parameter to librdkafka's `acks`.
pub fn acks_setting(value: &str, connector: &str) -> anyhow::Result<&'static str> {
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "all" | "-1" => "all",
        "1" | "leader" => "1",
        "0" | "none" => "0",
        other => {
            anyhow::bail!("invalid value {other:?} for --{connector}-acks: expected all, 1 or 0")
        }
    })
}

/// `--check`: the brokers answer and every named topic exists (regular expressions are not
/// checked); `missing` is the advice for a topic that does not.
pub fn check(
    brokers: &str,
    options: &[String],
    connector: &str,
    topics: &[String],
    missing: &str,
) -> Vec<Check> {
    let what = format!("Kafka brokers {brokers} answer");
    let config = match client_config(brokers, &[], options, connector) {
        Ok(c) => c,
        Err(e) => return vec![Check::fail(what, format!("{e:#}"))],
    };
    let client: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(e) => {
            let fix = format!("{e}: fix the --{connector}-option settings");
            return vec![Check::fail(what, fix)];
        }
    };
    let md =
        match rdkafka::consumer::Consumer::fetch_metadata(&client, None, Duration::from_secs(10)) {
            Ok(md) => md,
            Err(e) => {
                let fix = format!("{e}: start the broker or fix --{connector}-bootstrap_brokers");
                return vec![Check::fail(what, fix)];
            }
        };
    let mut checks = vec![Check::ok(what)];
    for topic in topics.iter().filter(|t| !t.starts_with('^')) {
        let what = format!("topic `{topic}` exists");
        checks.push(match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() => {
                Check::ok(format!("{what} ({} partitions)", t.partitions().len()))
            }
            _ => Check::fail(what, missing.to_string()),
        });
    }
    checks
}

/// The protocol stream name of a topic-partition (`orders/3`): its hash is the stream id.
pub fn stream_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_defaults_but_not_the_guarantee() {
        let c = client_config(
            "b:9092",
            &[("enable.auto.commit", "false"), ("linger.ms", "5")],
            &[
                "linger.ms=20".into(),
                " security.protocol = SASL_SSL".into(),
            ],
            "in",
        )
        .unwrap();
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        let e = client_config(
            "b",
            &[("enable.auto.commit", "false")],
            &["enable.auto.commit=true".into()],
            "in",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not allowed"), "{e}");
        let e = client_config("b", &[], &["nokey".into()], "in")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn parameters_map_to_librdkafka_values() {
        assert_eq!(compression_codec("ZSTD", "o").unwrap(), "zstd");
        assert!(compression_codec("brotli", "o").is_err());
        assert_eq!(acks_setting("all", "o").unwrap(), "all");
        assert_eq!(acks_setting("1", "o").unwrap(), "1");
        assert!(acks_setting("2", "o").is_err());
        assert_eq!(stream_name("t", 3), "t/3");
        assert_eq!(
            classify(RDKafkaErrorCode::MessageSizeTooLarge),
            Failure::Permanent
        );
        assert_eq!(
            classify(RDKafkaErrorCode::MessageTimedOut),
            Failure::Transient
        );
        assert_eq!(classify(RDKafkaErrorCode::ProducerFenced), Failure::Fatal);
    }
}
