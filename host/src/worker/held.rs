//! What a worker holds, recorded on the node's disk, so that another worker on the same
//! node (the restarted one, or one running beside it) hands a dead one's jobs back at once
//! instead of waiting for their leases to lapse (up to a whole ack deadline per job).
//!
//! `<cache dir>/workers/<worker id>/` holds a `lock` file, locked (flock, exclusive) for as
//! long as the worker's process lives, and one small JSON file per job it runs
//! (`{subscription, ack_id, job_id}`), written when the job starts and removed once its
//! message is settled. A worker tries to take the lock of every other worker directory
//! there, as it starts and then every [`SCAN_INTERVAL`]: it gets it only if that worker's
//! process is gone (the kernel drops a dead process's locks, whatever killed it; a frozen
//! process keeps them). For each job of a dead worker it releases the checkpoint if the
//! dead worker still holds it
//! ([`checkpoint::release_abandoned`], a conditional write), then nacks the message for
//! redelivery at once: what that worker's SIGTERM handling would have done.
//!
//! **Invariant:** nothing depends on the record for correctness. Without it (a node that
//! vanished, a wiped disk, a filesystem without locks) leases lapse and Pub/Sub redelivers,
//! as before. A message is nacked only once its checkpoint is released or was never the dead
//! worker's, so a redelivered copy is never turned away as busy.

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Abandoned};
use crate::ids::JobId;
use crate::queue::Queue;
use crate::queue::lease::CALL_TIMEOUT;
use crate::store::ObjectStore;

const LOCK: &str = "lock";
/// A worker directory being created: renamed to the worker id once its lock is held, so a
/// scan never mistakes a starting worker for a dead one.
const STAGING: &str = ".new-";
/// A staging directory older than this, and unlocked, belongs to a worker that died.
const STAGING_AGE: Duration = Duration::from_secs(60);

/// One job a worker runs: the message that leases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub subscription: String,
    pub ack_id: String,
    pub job_id: String,
}

/// This worker's record, kept (and locked) for the life of the process; removed on drop.
#[derive(Debug)]
pub struct Record {
    dir: PathBuf,
    _lock: File,
    seq: AtomicU64,
}

impl Record {
    /// Creates the record of `worker_id` under `root` (`<cache dir>/workers`).
    pub fn create(root: &Path, worker_id: &str) -> io::Result<Record> {
        // The id names a directory: one plain path component (HOSTNAME is part of it).
        if worker_id.is_empty() || worker_id.starts_with('.') || worker_id.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the worker id {worker_id:?} cannot name a directory"),
            ));
        }
        private_dir(root)?;
        let staging = root.join(format!("{STAGING}{worker_id}"));
        private_dir(&staging)?;
        let lock = File::create(staging.join(LOCK))?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("the new record is locked already"),
        })?;
        let dir = root.join(worker_id);
        fs::rename(&staging, &dir)?;
        Ok(Record {
            dir,
            _lock: lock,
            seq: AtomicU64::new(0),
        })
    }

    /// Records `entry` until the returned guard is dropped. A failed write only costs the
    /// shortcut (it is logged).
    pub fn hold(&self, entry: &Entry) -> Held {
        let path = self
            .dir
            .join(format!("{}.json", self.seq.fetch_add(1, Ordering::Relaxed)));
        let bytes = serde_json::to_vec(entry).expect("an entry serializes");
        match fs::write(&path, bytes) {
            Ok(()) => Held(Some(path)),
            Err(e) => {
                tracing::warn!(job = %entry.job_id, error = %e, "cannot record the job on this node's disk; if this worker dies, its lease lapses instead");
                Held(None)
            }
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One recorded job: the entry is removed when this is dropped.
#[derive(Debug)]
pub struct Held(Option<PathBuf>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// A worker whose process is gone, with the jobs it recorded. Its lock is held by this
/// value, so no other worker hands the same jobs back.
#[derive(Debug)]
pub struct Dead {
    pub worker_id: String,
    pub entries: Vec<Entry>,
    dir: PathBuf,
    _lock: File,
}

impl Dead {
    /// Removes its record.
    pub fn forget(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The workers recorded under `root`, other than `me`, whose process is gone.
pub fn dead_workers(root: &Path, me: &str) -> Vec<Dead> {
    let Ok(dirs) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dead = Vec::new();
    for dir in dirs.flatten() {
        let Ok(name) = dir.file_name().into_string() else {
            continue;
        };
        if name == me {
            continue;
        }
        let path = dir.path();
        let staging = name.starts_with(STAGING);
        // A worker creating its record takes the lock a moment after the file exists: a
        // fresh staging directory is not even tried, or this scan's lock could make that
        // worker's own fail.
        if staging && !older_than(&path, STAGING_AGE) {
            continue;
        }
        let Ok(lock) = File::open(path.join(LOCK)) else {
            continue;
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue, // alive (maybe frozen): leave it
            Err(TryLockError::Error(e)) => {
                tracing::debug!(dir = %path.display(), error = %e, "cannot tell whether a worker lives");
                continue;
            }
        }
        if staging {
            // Died while creating its record: it held nothing.
            let _ = fs::remove_dir_all(&path);
            continue;
        }
        dead.push(Dead {
            worker_id: name,
            entries: read_entries(&path),
            dir: path,
            _lock: lock,
        });
    }
    dead
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|a| a > age)
}

fn read_entries(dir: &Path) -> Vec<Entry> {
    let Ok(files) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<Entry> = files
        .flatten()
        .filter(|f| f.file_name() != LOCK)
        .filter_map(|f| serde_json::from_slice(&fs::read(f.path()).ok()?).ok())
        .collect();
    entries.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    entries
}

/// Hands back the jobs of `dead` workers that were leased from `subscription`: releases each
/// checkpoint a dead worker still holds, then nacks its message for redelivery at once.
/// Returns how many messages were handed back. A job whose release fails is left to its
/// lease (nacked now, its copy would only be turned away as busy).
pub async fn hand_back<S: ObjectStore>(
    dead: Vec<Dead>,
    queue: &Queue,
    store: &S,
    subscription: &str,
) -> usize {
    let mut handed = 0;
    for worker in dead {
        let jobs: Vec<&Entry> = worker
            .entries
            .iter()
            .filter(|e| e.subscription == subscription)
            .collect();
        if !jobs.is_empty() {
            tracing::info!(dead_worker = %worker.worker_id, jobs = jobs.len(), "a worker on this node died holding jobs: handing them back now");
        }
        for entry in jobs {
            let released = match entry.job_id.parse::<JobId>() {
                Err(_) => Abandoned::NotHeld,
                Ok(job) => {
                    match checkpoint::release_abandoned(store, &job, &worker.worker_id).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(job = %entry.job_id, error = %e, "cannot release the dead worker's checkpoint; its lease will lapse instead");
                            continue;
                        }
                    }
                }
            };
            let nacked = tokio::time::timeout(
                CALL_TIMEOUT,
                queue.modify_ack_deadline(
                    subscription,
                    std::slice::from_ref(&entry.ack_id),
                    Duration::ZERO,
                ),
            )
            .await;
            match nacked {
                Ok(Ok(_)) => {
                    handed += 1;
                    tracing::info!(job = %entry.job_id, dead_worker = %worker.worker_id, checkpoint_released = (released == Abandoned::Released), "handed a dead worker's job back");
                }
                // Settled or redelivered meanwhile: nothing to hand back.
                Ok(Err(e)) => {
                    tracing::debug!(job = %entry.job_id, error = %e, "the dead worker's message is no longer leased")
                }
                Err(_) => {
                    tracing::warn!(job = %entry.job_id, "handing back the dead worker's message timed out; its lease will lapse instead")
                }
            }
        }
        worker.forget();
    }
    handed
}

/// How often a running worker looks for workers that died on its node.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Hands back the jobs of the workers recorded under `root` that died, at once and then
/// every [`SCAN_INTERVAL`], until `stop` is cancelled: a worker restarted on the node finds
/// its predecessor as it starts, and the other workers there find one that is not restarted.
pub async fn watch<S: ObjectStore>(
    root: PathBuf,
    me: String,
    queue: Queue,
    store: S,
    subscription: String,
    stop: CancellationToken,
) {
    loop {
        let dead = dead_workers(&root, &me);
        if !dead.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hand_back(dead, &queue, &store, &subscription) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
}

fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &str) -> Entry {
        Entry {
            subscription: "sub".into(),
            ack_id: format!("ack-{job}"),
            job_id: job.into(),
        }
    }

    #[test]
    fn a_live_record_is_never_taken_and_a_dropped_one_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let a = Record::create(root.path(), "a").unwrap();
        let _held = a.hold(&entry("j1"));
        // The same process, another open file: the lock is still held, so `a` is alive.
        assert!(dead_workers(root.path(), "b").is_empty());
        drop(a);
        assert!(dead_workers(root.path(), "b").is_empty());
        assert!(!root.path().join("a").exists());
    }

    #[test]
    fn a_worker_id_that_is_no_plain_name_gets_no_record() {
        let root = tempfile::tempdir().unwrap();
        for id in ["", ".hidden", "../../escape-1-abc", "a/b"] {
            assert!(Record::create(root.path(), id).is_err(), "{id:?}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_scan_never_makes_a_starting_worker_fail_to_create_its_record() {
        let root = tempfile::tempdir().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    // (A record being removed may be seen dead, holding nothing.)
                    for dead in dead_workers(root.path(), "scanner") {
                        assert!(dead.entries.is_empty(), "{dead:?}");
                    }
                }
            });
            let failed: Vec<String> = (0..300)
                .filter_map(|i| Record::create(root.path(), &format!("w{i}")).err())
                .map(|e| e.to_string())
                .collect();
            done.store(true, Ordering::Relaxed);
            assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
        });
    }

    #[test]
    fn a_record_lists_the_jobs_held_until_settled() {
        let root = tempfile::tempdir().unwrap();
        let a = Record::create(root.path(), "a").unwrap();
        let _h1 = a.hold(&entry("j1"));
        let done = a.hold(&entry("j2"));
        let _h3 = a.hold(&entry("j3"));
        drop(done);
        assert_eq!(read_entries(&a.dir), vec![entry("j1"), entry("j3")]);
    }

    #[test]
    fn a_record_whose_lock_is_free_is_dead_and_handed_to_one_worker() {
        let root = tempfile::tempdir().unwrap();
        // A record as a SIGKILLed process leaves it: entries in place, the lock free.
        let dir = root.path().join("a");
        fs::create_dir(&dir).unwrap();
        File::create(dir.join(LOCK)).unwrap();
        for (i, job) in ["j2", "j1"].iter().enumerate() {
            fs::write(
                dir.join(format!("{i}.json")),
                serde_json::to_vec(&entry(job)).unwrap(),
            )
            .unwrap();
        }
        fs::write(dir.join("9.json"), b"{cut short").unwrap();
        // One that died while creating its record, long ago, and one creating it now.
        let staging = root.path().join(format!("{STAGING}x"));
        fs::create_dir(&staging).unwrap();
        File::create(staging.join(LOCK)).unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * STAGING_AGE;
        File::open(&staging)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let starting = root.path().join(format!("{STAGING}y"));
        fs::create_dir(&starting).unwrap();
        File::create(starting.join(LOCK)).unwrap();

        let dead = dead_workers(root.path(), "b");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].worker_id, "a");
        assert_eq!(dead[0].entries, vec![entry("j1"), entry("j2")]);
        assert!(!staging.exists());
        assert!(starting.exists());
        // While one worker hands them back, no other sees them.
        assert!(dead_workers(root.path(), "c").is_empty());
        dead.into_iter().for_each(Dead::forget);
        assert!(!dir.exists());
        assert!(dead_workers(root.path(), "c").is_empty());
    }
}
