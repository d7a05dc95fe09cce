//! Which jobs name which module: the one function `module inspect`, `module rm` and
//! `module prune` ask ([`usage`]).
//!
//! Today it reads what the store holds under `jobs/`: a job with a checkpoint names the
//! module its checkpoint records (its work), in the state `status` would show (done, failed,
//! running with a live lease, waiting for its next delivery). A job no worker has started
//! yet has nothing stored and is not counted here: `queued` stays 0 until the per-batch
//! `submitted/` records `submit` writes are read too (the worker's "module missing"
//! handling is the safety net for such a job: it waits `MISSING_MODULE_RETRY_SECONDS`,
//! then dead-letters it with the reason).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::RegistryError;
use crate::checkpoint::{self, ownership};
use crate::ids::{JobId, JobState, ModuleHash};
use crate::keys;
use crate::store::ObjectStore;

/// How many jobs in each state name a module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// [`JobState::Queued`].
    pub queued: u64,
    /// [`JobState::Running`].
    pub running: u64,
    /// [`JobState::Waiting`].
    pub waiting: u64,
    /// [`JobState::Done`].
    pub done: u64,
    /// [`JobState::Failed`].
    pub failed: u64,
    /// [`JobState::Cancelled`].
    pub cancelled: u64,
    /// Paused jobs still need their module: `job resume` continues them.
    pub paused: u64,
}

impl JobCounts {
    /// Adds one job in `state`.
    pub fn add(&mut self, state: JobState) {
        *match state {
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Waiting => &mut self.waiting,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
            JobState::Cancelled => &mut self.cancelled,
            JobState::Paused => &mut self.paused,
        } += 1;
    }

    /// A job still needs the module: one is queued, running, waiting to resume or paused.
    /// A needed module is never deleted.
    pub fn needed(&self) -> bool {
        self.queued + self.running + self.waiting + self.paused > 0
    }
}

/// The jobs naming each module, by state (modules no job names are absent). One listing of
/// `jobs/` and one read of each job's checkpoint.
pub async fn usage<S: ObjectStore>(
    store: &S,
) -> Result<BTreeMap<ModuleHash, JobCounts>, RegistryError> {
    let listed = store.list(keys::JOBS_PREFIX).await?;
    // job id -> the names of its objects (checkpoint, result, error, ...)
    let mut jobs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for key in &listed {
        if let Some((id, rest)) = key
            .strip_prefix(keys::JOBS_PREFIX)
            .and_then(|k| k.split_once('/'))
        {
            jobs.entry(id).or_default().insert(rest);
        }
    }
    let now_ms = crate::time::now_ms();
    let mut counts: BTreeMap<ModuleHash, JobCounts> = BTreeMap::new();
    for (id, objects) in jobs {
        if !objects.contains("checkpoint") {
            continue;
        }
        let Ok(job) = id.parse::<JobId>() else {
            continue;
        };
        let header = match checkpoint::peek(store, &job).await {
            Ok(Some(h)) => h,
            // Deleted since the listing, or unreadable: it names no module we can tell.
            Ok(None) | Err(_) => continue,
        };
        let Ok(module) = header.module.parse::<ModuleHash>() else {
            continue;
        };
        let live = ownership::recorded(header.lease_until_ms, header.lease_period_ms, now_ms)
            == ownership::Recorded::Live;
        let state = if objects.contains("result") {
            JobState::Done
        } else if objects.contains("error") {
            JobState::Failed
        } else if live {
            JobState::Running
        } else {
            match header.control.map(|c| c.action) {
                Some(checkpoint::Action::Cancel) => JobState::Cancelled,
                Some(checkpoint::Action::Pause) => JobState::Paused,
                None => JobState::Waiting,
            }
        };
        counts.entry(module).or_default().add(state);
    }
    Ok(counts)
}
