//! SDK clients from the connector parameters, error classification and retries.
//!
//! Every AWS binary takes `region` and `endpoint_url`; credentials come from the SDK's usual
//! chain (environment variables, shared profile, web identity, container/instance role).
//! When neither the parameter nor the environment (`AWS_ENDPOINT_URL`, ...) names an
//! endpoint, the SDK uses the public AWS endpoint of the region.

use std::future::Future;

use anyhow::{anyhow, bail, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use connector_runtime::{Backoff, Context};

/// Where and as whom to talk to AWS.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `region` parameter.
    pub region: Option<String>,
    /// `endpoint_url` parameter.
    pub endpoint_url: Option<String>,
}

impl AwsOptions {
    /// Whether a custom endpoint is configured (parameter or environment), for `service`
    /// (`S3`, `KINESIS`): S3 then uses path-style addressing.
    pub fn custom_endpoint(&self, service: &str) -> bool {
        self.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os(format!("AWS_ENDPOINT_URL_{service}")).is_some()
    }

    /// Loads the shared SDK configuration (region, endpoint, credential chain).
    pub async fn sdk_config(&self) -> Result<SdkConfig> {
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("endpoint_url {url:?} must start with http:// or https://");
            }
        }
        // Without timeouts a request the service never answers would stall the connector.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(60))
            .operation_attempt_timeout(std::time::Duration::from_secs(120))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let config = loader.load().await;
        if config.region().is_none() {
            bail!("no AWS region: pass the `region` parameter (e.g. us-east-1) or set AWS_REGION");
        }
        if config.credentials_provider().is_none() {
            bail!("no AWS credentials provider: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or configure a profile");
        }
        Ok(config)
    }

    /// A Kinesis client.
    pub async fn kinesis(&self) -> Result<aws_sdk_kinesis::Client> {
        Ok(aws_sdk_kinesis::Client::new(&self.sdk_config().await?))
    }

    /// An S3 client; path-style addressing when `path_style` says so, or when a custom
    /// endpoint is configured and `path_style` is `None`.
    pub async fn s3(&self, path_style: Option<bool>) -> Result<aws_sdk_s3::Client> {
        let config = self.sdk_config().await?;
        let path_style = path_style.unwrap_or_else(|| self.custom_endpoint("S3"));
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            .build();
        Ok(aws_sdk_s3::Client::from_conf(s3))
    }
}

/// The `region` and `endpoint_url` parameters of every AWS binary, for a typed params struct
/// (`#[command(flatten)] aws: AwsParams`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsParams {
    /// AWS region, e.g. us-east-1 (default: the SDK chain: AWS_REGION, profile)
    #[arg(long)]
    pub region: Option<String>,
    /// Service endpoint URL for S3/Kinesis-compatible services, e.g. http://127.0.0.1:5000 (default: AWS, or AWS_ENDPOINT_URL)
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

impl AwsParams {
    /// The options these parameters name (blank values count as absent).
    pub fn options(&self) -> AwsOptions {
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        AwsOptions {
            region: nonempty(&self.region),
            endpoint_url: nonempty(&self.endpoint_url),
        }
    }
}

/// How a failed call should be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The service asked us to slow down: back off and retry.
    Throttled(String),
    /// Network trouble or a server-side fault: back off and retry.
    Transient(String),
    /// Retrying cannot help (missing resource, access denied, invalid request).
    Permanent(String),
}

impl Failure {
    /// The error text.
    pub fn message(&self) -> &str {
        match self {
            Failure::Throttled(m) | Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }
}

/// Error codes meaning "slow down".
const THROTTLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "LimitExceededException",
    "KMSThrottlingException",
    "SlowDown",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];

/// Error codes of server-side faults worth retrying.
const TRANSIENT_CODES: &[&str] = &[
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Classifies an error code (as in PutRecords per-record results or error responses).
pub fn classify_code(code: &str, message: String) -> Failure {
    if THROTTLE_CODES.contains(&code) {
        Failure::Throttled(message)
    } else if TRANSIENT_CODES.contains(&code) {
        Failure::Transient(message)
    } else {
        Failure::Permanent(message)
    }
}

/// Classifies an SDK error.
pub fn classify<E>(e: &SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = describe(e);
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match se.err().code() {
                Some(code) if THROTTLE_CODES.contains(&code) || TRANSIENT_CODES.contains(&code) => {
                    classify_code(code, text)
                }
                _ if status == 429 => Failure::Throttled(text),
                _ if status >= 500 => Failure::Transient(text),
                _ => Failure::Permanent(text),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transient(text)
        }
        SdkError::ConstructionFailure(_) => Failure::Permanent(text),
        _ => Failure::Transient(text),
    }
}

/// A one-line description: `Code: message (HTTP status)` for service errors, else the error
/// and its causes.
pub fn describe<E>(e: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(se) = e {
        let err = se.err();
        let status = se.raw().status().as_u16();
        return match (err.code(), err.message()) {
            (Some(c), Some(m)) => format!("{c}: {m} (HTTP {status})"),
            (Some(c), None) => format!("{c} (HTTP {status})"),
            _ => format!("{} (HTTP {status})", DisplayErrorContext(err)),
        };
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// The error code of a service error, if the call reached the service.
pub fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<&str> {
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// Retries `call` on throttling and transient failures with back-off (counting reconnects
/// and throttles in the metrics) until it succeeds, fails permanently, or shutdown is
/// requested. `what` names the call in logs and errors.
pub async fn retry<T, E, F, Fut>(ctx: &Context, what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    loop {
        let e = match call().await {
            Ok(v) => {
                if backoff.attempts() > 0 {
                    ctx.external().up();
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        let failure = classify(&e);
        match &failure {
            Failure::Permanent(m) => bail!("{what}: {m}"),
            Failure::Throttled(m) => {
                throttled(ctx, what);
                tracing::debug!("{what}: throttled ({m}); backing off");
            }
            Failure::Transient(m) => {
                ctx.metrics.reconnects.inc();
                ctx.metrics.error("aws");
                ctx.external()
                    .down(format!("{what} failing ({m}); retrying"));
                if should_warn(backoff.attempts()) {
                    tracing::warn!("{what} keeps failing ({m}); retrying with back-off (is the service reachable?)");
                } else {
                    tracing::debug!("{what} failed ({m}); retrying");
                }
            }
        }
        if ctx.shutdown.is_cancelled() {
            return Err(anyhow!(
                "{what}: giving up at shutdown after: {}",
                failure.message()
            ));
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.shutdown.cancelled() => {}
        }
    }
}

/// Whether the `failures`-th consecutive failure (0-based) deserves a warning: a single
/// failed call is routine (the services here answer 500 under load), a third in a row is not.
pub fn should_warn(failures: u32) -> bool {
    failures == 2 || (failures > 2 && failures % 20 == 2)
}

/// Counts one throttled call of `what` (`aws_throttled_total{operation}`).
pub fn throttled(ctx: &Context, what: &str) {
    let op = what.split_whitespace().next().unwrap_or(what);
    ctx.metrics
        .registry
        .counter(
            "aws_throttled_total",
            "Calls the service throttled, by operation.",
            &[("operation", op)],
        )
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert!(matches!(
            classify_code("ProvisionedThroughputExceededException", "x".into()),
            Failure::Throttled(_)
        ));
        assert!(matches!(
            classify_code("InternalFailure", "x".into()),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify_code("ResourceNotFoundException", "x".into()),
            Failure::Permanent(_)
        ));
    }
}
