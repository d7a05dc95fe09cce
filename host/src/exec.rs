//! Running one job end to end against a store: claim the checkpoint (or learn that the job
//! is done or busy), run the task, then write the result (or error) and count failures.
//!
//! Used by `taskhost run` and by the worker; the caller decides what to do with the queue
//! message from the returned [`JobEnd`].
//!
//! **Invariants:** the result is written create-only, and only while this worker owns the
//! job: no write of its checkpoint was refused (no conflict), and the lease its last write
//! recorded has more than twice the clock-skew allowance ([`skew_allowance_ms`]) left. A
//! claim takes over only a lease that is released or ends within one allowance by its own
//! clock, so with clocks at most one allowance apart no other worker can have claimed the
//! job, and none can before the result is written. After a conflict or a lost lease nothing
//! is written.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::{
    self, CheckpointError, Checkpointer, ClaimError, Limits, OtherWork, now_ms, skew_allowance_ms,
};
use crate::files::{Artifacts, FileLimits, JobFiles};
use crate::ids::JobId;
use crate::job::Work;
use crate::keys;
use crate::queue::lease::LeaseView;
use crate::runtime::{JobLimits, Outcome, Prepared, RunRequest, Runtime, TrapKind};
use crate::store::any::AnyStore;
use crate::store::{ObjectStore, Precondition, StoreError};

/// What a job computes and what to do when its stored state was made for other work.
#[derive(Clone, Debug, Default)]
pub struct Binding {
    pub work: Work,
    pub on_other_work: OtherWork,
    /// The job's input objects: name → key (the message's `inputs`).
    pub inputs: BTreeMap<String, String>,
}

/// How a job's run ended, and so what to do with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// A result already existed: nothing ran. Ack.
    AlreadyDone,
    /// The result is durable now. Ack.
    Done { result: String, attempt: u32 },
    /// The task reported a permanent failure; `jobs/<id>/error` is written. Dead-letter.
    TaskFailed(String),
    /// The task trapped; the failure is counted in the checkpoint. Nack, or dead-letter
    /// once `failures` reaches the limit.
    Trapped {
        kind: TrapKind,
        message: String,
        failures: u32,
    },
    /// Another worker holds the job under a live lease. Nothing ran; hand the message back
    /// for at least one lease period.
    Busy { owner: String, until_ms: u64 },
    /// Another worker took the job over (the checkpoint changed under us). The task was
    /// stopped; nothing was written; count nothing.
    Conflict,
    /// Our queue lease is gone. The task was stopped; nothing was written; count nothing.
    LeaseLost,
    /// Stopped by the host (shutdown); the checkpoint is durable and released. Nack now.
    Cancelled,
    /// The checkpoint cannot be read by this host (corrupt, or a newer format). Permanent.
    Unreadable(String),
    /// The job is stored for other work than the message asks for. Permanent; the reason
    /// names both.
    OtherWork(String),
    /// The host could not start the task (not the task's fault; nothing counted); the
    /// checkpoint is released. Retry later.
    HostFault(String),
    /// The store failed; nothing is lost, retry later. Nack with backoff.
    Storage(String),
}

/// The fixed parts of running jobs.
#[derive(Clone)]
pub struct Executor<S> {
    pub store: S,
    pub runtime: Runtime,
    /// Names this worker in checkpoint headers.
    pub worker_id: String,
    pub limits: JobLimits,
    pub checkpoint_limits: Limits,
    pub file_limits: FileLimits,
}

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// Runs `job` under `lease` (see the module docs). `shutdown` stops the task at its next
    /// yield and flushes its checkpoint; a lost lease or a conflict stops it without writing.
    pub async fn execute(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        binding: &Binding,
        lease: LeaseView,
        shutdown: CancellationToken,
    ) -> JobEnd {
        let claimed = match checkpoint::claim(
            &self.store,
            job,
            &self.worker_id,
            &lease,
            &binding.work,
            binding.on_other_work,
        )
        .await
        {
            Ok(c) => c,
            Err(ClaimError::AlreadyDone) => return JobEnd::AlreadyDone,
            Err(ClaimError::Busy { owner, until_ms }) => {
                return JobEnd::Busy { owner, until_ms };
            }
            Err(ClaimError::Unreadable(m)) => return JobEnd::Unreadable(m),
            Err(ClaimError::OtherWork(m)) => return JobEnd::OtherWork(m),
            Err(ClaimError::Storage(m)) => return JobEnd::Storage(m),
        };
        let attempt = claimed.header.attempts;
        let resumed = claimed.data.is_some();
        let recorded = claimed.header.artifacts.clone();
        tracing::info!(job = %job, attempt, resumed, "job started");
        let ckpt = Checkpointer::start(
            self.store.clone(),
            job,
            claimed,
            self.checkpoint_limits.clone(),
            lease.clone(),
        );
        let files = JobFiles::new(
            self.store.clone().into(),
            job,
            binding.inputs.clone(),
            recorded,
            ckpt.clone(),
            &self.file_limits,
        );
        // The task stops at its next yield on shutdown, on a lost lease, or on a conflict.
        let stop = CancellationToken::new();
        let watcher = tokio::spawn({
            let (stop, lost, lost_job) = (stop.clone(), lease.lost.clone(), ckpt.stopped());
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = lost.cancelled() => {}
                    _ = lost_job.cancelled() => {}
                }
                stop.cancel();
            }
        });
        let report = self
            .runtime
            .run(
                module,
                RunRequest {
                    job,
                    attempt,
                    input,
                    limits: &self.limits,
                    checkpoint: ckpt.clone(),
                    files: files.clone(),
                    cancel: stop,
                },
            )
            .await;
        watcher.abort();
        let fuel = report.fuel_used;
        tracing::info!(
            job = %job,
            attempt,
            fuel,
            input_bytes_read = files.inputs.bytes_read(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            outcome = ?report.outcome,
            "task run ended"
        );
        if lease.lost.is_cancelled() {
            return JobEnd::LeaseLost;
        }
        ckpt.update_header(|h| h.fuel_used = h.fuel_used.saturating_add(fuel));

        let outcome = match report.outcome {
            // The task failed after the store failed it (an input read, an artifact upload):
            // the outage's doing, not the task's. Retry later; count nothing.
            Outcome::TaskError(msg)
            | Outcome::Trapped {
                kind: TrapKind::Panic,
                message: msg,
            } if files.storage_failed() => {
                tracing::warn!(job = %job, error = %msg, "the task failed after a storage error; retrying later");
                return match ckpt.flush(true).await {
                    Ok(()) => JobEnd::Storage(format!("storage failed during the task: {msg}")),
                    Err(e) => ckpt_end(e),
                };
            }
            other => other,
        };
        match outcome {
            Outcome::Finished(result) => {
                self.store_result(job, &ckpt, &files.artifacts, result, attempt)
                    .await
            }
            Outcome::TaskError(msg) => {
                ckpt.update_header(|h| h.last_failure = Some(msg.clone()));
                if let Err(e) = ckpt.flush(true).await {
                    return ckpt_end(e);
                }
                match self
                    .store
                    .put(
                        &keys::error(job),
                        msg.clone().into_bytes(),
                        Precondition::None,
                    )
                    .await
                {
                    Ok(_) => JobEnd::TaskFailed(msg),
                    Err(e) => JobEnd::Storage(e.to_string()),
                }
            }
            Outcome::Trapped { kind, message } => {
                ckpt.update_header(|h| {
                    h.failures += 1;
                    h.last_failure = Some(message.clone());
                });
                let failures = ckpt.header().failures;
                match ckpt.flush(true).await {
                    Ok(()) => JobEnd::Trapped {
                        kind,
                        message,
                        failures,
                    },
                    Err(e) => ckpt_end(e),
                }
            }
            Outcome::Conflict => JobEnd::Conflict,
            Outcome::HostFault(msg) => match ckpt.flush(true).await {
                Ok(()) => JobEnd::HostFault(msg),
                Err(e) => ckpt_end(e),
            },
            Outcome::Cancelled if ckpt.is_conflicted() => JobEnd::Conflict,
            Outcome::Cancelled => match ckpt.flush(true).await {
                Ok(()) => JobEnd::Cancelled,
                Err(e) => ckpt_end(e),
            },
        }
    }

    /// Ends a finished job without waiting for the checkpoint's write spacing: pending saves
    /// are dropped (the result supersedes them), ownership is proven by the lease the last
    /// checkpoint write recorded (see the module docs), and the result is written
    /// create-only: a one-step job costs two requests, the claim and the result. A job with
    /// artifacts writes their manifest first, under the same proof: they become visible with
    /// the result.
    async fn store_result(
        &self,
        job: &JobId,
        ckpt: &Checkpointer,
        artifacts: &Artifacts,
        result: String,
        attempt: u32,
    ) -> JobEnd {
        let manifest = artifacts.close();
        let period_ms = ckpt.header().lease_period_ms;
        let proof = match ckpt.finish().await {
            Ok(p) => p,
            Err(e) => return ckpt_end(e),
        };
        let margin = 2 * skew_allowance_ms(period_ms);
        if proof.lease_until_ms <= now_ms().saturating_add(margin) {
            // Our recorded lease is (about to be) over (its refresh failed): another worker
            // may claim the job, so the result must not be written by us.
            tracing::warn!(job = %job, "the lease recorded in the checkpoint is ending; not writing the result");
            return JobEnd::LeaseLost;
        }
        if !manifest.artifacts.is_empty() {
            let bytes = manifest.encode();
            if let Err(e) = self
                .store
                .put(&keys::manifest(job), bytes, Precondition::None)
                .await
            {
                return JobEnd::Storage(e.to_string());
            }
        }
        match self
            .store
            .put(
                &keys::result(job),
                result.clone().into_bytes(),
                Precondition::Absent,
            )
            .await
        {
            Ok(_) => JobEnd::Done { result, attempt },
            Err(StoreError::PreconditionFailed) => JobEnd::AlreadyDone,
            Err(e) => JobEnd::Storage(e.to_string()),
        }
    }
}

fn ckpt_end(e: CheckpointError) -> JobEnd {
    match e {
        CheckpointError::Conflict => JobEnd::Conflict,
        other => JobEnd::Storage(other.to_string()),
    }
}
