//! Running one job end to end against a store: claim the checkpoint (or learn that the job
//! is done or busy), run the task, then write the result (or error) and count failures.
//!
//! Used by `taskhost run` and by the worker; the caller decides what to do with the queue
//! message from the returned [`JobEnd`].
//!
//! **Invariants:** the result is written create-only, and only while this worker owns the
//! job: no write of its checkpoint was refused (no conflict), and the lease its last write
//! recorded has more than twice the clock-skew allowance ([`skew_allowance_ms`](crate::checkpoint::ownership::skew_allowance_ms)) left. A
//! claim takes over only a lease that is released or ends within one allowance by its own
//! clock, so with clocks at most one allowance apart no other worker can have claimed the
//! job, and none can before the result is written. After a conflict or a lost lease nothing
//! is written.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::{
    self, CheckpointError, Checkpointer, ClaimError, Limits, OtherWork, Proof,
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
    /// The job's last runs ended without a clean end (their worker crashed, was killed or
    /// panicked, or lost the job) and saved nothing between: `crashes` of them, over the
    /// limit. Nothing ran. Dead-letter.
    Crashed { crashes: u32, last: String },
    /// The store kept failing this job's own input or artifact calls while it answered the
    /// checkpoint's (`runs` runs in a row): a broken object, not an outage. Dead-letter.
    StorageRepeated { runs: u32, last: String },
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
        binding: &Binding,
        lease: LeaseView,
        shutdown: CancellationToken,
    ) -> JobEnd {
        self.execute_counted(job, module, input, binding, lease, shutdown)
            .await
            .0
    }

    /// [`Executor::execute`], also returning the runs the job's checkpoint counts (its
    /// `attempts`, 0 when nothing was claimed): the host's own count of deliveries, for a
    /// subscription that does not count them.
    pub async fn execute_counted(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        binding: &Binding,
        lease: LeaseView,
        shutdown: CancellationToken,
    ) -> (JobEnd, u32) {
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
            Err(e) => return (claim_end(e), 0),
        };
        let attempts = claimed.header.attempts;
        (
            self.run_claimed(job, module, input, binding, lease, shutdown, claimed)
                .await,
            attempts,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_claimed(
        &self,
        job: &JobId,
        module: &Prepared,
        input: &str,
        binding: &Binding,
        lease: LeaseView,
        shutdown: CancellationToken,
        claimed: checkpoint::Claimed,
    ) -> JobEnd {
        let attempt = claimed.header.attempts;
        let resumed = claimed.data.is_some();
        let recorded = claimed.header.artifacts.clone();
        // This run counts as a crash (the claim wrote it so) until it ends cleanly.
        let crashed_before = claimed.header.crashes.saturating_sub(1);
        let last_failure = claimed.header.last_failure.clone();
        let ckpt = Checkpointer::start(
            self.store.clone(),
            job,
            claimed,
            self.checkpoint_limits.clone(),
            lease.clone(),
        );
        if crashed_before >= self.max_crashes.max(1) {
            tracing::error!(job = %job, crashes = crashed_before, "the job's last runs all ended without a clean end; not running it again");
            return match ckpt.flush(true).await {
                Ok(()) => JobEnd::Crashed {
                    crashes: crashed_before,
                    last: last_failure.unwrap_or_else(|| "none recorded".into()),
                },
                Err(e) => ckpt_end(e),
            };
        }
        tracing::info!(job = %job, attempt, resumed, crashes = crashed_before, "job started");
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
                let shown = crate::inert::Inert(&msg);
                tracing::warn!(job = %job, error = %shown, "the task failed after a storage error; retrying later");
                ckpt.update_header(|h| {
                    h.storage_failed_runs += 1;
                    h.crashes = 0;
                });
                let runs = ckpt.header().storage_failed_runs;
                // The checkpoint write answering while the job's own calls keep failing is a
                // broken object (an upload the store lost, say), not an outage: bounded.
                return match ckpt.flush(true).await {
                    Ok(()) if runs >= MAX_STORAGE_FAILED_RUNS => {
                        JobEnd::StorageRepeated { runs, last: msg }
                    }
                    Ok(()) => JobEnd::Storage(format!("storage failed during the task: {msg}")),
                    Err(e) => ckpt_end(e),
                };
            }
            other => other,
        };
        // Every end below but a host panic and a lost job is a clean end of this run.
        // Every end below but a host panic is a clean end of this run (a conflict writes
        // nothing at all).
        if !matches!(outcome, Outcome::HostPanic(_)) {
            ckpt.update_header(|h| {
                h.crashes = 0;
                h.storage_failed_runs = 0;
            });
        }
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
            Outcome::HostFault(msg) | Outcome::HostPanic(msg) => match ckpt.flush(true).await {
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
    /// the result. Every write after the proof is bounded by the time the proof still holds
    /// ([`Executor::write_owned`]); unfinished uploads are aborted only once the result is
    /// durable.
    async fn store_result(
        &self,
        job: &JobId,
        ckpt: &Checkpointer,
        artifacts: &Artifacts,
        result: String,
        attempt: u32,
    ) -> JobEnd {
        let manifest = artifacts.manifest();
        let proof = match ckpt.finish().await {
            Ok(p) => p,
            Err(e) => return ckpt_end(e),
        };
        if proof.time_left().is_none() {
            // Our recorded lease is (about to be) over (its refresh failed): another worker
            // may claim the job, so the result must not be written by us.
            tracing::warn!(job = %job, "the lease recorded in the checkpoint is ending; not writing the result");
            return JobEnd::LeaseLost;
        }
        if !manifest.artifacts.is_empty() {
            let bytes = manifest.encode();
            if let Err(end) = self
                .write_owned(job, &proof, &keys::manifest(job), bytes)
                .await
            {
                return end;
            }
        }
        let end = match self
            .write_owned(job, &proof, &keys::result(job), result.clone().into_bytes())
            .await
        {
            Ok(Written::Created | Written::Replaced) => JobEnd::Done { result, attempt },
            Ok(Written::Existed) => JobEnd::AlreadyDone,
            Err(end) => return end,
        };
        artifacts.discard_unfinished();
        end
    }

    /// Writes one of a finished job's outputs (`key`, `bytes`) while `proof` holds, each
    /// request bounded by the time it still holds. Create-only first; an object already there
    /// with the same bytes is this work's (`Existed`: our own write whose answer was lost, or
    /// the same work done before); one with other bytes was written by a worker that no
    /// longer owns the job (a stale owner's late write) and is replaced, `If-Match` on what
    /// was read (`Replaced`). A request that outlasts the proof may still land, so the job
    /// ends as lost: the next delivery finds what is stored.
    async fn write_owned(
        &self,
        job: &JobId,
        proof: &Proof,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<Written, JobEnd> {
        let expired = || {
            tracing::warn!(job = %job, key, "a result write outlasted this worker's hold on the job; giving the job up");
            JobEnd::LeaseLost
        };
        let storage = |e: StoreError| JobEnd::Storage(e.to_string());
        let create = self.store.put(key, bytes.clone(), Precondition::Absent);
        match within(proof, create).await.ok_or_else(expired)? {
            Ok(_) => return Ok(Written::Created),
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(storage(e)),
        }
        let stored = within(proof, self.store.get(key))
            .await
            .ok_or_else(expired)?;
        let stored = match stored.map_err(storage)? {
            Some(obj) => obj,
            // Deleted since (a restart of the job): ours is not the job's output any more.
            None => return Err(JobEnd::Conflict),
        };
        if stored.bytes == bytes {
            return Ok(Written::Existed);
        }
        tracing::warn!(job = %job, key, "replacing what a worker that no longer owns the job wrote");
        let replace = self
            .store
            .put(key, bytes, Precondition::Matches(stored.etag));
        match within(proof, replace).await.ok_or_else(expired)? {
            Ok(_) => Ok(Written::Replaced),
            Err(StoreError::PreconditionFailed) => Err(JobEnd::Conflict),
            Err(e) => Err(storage(e)),
        }
    }
}

/// How [`Executor::write_owned`] left the object.
enum Written {
    Created,
    Existed,
    Replaced,
}

/// Runs `request` for at most the time `proof` still holds: `None` if that is up first (the
/// request may still land on the server).
async fn within<T>(proof: &Proof, request: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(proof.time_left()?, request).await.ok()
}

fn claim_end(e: ClaimError) -> JobEnd {
    match e {
        ClaimError::AlreadyDone => JobEnd::AlreadyDone,
        ClaimError::Busy { owner, until_ms } => JobEnd::Busy { owner, until_ms },
        ClaimError::Unreadable(m) => JobEnd::Unreadable(m),
        ClaimError::OtherWork(m) => JobEnd::OtherWork(m),
        ClaimError::Storage(m) => JobEnd::Storage(m),
    }
}

fn ckpt_end(e: CheckpointError) -> JobEnd {
    match e {
        CheckpointError::Conflict => JobEnd::Conflict,
        other => JobEnd::Storage(other.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::RuntimeConfig;
    use crate::store::dir::DirStore;

    /// The job id whose `job.id()` host call panics (see `runtime::host`).
    pub(crate) const PANICKING_JOB: &str = "panic-in-host";

    fn hostile() -> Vec<u8> {
        crate::test_guests::wasm("hostile")
    }

    async fn executor(store: DirStore) -> (Executor<DirStore>, Prepared) {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let module = runtime.prepare(hostile(), None).await.unwrap();
        let ex = Executor {
            store,
            runtime,
            worker_id: "test".into(),
            limits: JobLimits::default(),
            checkpoint_limits: Limits {
                min_write_interval: Duration::from_millis(20),
                ..Limits::default()
            },
            file_limits: FileLimits::default(),
            max_crashes: 2,
        };
        (ex, module)
    }

    async fn run(ex: &Executor<DirStore>, module: &Prepared, job: &str) -> JobEnd {
        let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
        let job: JobId = job.parse().unwrap();
        let end = ex
            .execute(
                &job,
                module,
                r#"{"mode": "id"}"#,
                &Binding::default(),
                lease,
                CancellationToken::new(),
            )
            .await;
        renewing.cancel();
        end
    }

    /// A host function that panics ends that job as a host fault: its checkpoint is
    /// released, the run counts as a crash, other jobs run on; past the crash limit the job
    /// is not run again.
    #[tokio::test]
    async fn a_host_panic_ends_one_job_and_counts_as_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let (ex, module) = executor(store.clone()).await;
        let job: JobId = PANICKING_JOB.parse().unwrap();
        for crashes in 1..=2 {
            let end = run(&ex, &module, PANICKING_JOB).await;
            assert!(
                matches!(&end, JobEnd::HostFault(m) if m.contains("injected")),
                "{end:?}"
            );
            let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
            assert_eq!(header.lease_until_ms, 0, "released");
            assert_eq!(header.crashes, crashes);
            assert_eq!(header.failures, 0, "never the task's failure");
            // Another job on the same executor is untouched.
            let ok = run(&ex, &module, &format!("fine-{crashes}")).await;
            assert!(matches!(ok, JobEnd::Done { .. }), "{ok:?}");
        }
        let end = run(&ex, &module, PANICKING_JOB).await;
        assert!(
            matches!(end, JobEnd::Crashed { crashes: 2, .. }),
            "past MAX_CRASHES the job is not run: {end:?}"
        );
    }

    /// A crash counted for a job is forgiven by a clean end.
    #[tokio::test]
    async fn a_clean_end_clears_the_crash_count() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let (ex, module) = executor(store.clone()).await;
        // A claim whose run never ended (a killed worker), then released as a dead
        // sibling's would be.
        let job: JobId = "killed".parse().unwrap();
        let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
        let claimed = checkpoint::claim(
            &store,
            &job,
            "dead",
            &lease,
            &Work::default(),
            OtherWork::Refuse,
        )
        .await
        .unwrap();
        renewing.cancel();
        assert_eq!(claimed.header.crashes, 1);
        let mut header = claimed.header;
        header.lease_until_ms = 0;
        let stored = store.get(&checkpoint::key(&job)).await.unwrap().unwrap();
        store
            .put(
                &checkpoint::key(&job),
                checkpoint::encode(&header, None),
                Precondition::Matches(stored.etag),
            )
            .await
            .unwrap();
        // The next run ends cleanly (a task error) and clears the count.
        let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
        let end = ex
            .execute(
                &job,
                &module,
                r#"{"mode": "nonsense"}"#,
                &Binding::default(),
                lease,
                CancellationToken::new(),
            )
            .await;
        renewing.cancel();
        assert!(matches!(end, JobEnd::TaskFailed(_)), "{end:?}");
        let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
        assert_eq!((header.attempts, header.crashes), (2, 0));
    }
}
