//! The parameters both S3 binaries share (bucket, region, endpoint, addressing) and the client
//! they make.

use anyhow::{anyhow, bail, Context as _, Result};
use connector_runtime::{Check, Context};

use crate::client::{self, AwsParams};

/// `bucket`, `region`, `endpoint_url` and `path_style`: flatten into a binary's parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct BucketArgs {
    /// S3 bucket
    #[arg(long)]
    pub bucket: String,
    /// `region` and `endpoint_url`.
    #[command(flatten)]
    pub aws: AwsParams,
    /// Path-style addressing: auto (with endpoint_url), true, false
    #[arg(long, default_value = "auto")]
    pub path_style: String,
}

impl BucketArgs {
    /// The S3 client these parameters describe (no call made yet); `connector` names the
    /// parameters in errors.
    pub async fn client(&self, connector: &str) -> Result<aws_sdk_s3::Client> {
        let path_style = self.path_style(connector)?;
        self.aws.options().s3(path_style).await
    }

    /// `path_style`: `None` for auto (path-style with a custom endpoint).
    fn path_style(&self, connector: &str) -> Result<Option<bool>> {
        match self.path_style.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(None),
            "true" | "yes" | "1" | "on" => Ok(Some(true)),
            "false" | "no" | "0" | "off" => Ok(Some(false)),
            other => bail!("--{connector}-path_style {other:?}: expected auto, true or false"),
        }
    }

    /// The client, once the bucket answered (retrying while the service is unreachable).
    /// `access` says what the binary needs (`read`, `write to`) for the error message.
    pub async fn connect(&self, ctx: &Context, access: &str) -> Result<aws_sdk_s3::Client> {
        let client = self.client(&ctx.connector).await?;
        let bucket = &self.bucket;
        client::retry(ctx, &format!("HeadBucket {bucket}"), || {
            client.head_bucket().bucket(bucket).send()
        })
        .await
        .with_context(|| {
            format!("bucket `{bucket}` is not usable (does it exist, and may these credentials {access} it?)")
        })?;
        Ok(client)
    }

    /// `--check`: the service answers and the bucket exists.
    pub async fn check(&self, ctx: &Context) -> Vec<Check> {
        let r = async {
            let client = self.client(&ctx.connector).await?;
            client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "bucket `{}`: {} (does it exist?)",
                        self.bucket,
                        client::describe(&e)
                    )
                })?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        vec![Check::from_result("S3 bucket reachable and exists", r)]
    }
}
