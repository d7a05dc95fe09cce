//! The directory store's own tests (the store contract runs in `tests/all`): here the
//! objects, uploads and the group commit; `locks.rs` the directory locks and what a store
//! leaves behind; `notes.rs` notes; `sweep.rs` the sweep of dead writers' temporary files.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::store::Multipart;

mod locks;
mod notes;
mod sweep;

/// Everything under `root` but `.uploads`, as relative paths.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".uploads" {
                continue;
            }
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn conditional_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    assert!(s.get("jobs/a/checkpoint").await.unwrap().is_none());
    let t1 = s
        .put("jobs/a/checkpoint", b"one".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(matches!(
        s.put("jobs/a/checkpoint", b"two".to_vec(), Precondition::Absent)
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    let t2 = s
        .put(
            "jobs/a/checkpoint",
            b"two".to_vec(),
            Precondition::Matches(t1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(t1, t2);
    // A stale writer (holding t1) loses.
    assert!(matches!(
        s.put(
            "jobs/a/checkpoint",
            b"three".to_vec(),
            Precondition::Matches(t1)
        )
        .await,
        Err(StoreError::PreconditionFailed)
    ));
    let got = s.get("jobs/a/checkpoint").await.unwrap().unwrap();
    assert_eq!(got.bytes, b"two");
    assert_eq!(got.etag, t2);
    assert!(matches!(
        s.put("jobs/b/x", b"x".to_vec(), Precondition::Matches(t2))
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert_eq!(s.list("jobs/").await.unwrap(), vec!["jobs/a/checkpoint"]);
    assert!(s.exists("jobs/a/checkpoint").await.unwrap());
    assert!(s.path("../etc/passwd").is_err());
    // A component may start with `.` (a job id may): stored under another name, listed
    // and read back under its own.
    s.put("jobs/.hidden/x", b"h".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        s.list("jobs/.hidden/").await.unwrap(),
        vec!["jobs/.hidden/x"]
    );
    assert_eq!(s.get("jobs/.hidden/x").await.unwrap().unwrap().bytes, b"h");
    s.delete("jobs/.hidden/x").await.unwrap();
    assert!(!s.exists("jobs/.hidden/x").await.unwrap());
    s.delete("jobs/.hidden/x").await.unwrap();
    assert!(s.path("jobs/../x").is_err());
}

#[test]
fn io_errors_get_their_kind() {
    use io::ErrorKind as K;
    for (io, want) in [
        (K::NotFound, ErrorKind::NotFound),
        (K::PermissionDenied, ErrorKind::AccessDenied),
        (K::ReadOnlyFilesystem, ErrorKind::AccessDenied),
        (K::IsADirectory, ErrorKind::BadRequest),
        (K::NotADirectory, ErrorKind::BadRequest),
        (K::InvalidInput, ErrorKind::BadRequest),
        (K::StorageFull, ErrorKind::Transient),
        (K::TimedOut, ErrorKind::Transient),
        (K::Interrupted, ErrorKind::Transient),
        (K::Other, ErrorKind::Transient),
    ] {
        assert_eq!(io_kind(io), want, "{io:?}");
    }
}

/// The probe a worker writes fails where a write fails, even while reads work: here the
/// probe's key is taken by a directory (tests run as root, which file modes do not stop).
#[tokio::test]
async fn the_probe_fails_where_writes_fail_while_reads_work() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    s.put("jobs/a/result", b"r".to_vec(), Precondition::None)
        .await
        .unwrap();
    let probe = crate::keys::probe("w");
    crate::store::probe(&s, &probe).await.unwrap();
    assert!(!s.exists(&probe).await.unwrap(), "the probe is deleted");
    fs::create_dir_all(tmp.path().join(&probe).join("x")).unwrap();
    let e = crate::store::probe(&s, &probe).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
    assert!(!e.is_transient());
    assert_eq!(s.get("jobs/a/result").await.unwrap().unwrap().bytes, b"r");
    // An invalid key is a bad request too.
    let e = s.get("../x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_only_has_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    for key in ["k/1", "k/2", "k/3"] {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.put(
                        key,
                        format!("writer {i}").into_bytes(),
                        Precondition::Absent,
                    )
                    .await
                    .is_ok()
                })
            })
            .collect();
        let mut wins = 0;
        for h in handles {
            wins += h.await.unwrap() as usize;
        }
        assert_eq!(wins, 1, "{key}");
    }
}

/// A create-only write on a taken key fails before it writes anything: its directory is not
/// touched (no temporary file made and removed: on ext4 without a journal a removed inode
/// slows the next allocations down).
#[tokio::test]
async fn a_create_only_write_on_a_taken_key_writes_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    s.put("k/1", b"first".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    let dir = tmp.path().join("k");
    let before = fs::metadata(&dir).unwrap().modified().unwrap();
    // Longer than the filesystem's timestamp granularity (a few ms), so a change would show.
    std::thread::sleep(Duration::from_millis(30));
    let err = s
        .put("k/1", b"second".to_vec(), Precondition::Absent)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed), "{err}");
    assert_eq!(fs::metadata(&dir).unwrap().modified().unwrap(), before);
    assert_eq!(s.get("k/1").await.unwrap().unwrap().bytes, b"first");
}

#[tokio::test]
async fn uploads_leave_nothing_once_completed_aborted_or_abandoned() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let uploads = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(tmp.path().join(".uploads"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let done = s.upload_start("a/done").await.unwrap();
    let part = s
        .upload_part("a/done", &done, 1, b"part".to_vec())
        .await
        .unwrap();
    s.upload_complete("a/done", &done, &[part]).await.unwrap();
    assert_eq!(s.get("a/done").await.unwrap().unwrap().bytes, b"part");
    let aborted = s.upload_start("a/aborted").await.unwrap();
    s.upload_part("a/aborted", &aborted, 1, b"part".to_vec())
        .await
        .unwrap();
    s.upload_abort("a/aborted", &aborted).await.unwrap();
    assert_eq!(uploads(), Vec::<String>::new());

    // One whose writer died long ago, and one at work: the next start removes the first.
    let old = s.upload_start("a/old").await.unwrap();
    let long_ago = std::time::SystemTime::now() - ABANDONED_UPLOAD_AGE - Duration::from_secs(60);
    File::open(tmp.path().join(".uploads").join(&old))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let working = s.upload_start("a/working").await.unwrap();
    let next = s.upload_start("a/next").await.unwrap();
    let mut want = vec![working, next];
    want.sort();
    assert_eq!(uploads(), want);
}

#[tokio::test]
async fn an_undoable_write_is_visible_at_once_and_durable_with_the_next_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("jobs/u{i}/checkpoint")).collect();
    for key in &keys {
        s.put_undoable(key, b"claim".to_vec(), Precondition::Absent)
            .await
            .unwrap();
        // Visible at once, conditional as any write, and not flushed.
        assert_eq!(s.get(key).await.unwrap().unwrap().bytes, b"claim");
        assert!(matches!(
            s.put_undoable(key, b"again".to_vec(), Precondition::Absent)
                .await,
            Err(StoreError::PreconditionFailed)
        ));
        assert!(!s.is_durable(key), "{key} was flushed by its own write");
    }
    assert_eq!(s.flushes(), 0, "undoable writes waited for a flush");
    // One durable write (a clone shares the group commit) flushes them all, at once.
    s.clone()
        .put("jobs/other/result", b"{}".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(s.flushes(), 1);
    for key in keys.iter().chain([&"jobs/other/result".to_string()]) {
        assert!(s.is_durable(key), "{key} is not durable after the flush");
    }
}

#[tokio::test]
async fn concurrent_durable_writes_share_flushes_and_each_returns_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let writes = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..writes {
        let s = s.clone();
        tasks.spawn(async move {
            let key = format!("jobs/d{i}/result");
            s.put_with_note(
                &key,
                vec![b'x'; 100],
                Precondition::Absent,
                Some("n".into()),
            )
            .await
            .unwrap();
            // Durable when it returns, whatever the other writers do.
            assert!(s.is_durable(&key), "{key} returned before its flush");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // No write flushed more than once: writers that came during a flush joined the next.
    let flushes = s.flushes();
    assert!((1..=writes).contains(&flushes), "{flushes} flushes");
    eprintln!("{writes} concurrent durable writes: {flushes} flushes");
}

#[tokio::test]
async fn a_flush_of_a_directory_deleted_since_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    s.put_undoable("jobs/gone/checkpoint", b"c".to_vec(), Precondition::None)
        .await
        .unwrap();
    // The delete removes the key's directory, which the next flush would have synced.
    s.delete("jobs/gone/checkpoint").await.unwrap();
    assert!(!tmp.path().join("jobs/gone").exists());
    s.put("jobs/kept/result", b"r".to_vec(), Precondition::None)
        .await
        .unwrap();
    assert!(s.is_durable("jobs/gone/checkpoint") && s.is_durable("jobs/kept/result"));
}

#[tokio::test]
async fn make_durable_flushes_what_a_write_left_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let key = "jobs/d/result";
    s.put_undoable(key, b"{}".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(!s.is_durable(key));
    s.make_durable(key).await.unwrap();
    assert!(
        s.is_durable(key),
        "make_durable did not flush its directory"
    );
    assert_eq!(s.flushes(), 1);
    // A key never written: its directory does not exist, which is nothing to keep.
    s.make_durable("jobs/none/result").await.unwrap();
    assert!(s.make_durable("../x").await.is_err(), "an invalid key");
}

/// A write that makes its key's directory (a job's first) records the directories above it
/// for the flush too: the new directory's entry is in its parent, durable only once that is
/// fsynced. A write into a directory that exists records only that one.
#[tokio::test]
async fn a_new_directory_is_made_durable_in_the_directories_above_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let jobs = s.root().join("jobs");
    s.put("jobs/a/result", b"r".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(s.commit.is_flushed(&jobs));
    // A job's first write makes jobs/b: jobs/ holds its new entry, not flushed yet.
    s.put_undoable("jobs/b/checkpoint", b"c".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(!s.commit.is_flushed(&jobs), "jobs/ was not recorded");
    assert!(!s.is_durable("jobs/b/checkpoint"));
    // The next flush (make_durable records only jobs/b) takes jobs/ with it.
    s.make_durable("jobs/b/checkpoint").await.unwrap();
    assert!(s.commit.is_flushed(&jobs));
    assert!(s.is_durable("jobs/b/checkpoint"));
    // Into a directory that exists: only that one.
    s.put_undoable("jobs/b/other", b"o".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(
        s.commit.is_flushed(&jobs),
        "jobs/ recorded for a write that made nothing"
    );
    assert!(!s.is_durable("jobs/b/other"));
    // Several levels made at once: each directory above the key's, up to the root.
    s.put_undoable(
        "jobs/c/artifacts/x/part",
        b"p".to_vec(),
        Precondition::Absent,
    )
    .await
    .unwrap();
    for d in [
        "jobs/c/artifacts/x",
        "jobs/c/artifacts",
        "jobs/c",
        "jobs",
        "",
    ] {
        let dir = s.root().join(d);
        assert!(
            !s.commit.is_flushed(&dir),
            "{} was not recorded",
            dir.display()
        );
    }
}
