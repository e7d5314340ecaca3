//! A checkpoint store in an S3-compatible bucket: object `key` is `PREFIX/key`. Conditional
//! writes use S3's own: `If-None-Match: *` for the first slice of a stream, `If-Match: ETAG`
//! after it; the service answers 412 (or 409 on a concurrent write) when the object changed,
//! which is the fencing of a stale owner.

use aws_config::BehaviorVersion;
use aws_sdk_s3::primitives::ByteStream;
use std::time::Duration;

use super::{CheckpointStore, Expect, StoreError, StoreFuture, Version};

/// Bucket, prefix and connection settings of an `s3://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name (it must exist).
    pub bucket: String,
    /// Key prefix without its trailing `/` (may be empty).
    pub prefix: String,
    /// `endpoint_url=` (else `AWS_ENDPOINT_URL` or AWS itself).
    pub endpoint_url: Option<String>,
    /// `region=` (else `AWS_REGION` / the profile's).
    pub region: Option<String>,
    /// `path_style=true|false` (default: true when an endpoint is configured).
    pub path_style: Option<bool>,
}

impl S3Location {
    /// Parses what follows `s3://`.
    pub fn parse(rest: &str) -> Result<S3Location, String> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err("checkpoint store s3://: no bucket (use s3://BUCKET/PREFIX)".into());
        }
        let mut loc = S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint_url: None,
            region: None,
            path_style: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "endpoint_url" => loc.endpoint_url = Some(v.to_string()),
                "region" => loc.region = Some(v.to_string()),
                "path_style" => {
                    loc.path_style = Some(v.parse().map_err(|_| {
                        format!("checkpoint store: path_style={v} is not true or false")
                    })?)
                }
                other => {
                    return Err(format!(
                        "checkpoint store: unknown setting `{other}` (known: endpoint_url, region, path_style)"
                    ))
                }
            }
        }
        Ok(loc)
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

/// An S3-compatible bucket of checkpoint objects.
pub struct S3Store {
    loc: S3Location,
    client: aws_sdk_s3::Client,
}

impl S3Store {
    /// Builds the client (the SDK's region/endpoint/credential chain, overridden by the
    /// URL's settings) and checks that the bucket answers.
    pub async fn open(loc: S3Location) -> Result<S3Store, String> {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(r) = &loc.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &loc.endpoint_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "checkpoint store: endpoint_url {u:?} must start with http:// or https://"
                ));
            }
            loader = loader.endpoint_url(u.clone());
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err("checkpoint store s3://: no AWS region: add ?region=us-east-1 to the URL or set AWS_REGION".into());
        }
        if config.credentials_provider().is_none() {
            return Err("checkpoint store s3://: no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or configure a profile".into());
        }
        let custom = loc.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(loc.path_style.unwrap_or(custom))
            .build();
        let client = aws_sdk_s3::Client::from_conf(s3);
        if let Err(e) = client.head_bucket().bucket(&loc.bucket).send().await {
            let bucket = &loc.bucket;
            return Err(if status(&e) == Some(404) {
                format!("checkpoint store s3://{bucket}: the bucket does not exist; create it (e.g. `aws s3 mb s3://{bucket}`) or fix the URL")
            } else {
                format!("checkpoint store s3://{bucket}: cannot reach the bucket: {}; check the endpoint, the credentials and the bucket name", describe(&e))
            });
        }
        Ok(S3Store { loc, client })
    }
}

/// The most useful words of an SDK error: the service's code and message, else the chain
/// of causes (one line, no debug dump).
fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let aws_sdk_s3::error::SdkError::ServiceError(s) = e {
        let m = s.err();
        if let Some(code) = m.code() {
            return match m.message() {
                Some(msg) => format!("{code}: {msg}"),
                None => code.to_string(),
            };
        }
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    let all = parts.join(": ");
    if all.contains("loading credentials") {
        return "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or configure a profile)".into();
    }
    all
}

/// The HTTP status the service answered with, if it answered.
fn status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl CheckpointStore for S3Store {
    fn describe(&self) -> String {
        if self.loc.prefix.is_empty() {
            format!("s3://{}", self.loc.bucket)
        } else {
            format!("s3://{}/{}", self.loc.bucket, self.loc.prefix)
        }
    }

    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<(Vec<u8>, Version)>> {
        Box::pin(async move {
            let full = self.loc.key(key);
            let r = self
                .client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .send()
                .await;
            let out = match r {
                Ok(o) => o,
                Err(e) => {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        return Ok(None);
                    }
                    return Err(StoreError::Failed(format!(
                        "cannot read s3://{}/{full}: {}",
                        self.loc.bucket,
                        describe(&e)
                    )));
                }
            };
            let etag = out.e_tag().unwrap_or_default().to_string();
            let body = out.body.collect().await.map_err(|e| {
                StoreError::Failed(format!("cannot read s3://{}/{full}: {e}", self.loc.bucket))
            })?;
            Ok(Some((body.into_bytes().to_vec(), etag)))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> StoreFuture<'a, Version> {
        Box::pin(async move {
            let full = self.loc.key(key);
            let mut put = self
                .client
                .put_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .body(ByteStream::from(bytes));
            put = match expect {
                Expect::Absent => put.if_none_match("*"),
                Expect::Version(v) => put.if_match(v),
            };
            match put.send().await {
                Ok(o) => Ok(o.e_tag().unwrap_or_default().to_string()),
                // 412 Precondition Failed; 409 when a concurrent conditional write won; 404
                // when If-Match names an object that is gone.
                Err(e) if matches!(status(&e), Some(412 | 409 | 404)) => Err(StoreError::Conflict),
                Err(e) => Err(StoreError::Failed(format!(
                    "cannot write s3://{}/{full}: {}",
                    self.loc.bucket,
                    describe(&e)
                ))),
            }
        })
    }
}
