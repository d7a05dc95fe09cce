//! The background writer of one checkpoint: uploads the newest state at most once per
//! write interval, each write `If-Match` the tag it last wrote, refreshes the recorded lease
//! after every extension, and stops for good at a conflict or a lost lease. Every write
//! counts the running task's fuel so far in the header's `fuel_used`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CheckpointError, Cmd, Header, Proof, Shared, encode, lock, nonce, now_ms};
use crate::observe::metrics::WriteResult;
use crate::queue::lease::LeaseView;
use crate::store::{ETag, ObjectStore, Precondition, StoreError};

/// Failed writes in a row after which a waiting flush reports a storage error (the SDK
/// retries inside each).
const FLUSH_TRIES: u32 = 5;

/// The background writer of one checkpoint.
pub(super) struct Writer<S> {
    pub(super) store: S,
    pub(super) key: String,
    /// The tag of our last write: every write is `If-Match` on it.
    pub(super) etag: ETag,
    /// The lease our last write recorded.
    pub(super) written_until: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) interval: Duration,
    pub(super) lease: LeaseView,
    pub(super) stopped: CancellationToken,
    /// A flush released the job: no more lease refreshes.
    pub(super) released: bool,
}

impl<S: ObjectStore> Writer<S> {
    pub(super) async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        // The claim was a write too: R2 allows one write per second per key.
        let mut next_write = Instant::now() + self.interval;
        let mut failures = 0u32;
        let mut backoff = Duration::from_millis(200);
        let mut waiting: Vec<oneshot::Sender<Result<(), CheckpointError>>> = Vec::new();
        let mut lease = self.lease.clone();
        loop {
            let dirty = lock(&self.shared).dirty;
            if !dirty {
                for w in waiting.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Flush { release, done }) => {
                        if release && !self.released {
                            self.released = true;
                            let mut st = lock(&self.shared);
                            st.header.lease_until_ms = 0;
                            st.dirty = true;
                        }
                        waiting.push(done);
                    }
                    Some(Cmd::Finish(done)) => {
                        let lease_period_ms = lock(&self.shared).header.lease_period_ms;
                        let _ = done.send(Ok(Proof {
                            lease_until_ms: self.written_until,
                            lease_period_ms,
                        }));
                        for w in waiting.drain(..) {
                            let _ = w.send(Err(CheckpointError::Storage("the job finished".into())));
                        }
                        return;
                    }
                },
                _ = self.shared.wake.notified() => {}
                changed = lease.until.changed(), if !self.released => {
                    if changed.is_err() {
                        // The lease's keeper is gone (the job is settling): no more refreshes.
                        self.released = true;
                        continue;
                    }
                    let until = lease.until().unix_ms;
                    let mut st = lock(&self.shared);
                    st.header.lease_until_ms = until;
                    st.dirty = true;
                }
                _ = self.lease.lost.cancelled() => {
                    tracing::warn!(key = %self.key, "lease lost: writing nothing more for this job");
                    self.lose();
                    break;
                }
                _ = tokio::time::sleep_until(next_write), if dirty => {
                    match self.write().await {
                        Ok(()) => {
                            failures = 0;
                            backoff = Duration::from_millis(200);
                            next_write = Instant::now() + self.interval;
                        }
                        Err(CheckpointError::Conflict) => break,
                        Err(e) => {
                            failures += 1;
                            next_write = Instant::now() + backoff.max(self.interval);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            if failures >= FLUSH_TRIES {
                                for w in waiting.drain(..) {
                                    let _ = w.send(Err(e.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        // Lost the job: answer every further request with the conflict, write nothing.
        for w in waiting.drain(..) {
            let _ = w.send(Err(CheckpointError::Conflict));
        }
        while let Some(cmd) = cmds.recv().await {
            match cmd {
                Cmd::Flush { done, .. } => drop(done.send(Err(CheckpointError::Conflict))),
                Cmd::Finish(done) => drop(done.send(Err(CheckpointError::Conflict))),
            }
        }
    }

    /// Marks the job lost and stops the task.
    fn lose(&self) {
        lock(&self.shared).conflict = true;
        self.stopped.cancel();
    }

    /// One fenced write of the current state.
    async fn write(&mut self) -> Result<(), CheckpointError> {
        let (bytes, until, metrics) = {
            let mut st = lock(&self.shared);
            if st.conflict {
                return Err(CheckpointError::Conflict);
            }
            st.header.nonce = nonce();
            st.header.updated_ms = now_ms();
            st.dirty = false;
            // The running task's fuel so far is counted in this write (read under the lock
            // that `end_run` takes: never counted twice).
            let run_fuel = self.shared.run_fuel.load(Ordering::Relaxed);
            let data = st.latest.as_deref().map(|v| v.as_slice());
            let bytes = if run_fuel == 0 {
                encode(&st.header, data)
            } else {
                let header = Header {
                    fuel_used: st.header.fuel_used.saturating_add(run_fuel),
                    ..st.header.clone()
                };
                encode(&header, data)
            };
            (bytes, st.header.lease_until_ms, st.metrics.clone())
        };
        let size = bytes.len();
        let started = std::time::Instant::now();
        let written = self
            .store
            .put(&self.key, bytes, Precondition::Matches(self.etag.clone()))
            .await;
        if let Some(m) = metrics {
            let result = match &written {
                Ok(_) => WriteResult::Ok,
                Err(StoreError::PreconditionFailed) => WriteResult::Conflict,
                Err(_) => WriteResult::Error,
            };
            m.checkpoint_written(result, size, started.elapsed());
        }
        match written {
            Ok(tag) => {
                self.etag = tag;
                self.written_until = until;
                let mut st = lock(&self.shared);
                st.written_until = until;
                st.error = None;
                st.writes += 1;
                st.bytes_written += size as u64;
                Ok(())
            }
            Err(StoreError::PreconditionFailed) => {
                tracing::warn!(
                    key = %self.key,
                    "checkpoint changed under us: another worker owns the job; stopping the task"
                );
                self.lose();
                Err(CheckpointError::Conflict)
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(key = %self.key, error = %msg, "checkpoint write failed; will retry");
                let mut st = lock(&self.shared);
                st.dirty = true;
                st.error = Some(msg.clone());
                Err(CheckpointError::Storage(msg))
            }
        }
    }
}
