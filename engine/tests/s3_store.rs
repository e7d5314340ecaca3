//! The S3 checkpoint store against the S3-compatible service the tests run (moto on
//! 127.0.0.1:5000, or `AWS_ENDPOINT_URL`): conditional writes fence a stale version, a
//! missing bucket is a clear error.

use engine::slice::{slice_key, Slice};
use engine::store::{Expect, StoreError, StoreUrl};

#[test]
fn conditional_writes_fence_a_stale_owner() {
    testkit::s3::set_test_env();
    let endpoint = testkit::aws_endpoint();
    let url = |bucket: &str| {
        StoreUrl::parse(&format!(
            "s3://{bucket}/app/one?endpoint_url={endpoint}&region=us-east-1"
        ))
        .unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The bucket must exist: a clear error until it does.
    let missing = testkit::unique("ckpt-missing").replace('_', "-");
    let e = match rt.block_on(url(&missing).open()) {
        Err(e) => e,
        Ok(_) => panic!("a missing bucket must be refused"),
    };
    assert!(e.contains(&missing) && e.contains("create it"), "{e}");
    let bucket = testkit::s3::TestBucket::create("ckpt");
    rt.block_on(fences(url(&bucket.name), &bucket.name));
    // The object is where the contract says.
    assert_eq!(bucket.keys(), vec!["app/one/streams/orders%2F3.slice"]);
}

async fn fences(url: StoreUrl, bucket: &str) {
    let store = url.open().await.unwrap();
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
}
