//! Finding the workers of this node that died, and handing their jobs back.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::slots::{SLOTS, Slots, read_entries};
use super::{Host, JobEntry, LOCK, STAGING, STAGING_AGE, check_filesystem};
use crate::checkpoint::{self, Abandoned};
use crate::ids::JobId;
use crate::queue::Queue;
use crate::queue::lanes::Lanes;
use crate::queue::lease::CALL_TIMEOUT;
use crate::store::ObjectStore;

/// A worker whose process is gone, with the jobs it recorded. Its lock is held by this
/// value, so no other worker hands the same jobs back.
#[derive(Debug)]
pub struct Dead {
    /// The dead worker's id (its directory's name, and the owner its checkpoints name).
    pub worker_id: String,
    /// The jobs it recorded, by job id.
    pub entries: Vec<JobEntry>,
    dir: PathBuf,
    _lock: File,
}

impl Dead {
    /// Removes its record.
    pub fn forget(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// Keeps in its record only `left` (jobs of lanes this worker does not read: a worker of
    /// the node that reads them hands them back), or removes it when nothing is left. If the
    /// rewrite fails, the entries not written are left to their leases.
    fn keep_only(self, left: Vec<JobEntry>) {
        if left.is_empty() {
            return self.forget();
        }
        if let Err(e) = rewrite(&self.dir, &left) {
            tracing::warn!(dead_worker = %self.worker_id, error = %e, "cannot keep the dead worker's other jobs on record; their leases will lapse instead");
        }
    }
}

/// Makes the record in `dir` hold exactly `entries`: its slots rewritten, the entries of
/// files of their own removed (an entry too big for a slot gets one again).
fn rewrite(dir: &Path, entries: &[JobEntry]) -> std::io::Result<()> {
    for file in fs::read_dir(dir)?.flatten() {
        let name = file.file_name();
        if name != LOCK && name != SLOTS {
            fs::remove_file(file.path())?;
        }
    }
    let slots = Slots::create(dir)?;
    for (n, entry) in entries.iter().enumerate() {
        if slots.put(entry)?.is_none() {
            let bytes = serde_json::to_vec(entry).expect("an entry serializes");
            fs::write(dir.join(format!("{n}.json")), bytes)?;
        }
    }
    Ok(())
}

/// The workers recorded under `root` on this machine (`host`), other than `me`, whose process
/// is gone. A record of another machine, or of none, is never taken: its lock says nothing
/// here.
pub fn dead_workers(root: &Path, me: &str, host: &Host) -> Vec<Dead> {
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
        if Host::of_record(&path).as_ref() != Some(host) {
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

/// Hands back the jobs of `dead` workers that were leased from one of `lanes`: releases each
/// checkpoint a dead worker still holds, then nacks its message for redelivery at once.
/// Returns how many messages were handed back. A job whose release fails is left to its
/// lease (nacked now, its copy would only be turned away as busy). A record keeps the jobs
/// of other lanes, for a worker of the node that reads them; one with none of ours is left
/// as it is.
pub async fn hand_back<S: ObjectStore>(
    dead: Vec<Dead>,
    queue: &Queue,
    store: &S,
    lanes: &Lanes,
) -> usize {
    let mut handed = 0;
    for mut worker in dead {
        let (jobs, others): (Vec<JobEntry>, Vec<JobEntry>) = std::mem::take(&mut worker.entries)
            .into_iter()
            .partition(|e| lanes.has_subscription(&e.subscription));
        if jobs.is_empty() && !others.is_empty() {
            continue;
        }
        if !jobs.is_empty() {
            tracing::info!(dead_worker = %worker.worker_id, jobs = jobs.len(), "a worker on this node died holding jobs: handing them back now");
        }
        for entry in &jobs {
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
                    &entry.subscription,
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
        worker.keep_only(others);
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
    lanes: Lanes,
    stop: CancellationToken,
) {
    // Where no record can be trusted, none is taken (`NodeRecord::create` said why).
    let host = match check_filesystem(&root).and_then(|()| Host::this()) {
        Ok(host) => host,
        Err(e) => {
            tracing::debug!(dir = %root.display(), error = %e, "not looking for dead workers");
            return;
        }
    };
    loop {
        let dead = dead_workers(&root, &me, &host);
        if !dead.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hand_back(dead, &queue, &store, &lanes) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
}
