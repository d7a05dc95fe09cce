//! The worker's node record: the jobs a worker runs, recorded on the node's disk, so that another worker on the same
//! node (the restarted one, or one running beside it) hands a dead one's jobs back at once
//! instead of waiting for their leases to lapse (up to a whole ack deadline per job).
//!
//! `<cache dir>/workers/<worker id>/` holds a `lock` file, locked (flock, exclusive) for as
//! long as the worker's process lives, and the file `jobs` with one slot per job it runs
//! (`{subscription, ack_id, job_id}`, `slots.rs`), written in place when the job starts and
//! blanked once its message is settled. A worker tries to take the lock of every other worker directory
//! there, as it starts and then every [`SCAN_INTERVAL`]: it gets it only if that worker's
//! process is gone (the kernel drops a dead process's locks, whatever killed it; a frozen
//! process keeps them). For each job of a dead worker it releases the checkpoint if the
//! dead worker still holds it
//! ([`checkpoint::release_abandoned`](crate::checkpoint::release_abandoned), a conditional write), then nacks the message for
//! redelivery at once: what that worker's SIGTERM handling would have done.
//!
//! A free lock proves a process dead only to the processes of the same kernel, on a
//! filesystem whose locks that kernel keeps. So the record is kept only where the cache
//! directory is on a local filesystem ([`check_filesystem`]: NFS, SMB, FUSE and the other
//! shared filesystems are refused), and every record names the machine whose process wrote
//! it ([`Host`]): a scan never takes a record of another machine, whatever its lock says.
//!
//! **Invariant:** nothing depends on the record for correctness. Without it (a node that
//! vanished, a wiped disk, a shared or unknown filesystem) leases lapse and Pub/Sub
//! redelivers, as before. A message is nacked only once its checkpoint is released or was
//! never the dead worker's, so a redelivered copy is never turned away as busy.

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod machine;
mod reclaim;
mod slots;
#[cfg(test)]
mod tests;

pub use machine::{Host, check_filesystem};
pub use reclaim::{Dead, SCAN_INTERVAL, dead_workers, hand_back, watch};
use slots::{Held, Slots};

/// The record's lock file; it holds the [`Host`] that wrote it, as JSON.
pub(crate) const LOCK: &str = "lock";
/// A worker directory being created: renamed to the worker id once its lock is held, so a
/// scan never mistakes a starting worker for a dead one.
pub(crate) const STAGING: &str = ".new-";
/// A staging directory older than this, and unlocked, belongs to a worker that died.
pub(crate) const STAGING_AGE: Duration = Duration::from_secs(60);

/// One job a worker runs: the message that leases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    /// The subscription the message was pulled from (only a worker pulling from it may
    /// nack it).
    pub subscription: String,
    /// The delivery's ack id: what the nack names.
    pub ack_id: String,
    /// The job's id as the message gave it (not parsed: a record is read back as it is).
    pub job_id: String,
}

/// This worker's record, kept (and locked) for the life of the process; removed on drop.
#[derive(Debug)]
pub struct NodeRecord {
    pub(crate) dir: PathBuf,
    _lock: File,
    slots: Arc<Slots>,
    /// Names the files of entries too big for a slot.
    seq: AtomicU64,
}

impl NodeRecord {
    /// Creates the record of `worker_id` under `root` (`<cache dir>/workers`). Refused, with
    /// the reason, where records cannot be trusted: `root` on a filesystem that is not local
    /// ([`check_filesystem`]), or a machine that cannot be named ([`Host::this`]).
    pub fn create(root: &Path, worker_id: &str) -> io::Result<NodeRecord> {
        // The id names a directory: one plain path component (HOSTNAME is part of it).
        if worker_id.is_empty() || worker_id.starts_with('.') || worker_id.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the worker id {worker_id:?} cannot name a directory"),
            ));
        }
        private_dir(root)?;
        check_filesystem(root)?;
        let host = Host::this()
            .map_err(|e| io::Error::other(format!("cannot tell which machine this is: {e}")))?;
        let staging = root.join(format!("{STAGING}{worker_id}"));
        private_dir(&staging)?;
        let mut lock = File::create(staging.join(LOCK))?;
        lock.write_all(&serde_json::to_vec(&host).expect("a host serializes"))?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("the new record is locked already"),
        })?;
        let slots = Arc::new(Slots::create(&staging)?);
        let dir = root.join(worker_id);
        fs::rename(&staging, &dir)?;
        Ok(NodeRecord {
            dir,
            _lock: lock,
            slots,
            seq: AtomicU64::new(0),
        })
    }

    /// Records `entry` until the returned guard is dropped. A failed write only costs the
    /// shortcut (it is logged).
    pub fn list(&self, entry: &JobEntry) -> Listed {
        let written = self.slots.put(entry).and_then(|slot| match slot {
            Some(slot) => Ok(Held::Slot(Arc::clone(&self.slots), slot)),
            None => {
                let path = self
                    .dir
                    .join(format!("{}.json", self.seq.fetch_add(1, Ordering::Relaxed)));
                let bytes = serde_json::to_vec(entry).expect("an entry serializes");
                fs::write(&path, bytes).map(|()| Held::File(path))
            }
        });
        match written {
            Ok(held) => Listed { _held: Some(held) },
            Err(e) => {
                tracing::warn!(job = %entry.job_id, error = %e, "cannot record the job on this node's disk; if this worker dies, its lease lapses instead");
                Listed { _held: None }
            }
        }
    }
}

impl Drop for NodeRecord {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One recorded job: the entry is removed when this is dropped.
#[derive(Debug)]
pub struct Listed {
    _held: Option<Held>,
}

/// Creates `dir` (and its parents) readable by this user only.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}
