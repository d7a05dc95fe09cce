//! Multipart uploads: invisible until complete, resumable by another client, aborted.

use super::*;

/// Three parts, two of the minimum size and a short last one, sent out of order; one sent
/// twice (the second replaces it); the upload continued and completed by another client,
/// as a worker taking over a job does; the result replaces the object that was there.
pub(super) async fn a_multipart_upload_is_invisible_until_complete_and_can_be_resumed(s3: bool) {
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

pub(super) async fn an_aborted_upload_leaves_the_object_as_it_was(s3: bool) {
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
