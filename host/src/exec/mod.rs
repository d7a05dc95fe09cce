//! Running one job end to end against a store: claim the checkpoint (or learn that the job
//! is done or busy), run the task, then write the result (or error) and count failures.
//!
//! Used by `taskhost run` and by the worker; the caller decides what to do with the queue
//! message from the returned [`JobEnd`].
//!
//! [`Executor::execute`] is a sequence of phases, one module each: `claim` (take the job's
//! checkpoint, or learn that it is done or busy; refuse a job past the crash limit), `run`
//! (the task under the stop conditions), `settle` (from the run's outcome to a [`JobEnd`],
//! recording failures in the checkpoint) and `finish` (a finished job's outputs, written
//! under the end-of-job ownership proof).
//!
//! **Invariants:** the result is written create-only, and only while this worker owns the
//! job: no write of its checkpoint was refused (no conflict), and the lease its last write
//! recorded has more than twice the clock-skew allowance ([`skew_allowance_ms`](crate::checkpoint::ownership::skew_allowance_ms)) left. A
//! claim takes over only a lease that is released or ends within one allowance by its own
//! clock, so with clocks at most one allowance apart no other worker can have claimed the
//! job, and none can before the result is written. After a conflict or a lost lease nothing
//! is written.

mod claim;
mod finish;
mod run;
mod settle;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpointer, Limits, OtherWork};
use crate::files::FileLimits;
use crate::ids::JobId;
use crate::job::Work;
use crate::queue::lease::LeaseView;
use crate::runtime::{JobLimits, Prepared, Runtime, TrapKind};
use crate::store::ObjectStore;
use crate::store::any::AnyStore;

/// What a job is bound to: the work it computes, what to do when its stored state was made
/// for other work, and its input objects (docs/design.md section 5, "A job is bound to its
/// work").
#[derive(Clone, Debug, Default)]
pub struct JobBinding {
    /// What the job computes: recorded by its first claim, compared by every later one.
    pub work: Work,
    /// What a claim does when the stored job was made for other work.
    pub on_other_work: OtherWork,
    /// The job's input objects: name → key (the message's `inputs`).
    pub inputs: BTreeMap<crate::ids::InputName, String>,
    /// The instance's deletion cost (SaladCloud): held at its maximum while a finished job's
    /// outputs are written (the finish phase). `None`: not kept.
    pub deletion_cost: Option<crate::salad::DeletionCost>,
}

/// How a job's run ended, and so what to do with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// A result already existed: nothing ran. Ack.
    AlreadyDone,
    /// The result is durable now. Ack.
    Done {
        /// The result document, as stored.
        result: String,
        /// This run's number (the checkpoint's `attempts`, this claim included).
        attempt: u32,
    },
    /// The task reported a permanent failure; `jobs/<id>/error` is written. Dead-letter.
    TaskFailed(String),
    /// The task trapped; the failure is counted in the checkpoint. Nack, or dead-letter
    /// once `failures` reaches the limit.
    Trapped {
        /// Which limit or fault.
        kind: TrapKind,
        /// The trap in one line (recorded as the header's `last_failure`).
        message: String,
        /// Trapped runs of this job so far, this one included.
        failures: u32,
    },
    /// Another worker holds the job under a live lease. Nothing ran; hand the message back
    /// for at least one lease period.
    Busy {
        /// The worker holding it, as its checkpoint names it.
        owner: String,
        /// Until when its lease holds (ms since the Unix epoch).
        until_ms: u64,
    },
    /// Another worker took the job over (the checkpoint changed under us). The task was
    /// stopped; nothing was written; count nothing.
    Conflict,
    /// Our queue lease is gone. The task was stopped; nothing was written; count nothing.
    LeaseLost,
    /// Stopped by the host (shutdown); the checkpoint is durable and released. Nack now.
    Cancelled,
    /// A user cancelled or paused the job (`taskhost job cancel` / `pause`): its checkpoint
    /// header holds the record. Not run, or stopped without writing anything more. Ack.
    Stopped(crate::checkpoint::Control),
    /// The checkpoint cannot be read by this host (corrupt, or a newer format). Permanent.
    Unreadable(String),
    /// The job is stored for other work than the message asks for. Permanent; the reason
    /// names both.
    OtherWork(String),
    /// The host could not start the task (not the task's fault; nothing counted); the
    /// checkpoint is released. Retry later. A fault of the node: on SaladCloud, a few in a
    /// row ask for another node.
    HostFault(String),
    /// A host function panicked while serving the task (a bug of ours that the task's calls
    /// reached): the checkpoint is released and the run counts as a crash of the job (so a
    /// job that keeps reaching it is bounded), never as the task's failure. Retry later. A
    /// property of the job, not of the node: it never asks for another node.
    HostPanic(String),
    /// The store failed; nothing is lost, retry later. Nack with backoff.
    Storage(String),
    /// The job's last runs ended without a clean end (their worker crashed, was killed or
    /// panicked, or lost the job) and saved nothing between: `crashes` of them, over the
    /// limit. Nothing ran. Dead-letter.
    Crashed {
        /// Runs in a row without a clean end.
        crashes: u32,
        /// The last failure recorded in the checkpoint (`"none recorded"` without one).
        last: String,
    },
    /// The store kept failing this job's own input or artifact calls while it answered the
    /// checkpoint's (`runs` runs in a row): a broken object, not an outage. Dead-letter.
    StorageRepeated {
        /// Runs in a row whose input or artifact calls failed on the store.
        runs: u32,
        /// The last of those store errors.
        last: String,
    },
}

impl JobEnd {
    /// What failed, when this end tells of the node rather than of the job: only a host
    /// fault (the host could not start the task). A host panic follows the job that reaches
    /// it, so it never counts against the node.
    pub fn node_fault(&self) -> Option<&str> {
        match self {
            JobEnd::HostFault(m) => Some(m),
            _ => None,
        }
    }
}

/// The fixed parts of running jobs.
#[derive(Clone)]
pub struct Executor<S> {
    /// Where checkpoints, results, errors, inputs and artifacts are read and written.
    pub store: S,
    /// The engine and module caches the tasks run on.
    pub runtime: Runtime,
    /// Names this worker in checkpoint headers.
    pub worker_id: String,
    /// Each run's caps (fuel, memory, wall clock).
    pub limits: JobLimits,
    /// Size and write spacing of checkpoints.
    pub checkpoint_limits: Limits,
    /// Input read and artifact caps of each job.
    pub file_limits: FileLimits,
    /// `MAX_CRASHES`: runs in a row without a clean end (and without a save) after which
    /// the job is dead-lettered instead of run again ([`JobEnd::Crashed`]).
    pub max_crashes: u32,
}

/// Default of [`Executor::max_crashes`].
pub const DEFAULT_MAX_CRASHES: u32 = 3;
/// Runs in a row whose task failed after the store failed its own input or artifact calls
/// (while the checkpoint's writes went through) before the job is dead-lettered.
pub const MAX_STORAGE_FAILED_RUNS: u32 = 5;

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// Runs `job` under `lease` (see the module docs). `shutdown` stops the task at its next
    /// yield and flushes its checkpoint; a lost lease or a conflict stops it without writing.
    pub async fn execute(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        binding: &JobBinding,
        lease: LeaseView,
        shutdown: CancellationToken,
    ) -> JobEnd {
        self.execute_counted(job, module, input, binding, lease, shutdown, async {})
            .await
            .0
    }

    /// [`Executor::execute`], also returning the runs the job's checkpoint counts (its
    /// `attempts`, 0 when nothing was claimed): the host's own count of deliveries, for a
    /// subscription that does not count them. `run_ended` is awaited once the task's run
    /// ended, before the job's outputs are written (the worker hands the job's slot over to
    /// a commit place there); what it gives is returned, `None` when no task ran.
    #[allow(clippy::too_many_arguments)]
    pub async fn execute_counted<T>(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        binding: &JobBinding,
        lease: LeaseView,
        shutdown: CancellationToken,
        run_ended: impl Future<Output = T>,
    ) -> (JobEnd, u32, Option<T>) {
        let claimed = match self.claim(job, binding, lease).await {
            Ok(claimed) => claimed,
            Err(end) => return (end, 0, None),
        };
        let attempts = claimed.attempt;
        if let Some(end) = self.refuse_past_crash_limit(&claimed).await {
            return (end, attempts, None);
        }
        let files = self.job_files(&claimed, binding);
        let report = self.run(&claimed, module, input, &files, shutdown).await;
        let handed = Some(run_ended.await);
        if claimed.lease.lost.is_cancelled() {
            return (JobEnd::LeaseLost, attempts, handed);
        }
        // The finish phase writes the outputs: the instance must not be scaled in meanwhile.
        let _uploading = binding
            .deletion_cost
            .as_ref()
            .filter(|_| matches!(report.outcome, crate::runtime::Outcome::Finished(_)))
            .map(crate::salad::DeletionCost::uploading);
        let end = self.settle(&claimed, &files, report).await;
        if end != JobEnd::Conflict {
            return (end, attempts, handed);
        }
        // A refused write: another worker, or a user's cancel or pause? One read tells.
        match crate::checkpoint::control::read(&self.store, job).await {
            Some(control) => (JobEnd::Stopped(control), attempts, handed),
            None => (end, attempts, handed),
        }
    }
}

/// A job this executor claimed: what every phase after the claim works on.
struct ClaimedJob<'a> {
    job: &'a JobId,
    /// This run's number (the header's `attempts`, incremented by the claim).
    attempt: u32,
    /// Whether the previous runs left a checkpoint to resume from.
    resumed: bool,
    /// Runs in a row before this one that ended without a clean end (this run counts as a
    /// crash too until it ends cleanly).
    crashed_before: u32,
    /// The header's `last_failure` at the claim.
    last_failure: Option<String>,
    /// The artifacts the last checkpoint recorded (what `artifacts.resume` continues).
    recorded_artifacts: Vec<crate::files::ArtifactRecord>,
    /// The job's checkpoint, owned from the claim on.
    checkpointer: Checkpointer,
    lease: LeaseView,
}
