//! The group commit: the directories whose entries changed (a rename into place, a removed
//! note) are made durable in batches, one flusher at a time.
//!
//! A write renames its object into place (visible at once), then [`GroupCommit::dirty`]
//! records its directory. A write that must be durable when it returns then waits in
//! [`GroupCommit::sync`] for a flush that began after it recorded its directory: the flusher
//! takes every directory recorded so far, fsyncs each once, and wakes the writers waiting for
//! that batch. Writers that arrive during a flush join the next one, which one of them runs.
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
    /// The last few batches whose flush failed, with the error.
    failed: VecDeque<(u64, String)>,
}

/// Failed batches remembered for writers that wake late.
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
    /// Records that `dir`'s entries changed: the next flush makes them durable.
    pub(super) fn dirty(&self, dir: PathBuf) {
        lock(&self.state).dirty.insert(dir);
    }

    /// Whether `dir`'s changes recorded so far are durable (none waits for a flush, and
    /// none is in the one that runs).
    pub(super) fn is_flushed(&self, dir: &std::path::Path) -> bool {
        let st = lock(&self.state);
        !st.dirty.contains(dir) && !st.in_flight.contains(dir)
    }

    /// How many flushes ran.
    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Returns once every directory recorded before the call is durable: waits for the
    /// batch that holds them (running its flush if no flush runs).
    pub(super) async fn sync(self: &Arc<Self>) -> Result<(), StoreError> {
        let target = {
            let st = lock(&self.state);
            if st.dirty.is_empty() {
                // What was recorded before is in the flush that runs now, or flushed.
                st.gathering - 1
            } else {
                st.gathering
            }
        };
        let mut done = self.done.subscribe();
        loop {
            if *done.borrow_and_update() >= target {
                return self.outcome(target);
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

    /// Flushes batch `number` (its directories, each once), then marks it done. All of it
    /// runs on a blocking thread, to its end even if the waiting writer is dropped (a write
    /// bounded by a timeout): no batch is ever left marked as flushing.
    async fn flush(self: &Arc<Self>, number: u64, dirs: BTreeSet<PathBuf>) {
        let me = Arc::clone(self);
        let flushing = tokio::task::spawn_blocking(move || {
            let mut failed = None;
            for dir in &dirs {
                match File::open(dir).and_then(|d| d.sync_all()) {
                    // Removed since (its last object deleted): nothing in it to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        failed = Some(format!("making {} durable: {e}", dir.display()));
                        break;
                    }
                    Ok(()) => {}
                }
            }
            me.flushes.fetch_add(1, Ordering::Relaxed);
            let mut st = lock(&me.state);
            if let Some(e) = failed {
                st.failed.push_back((number, e));
                if st.failed.len() > FAILED_KEPT {
                    st.failed.pop_front();
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

    /// How batch `target` ended. A failure is remembered for the last [`FAILED_KEPT`]
    /// batches; every waiter is woken when its batch ends, long before that.
    fn outcome(&self, target: u64) -> Result<(), StoreError> {
        let st = lock(&self.state);
        match st.failed.iter().find(|(n, _)| *n == target) {
            None => Ok(()),
            Some((_, e)) => Err(StoreError::new(
                ErrorKind::Transient,
                anyhow::anyhow!("{e}"),
            )),
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
