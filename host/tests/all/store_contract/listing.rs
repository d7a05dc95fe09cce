//! Listing by prefix, in lexical order, across pages.

use super::*;

pub(super) async fn listing_is_by_prefix_in_lexical_order(s3: bool) {
    let s = Setup::new(s3).await;
    let (a, ab, b) = (job("a"), job("ab"), job("b"));
    let module = keys::module(&ModuleHash::of(b"x"));
    let written = [
        keys::result(&a),
        keys::checkpoint(&a),
        keys::checkpoint(&ab),
        keys::error(&b),
        keys::artifact(&a, "out.bin"),
        module.clone(),
    ];
    // Written out of order: the listing sorts.
    for key in written.iter().rev() {
        s.store
            .put(key, key.as_bytes().to_vec(), Precondition::Absent)
            .await
            .unwrap();
    }
    // An upload in progress is not an object yet.
    let pending = keys::artifact(&b, "pending.bin");
    let upload = s.store.upload_start(&pending).await.unwrap();
    s.store
        .upload_part(&pending, &upload, 1, b"part".to_vec())
        .await
        .unwrap();

    let sorted = |keys: &[&String]| {
        let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        v.sort();
        v
    };
    let list = |prefix: String| {
        let store = s.client();
        async move { store.list(&prefix).await.unwrap() }
    };
    let [ra, ca, cab, eb, art, m] = &written;
    assert_eq!(
        list(format!("{}a/", keys::JOBS_PREFIX)).await,
        sorted(&[ra, ca, art]),
        "one job's objects"
    );
    assert_eq!(
        list(keys::artifacts_prefix(&a)).await,
        std::slice::from_ref(art),
        "one job's artifacts"
    );
    assert_eq!(
        list(format!("{}a", keys::JOBS_PREFIX)).await,
        sorted(&[ra, ca, art, cab]),
        "a prefix is a string prefix, not a directory"
    );
    assert_eq!(
        list(keys::JOBS_PREFIX.to_string()).await,
        sorted(&[ra, ca, art, cab, eb]),
    );
    assert_eq!(list("modules/".into()).await, std::slice::from_ref(m));
    assert!(list("nothing/".into()).await.is_empty());
    assert_eq!(
        list(String::new()).await,
        sorted(&[ra, ca, art, cab, eb, m])
    );

    s.store.delete(ca).await.unwrap();
    assert_eq!(
        list(format!("{}a/", keys::JOBS_PREFIX)).await,
        sorted(&[ra, art]),
        "a deleted object is no longer listed"
    );
    s.store.upload_abort(&pending, &upload).await.unwrap();
}

/// More keys than one ListObjectsV2 page (1000): the pages are joined, in order.
pub(super) async fn listing_pages_through_more_than_1000_keys(s3: bool) {
    const N: usize = 1010;
    let s = Setup::new(s3).await;
    let key = |i: usize| keys::result(&job(&format!("j{i:05}")));
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(N / 8 + 1) {
        let (store, chunk) = (s.client(), chunk.to_vec());
        tasks.spawn(async move {
            for i in chunk {
                store
                    .put(&key(i), vec![], Precondition::None)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let listed = s.store.list(keys::JOBS_PREFIX).await.unwrap();
    let expected: Vec<String> = (0..N).map(key).collect();
    assert_eq!(listed.len(), N);
    assert_eq!(listed, expected);
}
