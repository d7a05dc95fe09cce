//! The node record's tests: records of live, dead, starting workers and of other machines.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::machine::local_filesystem;
use super::slots::{self, read_entries};
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

fn entry(job: &str) -> JobEntry {
    JobEntry {
        subscription: "sub".into(),
        ack_id: format!("ack-{job}"),
        job_id: job.into(),
    }
}

#[test]
fn a_live_record_is_never_taken_and_a_dropped_one_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeRecord::create(root.path(), "a").unwrap();
    let _held = a.list(&entry("j1"));
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
        assert!(NodeRecord::create(root.path(), id).is_err(), "{id:?}");
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
            .filter_map(|i| NodeRecord::create(root.path(), &format!("w{i}")).err())
            .map(|e| e.to_string())
            .collect();
        done.store(true, Ordering::Relaxed);
        assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    });
}

#[test]
fn a_record_lists_the_jobs_held_until_settled() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeRecord::create(root.path(), "a").unwrap();
    let _h1 = a.list(&entry("j1"));
    let done = a.list(&entry("j2"));
    let _h3 = a.list(&entry("j3"));
    drop(done);
    assert_eq!(read_entries(&a.dir), vec![entry("j1"), entry("j3")]);
}

/// Entries are slots of one file written in place: a settled job's slot is reused, so the
/// file grows only with the jobs run at once; an entry too big for a slot gets a file of
/// its own, removed when settled.
#[test]
fn a_record_reuses_its_slots_and_keeps_an_oversized_entry_in_a_file() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeRecord::create(root.path(), "a").unwrap();
    for i in 0..100 {
        let _held = a.list(&entry(&format!("j{i}")));
        let _also = a.list(&entry(&format!("k{i}")));
    }
    let slots = a.dir.join(slots::SLOTS);
    assert_eq!(fs::metadata(&slots).unwrap().len(), 2 * slots::SLOT as u64);
    assert_eq!(read_entries(&a.dir), vec![]);
    let big = JobEntry {
        ack_id: "a".repeat(slots::SLOT),
        ..entry("big")
    };
    let held = a.list(&big);
    let _small = a.list(&entry("small"));
    assert_eq!(read_entries(&a.dir), vec![big, entry("small")]);
    assert_eq!(
        fs::read_dir(&a.dir).unwrap().count(),
        3,
        "lock, jobs, one file"
    );
    drop(held);
    assert_eq!(read_entries(&a.dir), vec![entry("small")]);
    assert_eq!(fs::read_dir(&a.dir).unwrap().count(), 2);
}

/// A record cut short or holding bytes of two writes (a power loss during a write) reads as
/// the entries that are whole: a torn slot is no entry, never an error or a wrong entry.
#[test]
fn a_torn_record_reads_as_no_entry() {
    use std::os::unix::fs::FileExt;
    let root = tempfile::tempdir().unwrap();
    let a = NodeRecord::create(root.path(), "a").unwrap();
    let held: Vec<Listed> = ["j0", "j1", "j2", "j3", "j4"]
        .iter()
        .map(|j| a.list(&entry(j)))
        .collect();
    let path = a.dir.join(slots::SLOTS);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let slot = |n: u64| n * slots::SLOT as u64;
    let whole = fs::read(&path).unwrap();
    let other_entry = &whole[..slots::SLOT];
    // j1: the first half of another entry's write over it.
    file.write_all_at(&other_entry[..40], slot(1)).unwrap();
    // j2: the first bytes of a blanking write (a settled job).
    file.write_all_at(&[b' '; 10], slot(2)).unwrap();
    // j3: one byte of its JSON changed, so that it would parse as another job's entry.
    let j3 = &whole[slot(3) as usize..slot(4) as usize];
    let at = j3.windows(4).position(|w| w == b"\"j3\"").unwrap() + 2;
    file.write_all_at(b"9", slot(3) + at as u64).unwrap();
    // j4: cut short.
    file.set_len(slot(4) + 50).unwrap();
    assert_eq!(read_entries(&a.dir), vec![entry("j0")]);
    // Bytes that are no record at all.
    file.write_all_at(&[0xff; 3000], slot(1)).unwrap();
    assert_eq!(read_entries(&a.dir), vec![entry("j0")]);
    drop(held);
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
    let r = NodeRecord::create(root.path(), "new").unwrap();
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

/// A dead worker's record keeps the jobs of lanes the worker handing its jobs back does not
/// read, for a worker of the node that does (before, the whole record went with the first
/// hand-back); once none is left, the record goes.
#[tokio::test]
async fn a_hand_back_keeps_the_jobs_of_other_lanes_on_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = dead_record(root.path(), "a", Some(&host()), &["mine"]);
    let theirs = JobEntry {
        subscription: "other-sub".into(),
        ack_id: "ack-theirs".into(),
        job_id: "theirs".into(),
    };
    fs::write(dir.join("7.json"), serde_json::to_vec(&theirs).unwrap()).unwrap();
    let queue = crate::queue::Queue::Local(
        crate::queue::LocalQueue::open(root.path().join("queue.db"))
            .await
            .unwrap(),
    );
    let store = crate::store::dir::DirStore::open(root.path().join("store")).unwrap();
    let lanes = |sub: &str| crate::queue::lanes::Lanes::one("topic", sub);

    // Nothing of "other-sub" is ours: the record is left as it is.
    let dead = dead_workers(root.path(), "b", &host());
    hand_back(dead, &queue, &store, &lanes("nobody-sub")).await;
    assert_eq!(read_entries(&dir), vec![entry("mine"), theirs.clone()]);

    // "sub"'s job is handed back (its message is no longer leased here: nothing to nack),
    // "other-sub"'s stays on record.
    let dead = dead_workers(root.path(), "b", &host());
    hand_back(dead, &queue, &store, &lanes("sub")).await;
    assert_eq!(read_entries(&dir), vec![theirs.clone()]);

    let dead = dead_workers(root.path(), "c", &host());
    assert_eq!(dead.len(), 1, "still a dead worker's record");
    hand_back(dead, &queue, &store, &lanes("other-sub")).await;
    assert!(!dir.exists(), "nothing left: the record goes");
}
