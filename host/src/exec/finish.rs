//! The finish phase: a finished job's outputs (its artifacts' manifest, then its result),
//! written under the end-of-job ownership proof (see the module docs of `exec`).

use super::settle::end_of_checkpoint_error;
use super::{ClaimedJob, Executor, JobEnd};
use crate::checkpoint::Proof;
use crate::files::Artifacts;
use crate::ids::JobId;
use crate::keys;
use crate::store::any::AnyStore;
use crate::store::{ObjectStore, Precondition, StoreError};

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// Ends a finished job without waiting for the checkpoint's write spacing: pending saves
    /// are dropped (the result supersedes them), ownership is proven by the lease the last
    /// checkpoint write recorded (see the module docs), and the result is written
    /// create-only: a one-step job costs two requests, the claim and the result. A job with
    /// artifacts writes their manifest first, under the same proof: they become visible with
    /// the result; a later run without artifacts deletes a manifest an earlier owner left.
    /// Every write after the proof is bounded by the time the proof still holds
    /// ([`Executor::write_owned`]); unfinished uploads are aborted only once the result is
    /// durable.
    pub(super) async fn finish(
        &self,
        claimed: &ClaimedJob<'_>,
        artifacts: &Artifacts,
        result: String,
    ) -> JobEnd {
        let job = claimed.job;
        let manifest = artifacts.manifest();
        let proof = match claimed.checkpointer.finish().await {
            Ok(p) => p,
            Err(e) => return end_of_checkpoint_error(e),
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
                .write_owned(job, &proof, &keys::manifest(job), bytes, None)
                .await
            {
                return end;
            }
        } else if claimed.attempt > 1 {
            // A worker that held the job before may have written its manifest and lost the
            // job before its result: not this run's. (A first run has no one before it, and
            // a start-over deleted the old work's.)
            match within(&proof, self.store.delete(&keys::manifest(job))).await {
                Some(Ok(())) => {}
                Some(Err(e)) => return JobEnd::Storage(e.to_string()),
                None => {
                    tracing::warn!(job = %job, "a manifest's delete outlasted this worker's hold on the job; giving the job up");
                    return JobEnd::LeaseLost;
                }
            }
        }
        // The job's accounting rides on the result as its note: no request of its own.
        let usage = claimed.checkpointer.header().usage();
        let note = serde_json::to_string(&usage).expect("usage serializes");
        let end = match self
            .write_owned(
                job,
                &proof,
                &keys::result(job),
                result.clone().into_bytes(),
                Some(note),
            )
            .await
        {
            Ok(Written::Created | Written::Replaced) => JobEnd::Done {
                result,
                attempt: claimed.attempt,
            },
            Ok(Written::Existed) => JobEnd::AlreadyDone,
            Err(end) => return end,
        };
        artifacts.discard_unfinished();
        end
    }

    /// Writes one of a finished job's outputs (`key`, `bytes`, with `note`) while `proof` holds, each
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
        note: Option<String>,
    ) -> Result<Written, JobEnd> {
        let expired = || {
            tracing::warn!(job = %job, key, "a result write outlasted this worker's hold on the job; giving the job up");
            JobEnd::LeaseLost
        };
        let storage = |e: StoreError| JobEnd::Storage(e.to_string());
        let create =
            (self.store).put_with_note(key, bytes.clone(), Precondition::Absent, note.clone());
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
            // Maybe another process's write, not durable yet (the directory store's group
            // commit): durable before the job is acked as done.
            within(proof, self.store.make_durable(key))
                .await
                .ok_or_else(expired)?
                .map_err(storage)?;
            return Ok(Written::Existed);
        }
        tracing::warn!(job = %job, key, "replacing what a worker that no longer owns the job wrote");
        let replace =
            (self.store).put_with_note(key, bytes, Precondition::Matches(stored.etag), note);
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
