//! The page in view: each job's objects read (result, error, checkpoint header), only for
//! the jobs shown, and the overview document the CLI and the status page print.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::{Counts, Listed, Scan};
use crate::checkpoint::{self, Header, Usage};
use crate::ids::{JobId, JobState};
use crate::keys;
use crate::store::ObjectStore;

/// One job as shown: its state, progress, counts, accounting and result or error.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// Where it stands.
    pub state: JobState,
    /// Last progress reported: (done, total).
    pub progress: Option<(u64, u64)>,
    /// Runs claimed (the checkpoint's `attempts`; 0 without a checkpoint).
    pub attempts: u32,
    /// Trapped runs counted against the job (the checkpoint's `failures`).
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
    /// How many.
    pub count: usize,
    /// Their bytes together.
    pub bytes: u64,
}

/// What a job cost over all its runs (docs/design.md §4): a done job's from the note kept
/// with its result, any other's from its checkpoint header (the runs that ended so far,
/// and the fuel of a running or killed run up to its last write);
/// `None` where not known (a queued job; a result written before accounting existed).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Accounting {
    /// Wasm fuel used (about one unit per instruction) over all runs, a running one's
    /// included up to its last checkpoint write; `None` without a checkpoint or note.
    pub fuel: Option<u64>,
    /// Wall-clock time of its runs (ms); not recorded yet.
    pub wall_ms: Option<u64>,
    /// Host compute within the wall-clock time (wasi-nn graph loads and inference, ms).
    pub host_compute_ms: Option<u64>,
    /// Runs claimed; `None` without a checkpoint.
    pub attempts: Option<u32>,
    /// Runs in a row without a clean end; `None` for a done job or without a checkpoint.
    pub crashes: Option<u32>,
    /// Bytes of checkpoint objects written; not recorded yet.
    pub checkpoint_bytes: Option<u64>,
    /// Bytes of input objects read; not recorded yet.
    pub input_bytes: Option<u64>,
    /// Bytes of a done job's artifacts, from the listing.
    pub artifact_bytes: Option<u64>,
}

impl Accounting {
    /// Every figure of `u`.
    pub fn of(u: &Usage) -> Accounting {
        Accounting {
            fuel: Some(u.fuel),
            wall_ms: Some(u.wall_ms),
            host_compute_ms: Some(u.host_compute_ms),
            attempts: Some(u.attempts),
            crashes: Some(u.crashes),
            checkpoint_bytes: Some(u.checkpoint_bytes),
            input_bytes: Some(u.input_bytes),
            artifact_bytes: Some(u.artifact_bytes),
        }
    }

    /// A done job's accounting: its result's note, else what the header still tells.
    pub fn done(note: Option<&str>, header: Option<&Header>) -> Accounting {
        match note.and_then(|n| serde_json::from_str::<Usage>(n).ok()) {
            Some(u) => Accounting::of(&u),
            None => Accounting {
                attempts: header.map(|h| h.attempts),
                ..Accounting::default()
            },
        }
    }

    /// Adds every known figure of `other` (for totals).
    pub fn add(&mut self, other: &Accounting) {
        fn sum<T: std::ops::Add<Output = T> + Copy>(a: &mut Option<T>, b: Option<T>) {
            if let Some(b) = b {
                *a = Some(a.map_or(b, |a| a + b));
            }
        }
        sum(&mut self.fuel, other.fuel);
        sum(&mut self.wall_ms, other.wall_ms);
        sum(&mut self.host_compute_ms, other.host_compute_ms);
        sum(&mut self.attempts, other.attempts);
        sum(&mut self.crashes, other.crashes);
        sum(&mut self.checkpoint_bytes, other.checkpoint_bytes);
        sum(&mut self.input_bytes, other.input_bytes);
        sum(&mut self.artifact_bytes, other.artifact_bytes);
    }

    /// The sum of the known figures of `all`.
    pub fn total<'a>(all: impl IntoIterator<Item = &'a Accounting>) -> Accounting {
        let mut t = Accounting::default();
        for a in all {
            t.add(a);
        }
        t
    }
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
    let text = |o: Option<crate::store::Object>| o.map(|o| shown(&o.bytes));
    let (result, note) = if listed.result {
        match store.get(&keys::result(job)).await? {
            Some(o) => (Some(shown(&o.bytes)), o.note),
            None => (None, None),
        }
    } else {
        (None, None)
    };
    let mut error = if listed.error && result.is_none() {
        text(store.get(&keys::error(job)).await?)
    } else {
        None
    };
    // Dead-lettered at parse time, and nothing else stored: the poison record says why.
    if let (None, None, None, Some(key)) = (&result, &error, listed.checkpoint_ms, &listed.poison) {
        error = text(store.get(key).await?).map(|reason| poison_reason(key, &reason));
    }
    let header: Option<Header> = match listed.checkpoint_ms {
        Some(_) => match store.get(&keys::checkpoint(job)).await? {
            None => None,
            Some(o) => match checkpoint::decode(&o.bytes) {
                Ok((h, _)) => Some(h),
                // This job's trouble, not the page's: a worker dead-letters it (section 6),
                // and the page shows it failed, with why, unless a result or error says more.
                Err(e) => {
                    if result.is_none() && error.is_none() {
                        error = Some(format!("its checkpoint is unreadable: {e:#}"));
                    }
                    None
                }
            },
        },
        None => None,
    };
    let state = state(result.is_some(), error.is_some(), header.as_ref(), now_ms);
    let artifacts = (state == JobState::Done && listed.manifest && listed.artifacts.0 > 0)
        .then_some(ArtifactCount {
            count: listed.artifacts.0,
            bytes: listed.artifacts.1,
        });
    Ok(view(job, state, header, result, note, error, artifacts))
}

/// The most of a result's or error's text an overview keeps per job: a page of 500 jobs
/// (or `status --all`) holds a few MiB, not 1 MiB of result per job. `status JOB_ID` shows
/// the whole.
pub const SHOWN_TEXT_BYTES: usize = 4096;

/// `bytes` as text, cut to [`SHOWN_TEXT_BYTES`] (on a character boundary) with a note of
/// its whole size when longer.
fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN_TEXT_BYTES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let head = &bytes[..crate::inert::cut_bytes(bytes, SHOWN_TEXT_BYTES)];
    format!(
        "{}… (cut: {} bytes in all; `taskhost status JOB_ID` shows it whole)",
        String::from_utf8_lossy(head),
        bytes.len()
    )
}

/// A job's state from what is stored of it, the one place that derives it: a result is
/// done (whatever else is stored, but for a start-over's `old_outputs`), an error failed,
/// a user's cancel or pause recorded in the checkpoint header cancelled or paused, a live
/// owner's lease (the ownership rule, as a claim reads it at `now_ms`) running, any other
/// checkpoint waiting, nothing queued.
pub fn state(result: bool, error: bool, header: Option<&Header>, now_ms: u64) -> JobState {
    let current = header.is_none_or(Header::outputs_current);
    if result && current {
        return JobState::Done;
    }
    if error && current {
        return JobState::Failed;
    }
    let Some(h) = header else {
        return JobState::Queued;
    };
    match &h.control {
        Some(c) => match c.action {
            checkpoint::Action::Cancel => JobState::Cancelled,
            checkpoint::Action::Pause => JobState::Paused,
        },
        None if checkpoint::ownership::recorded(h.lease_until_ms, h.lease_period_ms, now_ms)
            == checkpoint::ownership::Recorded::Live =>
        {
            JobState::Running
        }
        None => JobState::Waiting,
    }
}

/// A poison record's reason as shown: which message, and why.
pub fn poison_reason(key: &str, reason: &str) -> String {
    let message = key.rsplit('/').next().unwrap_or(key);
    format!("dead-lettered at parse time (poison message {message}): {reason}")
}

/// A message dead-lettered at parse time that named no valid job id.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PoisonView {
    /// The queue's message id (or its hash: `keys::poison`).
    pub message: String,
    /// When it was recorded (the store's clock, ms since the Unix epoch).
    pub at_ms: u64,
    /// Why (the parse error; message text included: hostile, escape it where shown).
    pub reason: String,
}

/// A job's view from what was read of it.
pub fn view(
    job: &JobId,
    state: JobState,
    header: Option<Header>,
    result: Option<String>,
    note: Option<String>,
    error: Option<String>,
    artifacts: Option<ArtifactCount>,
) -> JobView {
    // A done job's header is the one its last write left (often the claim's): its totals
    // are in the note kept with its result.
    let accounting = match (&header, state) {
        (_, JobState::Done) => Accounting::done(note.as_deref(), header.as_ref()),
        (Some(h), _) => Accounting::of(&h.usage()),
        (None, _) => Accounting::default(),
    };
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
        result: result.filter(|_| h.outputs_current()),
        error: error.filter(|_| h.outputs_current()),
        control: h.control.clone(),
        accounting,
        artifacts,
    }
}

/// What the overview shows: the counts, and one page of the jobs in a state (or all).
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// The store's time of the listing (ms since the Unix epoch).
    pub now_ms: u64,
    /// Jobs per state, over every job.
    pub counts: Counts,
    /// The state shown (`None`: every job).
    pub filter: Option<JobState>,
    /// How many jobs are in `filter`.
    pub matching: usize,
    /// The page shown (0-based) and its size.
    pub page: usize,
    /// Jobs per page.
    pub page_size: usize,
    /// The jobs of this page, in id order.
    pub jobs: Vec<JobView>,
    /// The sum of the known accounting figures of `jobs` (the selection shown).
    pub totals: Accounting,
    /// How many messages without a valid job id were dead-lettered at parse time...
    pub poison_messages: usize,
    /// ... and the newest of them (at most a page).
    pub poison: Vec<PoisonView>,
    /// The workers' heartbeats (when asked for).
    pub workers: Option<Vec<super::workers::WorkerView>>,
}

/// Which jobs to show.
#[derive(Clone, Copy, Debug)]
pub struct Selection {
    /// Only jobs in this state; `None`: every job.
    pub filter: Option<JobState>,
    /// The page to show (0-based).
    pub page: usize,
    /// Jobs per page (0 counts as 1; the page server caps it at
    /// [`MAX_PAGE_SIZE`](super::serve::MAX_PAGE_SIZE)).
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
    let mut poison = Vec::new();
    for entry in scan
        .poison_messages
        .iter()
        .take(size.min(DEFAULT_PAGE_SIZE))
    {
        if let Some(o) = store.get(&entry.key).await? {
            poison.push(PoisonView {
                message: entry.key.rsplit('/').next().unwrap_or_default().to_owned(),
                at_ms: entry.modified_ms,
                reason: String::from_utf8_lossy(&o.bytes).into_owned(),
            });
        }
    }
    Ok(Overview {
        now_ms: scan.now_ms,
        counts,
        filter: selection.filter,
        matching: ids.len(),
        page: selection.page,
        page_size: size,
        totals: Accounting::total(views.iter().map(|v| &v.accounting)),
        jobs: views,
        poison_messages: scan.poison_messages.len(),
        poison,
        workers: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_what_is_stored_in_order() {
        let now = 1_000_000;
        let lease = |until_ms| Header {
            lease_until_ms: until_ms,
            lease_period_ms: 10_000,
            ..Header::default()
        };
        let controlled = |action| Header {
            control: Some(checkpoint::Control {
                action,
                by: "u@h".into(),
                at_ms: 1,
            }),
            ..lease(now + 5_000)
        };
        let restarting = |until_ms| Header {
            old_outputs: true,
            ..lease(until_ms)
        };
        let cases = [
            (true, true, Some(lease(now + 5_000)), JobState::Done),
            (false, true, Some(lease(now + 5_000)), JobState::Failed),
            (
                false,
                false,
                Some(controlled(checkpoint::Action::Cancel)),
                JobState::Cancelled,
            ),
            (
                false,
                false,
                Some(controlled(checkpoint::Action::Pause)),
                JobState::Paused,
            ),
            (false, false, Some(lease(now + 5_000)), JobState::Running),
            (false, false, Some(lease(now - 1)), JobState::Waiting),
            (false, false, None, JobState::Queued),
            // A start-over yet to delete the old work's result and error: not done, not failed.
            (true, true, Some(restarting(now + 5_000)), JobState::Running),
            (true, false, Some(restarting(now - 1)), JobState::Waiting),
        ];
        for (result, error, header, expected) in cases {
            assert_eq!(
                state(result, error, header.as_ref(), now),
                expected,
                "{result} {error} {header:?}"
            );
        }
    }

    #[test]
    fn a_done_jobs_accounting_is_its_notes_and_totals_add_what_is_known() {
        let h = Header {
            attempts: 2,
            fuel_used: 5,
            ..Header::default()
        };
        let u = Usage {
            fuel: 9,
            wall_ms: 30,
            host_compute_ms: 4,
            attempts: 3,
            crashes: 1,
            checkpoint_bytes: 7,
            input_bytes: 11,
            artifact_bytes: 13,
        };
        let note = serde_json::to_string(&u).unwrap();
        let done = Accounting::done(Some(&note), Some(&h));
        assert_eq!(done, Accounting::of(&u));
        // No note (a result from before accounting): only what the header still tells.
        let old = Accounting::done(None, Some(&h));
        assert_eq!((old.attempts, old.fuel), (Some(2), None));
        let t = Accounting::total([&done, &old, &Accounting::default()]);
        assert_eq!(
            (t.attempts, t.fuel, t.wall_ms),
            (Some(5), Some(9), Some(30))
        );
        assert_eq!(Accounting::total([]), Accounting::default());
    }

    /// The first page of `page_size` jobs of `store`'s overview.
    async fn first_page(store: &crate::store::dir::DirStore, page_size: usize) -> Overview {
        let scan = super::super::scan(store).await.unwrap();
        let selection = Selection {
            filter: None,
            page: 0,
            page_size,
            window: Duration::from_secs(60),
        };
        overview(store, &scan, selection).await.unwrap()
    }

    /// An overview keeps a few KiB of each result, cut on a character, not the 1 MiB a
    /// result may have; a small one whole.
    #[tokio::test]
    async fn an_overview_holds_a_few_kib_of_each_result() {
        use crate::store::{ObjectStore, Precondition};
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::dir::DirStore::open(tmp.path()).unwrap();
        // Two-byte characters from an odd offset: a cut at an even length splits one.
        let big = format!("a{}", "é".repeat(500_000));
        for (id, text) in [("big", big.as_str()), ("small", "{\"sum\": 55}")] {
            let key = keys::result(&id.parse().unwrap());
            store
                .put(&key, text.as_bytes().to_vec(), Precondition::None)
                .await
                .unwrap();
        }
        let o = first_page(&store, 500).await;
        let result = |id: &str| {
            let v = o.jobs.iter().find(|v| v.job_id == id).unwrap();
            v.result.clone().unwrap()
        };
        let shown = result("big");
        let (head, tail) = shown.split_once('…').unwrap();
        assert!(head.len() <= SHOWN_TEXT_BYTES && head.len() > SHOWN_TEXT_BYTES - 4);
        assert!(big.starts_with(head) && !head.contains('\u{fffd}'));
        assert!(tail.contains("1000001 bytes in all"), "{tail}");
        assert_eq!(result("small"), "{\"sum\": 55}");
    }

    /// A job whose checkpoint does not decode (damaged, or of a newer format) is shown failed,
    /// with why, and the page of the others is served all the same.
    #[tokio::test]
    async fn an_unreadable_checkpoint_fails_its_job_not_the_page() {
        use crate::store::{ObjectStore, Precondition};
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::dir::DirStore::open(tmp.path()).unwrap();
        let (bad, good): (JobId, JobId) = ("bad".parse().unwrap(), "good".parse().unwrap());
        let damaged = b"not a checkpoint".to_vec();
        store
            .put(&keys::checkpoint(&bad), damaged, Precondition::None)
            .await
            .unwrap();
        store
            .put(&keys::result(&good), b"{}".to_vec(), Precondition::None)
            .await
            .unwrap();
        let o = first_page(&store, DEFAULT_PAGE_SIZE).await;
        let view = |id: &str| o.jobs.iter().find(|v| v.job_id == id).unwrap();
        assert_eq!(view("bad").state, JobState::Failed);
        let why = view("bad").error.clone().unwrap();
        assert!(why.contains("checkpoint is unreadable"), "{why}");
        assert_eq!(view("good").state, JobState::Done);
    }
}
