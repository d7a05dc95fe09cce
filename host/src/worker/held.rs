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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, Abandoned};
use crate::ids::JobId;
use crate::queue::Queue;
use crate::queue::lease::CALL_TIMEOUT;
use crate::store::ObjectStore;

/// The record's lock file; it holds the [`Host`] that wrote it, as JSON.
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

/// The machine a record was written on: its host name and the kernel's boot id. A lock
/// tells whether a process lives only to processes of the same kernel; host names repeat
/// across machines (container defaults such as `localhost`, one pod name on two nodes), the
/// boot id does not. A record from before a reboot is not taken either: its leases have
/// lapsed by then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub boot_id: String,
}

impl Host {
    /// This machine, as the kernel names it.
    pub fn this() -> io::Result<Host> {
        let read = |path: &str| -> io::Result<String> {
            let text = fs::read_to_string(path)?;
            let text = text.trim();
            if text.is_empty() {
                return Err(io::Error::other(format!("{path} is empty")));
            }
            Ok(text.to_owned())
        };
        Ok(Host {
            name: read("/proc/sys/kernel/hostname")?,
            boot_id: read("/proc/sys/kernel/random/boot_id")?,
        })
    }

    /// The host recorded in a record's lock file; `None` if it names none (a record of an
    /// older version, or one cut short as it was created).
    fn of_record(dir: &Path) -> Option<Host> {
        serde_json::from_slice(&fs::read(dir.join(LOCK)).ok()?).ok()
    }
}

/// Filesystems where this kernel keeps the locks of every process that can reach the files:
/// local disks and memory. An allow-list, because a wrong "local" is what costs: on a shared
/// filesystem a lock held on another machine may look free here (NFS mounted `nolock`, SMB
/// and FUSE servers that keep locks per client or not at all), and a live worker's jobs
/// would be taken from it; a wrong "shared" only costs the shortcut.
const LOCAL_FILESYSTEMS: &[(u32, &str)] = &[
    (0xef53, "ext2/ext3/ext4"),
    (0x5846_5342, "XFS"),
    (0x9123_683e, "Btrfs"),
    (0x2fc1_2fc1, "ZFS"),
    (0xf2f5_2010, "F2FS"),
    (0xca45_1a4e, "bcachefs"),
    (0x5265_4973, "ReiserFS"),
    (0x3153_464a, "JFS"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58f6, "ramfs"),
    // A container's root: its upper layer is on the node's own disk.
    (0x794c_7630, "overlayfs"),
];

/// Shared filesystems, named for the log line only: anything not in [`LOCAL_FILESYSTEMS`]
/// is refused.
const SHARED_FILESYSTEMS: &[(u32, &str)] = &[
    (0x6969, "NFS"),
    (0xff53_4d42, "CIFS"),
    (0xfe53_4d42, "SMB2"),
    (0x517b, "SMB"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9p"),
    (0x00c3_6400, "CephFS"),
    (0x5346_414f, "AFS"),
    (0x6b41_4653, "kAFS"),
    (0x0116_1970, "GFS2"),
    (0x7461_636f, "OCFS2"),
    (0x0bd0_0bd0, "Lustre"),
    (0x7375_7245, "Coda"),
];

/// Whether a filesystem of type `magic` (statfs's `f_type`) keeps its locks in this kernel:
/// `Ok(name)` if so, else `Err` saying what it is.
fn local_filesystem(magic: u32) -> Result<&'static str, String> {
    let named = |list: &[(u32, &'static str)]| {
        list.iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, name)| *name)
    };
    match (named(LOCAL_FILESYSTEMS), named(SHARED_FILESYSTEMS)) {
        (Some(name), _) => Ok(name),
        (None, Some(name)) => Err(format!("a shared filesystem ({name})")),
        (None, None) => Err(format!(
            "a filesystem of unknown type {magic:#x}, maybe a shared one"
        )),
    }
}

/// Checks that records under `dir` can be trusted: it is on a local filesystem
/// (`LOCAL_FILESYSTEMS`). The error says why not, in a sentence.
pub fn check_filesystem(dir: &Path) -> io::Result<()> {
    let magic = filesystem_magic(dir)?;
    local_filesystem(magic).map(drop).map_err(|what| {
        io::Error::other(format!(
            "{} is on {what}, where a dead worker cannot be told from one on another machine",
            dir.display()
        ))
    })
}

// statfs(2) has no safe form in std.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn filesystem_magic(dir: &Path) -> io::Result<u32> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is a `statfs` for the call to fill in.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `st` in.
    let st = unsafe { st.assume_init() };
    // Magic numbers are 32 bits; `f_type`'s width differs between targets.
    Ok(st.f_type as u32)
}

#[cfg(not(target_os = "linux"))]
fn filesystem_magic(_dir: &Path) -> io::Result<u32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the filesystem type is known on Linux only",
    ))
}

/// This worker's record, kept (and locked) for the life of the process; removed on drop.
#[derive(Debug)]
pub struct Record {
    dir: PathBuf,
    _lock: File,
    seq: AtomicU64,
}

impl Record {
    /// Creates the record of `worker_id` under `root` (`<cache dir>/workers`). Refused, with
    /// the reason, where records cannot be trusted: `root` on a filesystem that is not local
    /// ([`check_filesystem`]), or a machine that cannot be named ([`Host::this`]).
    pub fn create(root: &Path, worker_id: &str) -> io::Result<Record> {
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
    // Where no record can be trusted, none is taken (`Record::create` said why).
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

    fn host() -> Host {
        Host::this().unwrap()
    }

    /// A record as a SIGKILLed process leaves it: the lock file (naming `host`, if any) free,
    /// the entries in place.
    fn dead_record(root: &Path, name: &str, host: Option<&Host>, jobs: &[&str]) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir(&dir).unwrap();
        let lock = host.map_or_else(Vec::new, |h| serde_json::to_vec(h).unwrap());
        fs::write(dir.join(LOCK), lock).unwrap();
        for (i, job) in jobs.iter().enumerate() {
            fs::write(
                dir.join(format!("{i}.json")),
                serde_json::to_vec(&entry(job)).unwrap(),
            )
            .unwrap();
        }
        dir
    }

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
        assert!(dead_workers(root.path(), "b", &host()).is_empty());
        drop(a);
        assert!(dead_workers(root.path(), "b", &host()).is_empty());
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
        let host = host();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    // (A record being removed may be seen dead, holding nothing.)
                    for dead in dead_workers(root.path(), "scanner", &host) {
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
        let dir = dead_record(root.path(), "a", Some(&host()), &["j2", "j1"]);
        fs::write(dir.join("9.json"), b"{cut short").unwrap();
        // One that died while creating its record, long ago, and one creating it now.
        let staging = dead_record(root.path(), &format!("{STAGING}x"), Some(&host()), &[]);
        let long_ago = std::time::SystemTime::now() - 2 * STAGING_AGE;
        File::open(&staging)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let starting = root.path().join(format!("{STAGING}y"));
        fs::create_dir(&starting).unwrap();
        File::create(starting.join(LOCK)).unwrap();

        let dead = dead_workers(root.path(), "b", &host());
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].worker_id, "a");
        assert_eq!(dead[0].entries, vec![entry("j1"), entry("j2")]);
        assert!(!staging.exists());
        assert!(starting.exists());
        // While one worker hands them back, no other sees them.
        assert!(dead_workers(root.path(), "c", &host()).is_empty());
        dead.into_iter().for_each(Dead::forget);
        assert!(!dir.exists());
        assert!(dead_workers(root.path(), "c", &host()).is_empty());
    }

    #[test]
    fn a_record_of_another_machine_is_never_taken() {
        let root = tempfile::tempdir().unwrap();
        let here = host();
        let renamed = Host {
            name: format!("{}-other", here.name),
            ..here.clone()
        };
        let rebooted = Host {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..here.clone()
        };
        let others = [
            dead_record(root.path(), "other-name", Some(&renamed), &["j1"]),
            dead_record(root.path(), "other-boot", Some(&rebooted), &["j2"]),
            // Names no machine: from an older version, or cut short.
            dead_record(root.path(), "no-host", None, &["j3"]),
        ];
        fs::write(others[2].join(LOCK), b"{\"name\":").unwrap();
        let mine = dead_record(root.path(), "mine", Some(&here), &["j4"]);
        let dead = dead_workers(root.path(), "me", &here);
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].worker_id, "mine");
        assert_eq!(dead[0].entries, vec![entry("j4")]);
        dead.into_iter().for_each(Dead::forget);
        assert!(!mine.exists());
        // The others' records stay as they were, and their locks were never taken.
        for dir in &others {
            assert!(dir.join("0.json").exists(), "{}", dir.display());
            File::open(dir.join(LOCK)).unwrap().try_lock().unwrap();
        }
        assert!(dead_workers(root.path(), "me", &here).is_empty());
        // A record this version creates names this machine.
        let r = Record::create(root.path(), "new").unwrap();
        assert_eq!(Host::of_record(&r.dir), Some(here));
    }

    #[test]
    fn records_are_kept_only_on_local_filesystems() {
        let cases: &[(u32, bool, &str)] = &[
            (0xef53, true, "ext2/ext3/ext4"),
            (0x5846_5342, true, "XFS"),
            (0x9123_683e, true, "Btrfs"),
            (0x2fc1_2fc1, true, "ZFS"),
            (0x0102_1994, true, "tmpfs"),
            (0x794c_7630, true, "overlayfs"),
            (0x6969, false, "NFS"),
            (0xff53_4d42, false, "CIFS"),
            (0xfe53_4d42, false, "SMB2"),
            (0x517b, false, "SMB"),
            (0x6573_5546, false, "FUSE"),
            (0x0102_1997, false, "9p"),
            (0x00c3_6400, false, "CephFS"),
            (0x0116_1970, false, "GFS2"),
            (0x0bd0_0bd0, false, "Lustre"),
            // Unknown types are refused: procfs, sysfs, anything new.
            (0x9fa0, false, "unknown type 0x9fa0"),
            (0x6265_6572, false, "unknown type 0x62656572"),
            (0, false, "unknown type 0x0"),
        ];
        for &(magic, local, says) in cases {
            let got = local_filesystem(magic);
            assert_eq!(got.is_ok(), local, "{magic:#x}: {got:?}");
            let text = got.map_or_else(|e| e, str::to_owned);
            assert!(text.contains(says), "{magic:#x}: {text}");
        }
        // The real call: a temporary directory is local here (the tests that restart a
        // worker on its node rely on it); /proc is not a place for records.
        let tmp = tempfile::tempdir().unwrap();
        check_filesystem(tmp.path()).unwrap();
        let proc = check_filesystem(Path::new("/proc"))
            .unwrap_err()
            .to_string();
        assert!(proc.contains("unknown type"), "{proc}");
        let root = tmp.path().join("no-such-dir");
        assert!(check_filesystem(&root).is_err());
    }
}
