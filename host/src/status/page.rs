//! The page in view: each job's objects read (result, error, checkpoint header), only for
//! the jobs shown, and the overview document the CLI and the status page print.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::{Counts, Listed, Scan};
use crate::checkpoint::{self, Header};
use crate::ids::{JobId, JobState};
use crate::keys;
use crate::store::ObjectStore;

/// One job as shown: its state, progress, counts, accounting and result or error.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JobView {
    pub job_id: String,
    pub state: JobState,
    /// Last progress reported: (done, total).
    pub progress: Option<(u64, u64)>,
    pub attempts: u32,
    pub failures: u32,
    /// The task's result (its text, hostile: escape it where it is shown).
    pub result: Option<String>,
    /// Why it was dead-lettered (task text included: hostile too).
    pub error: Option<String>,
    /// A done job's artifacts: how many, and their bytes together.
    pub artifacts: Option<ArtifactCount>,
    /// What the job cost.
    pub accounting: Accounting,
    /// A user's cancel or pause: what, who and when (`job cancel` / `job pause`).
    pub control: Option<checkpoint::Control>,
}

/// A done job's artifacts.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArtifactCount {
    pub count: usize,
    pub bytes: u64,
}

/// What a job cost over all its runs. Per-job accounting (issue 15 item 4) fills the fields
/// that are `None` for now; the checkpoint header already records fuel and crashes.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Accounting {
    pub fuel: Option<u64>,
    pub wall_ms: Option<u64>,
    pub attempts: Option<u32>,
    pub crashes: Option<u32>,
    pub checkpoint_bytes: Option<u64>,
    pub input_bytes: Option<u64>,
    pub artifact_bytes: Option<u64>,
}

/// Reads one job's objects as the listing names them (a request only for an object that
/// exists) and decides its state; a checkpoint decides running or waiting by the ownership
/// rule, as a claim would.
pub async fn read<S: ObjectStore>(
    store: &S,
    job: &JobId,
    listed: &Listed,
    now_ms: u64,
) -> anyhow::Result<JobView> {
    let text =
        |o: Option<crate::store::Object>| o.map(|o| String::from_utf8_lossy(&o.bytes).into_owned());
    let result = if listed.result {
        text(store.get(&keys::result(job)).await?)
    } else {
        None
    };
    let error = if listed.error && result.is_none() {
        text(store.get(&keys::error(job)).await?)
    } else {
        None
    };
    let header: Option<Header> = match listed.checkpoint_ms {
        Some(_) => checkpoint::peek(store, job).await?,
        None => None,
    };
    let live = |h: &Header| {
        checkpoint::ownership::recorded(h.lease_until_ms, h.lease_period_ms, now_ms)
            == checkpoint::ownership::Recorded::Live
    };
    let state = match (&result, &error, &header) {
        (Some(_), _, _) => JobState::Done,
        (None, Some(_), _) => JobState::Failed,
        (
            None,
            None,
            Some(Header {
                control: Some(c), ..
            }),
        ) => match c.action {
            checkpoint::Action::Cancel => JobState::Cancelled,
            checkpoint::Action::Pause => JobState::Paused,
        },
        (None, None, Some(h)) if live(h) => JobState::Running,
        (None, None, Some(_)) => JobState::Waiting,
        (None, None, None) => JobState::Queued,
    };
    let artifacts = (state == JobState::Done && listed.manifest && listed.artifacts.0 > 0)
        .then_some(ArtifactCount {
            count: listed.artifacts.0,
            bytes: listed.artifacts.1,
        });
    Ok(view(job, state, header, result, error, artifacts))
}

/// A job's view from what was read of it.
pub fn view(
    job: &JobId,
    state: JobState,
    header: Option<Header>,
    result: Option<String>,
    error: Option<String>,
    artifacts: Option<ArtifactCount>,
) -> JobView {
    let known = header.is_some();
    // A done job's header is the one its last write left (often the claim's): its fuel and
    // crash count are not the run's. Per-job accounting will keep them with the result.
    let current = known && state != JobState::Done;
    let h = header.unwrap_or_default();
    // A finished job's last saves are superseded by its result: it is complete.
    let progress = match state {
        JobState::Done => h.progress.map(|(_, total)| (total, total)),
        _ => h.progress,
    };
    JobView {
        job_id: job.to_string(),
        state,
        progress,
        attempts: h.attempts,
        failures: h.failures,
        result,
        error,
        control: h.control.clone(),
        accounting: Accounting {
            fuel: current.then_some(h.fuel_used),
            attempts: known.then_some(h.attempts),
            crashes: current.then_some(h.crashes),
            artifact_bytes: artifacts.as_ref().map(|a| a.bytes),
            ..Accounting::default()
        },
        artifacts,
    }
}

/// What the overview shows: the counts, and one page of the jobs in a state (or all).
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// The store's time of the listing (ms since the Unix epoch).
    pub now_ms: u64,
    pub counts: Counts,
    /// The state shown (`None`: every job).
    pub filter: Option<JobState>,
    /// How many jobs are in `filter`.
    pub matching: usize,
    /// The page shown (0-based) and its size.
    pub page: usize,
    pub page_size: usize,
    pub jobs: Vec<JobView>,
    /// The workers' heartbeats (when asked for).
    pub workers: Option<Vec<super::workers::WorkerView>>,
}

/// Which jobs to show.
#[derive(Clone, Copy, Debug)]
pub struct Selection {
    pub filter: Option<JobState>,
    pub page: usize,
    pub page_size: usize,
    /// A checkpoint written within this window counts as running in the counts.
    pub window: Duration,
}

/// Jobs on a page unless asked otherwise: with the listing of 10,000 jobs (about 15
/// requests) and two reads per job, the overview stays under 100 requests.
pub const DEFAULT_PAGE_SIZE: usize = 25;

/// Reads at most 16 jobs' objects at once.
const READS_IN_FLIGHT: usize = 16;

/// The counts of `scan` and the page `selection` names, its jobs' objects read.
pub async fn overview<S: ObjectStore>(
    store: &S,
    scan: &Scan,
    selection: Selection,
) -> anyhow::Result<Overview> {
    let (counts, ids) = scan.select(selection.window, selection.filter);
    let size = selection.page_size.max(1);
    // Owned, so the stream's futures borrow nothing but the store (they must be `Send`).
    let shown: Vec<(JobId, Listed)> = ids
        .iter()
        .skip(selection.page.saturating_mul(size))
        .take(size)
        .map(|id| ((*id).clone(), scan.jobs[*id].clone()))
        .collect();
    let now_ms = scan.now_ms;
    let mut jobs = futures_util::stream::iter(shown)
        .map(|(id, listed)| async move { read(store, &id, &listed, now_ms).await })
        .buffered(READS_IN_FLIGHT);
    let mut views = Vec::new();
    while let Some(v) = jobs.next().await {
        views.push(v?);
    }
    Ok(Overview {
        now_ms: scan.now_ms,
        counts,
        filter: selection.filter,
        matching: ids.len(),
        page: selection.page,
        page_size: size,
        jobs: views,
        workers: None,
    })
}
