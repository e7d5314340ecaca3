//! The S3 checkpoint store against the S3-compatible service the tests run (moto on
//! 127.0.0.1:5000, or `AWS_ENDPOINT_URL`): conditional writes fence a stale version, a
//! missing bucket is a clear error.

use engine::slice::{slice_key, Slice};
use engine::store::{Expect, StoreError, StoreUrl};

fn env() -> String {
    let endpoint = testkit::aws_endpoint();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
    endpoint
}

#[tokio::test]
async fn conditional_writes_fence_a_stale_owner() {
    let endpoint = env();
    let bucket = testkit::unique("ckpt");
    let url = format!("s3://{bucket}/app/one?endpoint_url={endpoint}&region=us-east-1");
    let StoreUrl::S3(loc) = StoreUrl::parse(&url).unwrap() else {
        panic!("not s3")
    };
    // The bucket must exist: a clear error until it does.
    let e = match StoreUrl::S3(loc.clone()).open().await {
        Err(e) => e,
        Ok(_) => panic!("a missing bucket must be refused"),
    };
    assert!(e.contains(&bucket) && e.contains("create it"), "{e}");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::for_tests())
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    let store = StoreUrl::S3(loc).open().await.unwrap();
    assert_eq!(store.describe(), format!("s3://{bucket}/app/one"));
    let key = slice_key("orders/3");
    assert!(store.load(&key).await.unwrap().is_none());
    let mut slice = Slice {
        stream: "orders/3".into(),
        point: 10,
        generation: 1,
        owner: "a".into(),
        ..Slice::default()
    };
    let v1 = store
        .save(&key, slice.encode(), Expect::Absent)
        .await
        .unwrap();
    // A second first owner is refused.
    assert!(matches!(
        store.save(&key, slice.encode(), Expect::Absent).await,
        Err(StoreError::Conflict)
    ));
    // B takes over: generation 2, conditional on what it read.
    slice.generation = 2;
    slice.owner = "b".into();
    let v2 = store
        .save(&key, slice.encode(), Expect::Version(v1.clone()))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    // A wakes up late with its newer point: refused, B's slice stays.
    let stale = Slice {
        point: 99,
        generation: 1,
        owner: "a".into(),
        ..slice.clone()
    };
    assert!(matches!(
        store.save(&key, stale.encode(), Expect::Version(v1)).await,
        Err(StoreError::Conflict)
    ));
    let (bytes, v) = store.load(&key).await.unwrap().unwrap();
    assert_eq!(v, v2);
    assert_eq!(Slice::decode(&bytes).unwrap(), slice);
    // The object is where the contract says.
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, vec!["app/one/streams/orders%2F3.slice"]);
}
