//! Which jobs name which module: the one function `module inspect`, `module rm` and
//! `module prune` ask ([`usage`]).
//!
//! It counts on the status machinery ([`status::scan`]): one listing of `jobs/` and the
//! `submitted/` batch records, which name each job's module, so a job no worker has started
//! yet (queued) is counted too, and each job's state is the one `status` counts it in
//! (docs/design.md §4, "Status from listings"). A job no record names a module for (published
//! by an older `submit`, or by other means) is read from its checkpoint, which records its
//! module, if it has one; such a job with nothing stored names no module anyone can tell.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;

use serde::Serialize;

use super::RegistryError;
use crate::checkpoint;
use crate::ids::{JobState, ModuleHash};
use crate::status;
use crate::store::ObjectStore;

/// Checkpoints read at once for jobs no batch record names a module for.
const READS_IN_FLIGHT: usize = 16;

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

/// The jobs naming each module, by state (modules no job names are absent); `window` is
/// [`status::running_window`]. One listing of `jobs/`, one read per batch record, and one
/// checkpoint read per job no record names a module for.
pub async fn usage<S: ObjectStore>(
    store: &S,
    window: Duration,
) -> Result<BTreeMap<ModuleHash, JobCounts>, RegistryError> {
    let scan = status::scan(store).await?;
    let mut counts: BTreeMap<ModuleHash, JobCounts> = BTreeMap::new();
    let mut unrecorded = Vec::new();
    for (id, listed) in &scan.jobs {
        let state = listed.state(scan.now_ms, window);
        match listed.module {
            Some(module) => counts.entry(module).or_default().add(state),
            None if listed.checkpoint_ms.is_some() => unrecorded.push((id, state)),
            None => {}
        }
    }
    let mut reads = futures_util::stream::iter(unrecorded)
        .map(|(id, state)| async move { (checkpoint::peek(store, id).await, state) })
        .buffer_unordered(READS_IN_FLIGHT);
    while let Some((header, state)) = reads.next().await {
        // Deleted since the listing, or unreadable: it names no module we can tell.
        let Ok(Some(header)) = header else { continue };
        if let Ok(module) = header.module.parse::<ModuleHash>() {
            counts.entry(module).or_default().add(state);
        }
    }
    Ok(counts)
}
