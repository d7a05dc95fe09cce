//! The receive loop: waits for a free slot, pulls exactly as many messages as slots are free,
//! and starts a job per message (`Worker::handle`, in `handle.rs`).
//!
//! Three small state machines decide when it pulls, each tested by a table below:
//! - [`Breaker`]: after [`BREAKER_THRESHOLD`] storage failures in a row (counted by the jobs
//!   in [`StorageFailures`]) it opens: no new jobs, and the store is probed (its probe object
//!   written and deleted) until it answers, waiting [`PROBE_BACKOFF`] between probes;
//! - [`IdleBackoff`]: an empty pull waits [`FIRST_IDLE_WAIT`] (50 ms), doubling up to
//!   [`MAX_IDLE_WAIT`] (500 ms) while pulls stay empty, and back to the first after work;
//! - a pull that fails transiently waits [`PULL_FAILURE_BACKOFF`] (1 s doubling to 30 s)
//!   before the next; a lane whose pull fails for good is a misconfiguration of that lane
//!   (`faults.rs`): not pulled until its recheck, the other lanes pulled as usual.
//!
//! While pulls return messages, up to [`MAX_CONCURRENT_PULLS`] are in flight (each holding
//! the slots it asked for: a pull's round trip, not the jobs, bounds short jobs); while they
//! come back empty, one.
//!
//! With several lanes, one pull is `pull_lanes`: each lane in order, asked for the slots the
//! lanes above it left free (docs/design.md, "Priority lanes"); it is empty when every lane
//! was. A lane that fails for good is passed over; a transient failure ends the round.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::clock::Skewed;
use super::handle::Worker;
use super::{BREAKER_THRESHOLD, Stats};
use crate::observe::Metrics;
use crate::observe::metrics::{JobOutcome, PullResult};
use crate::queue::lanes::Lanes;
use crate::queue::lease::Lease;
use crate::queue::{QueueError, Received};
use crate::store::any::AnyStore;
use crate::store::{ErrorKind, ObjectStore, StoreError};
use faults::LaneFaults;

/// Wait after the first empty pull; it doubles up to [`MAX_IDLE_WAIT`] while pulls stay empty.
pub const FIRST_IDLE_WAIT: Duration = Duration::from_millis(50);
/// Longest wait between empty pulls.
pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(500);
/// Most pulls in flight at once (fewer with fewer slots; one while pulls come back empty).
pub const MAX_CONCURRENT_PULLS: usize = 4;
/// Waits between probes of a store that fails (first, longest): 1 s doubling to 30 s.
pub const PROBE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// Waits after a pull that failed transiently (first, longest): 1 s doubling to 30 s.
pub const PULL_FAILURE_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30));
mod faults;

/// While this node's clock is off, how long before a free slot is looked at again.
const SKEWED_PAUSE: Duration = Duration::from_secs(1);

/// A wait that doubles from `first` up to `max` with every [`Backoff::next_wait`] and starts over
/// at `first` after [`Backoff::reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `(first, max)`, as [`PROBE_BACKOFF`] and [`PULL_FAILURE_BACKOFF`] give them.
    pub fn new((first, max): (Duration, Duration)) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait to take now; the one after it is twice as long (at most `max`).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// Starts over: the next wait is `first`.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// How long to wait after an empty pull: [`FIRST_IDLE_WAIT`] doubling to [`MAX_IDLE_WAIT`]
/// while pulls stay empty, starting over once a pull returns work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleBackoff(Backoff);

impl Default for IdleBackoff {
    fn default() -> Self {
        IdleBackoff(Backoff::new((FIRST_IDLE_WAIT, MAX_IDLE_WAIT)))
    }
}

impl IdleBackoff {
    /// A pull came back empty: the wait before the next one.
    pub fn empty(&mut self) -> Duration {
        self.0.next_wait()
    }

    /// A pull returned messages: the next empty pull waits [`FIRST_IDLE_WAIT`] again.
    pub fn work(&mut self) {
        self.0.reset()
    }
}

/// How long a worker has nothing running and its pulls come back empty before it gives
/// memory back ([`crate::memory::release_idle`]).
pub const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(10);

/// When an idle worker gives memory back: once per idle spell, after
/// [`IDLE_RELEASE_AFTER`] with nothing running and only empty pulls (a spell starts at the
/// first such pull and ends with work), so a busy worker never pays for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleRelease {
    since: Option<Instant>,
    released: bool,
}

impl IdleRelease {
    /// A pull came back empty at `now` with `running` jobs: true when memory is to be given
    /// back now.
    pub fn empty(&mut self, now: Instant, running: usize) -> bool {
        if running > 0 {
            *self = IdleRelease::default();
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if self.released || now.duration_since(since) < IDLE_RELEASE_AFTER {
            return false;
        }
        self.released = true;
        true
    }

    /// A pull returned messages: the spell is over.
    pub fn work(&mut self) {
        *self = IdleRelease::default();
    }
}

/// Storage failures in a row across all jobs, with no success between: what opens the
/// [`Breaker`]. Jobs count into it from their own tasks.
#[derive(Debug, Default)]
pub struct StorageFailures(AtomicU32);

impl StorageFailures {
    /// A job (or a module fetch) failed on storage.
    pub fn failed(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Storage answered (a job ended any other way, or a probe worked).
    pub fn answered(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The failures in a row so far.
    pub fn in_a_row(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the circuit breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Storage answers: jobs are taken.
    Closed,
    /// Storage failed for every job: no jobs; the next free slot probes the store.
    Open,
    /// A probe is in flight: its answer closes the breaker or opens it again.
    HalfOpen,
}

/// What the loop does with a free slot, as the [`Breaker`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Pull messages for the free slots.
    Pull,
    /// Take no job; probe the store, then report with [`Breaker::probed`].
    Probe,
}

/// The circuit breaker on storage failures: closed while storage answers; open after
/// [`BREAKER_THRESHOLD`] failures in a row (every job would only burn a delivery attempt);
/// half-open while its probe (a write and delete of the worker's probe object, so a key that
/// may only read keeps it open) is in flight; closed again when a probe or a job succeeds.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    state: BreakerState,
    probes: Backoff,
    said_denied: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` storage failures in a row.
    pub fn new(threshold: u32) -> Breaker {
        Breaker {
            threshold,
            state: BreakerState::Closed,
            probes: Backoff::new(PROBE_BACKOFF),
            said_denied: false,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a free slot would probe rather than pull, given the failures in a row.
    pub fn tripped(&self, failures_in_a_row: u32) -> bool {
        failures_in_a_row >= self.threshold
    }

    /// A slot is free and the failures in a row are `failures_in_a_row`: pull, or probe
    /// (then the breaker is half-open until [`Breaker::probed`]). Logs once when it opens
    /// and once when it closes.
    pub fn admit(&mut self, failures_in_a_row: u32) -> Admit {
        if self.tripped(failures_in_a_row) {
            if self.state == BreakerState::Closed {
                tracing::error!(
                    "storage is failing for every job: taking no new jobs until it answers"
                );
            }
            self.state = BreakerState::HalfOpen;
            return Admit::Probe;
        }
        if self.state != BreakerState::Closed {
            // A job in flight succeeded while it was open.
            self.close();
        }
        Admit::Pull
    }

    /// The probe's answer: `None` when the store answered (the breaker is closed; reset the
    /// failure count), else the wait before the next probe (the breaker is open).
    pub fn probed(&mut self, answer: Result<(), &StoreError>) -> Option<Duration> {
        match answer {
            Ok(()) => {
                self.close();
                None
            }
            Err(e) => {
                if e.kind() == ErrorKind::AccessDenied && !self.said_denied {
                    self.said_denied = true;
                    tracing::error!(error = %e, "the store answers but refuses the probe write: this worker's key cannot write to the bucket, so no job could finish");
                }
                self.state = BreakerState::Open;
                Some(self.probes.next_wait())
            }
        }
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.said_denied = false;
        self.probes.reset();
        tracing::warn!("storage answers again: taking jobs");
    }
}

/// What a pull task hands back: the messages with the index of the lane each came from,
/// each lane asked with its answer (`None`: it answered), and the slots it held for them.
struct Pulled {
    batch: Vec<(usize, Received)>,
    answers: Vec<(usize, Option<QueueError>)>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// Pulls up to `want` messages from the lanes of `lanes` that `ask` says (by index),
/// highest first: each lane is asked for what the lanes above it did not fill, and a lane
/// is not asked once the slots are filled. A lane that fails for good is passed over; a
/// transient failure ends the round (the queue does not answer: the lanes below would not
/// either). Returns the messages and each lane's answer.
async fn pull_lanes(
    queue: &crate::queue::Queue,
    lanes: &Lanes,
    ask: &[bool],
    want: usize,
    deadline: Duration,
    metrics: &Metrics,
) -> (Vec<(usize, Received)>, Vec<(usize, Option<QueueError>)>) {
    let mut got = Vec::new();
    let mut answers = Vec::new();
    for (i, lane) in lanes.iter().enumerate() {
        let left = want - got.len();
        if left == 0 {
            break;
        }
        if !ask.get(i).copied().unwrap_or(true) {
            continue;
        }
        match queue.pull(&lane.subscription, left, deadline).await {
            Ok(batch) => {
                metrics.pulled_from_lane(lane.name.as_str(), batch.len());
                got.extend(batch.into_iter().map(|r| (i, r)));
                answers.push((i, None));
            }
            Err(e) => {
                let transient = e.is_transient();
                answers.push((i, Some(e)));
                if transient {
                    break;
                }
            }
        }
    }
    (got, answers)
}

/// What the receive loop needs besides the job context.
pub(super) struct Loop<'a> {
    pub slots: usize,
    /// The worker's probe object (the breaker's probe).
    pub probe: &'a str,
    pub skewed: &'a Skewed,
    /// Ends the loop.
    pub shutdown: &'a CancellationToken,
    /// Stops the running jobs (given to each).
    pub stopping: &'a CancellationToken,
    /// When the way out must be over: set when the loop ends (the shutdown timeout from
    /// then), for the pulls in flight here and the jobs' drain after alike.
    pub stop_by: &'a std::sync::OnceLock<Instant>,
}

/// Pulls and starts jobs into `jobs` until `shutdown` (`Ok`), or with `exit_on_misconfig`
/// until a lane fails for good (`Err(the sentence)`). Pulls still in flight at the end are
/// waited for (until `stop_by`, the shutdown timeout from the loop's end) and what they got
/// is handed straight back.
pub(super) async fn receive<S: ObjectStore + Clone + Into<AnyStore>>(
    worker: &Arc<Worker<S>>,
    l: Loop<'_>,
    jobs: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let free = Arc::new(Semaphore::new(l.slots));
    let mut pulls: JoinSet<Pulled> = JoinSet::new();
    let most_pulls = l.slots.min(MAX_CONCURRENT_PULLS);
    let mut busy_queue = false;
    let mut breaker = Breaker::new(BREAKER_THRESHOLD);
    let mut idle = IdleBackoff::default();
    let mut release = IdleRelease::default();
    let mut failing = Backoff::new(PULL_FAILURE_BACKOFF);
    let mut pause_until = Instant::now();
    let mut faults = LaneFaults::new(worker.config.lanes.len(), worker.config.exit_on_misconfig);
    let metrics = Arc::clone(&worker.metrics);
    worker.health(|h| h.set_receiving());
    let result = loop {
        let tripped = breaker.tripped(worker.storage_failures.in_a_row());
        let room = pulls.len() < if busy_queue { most_pulls } else { 1 };
        // The breaker probes only once no pull is in flight (their messages get leases first).
        let may_pull = room && (!tripped || pulls.is_empty());
        let paused = Instant::now() < pause_until;
        tokio::select! {
            _ = l.shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep_until(pause_until.into()), if may_pull && paused => {}
            permit = Arc::clone(&free).acquire_owned(), if may_pull && !paused => {
                let mut permits = vec![permit.expect("never closed")];
                while let Ok(p) = Arc::clone(&free).try_acquire_owned() {
                    permits.push(p);
                }
                while let Some(joined) = jobs.try_join_next() {
                    super::log_panic(joined);
                }
                if breaker.admit(worker.storage_failures.in_a_row()) == Admit::Probe {
                    worker.health(|h| h.set_breaker_open(true));
                    drop(permits);
                    let probed = tokio::select! {
                        // A store that does not answer never holds a shutdown up.
                        _ = l.shutdown.cancelled() => break Ok(()),
                        probed = crate::store::probe(&worker.executor.store, l.probe) => probed,
                    };
                    match breaker.probed(probed.as_ref().map(|_| ())) {
                        None => worker.storage_failures.answered(),
                        Some(wait) => pause_until = Instant::now() + wait,
                    }
                    continue;
                }
                worker.health(|h| h.set_breaker_open(false));
                let off = l.skewed.get();
                worker.health(|h| h.set_clock_off(off));
                if off {
                    // This node's clock is off (logged by the check): no new jobs.
                    drop(permits);
                    pause_until = Instant::now() + SKEWED_PAUSE;
                    continue;
                }
                if let Some(recheck) = faults.all_faulty_until() {
                    // Every lane is faulty: nothing to pull until the first recheck.
                    if Instant::now() < recheck {
                        drop(permits);
                        pause_until = recheck;
                        continue;
                    }
                }
                let ask = faults.to_ask(Instant::now());
                let w = Arc::clone(worker);
                pulls.spawn(async move {
                    let (queue, config) = (&w.queue, &w.config);
                    let asked = Instant::now();
                    let (batch, answers) = pull_lanes(queue, &config.lanes, &ask, permits.len(), config.ack_deadline, &w.metrics).await;
                    tracing::debug!(messages = batch.len(), pull_us = asked.elapsed().as_micros() as u64, "pulled");
                    Pulled { batch, answers, permits }
                });
            }
            Some(joined) = pulls.join_next() => {
                let Pulled { batch, answers, permits } = match joined {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "a pull failed unexpectedly");
                        continue;
                    }
                };
                let got = !batch.is_empty();
                for ((lane, received), permit) in batch.into_iter().zip(permits) {
                    start_job(worker, lane, received, permit, l.shutdown, l.stopping, jobs).await;
                }
                let mut error = None;
                let mut exit = None;
                for (lane, answer) in answers {
                    let subscription = &worker.config.lanes.get(lane).expect("one of the lanes").subscription;
                    match answer {
                        None => faults.answered(lane, subscription),
                        Some(e) if e.is_transient() => error = Some(e),
                        Some(e) => {
                            metrics.pulled(PullResult::Error);
                            metrics.queue_error(e.kind());
                            if let Err(sentence) = faults.failed(lane, subscription, &e) {
                                exit = Some(sentence);
                            }
                        }
                    }
                }
                let misconfigured = faults.sentence();
                worker.health(|h| h.set_misconfigured(misconfigured.clone()));
                if let Some(sentence) = exit {
                    break Err(anyhow::anyhow!(sentence));
                }
                match error {
                    None if !got => {
                        metrics.pulled(PullResult::Empty);
                        worker.health(|h| h.queue_answered(Ok(())));
                        failing.reset();
                        busy_queue = false;
                        pause_until = Instant::now() + idle.empty();
                        if release.empty(Instant::now(), l.slots - free.available_permits()) {
                            drop(tokio::task::spawn_blocking(|| {
                                let paged = crate::memory::release_idle();
                                tracing::debug!(code_bytes = paged, "idle: memory given back");
                            }));
                        }
                    }
                    None => {
                        metrics.pulled(PullResult::Messages);
                        worker.health(|h| h.queue_answered(Ok(())));
                        failing.reset();
                        busy_queue = true;
                        idle.work();
                        release.work();
                    }
                    Some(e) => {
                        metrics.pulled(PullResult::Error);
                        metrics.queue_error(e.kind());
                        worker.health(|h| h.queue_answered(Err(e.to_string())));
                        busy_queue = false;
                        let wait = failing.next_wait();
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot pull; taking no jobs until the queue answers");
                        pause_until = Instant::now() + wait;
                    }
                }
            }
        }
    };
    l.stopping.cancel();
    let stop_by = *l
        .stop_by
        .get_or_init(|| Instant::now() + worker.config.shutdown_timeout);
    hand_back_pulls(worker, pulls, stop_by).await;
    result
}

/// Gives a pulled message its lease and its job; a message pulled as the shutdown began goes
/// straight back.
async fn start_job<S: ObjectStore + Clone + Into<AnyStore>>(
    worker: &Arc<Worker<S>>,
    lane: usize,
    received: Received,
    permit: OwnedSemaphorePermit,
    shutdown: &CancellationToken,
    stopping: &CancellationToken,
    jobs: &mut JoinSet<()>,
) {
    // A handler that panics drops its lease: the message goes back as a host fault's does,
    // later, never at once to the next worker (but at once when the shutdown's timeout
    // drops the handlers left).
    let attempt = received.message.delivery_attempt.unwrap_or(1);
    let delay = crate::worker::decide::retry_delay(attempt);
    let lease = lease(worker, lane, &received)
        .observe(Arc::clone(&worker.metrics))
        .handed_back_on_drop_after(delay, stopping.clone());
    if shutdown.is_cancelled() {
        let _ = lease.nack(Duration::ZERO).await;
        return;
    }
    let worker = Arc::clone(worker);
    let cancel = stopping.clone();
    jobs.spawn(async move {
        let handled = worker.handle(received.message, lease, permit, cancel);
        // A panic outside the task's run (which `Runtime::run` catches itself) ends this job
        // only: its message goes back when the dropped lease nacks it (after the retry
        // delay), or when its lease lapses.
        if let Err(p) = AssertUnwindSafe(handled).catch_unwind().await {
            let panic = crate::runtime::panic_message(&*p);
            tracing::error!(%panic, "a job's handler panicked (a host fault); its message goes back");
            Stats::bump(&worker.stats.host_faults);
            worker.metrics.job_ended(JobOutcome::HostFault);
        }
    });
}

/// The lease of `received`, pulled from the lane at `lane`.
fn lease<S>(worker: &Worker<S>, lane: usize, received: &Received) -> Lease {
    let lane = worker
        .config
        .lanes
        .get(lane)
        .expect("pulled from one of the lanes");
    Lease::start(
        worker.queue.clone(),
        &lane.subscription,
        received,
        worker.config.ack_deadline,
    )
}

/// Pulls still in flight return at once (they do not wait for messages): whatever they got
/// goes straight back. A queue that does not answer never holds the exit up.
async fn hand_back_pulls<S>(worker: &Worker<S>, mut pulls: JoinSet<Pulled>, stop_by: Instant) {
    let pulled = tokio::time::timeout_at(stop_by.into(), async {
        while let Some(joined) = pulls.join_next().await {
            if let Ok(Pulled { batch, .. }) = joined {
                for (lane, received) in batch {
                    let _ = lease(worker, lane, &received).nack(Duration::ZERO).await;
                }
            }
        }
    })
    .await;
    if pulled.is_err() {
        pulls.abort_all();
    }
}

#[cfg(test)]
mod tests;
