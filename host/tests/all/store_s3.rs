//! `S3Store` against a real S3 server (moto behind tests/s3/serve.py, one request at a time,
//! SigV4 checked): what only S3 has (credentials, buckets, key prefixes, the `Date` clock).
//! What every store does is in `store_contract`. Each test starts its own server and bucket.

use crate::support;

use std::time::Instant;

use support::s3::{BUCKET, S3Server};
use taskhost::store::s3::{S3Config, S3Store};
use taskhost::store::{ETag, ErrorKind, Multipart, ObjectStore, Precondition, StoreError};

/// The error of `r`, which must be of `kind`.
fn error_of<T: std::fmt::Debug>(r: Result<T, StoreError>, kind: ErrorKind, what: &str) -> String {
    match r {
        Err(e) if e.kind() == kind => e.to_string(),
        other => panic!("{what}: expected a {kind} error, got {other:?}"),
    }
}

#[tokio::test]
async fn key_prefix_isolates_stores_in_one_bucket() {
    let s3 = S3Server::start().await;
    let a = s3.store("tenant-a");
    let b = s3.store("tenant-b/"); // a trailing slash means the same
    let root = s3.store("");
    a.put("jobs/j/result", b"from a".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    // Same key, other prefix: not "already exists".
    b.put("jobs/j/result", b"from b".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        a.get("jobs/j/result").await.unwrap().unwrap().bytes,
        b"from a"
    );
    assert_eq!(
        b.get("jobs/j/result").await.unwrap().unwrap().bytes,
        b"from b"
    );
    b.put("jobs/only-b/result", b"b".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(!a.exists("jobs/only-b/result").await.unwrap());
    assert!(a.get("jobs/only-b/result").await.unwrap().is_none());
    assert_eq!(a.list("").await.unwrap(), ["jobs/j/result"]);
    assert_eq!(
        b.list("jobs/").await.unwrap(),
        ["jobs/j/result", "jobs/only-b/result"]
    );
    assert_eq!(
        root.list("").await.unwrap(),
        [
            "tenant-a/jobs/j/result",
            "tenant-b/jobs/j/result",
            "tenant-b/jobs/only-b/result"
        ]
    );
}

/// A wrong secret key is an error that says so, for every operation: not `None`, not
/// `false`, not `PreconditionFailed`, and the secret appears nowhere.
#[tokio::test]
async fn wrong_secret_key_is_a_clear_error() {
    let s3 = S3Server::start().await;
    s3.store("")
        .put("k", b"v".to_vec(), Precondition::None)
        .await
        .unwrap();
    let wrong_secret = "definitely-not-the-secret";
    let store = S3Store::new(S3Config {
        secret_access_key: wrong_secret.into(),
        ..s3.config("")
    })
    .unwrap();

    let results: Vec<(&str, Result<String, StoreError>)> = vec![
        ("get", store.get("k").await.map(|o| format!("{o:?}"))),
        (
            "get missing",
            store.get("missing").await.map(|o| format!("{o:?}")),
        ),
        ("exists", store.exists("k").await.map(|b| b.to_string())),
        (
            "exists missing",
            store.exists("missing").await.map(|b| b.to_string()),
        ),
        (
            "put",
            store
                .put("k", b"w".to_vec(), Precondition::None)
                .await
                .map(|t| t.0),
        ),
        (
            "put absent",
            store
                .put("k2", b"w".to_vec(), Precondition::Absent)
                .await
                .map(|t| t.0),
        ),
        ("list", store.list("").await.map(|l| format!("{l:?}"))),
    ];
    for (op, result) in results {
        let message = error_of(result, ErrorKind::AccessDenied, op);
        assert!(message.contains("403"), "{op}: {message}");
        assert!(message.contains("[access denied]"), "{op}: {message}");
        assert!(
            message.contains("R2_AWS_SECRET_ACCESS_KEY"),
            "{op}: no hint in {message}"
        );
        assert!(
            !message.contains(wrong_secret),
            "{op}: the secret leaked: {message}"
        );
        if op != "exists" && op != "exists missing" {
            // HEAD answers have no body, hence no error code.
            assert!(message.contains("SignatureDoesNotMatch"), "{op}: {message}");
        }
    }
    assert_eq!(
        s3.store("").get("k").await.unwrap().unwrap().bytes,
        b"v",
        "nothing was written"
    );
    assert!(store.ensure_bucket().await.is_err());
}

#[tokio::test]
async fn missing_bucket_is_an_error_not_none() {
    let s3 = S3Server::start().await;
    let store = S3Store::new(S3Config {
        bucket: "no-such-bucket".into(),
        ..s3.config("")
    })
    .unwrap();
    let message = error_of(store.get("k").await, ErrorKind::NotFound, "get");
    assert!(message.contains("NoSuchBucket"), "{message}");
    assert!(message.contains("R2_BUCKET_NAME"), "{message}");
    // HEAD answers have no body: the bucket is looked up.
    let message = error_of(store.exists("k").await, ErrorKind::NotFound, "exists");
    assert!(message.contains("no-such-bucket"), "{message}");
    error_of(store.size("k").await, ErrorKind::NotFound, "size");
    error_of(store.list("").await, ErrorKind::NotFound, "list");
    for pre in [Precondition::None, Precondition::Absent] {
        let put = store.put("k", vec![], pre.clone()).await;
        error_of(put, ErrorKind::NotFound, &format!("put {pre:?}"));
    }
    let if_match = Precondition::Matches(ETag("\"0\"".into()));
    error_of(
        store.put("k", vec![], if_match).await,
        ErrorKind::NotFound,
        "put if-match",
    );
    error_of(store.delete("k").await, ErrorKind::NotFound, "delete");
}

/// A server that is gone (killed: connections refused) is a transient error, after the
/// client's retries, for reads and conditional writes alike.
#[tokio::test]
async fn a_stopped_server_is_a_transient_error() {
    let s3 = S3Server::start().await;
    let store = s3.store("");
    store
        .put("k", b"v".to_vec(), Precondition::None)
        .await
        .unwrap();
    drop(s3);
    let started = Instant::now();
    let message = error_of(store.get("k").await, ErrorKind::Transient, "get");
    assert!(message.contains("could not reach the server"), "{message}");
    assert!(
        message.contains("[transient, retries exhausted]"),
        "{message}"
    );
    let put = store.put("k", b"w".to_vec(), Precondition::Absent).await;
    assert!(error_of(put, ErrorKind::Transient, "put").contains("[transient"));
    assert!(store.exists("k").await.unwrap_err().is_transient());
    println!(
        "three requests to a stopped server failed in {:?}",
        started.elapsed()
    );
}

/// A key that may read but not write: reads work, every write is access denied (so the
/// probe a worker writes fails, and says so), nothing is written.
#[tokio::test]
async fn a_read_only_key_reads_but_cannot_write() {
    let s3 = S3Server::start().await;
    s3.store("")
        .put("k", b"v".to_vec(), Precondition::None)
        .await
        .unwrap();
    let store = s3.read_only_store("");
    assert_eq!(store.get("k").await.unwrap().unwrap().bytes, b"v");
    assert!(store.exists("k").await.unwrap());
    assert_eq!(store.list("").await.unwrap(), vec!["k"]);
    for pre in [Precondition::None, Precondition::Absent] {
        let put = store.put("k2", b"w".to_vec(), pre.clone()).await;
        let message = error_of(put, ErrorKind::AccessDenied, &format!("put {pre:?}"));
        assert!(message.contains("403 AccessDenied"), "{message}");
    }
    error_of(store.delete("k").await, ErrorKind::AccessDenied, "delete");
    error_of(
        store.upload_start("big").await,
        ErrorKind::AccessDenied,
        "upload",
    );
    let probe = taskhost::store::probe(&store, &taskhost::keys::probe("w")).await;
    error_of(probe, ErrorKind::AccessDenied, "probe");
    let writer = s3.store("");
    assert_eq!(
        writer.list("").await.unwrap(),
        vec!["k"],
        "nothing was written"
    );
    taskhost::store::probe(&writer, &taskhost::keys::probe("w"))
        .await
        .unwrap();
    assert_eq!(
        writer.list("").await.unwrap(),
        vec!["k"],
        "the probe is gone"
    );
}

/// The store's clock is read from an answer's `Date` header (a HEAD of a key that need not
/// exist): the server runs on this machine, so its clock agrees with ours.
#[tokio::test]
async fn the_clock_is_read_from_the_date_header() {
    let s3 = S3Server::start().await;
    let store = s3.store("");
    let before = taskhost::time::now_ms();
    let reading = store
        .clock(&taskhost::keys::probe("w"))
        .await
        .unwrap()
        .expect("moto sends a Date header");
    let after = taskhost::time::now_ms();
    assert_eq!(reading.resolution_ms, 1000);
    assert_eq!(reading.store_ms % 1000, 0, "{reading:?}");
    assert!(
        before <= reading.sent_ms
            && reading.sent_ms <= reading.received_ms
            && reading.received_ms <= after,
        "{reading:?} not within {before}..={after}"
    );
    let (least, most) = reading.offset_bounds_ms();
    assert!(least <= 0 && 0 <= most, "{reading:?}");
    assert_eq!(taskhost::worker::skew_ms(&reading), None);
    // A failing store says so.
    drop(s3);
    let err = store.clock(&taskhost::keys::probe("w")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// A sick server or proxy that answers with more than the client reads whole (the test
/// server's `huge-answer` switch: a 400 whose error body is 32 MiB, a listing page of 32 MiB)
/// fails the call as `TooLarge` once 8 MiB arrived, at the first attempt (the same server
/// would send the same again), never collecting the answer whole; the client goes on.
#[tokio::test]
async fn an_answer_too_long_to_read_whole_is_refused() {
    let s3 = S3Server::start().await;
    let store = s3.store("");
    let e = error_of(
        store.get("huge-answer/x").await,
        ErrorKind::TooLarge,
        "a 32 MiB error body",
    );
    assert!(e.contains("longer than the 8388608 bytes"), "{e}");
    let e = error_of(
        store.list("huge-answer/").await,
        ErrorKind::TooLarge,
        "a 32 MiB listing page",
    );
    assert!(e.contains("longer than the 8388608 bytes"), "{e}");
    // Not retried (the SDK retries an answer it could not read, 5 attempts in all).
    let requests = s3.requests();
    let huge = requests
        .iter()
        .filter(|r| r.contains("huge-answer"))
        .count();
    assert_eq!(huge, 2, "one attempt each: {requests:?}");
    // An object of more than 8 MiB is still read whole: only answers the SDK collects are
    // bounded, not an object's bytes.
    let big = vec![7u8; 9 << 20];
    store
        .put("inputs/big", big.clone(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(store.get("inputs/big").await.unwrap().unwrap().bytes, big);
    assert_eq!(store.list("inputs/").await.unwrap(), ["inputs/big"]);
}

/// A ranged read returns at most what was asked; a server that ignores Range (the test
/// server's `ignore-range/` switch) and answers with more is refused as a clear error
/// before the body is held, never buffered whole (before the fix a multi-GB input was).
#[tokio::test]
async fn an_answer_longer_than_asked_is_refused() {
    let s3 = S3Server::start().await;
    let store = s3.store("");
    let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    for key in ["inputs/big", "ignore-range/big"] {
        store
            .put(key, bytes.clone(), Precondition::None)
            .await
            .unwrap();
    }
    // An honest server: exactly the range.
    let got = store
        .get_range("inputs/big", 1000, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, bytes[1000..1010]);
    // One that ignores Range: the whole object is more than asked.
    let e = error_of(
        store.get_range("ignore-range/big", 1000, 10).await,
        ErrorKind::TooLarge,
        "an unranged answer",
    );
    assert!(
        e.contains("more than the 10 asked") && e.contains("Range"),
        "{e}"
    );
    // Asked for as much as the whole object, or more: that answer is the object.
    let whole = store
        .get_range("ignore-range/big", 0, 2 << 20)
        .await
        .unwrap();
    assert_eq!(whole.unwrap(), bytes);
    let tail = store
        .get_range("ignore-range/big", (1 << 20) - 5, 2 << 20)
        .await
        .unwrap();
    assert_eq!(tail.unwrap(), bytes[(1 << 20) - 5..]);
}

#[tokio::test]
async fn ensure_bucket_creates_once() {
    let s3 = S3Server::start().await; // created BUCKET
    assert!(
        !s3.store("").ensure_bucket().await.unwrap(),
        "{BUCKET} exists already"
    );
    let other = S3Store::new(S3Config {
        bucket: "taskhost-other".into(),
        ..s3.config("")
    })
    .unwrap();
    assert!(other.ensure_bucket().await.unwrap());
    assert!(!other.ensure_bucket().await.unwrap());
    other
        .put("k", b"v".to_vec(), Precondition::Absent)
        .await
        .unwrap();
}

#[test]
fn debug_output_hides_the_secret() {
    let config = S3Config {
        endpoint_url: "https://account.r2.cloudflarestorage.com".into(),
        bucket: "jobs".into(),
        access_key_id: "key-id".into(),
        secret_access_key: "the-secret-value".into(),
        prefix: Some("p".into()),
    };
    let store = S3Store::new(config.clone()).unwrap();
    for text in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{store:?}"),
        format!("{store:#?}"),
    ] {
        assert!(!text.contains("the-secret-value"), "{text}");
        assert!(text.contains("account.r2.cloudflarestorage.com"), "{text}");
    }
    assert!(format!("{config:?}").contains("<redacted>"));
}
