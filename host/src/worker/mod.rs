//! The worker: leases job messages and runs them, `slots` at a time.
//!
//! The receive loop pulls only when a slot is free, and asks for exactly as many messages as
//! there are free slots, so it never holds a message it cannot start at once. A job frees its
//! slot when its outputs are written, or, on the directory store, when its task's run ends,
//! for one of [`COMMIT_PLACES_PER_SLOT`] × `slots` commit places, which it holds while its
//! outputs are written (made durable) and its message is settled. Each pulled
//! message gets a [`Lease`](crate::queue::lease::Lease) (extended every half deadline) and
//! a task: parse → resolve the module (memory → disk cache → bucket → verify → compile) →
//! [`Executor::execute`] (claim, run, durable result) → [`decide`] → ack / nack with a delay / dead-letter. Each running
//! job is recorded on the node's disk ([`node_record`]) until its message is settled; a worker
//! hands back at once (at start, then within [`node_record::SCAN_INTERVAL`]) the jobs of the
//! workers that died on this node.
//!
//! `mod.rs`: the configuration, the counters and [`run`] (start, then drain);
//! `receive/`: the receive loop (the breaker, the idle backoff, pull concurrency);
//! `handle.rs`: one job from its message to its settlement; `decide.rs`: ack, hand back or
//! dead-letter; `misconfig.rs`: how a misconfiguration is waited for (the startup checks'
//! and a lane's whose pulls fail for good); `clock.rs`: the clock check; `node_record/`: the record of running jobs on
//! the node's disk.
//!
//! **Invariants:** a message is acked only after its result (or its error, for a
//! dead-lettered job) is durable, or after it was published to the dead-letter topic; a lapsed
//! lease, a conflict or an interruption is never counted as a failure (only traps are, in the
//! checkpoint header); a message goes back for a transient reason only with a delay (never an
//! immediate nack loop). On shutdown no new message is taken, running tasks stop at their next
//! yield, their checkpoints are flushed (released) and their messages handed back at once,
//! all within `shutdown_timeout`.
//! **API boundary:** only this module and `queue` know about acks and deliveries.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exec::Executor;
use crate::ids::ModuleHash;
use crate::observe::Health;
use crate::queue::lanes::Lanes;
use crate::queue::{MAX_ACK_DEADLINE_SECS, Queue};
use crate::store::ObjectStore;
use crate::store::any::AnyStore;

mod clock;
mod counting;
mod decide;
mod handle;
pub mod heartbeat;
pub mod misconfig;
pub mod node_record;
pub mod receive;

pub use clock::{CLOCK_CHECK_INTERVAL, CLOCK_RECHECK_INTERVAL, skew_ms};
pub use decide::{Decision, busy_delay, decide, retry_delay};
pub use handle::DEAD_LETTER_ATTRIBUTES;
use handle::Worker;

/// Default number of trapped runs after which a job is dead-lettered.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// How long after a job was published a missing module is still waited for
/// (`MISSING_MODULE_RETRY_SECONDS`): 600 s. The module may still be on its way to the bucket.
pub const DEFAULT_MISSING_MODULE_RETRY: Duration = Duration::from_secs(600);
/// Commit places per slot: jobs whose task's run ended, waiting (without a slot) for their
/// outputs to be durable and their message settled (docs/design.md section 5, "Receiving").
/// Several per slot, so that the directory store's group commit has writes to batch while
/// the slots run the next jobs; each holds only its message and its result.
pub const COMMIT_PLACES_PER_SLOT: usize = 4;
/// Storage failures in a row (across jobs, with no success between) after which the worker
/// takes no new jobs until the store answers again.
pub const BREAKER_THRESHOLD: u32 = 3;
/// Default time a worker takes at most to stop after SIGTERM: 10 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// First delay of a message handed back for a transient reason; it doubles with every
/// delivery attempt up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(10);
/// Longest delay of a handed-back message: 600 s, Pub/Sub's longest ack deadline.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(MAX_ACK_DEADLINE_SECS as u64);

/// How a worker pulls, runs and settles jobs (the queue, store and runtime are given
/// beside it).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The subscriptions jobs are pulled from, highest priority first (`LANES`; one lane
    /// without lanes): a lower lane is pulled only for the slots the lanes above it left
    /// free (docs/design.md, "Priority lanes").
    pub lanes: Lanes,
    /// The topic a dead-lettered message is published to, with an `error` attribute.
    pub dead_letter_topic_id: String,
    /// `ACK_DEADLINE_SECONDS`: each lease extension sets the deadline this far ahead.
    pub ack_deadline: Duration,
    /// `WORKER_SLOTS`: jobs run at once (0 counts as 1). Messages held at once: at most
    /// this, plus on the directory store [`COMMIT_PLACES_PER_SLOT`] times this (jobs
    /// committing: their outputs written, then their messages settled), plus those being
    /// settled.
    pub slots: usize,
    /// `MAX_FAILURES`: trapped runs after which a job is dead-lettered (default
    /// [`DEFAULT_MAX_FAILURES`], 3).
    pub max_failures: u32,
    /// `DEFAULT_MODULE`: the module of a message that names none; `None`: such a message
    /// is poison.
    pub default_module: Option<ModuleHash>,
    /// `SHUTDOWN_TIMEOUT_SECONDS`: the longest a shutdown waits for tasks to flush.
    pub shutdown_timeout: Duration,
    /// `MISSING_MODULE_RETRY_SECONDS`: how long after publication a missing module, or one
    /// the nodes could not compile for a reason of their own, is waited for before the job
    /// is dead-lettered.
    pub missing_module_retry: Duration,
    /// Where workers on this node record the jobs they hold (`<cache dir>/workers`), so
    /// that the next one started here hands a dead one's jobs back at once
    /// ([`node_record`]). `None`: no record; a dead worker's leases lapse.
    pub record_dir: Option<PathBuf>,
    /// What the probes report (`/readyz`): the worker tells it about pulls, the breaker, the
    /// clock and draining. `None`: no probes. (Metrics: the runtime's,
    /// [`Runtime::metrics`](crate::runtime::Runtime::metrics).)
    pub health: Option<Arc<Health>>,
    /// The instance's deletion cost on SaladCloud ([`DeletionCost`](crate::salad::DeletionCost)):
    /// each job counts while it runs, its finish phase holds it at the maximum. `None`: not
    /// on SaladCloud.
    pub deletion_cost: Option<crate::salad::DeletionCost>,
    /// On SaladCloud: asks for another node after repeated host faults or a clock that stays
    /// off ([`Reallocator`](crate::salad::Reallocator)). `None`: never.
    pub reallocator: Option<Arc<crate::salad::Reallocator>>,
    /// `HEARTBEAT_SECONDS` and the machine: the heartbeat record ([`heartbeat`]); `None`:
    /// no heartbeat.
    pub heartbeat: Option<heartbeat::HeartbeatConfig>,
    /// `EXIT_ON_MISCONFIG`: a lane whose pulls fail for good ends [`run`] with the sentence
    /// (after draining like a shutdown) instead of being waited for ([`misconfig`]).
    pub exit_on_misconfig: bool,
}

/// Counters, one per failure class (logged at exit and readable by tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs whose result this worker stored.
    pub done: AtomicU64,
    /// Messages of jobs whose result existed already (acked without running).
    pub already_done: AtomicU64,
    /// Messages published to the dead-letter topic and acked.
    pub dead_lettered: AtomicU64,
    /// Messages handed back for a later retry: a trap under the failure limit, a store
    /// failure, a module not in the store yet, a dead-letter that could not be recorded.
    pub retried: AtomicU64,
    /// Copies handed back because another worker runs the job under a live lease.
    pub busy: AtomicU64,
    /// Runs stopped because another worker took the job over (412 on the checkpoint).
    pub conflicts: AtomicU64,
    /// Runs stopped because the queue lease was lost.
    pub leases_lost: AtomicU64,
    /// Runs stopped for shutdown (checkpoint flushed, message handed back).
    pub interrupted: AtomicU64,
    /// Jobs the host could not run or whose handler panicked (not counted against the
    /// job).
    pub host_faults: AtomicU64,
    /// Jobs a user cancelled or paused (`taskhost job cancel` / `pause`).
    pub stopped: AtomicU64,
    /// Messages being handled now that hold a slot (a gauge, for the heartbeat;
    /// `worker::counting` keeps it).
    pub running: AtomicU64,
    /// Jobs whose task's run ended, holding a commit place (no slot) until their message is
    /// settled (a gauge; at most [`COMMIT_PLACES_PER_SLOT`] × `slots`).
    pub committing: AtomicU64,
    /// The most jobs that held a commit place at once.
    pub committing_peak: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Removes what writers killed mid-write left in the directory store (in the background: a
/// big store takes a walk); says what it removed, or why it could not.
async fn sweep_temporaries(store: crate::store::dir::DirStore) {
    let age = crate::store::dir::STALE_TEMPORARY_AGE;
    match store.sweep_temporaries(age).await {
        Ok(swept) if swept.files > 0 => tracing::info!(
            files = swept.files,
            bytes = swept.bytes,
            "removed the temporary files of writers that died mid-write from the store directory"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot sweep dead writers' temporary files from the store directory")
        }
    }
}

/// Runs until `shutdown` is cancelled (then drains as described in the module docs). A lane
/// whose pulls fail for good is waited for ([`misconfig`]) while the other lanes are pulled
/// and the running jobs run on; with `exit_on_misconfig` it ends the run instead (drained the
/// same way): `Err(the sentence)`.
pub async fn run<S: ObjectStore + Clone + Into<AnyStore>>(
    queue: Queue,
    executor: Executor<S>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Stats>> {
    let slots = config.slots.max(1);
    let store: AnyStore = executor.store.clone().into();
    let group_commits = store.group_commits();
    if let Some(dir) = store.dir().cloned() {
        tokio::spawn(sweep_temporaries(dir));
    }
    let subscriptions: Vec<&str> = config
        .lanes
        .iter()
        .map(|l| l.subscription.as_str())
        .collect();
    tracing::info!(
        subscription = %subscriptions.join(","),
        slots,
        ack_deadline_secs = config.ack_deadline.as_secs(),
        "worker started"
    );
    let stats = Arc::new(Stats::default());
    let metrics = Arc::clone(executor.runtime.metrics());
    metrics.set_slots(slots);
    for lane in config.lanes.iter() {
        // Each lane's series exists from the start.
        metrics.pulled_from_lane(lane.name.as_str(), 0);
    }
    let record = config.record_dir.as_deref().and_then(|root| {
        let me = &executor.worker_id;
        let record = node_record::NodeRecord::create(root, me)
            .inspect_err(|e| tracing::warn!(dir = %root.display(), error = %e, "cannot record held jobs on this node's disk; if this worker dies, its leases lapse instead"))
            .ok();
        tokio::spawn(node_record::watch(
            root.to_owned(),
            me.clone(),
            queue.clone(),
            executor.store.clone(),
            config.lanes.clone(),
            shutdown.child_token(),
        ));
        record
    });
    // The breaker's probe object, and what the clock check reads.
    let probe = crate::keys::probe(&executor.worker_id);
    let skewed = clock::Skewed::default();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = skewed.check(&executor.store, &probe) => {}
    }
    tokio::spawn(skewed.clone().watch(
        executor.store.clone(),
        probe.clone(),
        shutdown.child_token(),
    ));
    if let Some(r) = config.reallocator.clone() {
        // The clock's state, as the reallocation rule sees it, every recheck interval.
        let (skewed, stop) = (skewed.clone(), shutdown.child_token());
        tokio::spawn(async move {
            loop {
                r.clock(skewed.get()).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CLOCK_RECHECK_INTERVAL) => {}
                }
            }
        });
    }
    let worker = Arc::new(Worker {
        metrics,
        queue,
        executor,
        config,
        stats: stats.clone(),
        storage_failures: receive::StorageFailures::default(),
        record,
        commits: group_commits
            .then(|| Arc::new(tokio::sync::Semaphore::new(slots * COMMIT_PLACES_PER_SLOT))),
    });
    tokio::spawn({
        let store = worker.executor.store.clone();
        async move { heartbeat::prune_dead(&store, crate::time::now_ms()).await }
    });
    let beating = heartbeat::start(
        &worker.executor.store,
        &worker.executor.worker_id,
        slots,
        &stats,
        worker.config.heartbeat.as_ref(),
    );
    let mut jobs = JoinSet::new();
    // What stops the running jobs: the shutdown, or the end of the loop for any reason (a
    // lane that failed for good with `exit_on_misconfig` hands its jobs back like a shutdown).
    let stopping = shutdown.child_token();
    let stop_by = std::sync::OnceLock::new();
    let result = receive::receive(
        &worker,
        receive::Loop {
            slots,
            probe: &probe,
            skewed: &skewed,
            shutdown: &shutdown,
            stopping: &stopping,
            stop_by: &stop_by,
        },
        &mut jobs,
    )
    .await;
    worker.health(|h| h.set_draining());
    tracing::info!(
        running = jobs.len(),
        "worker stopping: no new jobs; stopping running ones at their next yield"
    );
    // One timeout for the whole way out: what the pulls in flight took of it is gone.
    let stop_by = *stop_by.get_or_init(|| Instant::now() + worker.config.shutdown_timeout);
    let drained = tokio::time::timeout_at(stop_by.into(), async {
        while let Some(joined) = jobs.join_next().await {
            log_panic(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = jobs.len(),
            timeout = ?worker.config.shutdown_timeout,
            "shutdown timeout: exiting without the rest; their leases lapse and their work since the last checkpoint is redone"
        );
        jobs.abort_all();
    }
    tracing::info!(
        done = stats.done.load(Ordering::Relaxed),
        already_done = stats.already_done.load(Ordering::Relaxed),
        dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
        retried = stats.retried.load(Ordering::Relaxed),
        busy = stats.busy.load(Ordering::Relaxed),
        conflicts = stats.conflicts.load(Ordering::Relaxed),
        leases_lost = stats.leases_lost.load(Ordering::Relaxed),
        interrupted = stats.interrupted.load(Ordering::Relaxed),
        host_faults = stats.host_faults.load(Ordering::Relaxed),
        committing_peak = stats.committing_peak.load(Ordering::Relaxed),
        "worker stopped"
    );
    if let Some(b) = beating {
        b.stop().await;
    }
    result.map(|()| stats)
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a job handler panicked; its message was handed back");
    }
}
