//! The settle phase: from a run's outcome to the job's end, recording in the checkpoint
//! header what the outcome counts (fuel, failures, crashes, storage-failed runs) and
//! releasing the checkpoint; a finished task goes on to `finish`.

use super::{ClaimedJob, Executor, JobEnd, MAX_STORAGE_FAILED_RUNS};
use crate::checkpoint::{CheckpointError, Checkpointer, RunUsage};
use crate::files::JobFiles;
use crate::keys;
use crate::runtime::{Outcome, RunReport, TrapKind};
use crate::store::any::AnyStore;
use crate::store::{ObjectStore, Precondition};

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// The end of a claimed job whose run ended with `report` (its lease still held).
    pub(super) async fn settle(
        &self,
        claimed: &ClaimedJob<'_>,
        files: &JobFiles,
        report: RunReport,
    ) -> JobEnd {
        let checkpointer = &claimed.checkpointer;
        // This run's figures join the totals, written with its end (the checkpoint's
        // release, or the result's note); its fuel so far was in every write before.
        let run = RunUsage {
            fuel: report.fuel_used,
            wall_ms: report.elapsed.as_millis() as u64,
            host_compute_ms: report.host_compute.as_millis() as u64,
            checkpoint_bytes: checkpointer.bytes_written(),
            input_bytes: files.inputs.bytes_read(),
            artifact_bytes: files.artifacts.bytes_written(),
        };
        checkpointer.end_run(&run);
        let outcome = match report.outcome {
            // The task failed after the store failed it (an input read, an artifact upload):
            // the outage's doing, not the task's. Retry later; count nothing.
            Outcome::TaskError(msg)
            | Outcome::Trapped {
                kind: TrapKind::Panic,
                message: msg,
            } if files.storage_failed() => return self.storage_failed(claimed, msg).await,
            other => other,
        };
        // Every end below but a host panic is a clean end of this run (a conflict writes
        // nothing at all).
        if !matches!(outcome, Outcome::HostPanic(_)) {
            checkpointer.update_header(|h| {
                h.crashes = 0;
                h.storage_failed_runs = 0;
            });
        }
        match outcome {
            Outcome::Finished(result) => self.finish(claimed, &files.artifacts, result).await,
            Outcome::TaskError(msg) => self.task_failed(claimed, msg).await,
            Outcome::Trapped { kind, message } => {
                checkpointer.update_header(|h| {
                    h.failures = h.failures.saturating_add(1);
                    h.last_failure = Some(message.clone());
                });
                let failures = checkpointer.header().failures;
                let end = JobEnd::Trapped {
                    kind,
                    message,
                    failures,
                };
                released(checkpointer, end).await
            }
            Outcome::Conflict => JobEnd::Conflict,
            Outcome::HostFault(msg) => released(checkpointer, JobEnd::HostFault(msg)).await,
            Outcome::HostPanic(msg) => released(checkpointer, JobEnd::HostPanic(msg)).await,
            Outcome::Cancelled if checkpointer.is_conflicted() => JobEnd::Conflict,
            Outcome::Cancelled => released(checkpointer, JobEnd::Cancelled).await,
        }
    }

    /// The task failed after the store failed one of its own calls: handed back as a
    /// storage error, or dead-lettered once [`MAX_STORAGE_FAILED_RUNS`] runs in a row did so
    /// while the checkpoint's writes went through (a broken object, such as an upload the
    /// store lost, not an outage).
    async fn storage_failed(&self, claimed: &ClaimedJob<'_>, msg: String) -> JobEnd {
        let checkpointer = &claimed.checkpointer;
        let shown = crate::inert::Inert(&msg);
        tracing::warn!(job = %claimed.job, error = %shown, "the task failed after a storage error; retrying later");
        checkpointer.update_header(|h| {
            h.storage_failed_runs = h.storage_failed_runs.saturating_add(1);
            h.crashes = 0;
        });
        let runs = checkpointer.header().storage_failed_runs;
        let end = if runs >= MAX_STORAGE_FAILED_RUNS {
            JobEnd::StorageRepeated { runs, last: msg }
        } else {
            JobEnd::Storage(format!("storage failed during the task: {msg}"))
        };
        released(checkpointer, end).await
    }

    /// The task reported a permanent failure: recorded in the header, then written as the
    /// job's error object.
    async fn task_failed(&self, claimed: &ClaimedJob<'_>, msg: String) -> JobEnd {
        let checkpointer = &claimed.checkpointer;
        checkpointer.update_header(|h| h.last_failure = Some(msg.clone()));
        if let Err(e) = checkpointer.flush(true).await {
            return end_of_checkpoint_error(e);
        }
        let error = msg.clone().into_bytes();
        match (self.store)
            .put(&keys::error(claimed.job), error, Precondition::None)
            .await
        {
            Ok(_) => JobEnd::TaskFailed(msg),
            Err(e) => JobEnd::Storage(e.to_string()),
        }
    }
}

/// `end` once the checkpoint is durable and released; the checkpoint's error otherwise.
pub(super) async fn released(checkpointer: &Checkpointer, end: JobEnd) -> JobEnd {
    match checkpointer.flush(true).await {
        Ok(()) => end,
        Err(e) => end_of_checkpoint_error(e),
    }
}

/// The end of a job whose checkpoint write failed: a conflict (another worker owns it), or
/// a storage error.
pub(super) fn end_of_checkpoint_error(e: CheckpointError) -> JobEnd {
    match e {
        CheckpointError::Conflict => JobEnd::Conflict,
        other => JobEnd::Storage(other.to_string()),
    }
}
