//! Running one job end to end against a store: skip if done, claim the checkpoint, run the
//! task, make its checkpoint durable, then write the result (or error) and count failures.
//!
//! Used by `taskhost run` and by the worker; the caller decides what to do with the queue
//! message from the returned [`JobEnd`].
//!
//! **Invariants:** the result is written create-only and only after a fenced checkpoint
//! write proved this worker still owns the job; after a conflict nothing is written.

use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, CheckpointError, Checkpointer, Limits};
use crate::ids::JobId;
use crate::runtime::{JobLimits, Outcome, Prepared, RunRequest, Runtime, TrapKind};
use crate::store::{ObjectStore, Precondition, StoreError};

pub fn result_key(job: &JobId) -> String {
    format!("jobs/{job}/result")
}

pub fn error_key(job: &JobId) -> String {
    format!("jobs/{job}/error")
}

/// How a job's run ended, and so what to do with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// A result already existed: nothing ran. Ack.
    AlreadyDone(String),
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
    /// Another worker owns the job. Write nothing; neither ack nor count.
    Conflict,
    /// Stopped by the host; the checkpoint is durable. Nack.
    Cancelled,
    /// The store failed; nothing is lost, retry later. Nack.
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
}

impl<S: ObjectStore + Clone> Executor<S> {
    /// Runs `job` (see the module docs). `on_start` is called with the claimed checkpoint
    /// header before the task starts.
    pub async fn execute(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        cancel: CancellationToken,
    ) -> JobEnd {
        match self.store.get(&result_key(job)).await {
            Ok(Some(obj)) => {
                return JobEnd::AlreadyDone(String::from_utf8_lossy(&obj.bytes).into());
            }
            Ok(None) => {}
            Err(e) => return JobEnd::Storage(e.to_string()),
        }
        let claimed = match checkpoint::claim(&self.store, job, &self.worker_id).await {
            Ok(c) => c,
            Err(CheckpointError::Conflict) => return JobEnd::Conflict,
            Err(e) => return JobEnd::Storage(e.to_string()),
        };
        let attempt = claimed.header.attempts;
        let resumed = claimed.data.is_some();
        tracing::info!(job = %job, attempt, resumed, "job started");
        let ckpt = Checkpointer::start(
            self.store.clone(),
            job,
            claimed,
            self.checkpoint_limits.clone(),
        );
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
                    cancel,
                },
            )
            .await;
        let fuel = report.fuel_used;
        ckpt.update_header(|h| h.fuel_used = h.fuel_used.saturating_add(fuel));
        tracing::info!(
            job = %job,
            attempt,
            fuel,
            elapsed_ms = report.elapsed.as_millis() as u64,
            outcome = ?report.outcome,
            "task run ended"
        );

        match report.outcome {
            Outcome::Finished(result) => {
                // The fenced flush proves we still own the job before the result is written.
                if let Err(e) = ckpt.flush().await {
                    return ckpt_end(e);
                }
                match self
                    .store
                    .put(
                        &result_key(job),
                        result.clone().into_bytes(),
                        Precondition::Absent,
                    )
                    .await
                {
                    Ok(_) => JobEnd::Done { result, attempt },
                    Err(StoreError::PreconditionFailed) => {
                        match self.store.get(&result_key(job)).await {
                            Ok(Some(obj)) => {
                                JobEnd::AlreadyDone(String::from_utf8_lossy(&obj.bytes).into())
                            }
                            Ok(None) => {
                                JobEnd::Storage("result vanished after a create conflict".into())
                            }
                            Err(e) => JobEnd::Storage(e.to_string()),
                        }
                    }
                    Err(e) => JobEnd::Storage(e.to_string()),
                }
            }
            Outcome::TaskError(msg) => {
                ckpt.update_header(|h| h.last_failure = Some(msg.clone()));
                if let Err(e) = ckpt.flush().await {
                    return ckpt_end(e);
                }
                match self
                    .store
                    .put(
                        &error_key(job),
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
                match ckpt.flush().await {
                    Ok(()) => JobEnd::Trapped {
                        kind,
                        message,
                        failures,
                    },
                    Err(e) => ckpt_end(e),
                }
            }
            Outcome::Conflict => JobEnd::Conflict,
            Outcome::Cancelled => match ckpt.flush().await {
                Ok(()) => JobEnd::Cancelled,
                Err(e) => ckpt_end(e),
            },
        }
    }
}

fn ckpt_end(e: CheckpointError) -> JobEnd {
    match e {
        CheckpointError::Conflict => JobEnd::Conflict,
        other => JobEnd::Storage(other.to_string()),
    }
}
