//! The checkpoint object, the ownership rule and the fencing protocol (docs/design.md
//! "Leases and ownership").
//!
//! `jobs/<job_id>/checkpoint` holds a small versioned [`Header`] (attempts, failures,
//! progress, fuel used, owner and its lease, a per-write nonce) and the task's own bytes. It
//! is the job's fence: a worker [`claim`]s it with a conditional write, and every later write
//! is conditional on the tag it last wrote. A worker whose job was claimed by another gets
//! `PreconditionFailed`, learns it lost the job, stops the task and never writes again.
//!
//! **Ownership:** the header carries the owner's lease (`lease_until_ms`, refreshed after
//! every extension of the owner's queue lease; 0 = released). A claim takes over only a
//! released or expired one (see [`claim`]), so a duplicate message never steals a live
//! owner's job.
//!
//! Saves from the task do not wait for the upload: [`Checkpointer::save`] keeps the newest
//! bytes in memory and a background writer uploads them, coalescing saves so that a key is
//! written at most once per [`Limits::min_write_interval`] (R2 allows one write per second
//! per key). [`Checkpointer::flush`] makes the last save durable; [`Checkpointer::finish`]
//! ends a finished job without waiting for that spacing.
//!
//! **Invariant:** after a conflict or a lost lease, nothing is written by this worker for
//! this job.
//! **API boundary:** this module speaks only [`ObjectStore`]; it works the same on R2 and on
//! a directory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ids::JobId;
use crate::queue::lease::LeaseView;
use crate::store::ObjectStore;

mod claim;
pub mod control;
mod header;
pub mod ownership;
pub mod requeue;
mod rewrite;
mod start_over;
mod writer;

pub use claim::{Abandoned, ClaimError, Claimed, OtherWork, claim, peek, release_abandoned};
use header::nonce;
pub use header::{Action, ArtifactRecord, Control, Header, RunUsage, Usage, decode, encode};
pub use ownership::{CLOCK_SKEW_ALLOWANCE, skew_allowance_ms};
use writer::Writer;

use crate::time::now_ms;

/// Default largest checkpoint a task may save (bytes of task data).
pub const DEFAULT_MAX_CHECKPOINT_BYTES: usize = 16 * 1024 * 1024;
/// Default least time between two writes of one checkpoint object (R2: 1 write/s/key).
pub const DEFAULT_MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// The storage key of a job's checkpoint.
pub fn key(job: &JobId) -> String {
    crate::keys::checkpoint(job)
}

/// Why a checkpoint operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// Another worker owns the job now. Stop; write nothing.
    Conflict,
    /// Data larger than the limit (bytes).
    TooLarge(u64),
    /// The store failed (after retries).
    Storage(String),
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::Conflict => {
                f.write_str("another worker took over this job (checkpoint changed under us)")
            }
            CheckpointError::TooLarge(limit) => write!(f, "checkpoint larger than {limit} bytes"),
            CheckpointError::Storage(m) => write!(f, "checkpoint storage failed: {m}"),
        }
    }
}

impl std::error::Error for CheckpointError {}

/// Limits of the checkpoint writer.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest task data one save may hold, in bytes (a larger save is refused with
    /// [`CheckpointError::TooLarge`]). Default [`DEFAULT_MAX_CHECKPOINT_BYTES`], 16 MiB.
    pub max_bytes: usize,
    /// Least time between two writes of the checkpoint object: saves in between are
    /// coalesced. Default [`DEFAULT_MIN_WRITE_INTERVAL`], 1 s (R2: 1 write/s per key).
    pub min_write_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_CHECKPOINT_BYTES,
            min_write_interval: DEFAULT_MIN_WRITE_INTERVAL,
        }
    }
}

/// State shared between the task's host calls and the background writer.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// Fuel the running task used so far in this run ([`Checkpointer::record_run_fuel`]):
    /// every write adds it to the header's `fuel_used`, so a run killed mid-way is counted
    /// up to its last write. 0 once the run ended ([`Checkpointer::end_run`]).
    run_fuel: AtomicU64,
}

#[derive(Debug)]
struct State {
    header: Header,
    /// The newest data the task saved (what `load` returns).
    latest: Option<Arc<Vec<u8>>>,
    /// Whether `latest` or the header changed since the last write.
    dirty: bool,
    /// Another worker took the job over (412), or our lease is gone: write nothing more.
    conflict: bool,
    /// The last write's error, cleared by a successful write.
    error: Option<String>,
    writes: u64,
    /// Bytes of the completed writes (the job's accounting).
    bytes_written: u64,
    /// Where the writes are counted ([`Checkpointer::observe`]).
    metrics: Option<Arc<crate::observe::Metrics>>,
    /// The lease our last write recorded (what a claim by another worker checks).
    written_until: u64,
}

enum Cmd {
    /// Write what is dirty (honouring the interval), then answer; `release` first sets the
    /// header's lease to 0 so the next worker may claim the job at once.
    Flush {
        release: bool,
        done: oneshot::Sender<Result<(), CheckpointError>>,
    },
    /// Stop writing (pending saves are dropped) and answer with the last write's tag.
    Finish(oneshot::Sender<Result<Proof, CheckpointError>>),
}

/// What [`Checkpointer::finish`] hands the caller: the lease this worker's last write
/// recorded. While it has more than twice the [`skew_allowance_ms`] left, no other worker may
/// claim the job.
#[derive(Clone, Debug)]
pub struct Proof {
    /// Until when that write recorded the lease (ms since the Unix epoch).
    pub lease_until_ms: u64,
    /// The lease period that write recorded (ms; 0: unknown), which sets the allowance.
    pub lease_period_ms: u64,
}

impl Proof {
    /// How long writes made under this proof may still take: until the recorded lease is
    /// within twice the skew allowance of its end (after that a claim may take the job
    /// over). `None` when that time has come.
    pub fn time_left(&self) -> Option<Duration> {
        ownership::writable_for(self.lease_until_ms, self.lease_period_ms, now_ms())
    }
}

/// The task's view of its checkpoint, and the host's handle on the background writer.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Cmd>,
    max_bytes: usize,
    stopped: CancellationToken,
}

impl Checkpointer {
    /// Starts the background writer for a claimed checkpoint. It refreshes the header's
    /// lease after every extension of `lease`, and stops writing for good at the first
    /// conflict or when `lease` is lost. The writer ends when every clone is dropped.
    pub fn start<S: ObjectStore + Clone>(
        store: S,
        job: &JobId,
        claimed: Claimed,
        limits: Limits,
        lease: LeaseView,
    ) -> Checkpointer {
        let written_until = claimed.header.lease_until_ms;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                header: claimed.header,
                latest: claimed.data.map(Arc::new),
                dirty: false,
                conflict: false,
                error: None,
                writes: 0,
                bytes_written: 0,
                metrics: None,
                written_until,
            }),
            wake: Notify::new(),
            run_fuel: AtomicU64::new(0),
        });
        let (cmds, rx) = mpsc::unbounded_channel();
        let stopped = CancellationToken::new();
        let writer = Writer {
            store,
            key: key(job),
            etag: claimed.etag,
            written_until,
            shared: shared.clone(),
            interval: limits.min_write_interval,
            lease,
            stopped: stopped.clone(),
            released: false,
        };
        tokio::spawn(writer.run(rx));
        Checkpointer {
            shared,
            cmds,
            max_bytes: limits.max_bytes,
            stopped,
        }
    }

    /// Accepts `data` as the newest checkpoint; the upload happens in the background.
    pub fn save(&self, data: Vec<u8>) -> Result<(), CheckpointError> {
        self.accept(data, None)
    }

    /// [`Checkpointer::save`], recording the job's artifacts as they are now with the data.
    pub fn save_with(
        &self,
        data: Vec<u8>,
        artifacts: Vec<ArtifactRecord>,
    ) -> Result<(), CheckpointError> {
        self.accept(data, Some(artifacts))
    }

    /// The data and the artifacts' records change under one lock: the writer never uploads
    /// the one without the other.
    fn accept(
        &self,
        data: Vec<u8>,
        artifacts: Option<Vec<ArtifactRecord>>,
    ) -> Result<(), CheckpointError> {
        if data.len() > self.max_bytes {
            return Err(CheckpointError::TooLarge(self.max_bytes as u64));
        }
        {
            let mut st = self.lock();
            if st.conflict {
                return Err(CheckpointError::Conflict);
            }
            st.latest = Some(Arc::new(data));
            // The run made progress: the runs that crashed before it are forgiven.
            st.header.crashes = st.header.crashes.min(1);
            if let Some(artifacts) = artifacts {
                st.header.artifacts = artifacts;
            }
            st.dirty = true;
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// How long this worker may still write for the job: see [`Fence::confirm_owned`].
    pub async fn confirm_owned(&self) -> Option<Duration> {
        self.fence().confirm_owned().await
    }

    /// Marks the job lost (as a conflict would) and stops the task: nothing more is written.
    pub fn lose(&self) {
        self.fence().lose()
    }

    /// The part of this checkpointer that the job's input and artifact calls need: confirm
    /// ownership before a write, or give the job up.
    pub fn fence(&self) -> Fence {
        Fence {
            shared: Arc::clone(&self.shared),
            stopped: self.stopped.clone(),
        }
    }

    /// The newest checkpoint data (saved in this run or loaded by the claim).
    pub fn load(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        let st = self.lock();
        if st.conflict {
            return Err(CheckpointError::Conflict);
        }
        Ok(st.latest.as_ref().map(|d| d.to_vec()))
    }

    /// Records progress; stored with the next write.
    pub fn report_progress(&self, done: u64, total: u64) {
        self.lock().header.progress = Some((done, total));
    }

    /// The fuel the running task has used so far in this run (the runtime records it at
    /// every host call and fuel yield). Not a write by itself: every later write of the
    /// header counts it in `fuel_used` until [`Checkpointer::end_run`] adds the run's total.
    pub fn record_run_fuel(&self, used: u64) {
        self.shared.run_fuel.store(used, Ordering::Relaxed);
    }

    /// Ends the run: its figures join the header's totals (stored with the next write or
    /// flush), and its fuel so far stops being added to the writes (the total has it now).
    pub fn end_run(&self, run: &RunUsage) {
        let mut st = self.lock();
        st.header.add_run(run);
        self.shared.run_fuel.store(0, Ordering::Relaxed);
        st.dirty = true;
    }

    /// Changes the header (failures, progress, ...); stored with the next write or flush.
    pub fn update_header(&self, f: impl FnOnce(&mut Header)) {
        let mut st = self.lock();
        f(&mut st.header);
        st.dirty = true;
    }

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        self.lock().header.clone()
    }

    /// Whether this worker lost the job (a conflict, or its lease is gone).
    pub fn is_conflicted(&self) -> bool {
        self.lock().conflict
    }

    /// Cancelled once this worker lost the job: the task should stop.
    pub fn stopped(&self) -> CancellationToken {
        self.stopped.clone()
    }

    /// Number of completed writes (excluding the claim).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Bytes of the completed writes (excluding the claim).
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Counts every later write (result, bytes, latency) in `metrics`.
    pub fn observe(&self, metrics: Arc<crate::observe::Metrics>) {
        self.lock().metrics = Some(metrics);
    }

    /// Makes everything saved so far durable (waiting out the write interval if needed).
    /// With `release`, the written header gives the job up (lease 0): the next worker may
    /// claim it at once. `Err(Conflict)` if the job was lost; `Err(Storage)` if the store
    /// keeps failing.
    pub async fn flush(&self, release: bool) -> Result<(), CheckpointError> {
        let (done, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Flush { release, done }).is_err() {
            return self.final_state();
        }
        rx.await.unwrap_or_else(|_| self.final_state())
    }

    /// Stops the writer for good without writing what is pending, and returns the lease the
    /// last write recorded (see [`Proof`]). `Err(Conflict)` if the job was lost.
    pub async fn finish(&self) -> Result<Proof, CheckpointError> {
        let (done, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Finish(done)).is_err() {
            return Err(self
                .final_state()
                .err()
                .unwrap_or(CheckpointError::Conflict));
        }
        rx.await.unwrap_or_else(|_| {
            Err(self
                .final_state()
                .err()
                .unwrap_or(CheckpointError::Conflict))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn final_state(&self) -> Result<(), CheckpointError> {
        let st = self.lock();
        if st.conflict {
            Err(CheckpointError::Conflict)
        } else if st.dirty {
            Err(CheckpointError::Storage(
                st.error
                    .clone()
                    .unwrap_or_else(|| "checkpoint writer stopped".into()),
            ))
        } else {
            Ok(())
        }
    }
}

/// The fence around a job's writes other than the checkpoint's own (its inputs' and
/// artifacts' calls, in `files`): it can only confirm that this worker still owns the job,
/// or give the job up. Cheap to clone; made by [`Checkpointer::fence`].
#[derive(Clone)]
pub struct Fence {
    shared: Arc<Shared>,
    stopped: CancellationToken,
}

impl Fence {
    /// How long this worker may still write for the job: no conflict, and the lease its last
    /// write recorded has more than twice the clock-skew allowance left, so no other worker
    /// can have claimed the job (the rule the result write follows, see `exec`); the time
    /// returned is what is left of that. Waits for a fresher lease record when the last one
    /// is merely getting old: asks the writer to record the current lease now, and gives up
    /// (`None`) on a conflict, a lost lease, or once the recorded lease is within one skew
    /// allowance of its end (another worker may claim the job from then on).
    pub async fn confirm_owned(&self) -> Option<Duration> {
        loop {
            {
                let mut st = lock(&self.shared);
                let skew = skew_allowance_ms(st.header.lease_period_ms);
                let now = now_ms();
                if st.conflict || st.written_until <= now.saturating_add(skew) {
                    return None;
                }
                if let Some(left) =
                    ownership::writable_for(st.written_until, st.header.lease_period_ms, now)
                {
                    return Some(left);
                }
                st.dirty = true;
            }
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks the job lost (as a conflict would) and stops the task: nothing more is written.
    pub fn lose(&self) {
        lock(&self.shared).conflict = true;
        self.stopped.cancel();
    }
}

impl From<Checkpointer> for Fence {
    fn from(checkpointer: Checkpointer) -> Fence {
        checkpointer.fence()
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // Every update is one assignment: the state stays consistent if a holder panicked.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}
