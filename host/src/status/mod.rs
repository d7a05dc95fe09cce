//! What `taskhost status` and the status page show: every job's state from listings, the
//! objects of the page in view only, and the workers' heartbeats.
//!
//! A job's state is read from the keys a listing of `jobs/` shows (docs/design.md §3):
//! `result` → done, `error` → failed, a `checkpoint` written within the lease window →
//! running, an older one → waiting, and a job id named only by a `submitted/` batch record
//! → queued (a batch record also names the module its jobs run, [`batch`]). So the overview of 10,000 jobs costs a listing (one request per 1,000 objects),
//! one read per submitted batch and one clock read, never one request per job. The page in
//! view reads its jobs' objects (result, error, checkpoint header), and there the ownership
//! rule decides running or waiting exactly.

pub mod batch;
pub mod page;
pub mod serve;
pub mod workers;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::ids::{JobId, JobState, ModuleHash};
use crate::keys;
use crate::store::{ObjectStore, StoreError};

/// What a listing says of one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    /// The checkpoint's last write (the store's clock), if it has one.
    pub checkpoint_ms: Option<u64>,
    /// A result exists.
    pub result: bool,
    /// An error exists (the job was dead-lettered).
    pub error: bool,
    /// A manifest exists (the artifacts below are the job's outputs).
    pub manifest: bool,
    /// The objects under `artifacts/`: how many, and their bytes together.
    pub artifacts: (usize, u64),
    /// Named by a `submitted/` record.
    pub submitted: bool,
    /// The `cancelled` marker `job cancel` writes.
    pub cancelled: bool,
    /// The `paused` marker `job pause` writes.
    pub paused: bool,
    /// The key of a record of a message naming this job that was dead-lettered at parse
    /// time (poison; the last one listed).
    pub poison: Option<String>,
    /// The module the newest `submitted/` record naming the job names (`None`: no record
    /// names one).
    pub module: Option<ModuleHash>,
}

/// The window [`Listed::state`] counts a checkpoint write as a running job's in: the lease
/// (`ACK_DEADLINE_SECONDS`, its owner rewrites the checkpoint every half of it), plus the
/// listing's whole-second times.
pub fn running_window(ack_deadline_seconds: u32) -> Duration {
    Duration::from_secs(u64::from(ack_deadline_seconds.max(1)) + 1)
}

impl Listed {
    /// The job's state by the listing: a checkpoint written within `window` of `now_ms` (both
    /// the store's clock) counts as running (a live owner rewrites it every half lease). A
    /// listing reads no header: a result a start-over has yet to delete counts as done here
    /// (the page's row, `page::state`, reads the header and says otherwise).
    pub fn state(&self, now_ms: u64, window: Duration) -> JobState {
        match self.checkpoint_ms {
            _ if self.result => JobState::Done,
            _ if self.error => JobState::Failed,
            _ if self.cancelled => JobState::Cancelled,
            _ if self.paused => JobState::Paused,
            Some(ms) if ms + window.as_millis() as u64 >= now_ms => JobState::Running,
            Some(_) => JobState::Waiting,
            // Nothing stored but a poison record: that message will never run.
            None if self.poison.is_some() => JobState::Failed,
            None => JobState::Queued,
        }
    }
}

/// Every job the store knows of, by id (sorted), from listings only.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Every job named by a key under `jobs/` or by a `submitted/` record.
    pub jobs: BTreeMap<JobId, Listed>,
    /// The store's time when the listing was taken (ms since the Unix epoch).
    pub now_ms: u64,
    /// The records of poison messages that named no valid job id, newest first.
    pub poison_messages: Vec<crate::store::Listed>,
}

/// Counts of jobs per state.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Every job, whatever its state (the sum of the others).
    pub total: usize,
    /// [`JobState::Queued`].
    pub queued: usize,
    /// [`JobState::Running`].
    pub running: usize,
    /// [`JobState::Waiting`].
    pub waiting: usize,
    /// [`JobState::Done`].
    pub done: usize,
    /// [`JobState::Failed`].
    pub failed: usize,
    /// [`JobState::Cancelled`].
    pub cancelled: usize,
    /// [`JobState::Paused`].
    pub paused: usize,
}

impl Counts {
    fn add(&mut self, state: JobState) {
        self.total += 1;
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
}

/// Lists `jobs/`, `submitted/` (reading each batch record) and `poison/`, and reads the
/// store's clock.
pub async fn scan<S: ObjectStore>(store: &S) -> Result<Scan, StoreError> {
    let (listing, batches, poison, clock) = futures_util::future::join4(
        store.list_entries(keys::JOBS_PREFIX),
        store.list(keys::SUBMITTED_PREFIX),
        store.list_entries(keys::POISON_PREFIX),
        store.clock(keys::SUBMITTED_PREFIX),
    )
    .await;
    let now_ms = clock?.map_or_else(crate::time::now_ms, |c| c.store_ms);
    let mut jobs: BTreeMap<JobId, Listed> = BTreeMap::new();
    for entry in listing? {
        let Some(rest) = entry.key.strip_prefix(keys::JOBS_PREFIX) else {
            continue;
        };
        let Some((id, what)) = rest.split_once('/') else {
            continue;
        };
        let Ok(id) = id.parse::<JobId>() else {
            continue;
        };
        let job = jobs.entry(id).or_default();
        match what {
            "checkpoint" => job.checkpoint_ms = Some(entry.modified_ms),
            "result" => job.result = true,
            "error" => job.error = true,
            "manifest" => job.manifest = true,
            "cancelled" => job.cancelled = true,
            "paused" => job.paused = true,
            a if a.starts_with("artifacts/") => {
                job.artifacts.0 += 1;
                job.artifacts.1 += entry.size;
            }
            _ => {}
        }
    }
    let mut poison_messages = Vec::new();
    for entry in poison? {
        if let Some(rest) = entry.key.strip_prefix(keys::POISON_JOBS_PREFIX) {
            if let Some(id) = rest
                .split_once('/')
                .and_then(|(id, _)| id.parse::<JobId>().ok())
            {
                jobs.entry(id).or_default().poison = Some(entry.key);
            }
        } else if entry.key.starts_with(keys::POISON_MESSAGES_PREFIX) {
            poison_messages.push(entry);
        }
    }
    poison_messages.sort_by_key(|e| std::cmp::Reverse(e.modified_ms));
    // The batch records, a few at a time (one per 1,000 jobs submitted); applied oldest
    // first (batch ids sort by time), so a job's module is its newest submission's.
    use futures_util::StreamExt;
    let mut records: Vec<(String, Vec<u8>)> =
        futures_util::stream::iter(batches?)
            .map(|key| async move {
                Ok::<_, StoreError>(store.get(&key).await?.map(|o| (key, o.bytes)))
            })
            .buffer_unordered(8)
            .filter_map(|read| async move { read.transpose() })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    records.sort();
    for (_, bytes) in records {
        for (id, module) in batch::decode(&String::from_utf8_lossy(&bytes)) {
            let job = jobs.entry(id).or_default();
            job.submitted = true;
            job.module = module.or(job.module);
        }
    }
    Ok(Scan {
        jobs,
        now_ms,
        poison_messages,
    })
}

impl Scan {
    /// Counts per state, and the ids of the jobs in `filter` (all when `None`), in order.
    pub fn select(&self, window: Duration, filter: Option<JobState>) -> (Counts, Vec<&JobId>) {
        let mut counts = Counts::default();
        let mut ids = Vec::new();
        for (id, listed) in &self.jobs {
            let state = listed.state(self.now_ms, window);
            counts.add(state);
            if filter.is_none_or(|f| f == state) {
                ids.push(id);
            }
        }
        (counts, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_listed_keys() {
        let w = Duration::from_secs(60);
        let now = 1_000_000;
        let l = |f: &dyn Fn(&mut Listed)| {
            let mut l = Listed::default();
            f(&mut l);
            l.state(now, w)
        };
        assert_eq!(l(&|l| l.submitted = true), JobState::Queued);
        assert_eq!(
            l(&|l| l.checkpoint_ms = Some(now - 59_000)),
            JobState::Running
        );
        assert_eq!(
            l(&|l| l.checkpoint_ms = Some(now - 61_000)),
            JobState::Waiting
        );
        assert_eq!(
            l(&|l| {
                l.checkpoint_ms = Some(now);
                l.error = true
            }),
            JobState::Failed
        );
        assert_eq!(
            l(&|l| {
                l.error = true;
                l.result = true
            }),
            JobState::Done
        );
        let stopped = |f: &dyn Fn(&mut Listed)| {
            l(&|l| {
                l.checkpoint_ms = Some(now);
                f(l)
            })
        };
        assert_eq!(stopped(&|l| l.cancelled = true), JobState::Cancelled);
        assert_eq!(stopped(&|l| l.paused = true), JobState::Paused);
        // A result always wins over a cancel.
        assert_eq!(
            stopped(&|l| {
                l.cancelled = true;
                l.result = true
            }),
            JobState::Done
        );
        // A poison record decides only when nothing of the job's own is stored.
        let poison = |l: &mut Listed| l.poison = Some("poison/jobs/j/1".into());
        assert_eq!(l(&|l| poison(l)), JobState::Failed);
        assert_eq!(
            l(&|l| {
                poison(l);
                l.checkpoint_ms = Some(now)
            }),
            JobState::Running
        );
    }
}
