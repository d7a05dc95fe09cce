//! The record's entries: one file, `jobs`, of fixed-size slots, one per job being run,
//! written in place (no file is created or removed per job).
//!
//! A slot is [`SLOT`] bytes: `<16 hex digits> <JSON entry>`, padded with spaces to a
//! newline; the hex digits are the start of the SHA-256 of the JSON. A free slot is spaces.
//! A slot that does not read back whole (a write cut short by a power loss, bytes of two
//! writes) fails its checksum or its parse and is read as no entry. An entry too big for a
//! slot is a file of its own, `<n>.json`, as every entry was before slots (those of a record
//! an older version left are read too).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{JobEntry, LOCK};

/// The slots' file in a record's directory.
pub(crate) const SLOTS: &str = "jobs";
/// A slot's size in bytes: room for a subscription, an ack id and a job id of the usual
/// lengths (an entry that does not fit gets a file of its own).
pub(crate) const SLOT: usize = 1024;

/// A record's slot file and which of its slots are free.
#[derive(Debug)]
pub(crate) struct Slots {
    file: File,
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    /// Slots written before and freed since.
    freed: Vec<u64>,
    /// The first slot never written.
    next: u64,
}

impl Slots {
    /// Creates the (empty) slot file in the record's directory `dir`.
    pub(crate) fn create(dir: &Path) -> io::Result<Slots> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(SLOTS))?;
        Ok(Slots {
            file,
            free: Mutex::new(Free::default()),
        })
    }

    /// Writes `entry` to a free slot and returns the slot; `Ok(None)` if it does not fit one.
    pub(crate) fn put(&self, entry: &JobEntry) -> io::Result<Option<u64>> {
        let json = serde_json::to_string(entry).expect("an entry serializes");
        let line = format!("{} {json}", checksum(json.as_bytes()));
        if line.len() >= SLOT {
            return Ok(None);
        }
        let slot = {
            let mut free = self.lock();
            free.freed.pop().unwrap_or_else(|| {
                free.next += 1;
                free.next - 1
            })
        };
        let mut bytes = line.into_bytes();
        bytes.resize(SLOT - 1, b' ');
        bytes.push(b'\n');
        match self.file.write_all_at(&bytes, slot * SLOT as u64) {
            Ok(()) => Ok(Some(slot)),
            Err(e) => {
                self.lock().freed.push(slot);
                Err(e)
            }
        }
    }

    /// Blanks `slot` and frees it. If blanking fails the slot is still reused (its next
    /// entry overwrites it); meanwhile a dead worker's record could name a settled message,
    /// which the hand-back finds no longer leased.
    pub(crate) fn free(&self, slot: u64) {
        let mut blank = vec![b' '; SLOT - 1];
        blank.push(b'\n');
        let _ = self.file.write_all_at(&blank, slot * SLOT as u64);
        self.lock().freed.push(slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The start of the SHA-256 of `json`, in hex.
fn checksum(json: &[u8]) -> String {
    hex::encode(&Sha256::digest(json)[..8])
}

/// The entry a slot's bytes hold; `None` for a free slot and for one that does not read
/// back whole.
fn parse_slot(bytes: &[u8]) -> Option<JobEntry> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    let (sum, json) = text.split_once(' ')?;
    if sum.len() != 16 || checksum(json.as_bytes()) != sum {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// The entries of the record in `dir`: its slots, and the entries of files of their own. A
/// record that is cut short, or has bytes of two writes, never fails: what does not read
/// back whole is no entry.
pub(crate) fn read_entries(dir: &Path) -> Vec<JobEntry> {
    let Ok(files) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for file in files.flatten() {
        let name = file.file_name();
        if name == LOCK {
            continue;
        }
        let Ok(bytes) = fs::read(file.path()) else {
            continue;
        };
        if name == SLOTS {
            entries.extend(bytes.chunks(SLOT).filter_map(parse_slot));
        } else if let Ok(entry) = serde_json::from_slice(&bytes) {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    entries
}

/// One recorded job: its slot, or its own file.
#[derive(Debug)]
pub(crate) enum Held {
    Slot(Arc<Slots>, u64),
    File(PathBuf),
}

impl Drop for Held {
    fn drop(&mut self) {
        match self {
            Held::Slot(slots, slot) => slots.free(*slot),
            Held::File(path) => {
                let _ = fs::remove_file(path);
            }
        }
    }
}
