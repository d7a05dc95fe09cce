//! Directory locks: one holder at a time whatever deletes remove, no update lost between
//! keys of one directory, and nothing left behind but objects and their directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;
use crate::store::dir::lock::{Staged, lock_dir, lock_for_write};

#[tokio::test]
async fn nothing_but_objects_and_the_directories_that_hold_them_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let s = DirStore::open(tmp.path()).unwrap();
    let t = s
        .put("jobs/a/checkpoint", b"1".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    s.put("jobs/a/result", b"r".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    // A conditional write that fails on an absent key leaves nothing behind.
    assert!(matches!(
        s.put("jobs/b/checkpoint", b"2".to_vec(), Precondition::Matches(t))
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert!(matches!(
        s.put("jobs/a/checkpoint", b"2".to_vec(), Precondition::Absent)
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert_eq!(
        files(tmp.path()),
        ["jobs", "jobs/a", "jobs/a/checkpoint", "jobs/a/result"],
        "no lock file, no temporary file"
    );
    // Deleting takes the directories left empty; the lock file an older version kept beside
    // a key goes with the key.
    s.delete("jobs/a/result").await.unwrap();
    s.delete("jobs/none/result").await.unwrap();
    fs::write(tmp.path().join("jobs/a/.checkpoint.lock"), b"").unwrap();
    assert_eq!(
        files(tmp.path()),
        [
            "jobs",
            "jobs/a",
            "jobs/a/.checkpoint.lock",
            "jobs/a/checkpoint"
        ]
    );
    s.delete("jobs/a/checkpoint").await.unwrap();
    assert_eq!(files(tmp.path()), Vec::<String>::new());
    assert!(tmp.path().is_dir());
    // The key works as before.
    s.put("jobs/a/checkpoint", b"3".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(s.list("jobs/").await.unwrap(), vec!["jobs/a/checkpoint"]);
}

/// Writers (a temporary file staged, then the lock) and deleters (the lock, which may find
/// no directory) of one key, each leaving it without an object half the time, so releases
/// remove the directory that others wait to lock: still one holder at a time.
#[test]
fn a_removed_directory_never_lets_two_holders_in() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let key = root.join("jobs/x/checkpoint");
    let inside = AtomicU64::new(0);
    let held = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (key, inside, held) = (&key, &inside, &held);
            s.spawn(move || {
                for i in 0..300u64 {
                    let writer = t % 2 == 0;
                    let mut staged = Staged::default();
                    let lock = if writer {
                        staged.stage(key, |f| f.write_all(b"x")).unwrap();
                        lock_for_write(key).unwrap()
                    } else {
                        match lock_key(key).unwrap() {
                            Some(lock) => lock,
                            None => continue, // no directory: nothing to delete
                        }
                    };
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    held.fetch_add(1, Ordering::Relaxed);
                    if writer && (t + i) % 4 == 0 {
                        staged.rename_all().unwrap();
                    } else {
                        drop(staged);
                        let _ = fs::remove_file(key);
                    }
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lock.release(root);
                }
            });
        }
    });
    // Every writer held it every time; the deleters often found the directory gone.
    assert!(held.load(Ordering::Relaxed) >= 4 * 300);
    let left = files(root);
    assert!(
        left.iter().all(|f| !f.contains(".tmp.")),
        "temporary files left: {left:?}"
    );
}

/// Whether a process waits for a `flock` on the file with inode `ino` (`/proc/locks` lists
/// waiters with `->`).
fn someone_waits_on(ino: u64) -> bool {
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.contains(" FLOCK ") && l.contains(&format!(":{ino} ")))
}

/// The named check: one waits for a directory's lock while its holder removes it and a
/// directory of the same name is made; the waiter then holds the new directory's lock, not
/// the lock of the directory gone.
#[test]
fn a_lock_waited_for_on_a_removed_directory_is_taken_on_the_new_one() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    let old = fs::metadata(&dir).unwrap().ino();
    let holder = lock_dir(&dir).unwrap().unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| lock_dir(&dir).unwrap().expect("a directory has the name"));
        let started = std::time::Instant::now();
        while !someone_waits_on(old) {
            assert!(started.elapsed() < Duration::from_secs(30), "no waiter");
            std::thread::yield_now();
        }
        fs::remove_dir(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        drop(holder);
        let held = waiter.join().unwrap();
        let fresh = File::open(&dir).unwrap();
        assert!(
            matches!(fresh.try_lock(), Err(fs::TryLockError::WouldBlock)),
            "the waiter holds the removed directory's lock, not the new one's"
        );
        drop(held);
        fresh.try_lock().unwrap();
    });
}

/// Keys of one directory share its lock: read-modify-write counters on several keys of one
/// directory, each writer through its own handle (its own open file, as another process's),
/// lose no increment; and one writer at a time owns a key that create-only writers race to
/// create and delete in another directory, whose removal races their locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_keys_of_one_directory_lose_no_update_and_one_owns_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (writers, rounds, counters) = (8, 25, 4);
    let owned = Arc::new(AtomicBool::new(false));
    let wins = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let s = DirStore::open(tmp.path()).unwrap();
        tasks.spawn(async move {
            for r in 0..rounds {
                let key = format!("jobs/shared/c{}", (w + r) % counters);
                loop {
                    let current = s.get(&key).await.unwrap();
                    let (n, pre) = match current {
                        None => (0, Precondition::Absent),
                        Some(o) => (
                            String::from_utf8(o.bytes).unwrap().parse::<u64>().unwrap(),
                            Precondition::Matches(o.etag),
                        ),
                    };
                    match s.put(&key, (n + 1).to_string().into_bytes(), pre).await {
                        Ok(_) => break,
                        Err(StoreError::PreconditionFailed) => {}
                        Err(e) => panic!("{key}: {e}"),
                    }
                }
            }
        });
        let (s, owned, wins) = (
            DirStore::open(tmp.path()).unwrap(),
            Arc::clone(&owned),
            Arc::clone(&wins),
        );
        tasks.spawn(async move {
            for _ in 0..rounds {
                match s
                    .put("jobs/churn/x", b"mine".to_vec(), Precondition::Absent)
                    .await
                {
                    Ok(_) => {
                        assert!(!owned.swap(true, Ordering::SeqCst), "two owners");
                        wins.fetch_add(1, Ordering::Relaxed);
                        owned.store(false, Ordering::SeqCst);
                        s.delete("jobs/churn/x").await.unwrap();
                    }
                    Err(StoreError::PreconditionFailed) => {}
                    Err(e) => panic!("jobs/churn/x: {e}"),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let s = DirStore::open(tmp.path()).unwrap();
    let mut total = 0;
    for c in 0..counters {
        let o = s.get(&format!("jobs/shared/c{c}")).await.unwrap().unwrap();
        total += String::from_utf8(o.bytes).unwrap().parse::<u64>().unwrap();
    }
    assert_eq!(total, (writers * rounds) as u64, "lost increments");
    assert!(wins.load(Ordering::Relaxed) >= 1);
    // The churned key's directory went with its last delete; nothing else was left.
    let mut want: Vec<String> = (0..counters).map(|c| format!("jobs/shared/c{c}")).collect();
    want.extend(["jobs".into(), "jobs/shared".into()]);
    want.sort();
    assert_eq!(files(tmp.path()), want);
}
