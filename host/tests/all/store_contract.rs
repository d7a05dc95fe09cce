//! The object-store contract, run once per backend: the directory store and the S3 server
//! (moto behind tests/s3/serve.py). Every case is one async fn over a [`Setup`]; `contract!`
//! makes a test of it for each backend. What only one backend has (S3 credentials, buckets,
//! key prefixes, the `Date` clock) stays in `store_s3`.
//!
//! Keys are built by `taskhost::keys`, as the host builds them.

use crate::support;

use std::sync::Arc;

use support::s3::S3Server;
use taskhost::ids::{JobId, ModuleHash};
use taskhost::keys;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{
    ETag, ErrorKind, MIN_PART_BYTES, Multipart, ObjectStore, Precondition, StoreError,
};

/// The backend under test, kept alive for the test's length.
enum Backend {
    Dir(tempfile::TempDir),
    S3(S3Server),
}

struct Setup {
    backend: Backend,
    /// The first client, for the cases that need only one.
    store: AnyStore,
}

impl Setup {
    async fn new(s3: bool) -> Setup {
        let backend = if s3 {
            Backend::S3(S3Server::start().await)
        } else {
            Backend::Dir(tempfile::tempdir().unwrap())
        };
        let store = client(&backend);
        Setup { backend, store }
    }

    /// Another client of the same objects, with its own handle (and, on S3, its own
    /// connection pool), as another worker would have.
    fn client(&self) -> AnyStore {
        client(&self.backend)
    }
}

fn client(backend: &Backend) -> AnyStore {
    match backend {
        Backend::Dir(dir) => AnyStore::Dir(DirStore::open(dir.path()).unwrap()),
        Backend::S3(s3) => AnyStore::S3(s3.store("")),
    }
}

fn job(id: &str) -> JobId {
    id.parse().unwrap()
}

fn assert_precondition_failed<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::PreconditionFailed) => {
            assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{what}");
            assert!(!e.is_transient(), "{what}");
        }
        other => panic!("{what}: expected PreconditionFailed, got {other:?}"),
    }
}

/// `n` bytes that differ from part to part (a store that misplaces a part shows).
fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod dir {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(false).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(true).await })*
        }
    };
}

contract!(
    a_missing_object_is_absent_to_every_read,
    written_bytes_read_back_with_the_tag_the_write_returned,
    create_only_succeeds_once,
    if_match_needs_the_current_tag,
    an_identical_rewrite_keeps_the_tag,
    of_racing_create_only_writers_exactly_one_wins,
    of_racing_if_match_writers_exactly_one_wins,
    listing_is_by_prefix_in_lexical_order,
    listing_pages_through_more_than_1000_keys,
    ranged_reads_stop_at_the_end,
    a_multipart_upload_is_invisible_until_complete_and_can_be_resumed,
    an_aborted_upload_leaves_the_object_as_it_was,
    a_note_goes_with_the_version_it_was_written_with,
);

async fn a_note_goes_with_the_version_it_was_written_with(s3: bool) {
    let s = Setup::new(s3).await;
    let (key, note) = (keys::result(&job("n")), r#"{"fuel":12,"wall_ms":3}"#);
    let with = |n: Option<&str>| {
        (s.store).put_with_note(&key, b"r".to_vec(), Precondition::None, n.map(Into::into))
    };
    let tag = with(Some(note)).await.unwrap();
    let got = s.client().get(&key).await.unwrap().unwrap();
    assert_eq!(
        (got.note.as_deref(), got.bytes, &got.etag),
        (Some(note), b"r".to_vec(), &tag)
    );
    assert_eq!(
        s.store.list(keys::JOBS_PREFIX).await.unwrap(),
        [key.as_str()],
        "no key of its own"
    );
    with(None).await.unwrap();
    assert_eq!(
        s.store.get(&key).await.unwrap().unwrap().note,
        None,
        "a write without one drops it"
    );
    with(Some(note)).await.unwrap();
    s.store.delete(&key).await.unwrap();
    s.store
        .put(&key, b"r".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        s.store.get(&key).await.unwrap().unwrap().note,
        None,
        "gone with its object"
    );
}

async fn a_missing_object_is_absent_to_every_read(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::checkpoint(&job("nope"));
    assert!(s.store.get(&key).await.unwrap().is_none());
    assert!(s.store.head(&key).await.unwrap().is_none());
    assert!(!s.store.exists(&key).await.unwrap());
    assert_eq!(s.store.size(&key).await.unwrap(), None);
    assert!(s.store.get_range(&key, 0, 10).await.unwrap().is_none());
    s.store
        .delete(&key)
        .await
        .expect("deleting a missing object is not an error");
}

async fn written_bytes_read_back_with_the_tag_the_write_returned(s3: bool) {
    let s = Setup::new(s3).await;
    let j = job("j");
    for (key, bytes) in [
        (keys::result(&j), b"{\"ok\":42}".to_vec()),
        (keys::error(&j), Vec::new()),
        // Large enough for the SDK's `Expect: 100-continue` and several TCP windows.
        (
            keys::module(&ModuleHash::of(b"big")),
            data(5 * 1024 * 1024, 9),
        ),
    ] {
        let tag = s
            .store
            .put(&key, bytes.clone(), Precondition::None)
            .await
            .unwrap();
        // Read through another client: nothing is cached per client.
        let other = s.client();
        let got = other.get(&key).await.unwrap().expect("just written");
        assert!(got.bytes == bytes, "{key}: other bytes read back");
        assert_eq!(got.etag, tag, "{key}: get returns the tag put returned");
        assert_eq!(other.head(&key).await.unwrap(), Some(tag), "{key}");
        assert_eq!(other.size(&key).await.unwrap(), Some(bytes.len() as u64));
        assert!(other.exists(&key).await.unwrap(), "{key}");
    }
    // A key prefix is no object: it does not exist, on both stores (the directory store
    // keeps it as a directory). (Its size and ranged reads still differ: the directory
    // store answers a directory's size and fails its reads, which the files tests use as a
    // storage failure.)
    let prefix = format!("{}{j}", keys::JOBS_PREFIX);
    let answer = s.store.exists(&prefix).await;
    assert!(matches!(answer, Ok(false)), "{prefix}: {answer:?}");
    let got = s.store.get(&prefix).await.map(|o| o.map(|o| o.bytes));
    assert!(matches!(got, Ok(None)), "{prefix}: {got:?}");
    let head = s.store.head(&prefix).await;
    assert!(matches!(head, Ok(None)), "{prefix}: {head:?}");
    let result = keys::result(&j);
    s.store.delete(&result).await.unwrap();
    assert!(s.store.get(&result).await.unwrap().is_none(), "deleted");
    assert!(!s.client().exists(&result).await.unwrap(), "deleted");
}

async fn create_only_succeeds_once(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::module(&ModuleHash::of(b"m"));
    let tag = s
        .store
        .put(&key, b"first".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_precondition_failed(
        s.store
            .put(&key, b"second".to_vec(), Precondition::Absent)
            .await,
        "second create-only write",
    );
    assert_precondition_failed(
        s.client()
            .put(&key, b"first".to_vec(), Precondition::Absent)
            .await,
        "a create-only write of the same bytes from another client",
    );
    let got = s.store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.bytes, b"first");
    assert_eq!(got.etag, tag);
    // Once deleted, the key may be created again.
    s.store.delete(&key).await.unwrap();
    s.store
        .put(&key, b"again".to_vec(), Precondition::Absent)
        .await
        .expect("create-only after a delete");
}

async fn if_match_needs_the_current_tag(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::checkpoint(&job("j"));
    let t1 = s
        .store
        .put(&key, b"v1".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    let t2 = s
        .store
        .put(&key, b"v2".to_vec(), Precondition::Matches(t1.clone()))
        .await
        .unwrap();
    assert_ne!(t1, t2);
    assert_precondition_failed(
        s.store
            .put(&key, b"stale".to_vec(), Precondition::Matches(t1))
            .await,
        "write on a stale tag",
    );
    assert_precondition_failed(
        s.store
            .put(
                &key,
                b"made up".to_vec(),
                Precondition::Matches(ETag("\"0123456789abcdef0123456789abcdef\"".into())),
            )
            .await,
        "write on a made-up tag",
    );
    let got = s.store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.bytes, b"v2", "failed writes changed nothing");
    assert_eq!(got.etag, t2);
    let t3 = s
        .client()
        .put(&key, b"v3".to_vec(), Precondition::Matches(t2))
        .await
        .expect("another client holding the current tag may write");
    assert_eq!(s.store.get(&key).await.unwrap().unwrap().etag, t3);

    // If-Match on an object that is gone: the precondition does not hold.
    let gone = keys::checkpoint(&job("gone"));
    assert_precondition_failed(
        s.store
            .put(&gone, b"x".to_vec(), Precondition::Matches(t3))
            .await,
        "If-Match on a missing object",
    );
    assert!(!s.store.exists(&gone).await.unwrap());
}

/// Rewriting the same bytes keeps the tag on both stores (S3: the MD5 of a single-part
/// object; the directory store: a hash of the bytes), so `If-Match` cannot tell the two
/// versions apart. This is why the checkpoint header carries a per-write nonce. Pinned here
/// so that nobody relies on the opposite.
async fn an_identical_rewrite_keeps_the_tag(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::checkpoint(&job("same"));
    let put = |bytes: &'static [u8]| s.store.put(&key, bytes.to_vec(), Precondition::None);
    let t1 = put(b"same bytes").await.unwrap();
    let t2 = put(b"same bytes").await.unwrap();
    assert_eq!(t1, t2);
    let t3 = put(b"other bytes").await.unwrap();
    assert_ne!(t1, t3);
}

/// Writers that race on one key, each through its own client; returns the writers whose
/// write succeeded (with the tag) after checking that every other one got
/// `PreconditionFailed`.
async fn race(
    clients: &[AnyStore],
    key: &str,
    pre: Precondition,
    bytes: impl Fn(usize) -> Vec<u8>,
) -> Vec<(usize, ETag)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let (store, key, barrier, pre) =
                (store.clone(), key.to_string(), barrier.clone(), pre.clone());
            let bytes = bytes(w);
            tokio::spawn(async move {
                barrier.wait().await;
                (w, store.put(&key, bytes, pre).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (w, Ok(tag)) => winners.push((w, tag)),
            (_, Err(StoreError::PreconditionFailed)) => {}
            (w, Err(e)) => panic!("{key}: writer {w} failed with {e}"),
        }
    }
    winners
}

/// How many writers race, and on how many keys: enough that a store without atomic
/// conditional writes lets two through (both stores serialise them; the property, not an
/// interleaving, is asserted).
const WRITERS: usize = 16;
const RACES: usize = 6;

/// The fencing invariant: of concurrent create-only writers on one key, exactly one wins
/// and the object holds its bytes.
async fn of_racing_create_only_writers_exactly_one_wins(s3: bool) {
    let s = Setup::new(s3).await;
    let clients: Vec<AnyStore> = (0..WRITERS).map(|_| s.client()).collect();
    let writer = |w: usize| format!("writer {w}").into_bytes();
    for r in 0..RACES {
        let key = keys::checkpoint(&job(&format!("race-{r}")));
        let winners = race(&clients, &key, Precondition::Absent, writer).await;
        assert_eq!(winners.len(), 1, "{key}: winners {winners:?}");
        let (w, tag) = &winners[0];
        let got = s.store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.bytes, writer(*w), "{key}: the winner's bytes");
        assert_eq!(&got.etag, tag, "{key}");
    }
}

/// The same for a takeover: of concurrent writers all holding the current tag, exactly one
/// replaces the object; the others' tag is then stale.
async fn of_racing_if_match_writers_exactly_one_wins(s3: bool) {
    let s = Setup::new(s3).await;
    let clients: Vec<AnyStore> = (0..WRITERS).map(|_| s.client()).collect();
    let key = keys::checkpoint(&job("takeover"));
    let mut tag = s
        .store
        .put(&key, b"original".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    for r in 0..RACES {
        let writer = |w: usize| format!("round {r} writer {w}").into_bytes();
        let winners = race(&clients, &key, Precondition::Matches(tag.clone()), writer).await;
        assert_eq!(winners.len(), 1, "round {r}: winners {winners:?}");
        let (w, won) = &winners[0];
        let got = s.store.get(&key).await.unwrap().unwrap();
        assert_eq!(got.bytes, writer(*w), "round {r}: the winner's bytes");
        assert_eq!(&got.etag, won, "round {r}");
        assert_ne!(won, &tag, "round {r}: the object changed");
        tag = won.clone();
    }
}

async fn listing_is_by_prefix_in_lexical_order(s3: bool) {
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
async fn listing_pages_through_more_than_1000_keys(s3: bool) {
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

async fn ranged_reads_stop_at_the_end(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::input(&ModuleHash::of(b"a").hex());
    let bytes = data(1000, 1);
    s.store
        .put(&key, bytes.clone(), Precondition::None)
        .await
        .unwrap();
    let range = |o, l| s.store.get_range(&key, o, l);
    for (offset, len, want, what) in [
        (0, 1000, &bytes[..], "the whole"),
        (0, 1, &bytes[..1], "the first byte"),
        (10, 20, &bytes[10..30], "the middle"),
        (999, 1, &bytes[999..], "the last byte"),
        (990, 100, &bytes[990..], "cut at the end"),
        (0, 5000, &bytes[..], "longer than the object"),
        (1000, 5, &[][..], "at the end"),
        (5000, 5, &[][..], "past the end"),
    ] {
        assert_eq!(
            range(offset, len).await.unwrap().expect("exists"),
            want,
            "{what}: get_range({offset}, {len})"
        );
    }
    let empty = keys::input(&ModuleHash::of(b"empty").hex());
    s.store
        .put(&empty, vec![], Precondition::None)
        .await
        .unwrap();
    assert_eq!(
        s.store.get_range(&empty, 0, 5).await.unwrap().unwrap(),
        b"",
        "an empty object"
    );
    let missing = keys::input(&ModuleHash::of(b"none").hex());
    assert!(s.store.get_range(&missing, 0, 5).await.unwrap().is_none());
}

/// Three parts, two of the minimum size and a short last one, sent out of order; one sent
/// twice (the second replaces it); the upload continued and completed by another client,
/// as a worker taking over a job does; the result replaces the object that was there.
async fn a_multipart_upload_is_invisible_until_complete_and_can_be_resumed(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::artifact(&job("j"), "big.bin");
    let min = MIN_PART_BYTES;
    let whole = data(2 * min + 123, 2);
    s.store
        .put(&key, b"old".to_vec(), Precondition::None)
        .await
        .unwrap();
    let upload = s.store.upload_start(&key).await.unwrap();
    // A part 2 that the resuming client replaces.
    s.store
        .upload_part(&key, &upload, 2, data(min, 5))
        .await
        .unwrap();
    let p1 = s
        .store
        .upload_part(&key, &upload, 1, whole[..min].to_vec())
        .await
        .unwrap();
    assert_eq!(
        s.store.get(&key).await.unwrap().unwrap().bytes,
        b"old",
        "the object is unchanged until the upload completes"
    );

    // The first client stops here; another one finds the upload and finishes it.
    let other = s.client();
    assert!(other.upload_exists(&key, &upload).await.unwrap());
    let p2 = other
        .upload_part(&key, &upload, 2, whole[min..2 * min].to_vec())
        .await
        .unwrap();
    let p3 = other
        .upload_part(&key, &upload, 3, whole[2 * min..].to_vec())
        .await
        .unwrap();
    let tag = other
        .upload_complete(&key, &upload, &[p1, p2, p3])
        .await
        .unwrap();
    let got = s.store.get(&key).await.unwrap().unwrap();
    assert!(got.bytes == whole, "the parts put together are the bytes");
    assert_eq!(got.etag, tag, "complete returns the object's tag");
    assert_eq!(s.store.size(&key).await.unwrap(), Some(whole.len() as u64));
    assert!(
        !s.store.upload_exists(&key, &upload).await.unwrap(),
        "a completed upload is gone"
    );
}

async fn an_aborted_upload_leaves_the_object_as_it_was(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::artifact(&job("j"), "big.bin");
    let missing = keys::artifact(&job("j"), "never.bin");
    let tag = s
        .store
        .put(&key, b"before".to_vec(), Precondition::None)
        .await
        .unwrap();
    for target in [&key, &missing] {
        let upload = s.store.upload_start(target).await.unwrap();
        s.store
            .upload_part(target, &upload, 1, data(MIN_PART_BYTES, 3))
            .await
            .unwrap();
        s.store
            .upload_part(target, &upload, 2, b"tail".to_vec())
            .await
            .unwrap();
        assert!(s.store.upload_exists(target, &upload).await.unwrap());
        assert!(
            !s.store.exists(&missing).await.unwrap(),
            "{target}: invisible until complete"
        );
        s.client().upload_abort(target, &upload).await.unwrap();
        assert!(
            !s.store.upload_exists(target, &upload).await.unwrap(),
            "{target}: an aborted upload is gone"
        );
        s.store
            .upload_abort(target, &upload)
            .await
            .expect("aborting twice is not an error");
    }
    let got = s.store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.bytes, b"before");
    assert_eq!(got.etag, tag);
    assert!(!s.store.exists(&missing).await.unwrap());
    assert_eq!(
        s.store
            .list(&keys::artifacts_prefix(&job("j")))
            .await
            .unwrap(),
        std::slice::from_ref(&key),
        "nothing of the aborted uploads is listed"
    );
}
