//! The claim phase: take the job's checkpoint under this worker's lease (or learn that the
//! job is done, busy, unreadable or stored for other work), and refuse a job whose last
//! runs all crashed.

use super::settle::released;
use super::{ClaimedJob, Executor, JobBinding, JobEnd};
use crate::checkpoint::{self, Checkpointer, ClaimError};
use crate::ids::JobId;
use crate::queue::lease::LeaseView;
use crate::store::ObjectStore;
use crate::store::any::AnyStore;

impl<S: ObjectStore + Clone + Into<AnyStore>> Executor<S> {
    /// Claims `job` for `binding`'s work under `lease` and starts its [`Checkpointer`]; the
    /// end of the job when nothing is to run.
    pub(super) async fn claim<'a>(
        &self,
        job: &'a JobId,
        binding: &JobBinding,
        lease: LeaseView,
    ) -> Result<ClaimedJob<'a>, JobEnd> {
        let claimed = checkpoint::claim(
            &self.store,
            job,
            &self.worker_id,
            &lease,
            &binding.work,
            binding.on_other_work,
        )
        .await
        .map_err(end_of_claim_error)?;
        let header = &claimed.header;
        let (attempt, resumed) = (header.attempts, claimed.data.is_some());
        // This run counts as a crash (the claim wrote it so) until it ends cleanly.
        let crashed_before = header.crashes.saturating_sub(1);
        let last_failure = header.last_failure.clone();
        let recorded_artifacts = header.artifacts.clone();
        let checkpointer = Checkpointer::start(
            self.store.clone(),
            job,
            claimed,
            self.checkpoint_limits.clone(),
            lease.clone(),
        );
        checkpointer.observe(self.runtime.metrics().clone());
        Ok(ClaimedJob {
            job,
            attempt,
            resumed,
            crashed_before,
            last_failure,
            recorded_artifacts,
            checkpointer,
            lease,
        })
    }

    /// [`JobEnd::Crashed`] (the checkpoint released) when the job's last runs, `max_crashes`
    /// or more, all ended without a clean end: it is not run again.
    pub(super) async fn refuse_past_crash_limit(&self, claimed: &ClaimedJob<'_>) -> Option<JobEnd> {
        let crashes = claimed.crashed_before;
        if crashes < self.max_crashes.max(1) {
            return None;
        }
        tracing::error!(job = %claimed.job, crashes, "the job's last runs all ended without a clean end; not running it again");
        let last = (claimed.last_failure.clone()).unwrap_or_else(|| "none recorded".into());
        Some(released(&claimed.checkpointer, JobEnd::Crashed { crashes, last }).await)
    }
}

/// The end of a job whose claim did not take it.
fn end_of_claim_error(e: ClaimError) -> JobEnd {
    match e {
        ClaimError::AlreadyDone => JobEnd::AlreadyDone,
        ClaimError::Busy { owner, until_ms } => JobEnd::Busy { owner, until_ms },
        ClaimError::Unreadable(m) => JobEnd::Unreadable(m),
        ClaimError::OtherWork(m) => JobEnd::OtherWork(m),
        ClaimError::Storage(m) => JobEnd::Storage(m),
        ClaimError::Stopped(c) => JobEnd::Stopped(c),
    }
}
