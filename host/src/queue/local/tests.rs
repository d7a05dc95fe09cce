//! The local queue's own unit tests (its contract with Pub/Sub runs in `tests/all`).

use super::*;

#[test]
fn handles_cross_threads_and_errors_convert_to_anyhow() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<LocalQueue>();
    shared::<LocalQueueError>();
}

#[test]
fn full_names_become_ids() {
    for (kind, name, want) in [
        ("topics", "jobs", Some("jobs")),
        ("topics", "projects/p/topics/jobs", Some("jobs")),
        ("subscriptions", "projects/p/subscriptions/w", Some("w")),
        // Another kind's path is kept whole: it is not a name of this kind.
        (
            "topics",
            "projects/p/subscriptions/w",
            Some("projects/p/subscriptions/w"),
        ),
        ("topics", "", None),
        ("topics", "projects/p/topics/", None),
    ] {
        let got = resource_id("test", kind, name).ok();
        assert_eq!(got.as_deref(), want, "{kind} {name}");
    }
}

#[test]
fn dead_letter_is_due_at_the_limit_only_with_a_topic() {
    let mut policy = Policy {
        topic: "t".into(),
        ack_deadline_secs: 10,
        dead_letter_topic: Some("dead".into()),
        max_delivery_attempts: 3,
        retention_ms: 1,
    };
    assert_eq!(policy.dead_letter_due(2), None);
    assert_eq!(policy.dead_letter_due(3), Some("dead"));
    assert_eq!(policy.dead_letter_due(4), Some("dead"));
    policy.dead_letter_topic = None;
    assert_eq!(policy.dead_letter_due(100), None);
}

#[test]
fn busy_errors_are_transient_others_are_not() {
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    let err = Fail::from(busy).into_error("pull", "w");
    assert!(err.is_transient());
    assert_eq!(
        err.to_string().split(':').next(),
        Some("local queue pull `w`")
    );
    let full =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    assert!(!Fail::from(full).into_error("ack", "w").is_transient());
    assert!(
        Fail::NotFound("x".into())
            .into_error("a", "b")
            .is_not_found()
    );
}

/// Every pull drops the messages past their retention first: that statement searches an
/// index, never scans the subscription's whole backlog (a pull's cost grew with it: at
/// 8,000 queued jobs SQLite was the worker's top function), in a file made now and in
/// one made before the index existed (it is added on open).
#[tokio::test]
async fn the_retention_purge_of_a_pull_searches_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let plan = || {
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", receive::PURGE_EXPIRED))
            .unwrap();
        let rows = stmt
            .query_map(params!["w", 0], |r| r.get::<_, String>(3))
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    };
    LocalQueue::open(&path).await.unwrap();
    let now = plan();
    assert!(now.contains("USING INDEX deliveries_by_age"), "{now}");
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP INDEX deliveries_by_age")
        .unwrap();
    let before = plan();
    assert!(!before.contains("deliveries_by_age"), "{before}");
    LocalQueue::open(&path).await.unwrap();
    let reopened = plan();
    assert!(
        reopened.contains("USING INDEX deliveries_by_age"),
        "{reopened}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("queue.db");
    LocalQueue::open(&path).await.unwrap();
    // Reopening a current file is fine.
    LocalQueue::open(&path).await.unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = LocalQueue::open(&path).await.unwrap_err();
    assert!(err.is_invalid(), "{err}");
    assert!(err.to_string().contains("newer taskhost"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = LocalQueue::open(&path).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("queue.db"), "{err}");
}
