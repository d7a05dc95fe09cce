//! The group commit: the directories whose entries changed (a rename into place, a removed
//! note) are made durable in batches, one flusher at a time.
//!
//! A write renames its object into place (visible at once), then [`GroupCommit::dirty`]
//! records its directory in the batch being gathered and hands back a [`Recorded`]: that
//! batch's number and the directory. A write that must be durable when it returns then waits
//! in [`GroupCommit::sync`] for exactly that batch: the flusher takes every directory recorded
//! so far, fsyncs each once (all of them, whatever fails), and wakes the writers waiting for
//! that batch; a writer learns whether its own directory's fsync failed, never another's.
//! Writers that arrive during a flush join the next one, which one of them runs.
//! A directory is fsynced once per batch however many writes changed it; on a journaling
//! filesystem (ext4's default) the first fsync of a batch commits the transaction that holds
//! every rename of the batch, so the rest cost little.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::store::{ErrorKind, StoreError};

/// The shared flush of one store's directories.
#[derive(Debug)]
pub(super) struct GroupCommit {
    state: Mutex<State>,
    /// The last batch done (its number), flushed or failed.
    done: watch::Sender<u64>,
    /// Flushes run (for tests and the figures: how many writes shared one).
    flushes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Directories changed since the last flush began: the batch being gathered.
    dirty: BTreeSet<PathBuf>,
    /// The number of the batch being gathered (batches before it began or are done).
    gathering: u64,
    /// Whether a flush runs now (of batch `gathering - 1`).
    flushing: bool,
    /// The directories of the flush that runs now.
    in_flight: BTreeSet<PathBuf>,
    /// The failed fsyncs of the last few batches with failures: the batch, the directory,
    /// the error; whole batches, in order.
    failed: VecDeque<(u64, PathBuf, String)>,
    /// The last batch whose failures were let go (0: none): a writer of it or of an earlier
    /// batch that finds no failure of its own cannot know, so it hears of one.
    forgotten_through: u64,
}

/// Directories recorded for a batch's flush ([`GroupCommit::dirty`]), to wait on.
#[derive(Debug)]
pub(super) struct Recorded {
    batch: u64,
    dirs: Vec<PathBuf>,
}

/// Failed fsyncs remembered for writers that wake late; older batches' are let go whole,
/// never the newest batch's, however many directories it failed.
const FAILED_KEPT: usize = 64;

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(State {
                gathering: 1,
                ..State::default()
            }),
            done: watch::Sender::new(0),
            flushes: AtomicU64::new(0),
        }
    }
}

impl GroupCommit {
    /// Records that the entries of `dirs` changed: the flush of the batch being gathered
    /// makes them durable.
    pub(super) fn dirty(&self, dirs: Vec<PathBuf>) -> Recorded {
        let mut st = lock(&self.state);
        st.dirty.extend(dirs.iter().cloned());
        Recorded {
            batch: st.gathering,
            dirs,
        }
    }

    /// Whether `dir`'s changes recorded so far are flushed (none waits for a flush, and none
    /// is in the one that runs). A failed fsync counts as flushed here: its writers were told.
    pub(super) fn is_flushed(&self, dir: &std::path::Path) -> bool {
        let st = lock(&self.state);
        !st.dirty.contains(dir) && !st.in_flight.contains(dir)
    }

    /// How many flushes ran.
    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Returns once `recorded`'s batch is flushed (running its flush if no flush runs): `Ok`
    /// when its directory's fsync succeeded, so every change recorded with it is durable.
    pub(super) async fn sync(self: &Arc<Self>, recorded: &Recorded) -> Result<(), StoreError> {
        let target = recorded.batch;
        let mut done = self.done.subscribe();
        loop {
            if *done.borrow_and_update() >= target {
                return self.outcome(recorded);
            }
            let batch = {
                let mut st = lock(&self.state);
                if st.flushing {
                    None
                } else {
                    st.flushing = true;
                    let number = st.gathering;
                    st.gathering += 1;
                    let dirs = std::mem::take(&mut st.dirty);
                    st.in_flight = dirs.clone();
                    Some((number, dirs))
                }
            };
            match batch {
                Some((number, dirs)) => self.flush(number, dirs).await,
                None => {
                    // The flusher's end wakes us (the sender lives as long as `self`).
                    let _ = done.changed().await;
                }
            }
        }
    }

    /// Flushes batch `number` (each of its directories once, every one even when one fails),
    /// then marks it done. All of it runs on a blocking thread, to its end even if the waiting
    /// writer is dropped (a write bounded by a timeout): no batch is ever left marked as
    /// flushing.
    async fn flush(self: &Arc<Self>, number: u64, dirs: BTreeSet<PathBuf>) {
        let me = Arc::clone(self);
        let flushing = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for dir in dirs {
                match File::open(&dir).and_then(|d| d.sync_all()) {
                    // Removed since (its last object deleted): nothing in it to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        let error = format!("making {} durable: {e}", dir.display());
                        failed.push((number, dir, error));
                    }
                    Ok(()) => {}
                }
            }
            me.flushes.fetch_add(1, Ordering::Relaxed);
            let mut st = lock(&me.state);
            st.failed.extend(failed);
            while st.failed.len() > FAILED_KEPT {
                match st.failed.front() {
                    Some(&(oldest, _, _)) if oldest != number => {
                        st.failed.retain(|(n, _, _)| *n != oldest);
                        st.forgotten_through = st.forgotten_through.max(oldest);
                    }
                    _ => break,
                }
            }
            st.flushing = false;
            st.in_flight.clear();
            drop(st);
            me.done.send_replace(number);
        });
        // Only a panic fails the join, and nothing above panics (the lock ignores poisoning).
        let _ = flushing.await;
    }

    /// How `recorded`'s directories fared in its batch's flush. Failures are remembered by
    /// whole batches, at least [`FAILED_KEPT`] of them; every waiter is woken when its batch
    /// ends, long before they are let go, but one that was let go anyway is a failure: a
    /// write is never taken as durable unless that is known.
    fn outcome(&self, recorded: &Recorded) -> Result<(), StoreError> {
        let st = lock(&self.state);
        let failed = st
            .failed
            .iter()
            .find(|(n, d, _)| *n == recorded.batch && recorded.dirs.contains(d));
        let error = match failed {
            Some((_, _, e)) => e.clone(),
            None if recorded.batch <= st.forgotten_through => format!(
                "making {} durable: the outcome of its flush is no longer known (a later \
                 flush failed for many directories)",
                recorded
                    .dirs
                    .first()
                    .map_or_else(Default::default, |d| d.display().to_string())
            ),
            None => return Ok(()),
        };
        Err(StoreError::new(
            ErrorKind::Transient,
            anyhow::anyhow!("{error}"),
        ))
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory whose fsync fails: a path under a regular file (`ENOTDIR`, not "not found").
    fn failing(tmp: &tempfile::TempDir) -> PathBuf {
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        file.join("dir")
    }

    #[tokio::test]
    async fn a_failed_fsync_reaches_only_its_own_directorys_writers_of_its_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().to_owned();
        let commit = Arc::new(GroupCommit::default());

        // One batch: a directory that cannot be fsynced beside one that can.
        let bad = commit.dirty(vec![failing(&tmp)]);
        let fine = commit.dirty(vec![good.clone()]);
        assert!(
            commit.sync(&fine).await.is_ok(),
            "the good directory was flushed"
        );
        assert_eq!(commit.flushes(), 1, "one flush served both");

        // A later batch is gathering when the failed batch's writer asks: it still hears of
        // its own batch's failure, not of the later batch.
        let later = commit.dirty(vec![good.clone()]);
        let err = commit
            .sync(&bad)
            .await
            .expect_err("its directory's fsync failed");
        assert!(format!("{err:#}").contains("making"), "{err:#}");
        assert!(commit.sync(&later).await.is_ok());
        assert_eq!(commit.flushes(), 2);

        // The same directory recorded again, after the failure, is flushed anew.
        let again = commit.dirty(vec![good]);
        assert!(commit.sync(&again).await.is_ok());
        assert_eq!(commit.flushes(), 3);
    }

    /// A batch that fails more directories than are remembered tells every one of their
    /// writers (before, only the last 64 heard: the first ones' writes were taken as
    /// durable); a good directory of that batch is still fine, and a writer of a batch let
    /// go later hears of a failure rather than none.
    #[tokio::test]
    async fn every_failure_of_a_big_batch_is_told_and_none_is_forgotten_as_success() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = Arc::new(GroupCommit::default());
        let bad_root = failing(&tmp);
        let n = FAILED_KEPT + 10;
        let bad: Vec<Recorded> = (0..n)
            .map(|i| commit.dirty(vec![bad_root.join(i.to_string())]))
            .collect();
        let fine = commit.dirty(vec![tmp.path().to_owned()]);
        assert!(commit.sync(&fine).await.is_ok());
        for (i, r) in bad.iter().enumerate() {
            assert!(
                commit.sync(r).await.is_err(),
                "failure {i} of {n} was not told"
            );
        }

        // Two more failed batches let the first go: its writers are told of a failure still.
        for _ in 0..2 {
            let r: Vec<Recorded> = (0..n)
                .map(|i| commit.dirty(vec![bad_root.join(i.to_string())]))
                .collect();
            assert!(commit.sync(&r[0]).await.is_err());
        }
        let err = commit.sync(&bad[0]).await.expect_err("let go, yet told");
        assert!(format!("{err:#}").contains("no longer known"), "{err:#}");
        assert!(
            commit.sync(&fine).await.is_err(),
            "its batch was let go too"
        );
    }
}
