//! One object at a time: absent reads, written bytes and their tags, create-only and
//! `If-Match` writes, notes, ranged reads.

use super::*;

pub(super) async fn a_note_goes_with_the_version_it_was_written_with(s3: bool) {
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

pub(super) async fn a_missing_object_is_absent_to_every_read(s3: bool) {
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

pub(super) async fn written_bytes_read_back_with_the_tag_the_write_returned(s3: bool) {
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

pub(super) async fn create_only_succeeds_once(s3: bool) {
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

pub(super) async fn if_match_needs_the_current_tag(s3: bool) {
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
pub(super) async fn an_identical_rewrite_keeps_the_tag(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::checkpoint(&job("same"));
    let put = |bytes: &'static [u8]| s.store.put(&key, bytes.to_vec(), Precondition::None);
    let t1 = put(b"same bytes").await.unwrap();
    let t2 = put(b"same bytes").await.unwrap();
    assert_eq!(t1, t2);
    let t3 = put(b"other bytes").await.unwrap();
    assert_ne!(t1, t3);
}

pub(super) async fn ranged_reads_stop_at_the_end(s3: bool) {
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

/// A whole read holds at most what its reader asked for: an object of more is refused as
/// `TooLarge`, naming its size, and an object of exactly that many bytes is read.
pub(super) async fn a_whole_read_refuses_an_object_larger_than_asked(s3: bool) {
    let s = Setup::new(s3).await;
    let key = keys::result(&job("too-large"));
    let bytes = data(100_000, 7);
    s.store
        .put(&key, bytes.clone(), Precondition::None)
        .await
        .unwrap();
    let e = s.store.get_at_most(&key, 99_999).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(!e.is_transient(), "{e}");
    let said = e.to_string();
    assert!(
        said.contains("100000 bytes") && said.contains("99999"),
        "names the object's size and the bound: {said}"
    );
    let got = s.store.get_at_most(&key, 100_000).await.unwrap().unwrap();
    assert_eq!(got.bytes, bytes, "exactly the bound is read");
    // `get` reads whole objects up to its own bound.
    assert_eq!(s.store.get(&key).await.unwrap().unwrap().bytes, bytes);
    let missing = keys::result(&job("never-written"));
    assert!(s.store.get_at_most(&missing, 0).await.unwrap().is_none());
    // A key prefix is no object, whatever the bound (a directory on the directory store).
    let prefix = key.rsplit_once('/').unwrap().0;
    assert!(s.store.get_at_most(prefix, 0).await.unwrap().is_none());
}
