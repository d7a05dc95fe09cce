//! The run phase: the task under the stop conditions (shutdown, a lost lease, a conflict of
//! its checkpoint), with the job's files.

use tokio_util::sync::CancellationToken;

use super::{ClaimedJob, Executor, JobBinding};
use crate::files::JobFiles;
use crate::observe::JobUsage;
use crate::runtime::{Prepared, RunReport, RunRequest};
use crate::store::ObjectStore;
use crate::store::any::AnyStore;

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// The claimed job's inputs (by `binding`) and artifacts (continuing what its checkpoint
    /// recorded), fenced by its checkpoint.
    pub(super) fn job_files(&self, claimed: &ClaimedJob<'_>, binding: &JobBinding) -> JobFiles {
        JobFiles::new(
            self.store.clone().into(),
            claimed.job,
            binding.inputs.clone(),
            claimed.recorded_artifacts.clone(),
            claimed.checkpointer.fence(),
            &self.file_limits,
        )
    }

    /// Runs the task to its end; it stops at its next yield on `shutdown`, on a lost lease or
    /// on a conflict.
    pub(super) async fn run(
        &self,
        claimed: &ClaimedJob<'_>,
        module: &Prepared,
        input: &str,
        files: &JobFiles,
        shutdown: CancellationToken,
    ) -> RunReport {
        let (job, attempt) = (claimed.job, claimed.attempt);
        // The fuel the job's earlier runs were counted with at the claim (this run adds to it).
        let fuel_before = claimed.checkpointer.header().fuel_used;
        tracing::info!(job = %job, attempt, resumed = claimed.resumed, crashes = claimed.crashed_before, fuel_before, "job started");
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(stop_on_first(
            stop.clone(),
            [
                shutdown,
                claimed.lease.lost.clone(),
                claimed.checkpointer.stopped(),
            ],
        ));
        let report = self
            .runtime
            .run(
                module,
                RunRequest {
                    job,
                    attempt,
                    input,
                    limits: &self.limits,
                    checkpoint: claimed.checkpointer.clone(),
                    files: files.clone(),
                    cancel: stop,
                },
            )
            .await;
        watcher.abort();
        let fuel = report.fuel_used;
        // What this run used, counted once here (checkpoint bytes: the writes so far).
        let usage = JobUsage {
            fuel,
            input_bytes_read: files.inputs.bytes_read(),
            artifact_bytes_written: files.artifacts.bytes_written(),
            checkpoint_bytes_written: claimed.checkpointer.bytes_written(),
        };
        self.runtime.metrics().job_usage(&usage);
        tracing::info!(
            job = %job,
            attempt,
            fuel,
            input_bytes_read = usage.input_bytes_read,
            artifact_bytes_written = usage.artifact_bytes_written,
            elapsed_ms = report.elapsed.as_millis() as u64,
            host_compute_ms = report.host_compute.as_millis() as u64,
            outcome = ?report.outcome,
            "task run ended"
        );
        report
    }
}

/// Cancels `stop` when the first of `reasons` is cancelled.
async fn stop_on_first(stop: CancellationToken, reasons: [CancellationToken; 3]) {
    let [a, b, c] = reasons;
    tokio::select! {
        _ = a.cancelled() => {}
        _ = b.cancelled() => {}
        _ = c.cancelled() => {}
    }
    stop.cancel();
}
