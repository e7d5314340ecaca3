//! A bucket of its own on the S3-compatible service the tests run (moto on
//! 127.0.0.1:5000, or `AWS_ENDPOINT_URL`), through the AWS SDK: created unique, read back,
//! deleted with everything in it when dropped (also when the test fails).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// Test credentials, region and no instance metadata: what the SDK, and every process a
/// test starts, needs to talk to the local service.
pub const TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Sets [`TEST_ENV`] in this process (inherited by the processes it starts).
pub fn set_test_env() {
    for (k, v) in TEST_ENV {
        std::env::set_var(k, v);
    }
}

/// An SDK client of the local service (fails with a clear message when it is not running).
pub fn client() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(crate::aws_endpoint())
        .credentials_provider(Credentials::new(
            "testing", "testing", None, None, "testkit",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A bucket created for one test; its objects and itself are deleted when dropped.
pub struct TestBucket {
    /// The bucket's name (unique to the run).
    pub name: String,
    /// The service's address (`http://host:port`).
    pub endpoint: String,
    client: aws_sdk_s3::Client,
}

impl TestBucket {
    /// Creates a bucket named after `prefix`, unique to this run. Blocking: call it outside
    /// an async runtime.
    pub fn create(prefix: &str) -> TestBucket {
        let (client, endpoint) = (client(), crate::aws_endpoint());
        let name = crate::unique(prefix).replace('_', "-");
        block_on(client.create_bucket().bucket(&name).send())
            .unwrap_or_else(|e| panic!("cannot create bucket {name} at {endpoint}: {e:?}"));
        TestBucket {
            name,
            endpoint,
            client,
        }
    }

    /// The object `key`, `None` when there is none.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Some(o.body.collect().await.expect("object body").to_vec()),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
                Err(e) => panic!("GET s3://{}/{key}: {e:?}", self.name),
            }
        })
    }

    /// The keys of the bucket (the first 1,000).
    pub fn keys(&self) -> Vec<String> {
        self.try_keys()
            .unwrap_or_else(|e| panic!("list s3://{}: {e}", self.name))
    }

    fn try_keys(&self) -> Result<Vec<String>, String> {
        let out = block_on(self.client.list_objects_v2().bucket(&self.name).send())
            .map_err(|e| format!("{e:?}"))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect())
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        let keys = self.try_keys().unwrap_or_default();
        block_on(async {
            for k in keys {
                let _ = self
                    .client
                    .delete_object()
                    .bucket(&self.name)
                    .key(k)
                    .send()
                    .await;
            }
            let _ = self.client.delete_bucket().bucket(&self.name).send().await;
        });
    }
}
