//! The worker: leases job messages and runs them, `slots` at a time.
//!
//! The receive loop pulls only when a slot is free, and asks for exactly as many messages as
//! there are free slots, so it never holds a message it cannot start at once. A job frees its
//! slot when it ends, while its message is being settled. Each pulled
//! message gets a [`Lease`] (extended every half deadline) and a task: parse → resolve the
//! module (memory → disk cache → bucket → verify → compile) → [`Executor::execute`] (claim,
//! run, durable result) → [`decide`] → ack / nack with a delay / dead-letter. Each running
//! job is recorded on the node's disk ([`held`]) until its message is settled; a worker
//! hands back at once (at start, then within [`held::SCAN_INTERVAL`]) the jobs of the
//! workers that died on this node.
//!
//! **Invariants:** a message is acked only after its result (or its error, for a
//! dead-lettered job) is durable, or after it was published to the dead-letter topic; a lapsed
//! lease, a conflict or an interruption is never counted as a failure (only traps are, in the
//! checkpoint header); a message goes back for a transient reason only with a delay (never an
//! immediate nack loop). On shutdown no new message is taken, running tasks stop at their next
//! yield, their checkpoints are flushed (released) and their messages handed back at once,
//! all within `shutdown_timeout`.
//! **API boundary:** only this module and `queue` know about acks and deliveries.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::OtherWork;
use crate::exec::{Binding, Executor, JobEnd};
use crate::ids::{JobId, ModuleHash};
use crate::job::JobMessage;
use crate::modules::{self, ResolveError};
use crate::queue::lease::Lease;
use crate::queue::{
    IncomingMessage, MAX_ACK_DEADLINE_SECS, OutgoingMessage, Queue, QueueError, Received,
};
use crate::store::any::AnyStore;
use crate::store::{ErrorKind, ObjectStore, Precondition};
use crate::time::now_ms;

mod clock;
mod decide;
pub mod heartbeat;
pub mod held;

pub use clock::{CLOCK_CHECK_INTERVAL, CLOCK_RECHECK_INTERVAL, skew_ms};
pub use decide::{Decision, busy_delay, decide, retry_delay};

/// Default number of trapped runs after which a job is dead-lettered.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// How long after a job was published a missing module is still waited for
/// (`MISSING_MODULE_RETRY_SECONDS`): 600 s. The module may still be on its way to the bucket.
pub const DEFAULT_MISSING_MODULE_RETRY: Duration = Duration::from_secs(600);
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
/// Wait after an empty pull; it doubles up to [`MAX_IDLE_WAIT`] while pulls stay empty.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(50);
const MAX_IDLE_WAIT: Duration = Duration::from_millis(500);
/// Most pulls in flight at once (fewer with fewer slots; one while pulls come back empty).
const MAX_CONCURRENT_PULLS: usize = 4;
/// Pub/Sub allows attribute values of at most 1024 bytes.
const MAX_ATTRIBUTE: usize = 1024;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub subscription_id: String,
    pub dead_letter_topic_id: String,
    /// `ACK_DEADLINE_SECONDS`: each lease extension sets the deadline this far ahead.
    pub ack_deadline: Duration,
    pub slots: usize,
    pub max_failures: u32,
    pub default_module: Option<ModuleHash>,
    /// `SHUTDOWN_TIMEOUT_SECONDS`: the longest a shutdown waits for tasks to flush.
    pub shutdown_timeout: Duration,
    /// `MISSING_MODULE_RETRY_SECONDS`: how long after publication a missing module is
    /// waited for before the job is dead-lettered.
    pub missing_module_retry: Duration,
    /// Where workers on this node record the jobs they hold (`<cache dir>/workers`), so
    /// that the next one started here hands a dead one's jobs back at once ([`held`]).
    /// `None`: no record; a dead worker's leases lapse.
    pub held_dir: Option<PathBuf>,
    /// `HEARTBEAT_SECONDS` and the machine: the heartbeat record ([`heartbeat`]); `None`:
    /// no heartbeat.
    pub heartbeat: Option<heartbeat::HeartbeatConfig>,
}

/// Counters, one per failure class (logged at exit and readable by tests).
#[derive(Debug, Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub already_done: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
    pub busy: AtomicU64,
    pub conflicts: AtomicU64,
    pub leases_lost: AtomicU64,
    pub interrupted: AtomicU64,
    pub host_faults: AtomicU64,
    /// Messages being handled now (a gauge, for the heartbeat).
    pub running: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs until `shutdown` is cancelled (then drains as described in the module docs) or the
/// subscription fails permanently.
pub async fn run<S: ObjectStore + Clone + Into<AnyStore>>(
    queue: Queue,
    executor: Executor<S>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Stats>> {
    let slots = config.slots.max(1);
    tracing::info!(
        subscription = %config.subscription_id,
        slots,
        ack_deadline_secs = config.ack_deadline.as_secs(),
        "worker started"
    );
    let stats = Arc::new(Stats::default());
    let record = config.held_dir.as_deref().and_then(|root| {
        let me = &executor.worker_id;
        let record = held::Record::create(root, me)
            .inspect_err(|e| tracing::warn!(dir = %root.display(), error = %e, "cannot record held jobs on this node's disk; if this worker dies, its leases lapse instead"))
            .ok();
        tokio::spawn(held::watch(
            root.to_owned(),
            me.clone(),
            queue.clone(),
            executor.store.clone(),
            config.subscription_id.clone(),
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
    let ctx = Arc::new(Ctx {
        queue,
        executor,
        config,
        stats: stats.clone(),
        storage_failures: AtomicU32::new(0),
        record,
    });
    let free = Arc::new(Semaphore::new(slots));
    let beating = heartbeat::start(
        &ctx.executor.store,
        &ctx.executor.worker_id,
        slots,
        &stats,
        ctx.config.heartbeat.as_ref(),
    );
    let mut jobs = JoinSet::new();
    // Pulls in flight, each with the slots it asked for: several at once while messages keep
    // coming (a pull's round trip, not the jobs, bounds short jobs), one while pulls come
    // back empty.
    let mut pulls: JoinSet<Pulled> = JoinSet::new();
    let most_pulls = slots.min(MAX_CONCURRENT_PULLS);
    let mut busy_queue = false;
    let mut breaker_open = false;
    let mut said_denied = false;
    let mut idle = MIN_IDLE_WAIT;
    let mut failing = Duration::ZERO;
    let mut pause_until = Instant::now();
    // What stops the running jobs: the shutdown, or the end of this loop for any reason
    // (a subscription that failed for good hands its jobs back like a shutdown).
    let stopping = shutdown.child_token();
    let result = loop {
        let tripped = ctx.storage_failures.load(Ordering::Relaxed) >= BREAKER_THRESHOLD;
        let room = pulls.len() < if busy_queue { most_pulls } else { 1 };
        // The breaker probes only once no pull is in flight (their messages get leases first).
        let may_pull = room && (!tripped || pulls.is_empty());
        let paused = Instant::now() < pause_until;
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep_until(pause_until.into()), if may_pull && paused => {}
            permit = Arc::clone(&free).acquire_owned(), if may_pull && !paused => {
                let mut permits = vec![permit.expect("never closed")];
                while let Ok(p) = Arc::clone(&free).try_acquire_owned() {
                    permits.push(p);
                }
                while let Some(joined) = jobs.try_join_next() {
                    log_panic(joined);
                }
                if tripped {
                    // Storage fails for every job: take none (each would only burn a
                    // delivery attempt) until a probe answers.
                    if !breaker_open {
                        breaker_open = true;
                        tracing::error!(
                            "storage is failing for every job: taking no new jobs until it answers"
                        );
                    }
                    drop(permits);
                    let probed = tokio::select! {
                        // A store that does not answer never holds a shutdown up.
                        _ = shutdown.cancelled() => break Ok(()),
                        probed = crate::store::probe(&ctx.executor.store, &probe) => probed,
                    };
                    match probed {
                        Ok(()) => ctx.storage_failures.store(0, Ordering::Relaxed),
                        Err(e) => {
                            if e.kind() == ErrorKind::AccessDenied && !said_denied {
                                said_denied = true;
                                tracing::error!(error = %e, "the store answers but refuses the probe write: this worker's key cannot write to the bucket, so no job could finish");
                            }
                            failing = (failing * 2)
                                .clamp(Duration::from_secs(1), Duration::from_secs(30));
                            pause_until = Instant::now() + failing;
                        }
                    }
                    continue;
                }
                if breaker_open {
                    breaker_open = false;
                    said_denied = false;
                    failing = Duration::ZERO;
                    tracing::warn!("storage answers again: taking jobs");
                }
                if skewed.get() {
                    // This node's clock is off (logged by the check): no new jobs.
                    drop(permits);
                    pause_until = Instant::now() + Duration::from_secs(1);
                    continue;
                }
                let (queue, sub) = (ctx.queue.clone(), ctx.config.subscription_id.clone());
                let deadline = ctx.config.ack_deadline;
                pulls.spawn(async move {
                    let batch = queue.pull(&sub, permits.len(), deadline).await;
                    Pulled { batch, permits }
                });
            }
            Some(joined) = pulls.join_next() => {
                let Pulled { batch, permits } = match joined {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "a pull failed unexpectedly");
                        continue;
                    }
                };
                match batch {
                    Ok(batch) if batch.is_empty() => {
                        failing = Duration::ZERO;
                        busy_queue = false;
                        idle = (idle * 2).min(MAX_IDLE_WAIT);
                        pause_until = Instant::now() + idle;
                    }
                    Ok(batch) => {
                        failing = Duration::ZERO;
                        busy_queue = true;
                        idle = MIN_IDLE_WAIT;
                        for (received, permit) in batch.into_iter().zip(permits) {
                            let sub = &ctx.config.subscription_id;
                            let lease = Lease::start(
                                ctx.queue.clone(),
                                sub,
                                &received,
                                ctx.config.ack_deadline,
                            );
                            if shutdown.is_cancelled() {
                                // Pulled as the shutdown began: hand it straight back.
                                let _ = lease.nack(Duration::ZERO).await;
                                continue;
                            }
                            let ctx = Arc::clone(&ctx);
                            let cancel = stopping.clone();
                            jobs.spawn(async move {
                                let handled = ctx.handle(received.message, lease, permit, cancel);
                                // A panic outside the task's run (which `Runtime::run` catches
                                // itself) ends this job only: its message goes back when the
                                // dropped lease nacks it, or when its lease lapses.
                                if let Err(p) = AssertUnwindSafe(handled).catch_unwind().await {
                                    let panic = crate::runtime::panic_message(&*p);
                                    tracing::error!(%panic, "a job's handler panicked (a host fault); its message goes back");
                                    Stats::bump(&ctx.stats.host_faults);
                                }
                            });
                        }
                    }
                    Err(e) if e.is_transient() => {
                        busy_queue = false;
                        failing =
                            (failing * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        tracing::warn!(error = %e, retry_in = ?failing, "cannot pull; taking no jobs until the queue answers");
                        pause_until = Instant::now() + failing;
                    }
                    Err(e) => break Err(anyhow::Error::new(e).context("the subscription failed")),
                }
            }
        }
    };
    stopping.cancel();
    // Pulls still in flight return at once (they do not wait for messages): whatever they
    // got goes straight back. A queue that does not answer never holds the exit up.
    let pulled = tokio::time::timeout(ctx.config.shutdown_timeout, async {
        while let Some(joined) = pulls.join_next().await {
            if let Ok(Pulled {
                batch: Ok(batch), ..
            }) = joined
            {
                for received in batch {
                    let sub = &ctx.config.subscription_id;
                    let lease =
                        Lease::start(ctx.queue.clone(), sub, &received, ctx.config.ack_deadline);
                    let _ = lease.nack(Duration::ZERO).await;
                }
            }
        }
    })
    .await;
    if pulled.is_err() {
        pulls.abort_all();
    }
    tracing::info!(
        running = jobs.len(),
        "worker stopping: no new jobs; stopping running ones at their next yield"
    );
    let drained = tokio::time::timeout(ctx.config.shutdown_timeout, async {
        while let Some(joined) = jobs.join_next().await {
            log_panic(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = jobs.len(),
            timeout = ?ctx.config.shutdown_timeout,
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
        "worker stopped"
    );
    if let Some(b) = beating {
        b.stop().await;
    }
    result.map(|()| stats)
}

/// What a pull task hands back: the messages (or why none) and the slots it held for them.
struct Pulled {
    batch: Result<Vec<Received>, QueueError>,
    permits: Vec<OwnedSemaphorePermit>,
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a job handler panicked; its message was handed back");
    }
}

struct Ctx<S> {
    queue: Queue,
    executor: Executor<S>,
    config: WorkerConfig,
    stats: Arc<Stats>,
    /// Storage failures in a row, across jobs (the circuit breaker's count).
    storage_failures: AtomicU32,
    /// This worker's record of the jobs it holds, on the node's disk.
    record: Option<held::Record>,
}

impl<S: ObjectStore + Clone + Into<AnyStore>> Ctx<S> {
    async fn handle(
        &self,
        message: IncomingMessage,
        lease: Lease,
        slot: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let _running = heartbeat::Running::count(&self.stats);
        let attempt = message.delivery_attempt.unwrap_or(1);
        let job = match JobMessage::parse(
            &message.data,
            &message.attributes,
            self.config.default_module.as_ref(),
        ) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(message_id = %message.message_id, %reason, "poison message");
                return self.dead_letter(&message, None, &reason, lease).await;
            }
        };
        let id = &job.job_id;
        // Kept until the message is settled (the end of this function).
        let _held = self.record.as_ref().map(|r| {
            r.hold(&held::Entry {
                subscription: self.config.subscription_id.clone(),
                ack_id: lease.ack_id().to_owned(),
                job_id: id.to_string(),
            })
        });
        let store = &self.executor.store;
        let module = match modules::resolve(&self.executor.runtime, store, &job.module).await {
            Ok(m) => m,
            Err(ResolveError::Missing(h)) => {
                let window = self.config.missing_module_retry;
                let waited = Duration::from_millis(
                    message
                        .publish_time_ms
                        .map_or(0, |t| now_ms().saturating_sub(t)),
                );
                if waited < window {
                    let delay = retry_delay(attempt).min(window - waited + Duration::from_secs(1));
                    tracing::warn!(job = %id, module = %h, waited_s = waited.as_secs(), retry_in = ?delay, "module not in the store (yet); handing the job back");
                    Stats::bump(&self.stats.retried);
                    return settle(lease.nack(delay).await);
                }
                let reason = format!(
                    "module {h} is not in the store {} s after the job was published \
                     (MISSING_MODULE_RETRY_SECONDS={}): push it with `taskhost module push`",
                    waited.as_secs(),
                    window.as_secs()
                );
                return self
                    .dead_letter(&message, Some(&job.job_id), &reason, lease)
                    .await;
            }
            Err(ResolveError::Storage(m)) => {
                self.storage_failures.fetch_add(1, Ordering::Relaxed);
                let delay = retry_delay(attempt);
                tracing::warn!(job = %id, error = %m, retry_in = ?delay, "cannot fetch the module; handing the job back");
                Stats::bump(&self.stats.retried);
                return settle(lease.nack(delay).await);
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "unusable module");
                let reason = e.to_string();
                return self
                    .dead_letter(&message, Some(&job.job_id), &reason, lease)
                    .await;
            }
        };
        let binding = Binding {
            work: job.work.clone(),
            on_other_work: if job.restart {
                OtherWork::Restart
            } else if job.upgrade_module {
                OtherWork::UpgradeModule
            } else {
                OtherWork::Refuse
            },
            inputs: job.inputs.clone(),
        };
        let (end, runs) = self
            .executor
            .execute_counted(id, &module, &job.input, &binding, lease.view(), shutdown)
            .await;
        // Without a dead-letter policy the queue counts no deliveries: the checkpoint's own
        // count of runs then spaces the retries out.
        let attempt = message.delivery_attempt.unwrap_or(runs.max(1));
        // The job no longer runs: its slot may take the next message while this one is
        // settled (the ack, nack or dead-letter publish takes a round trip or two).
        drop(slot);
        self.count(id, &end);
        if matches!(end, JobEnd::Storage(_)) {
            self.storage_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.storage_failures.store(0, Ordering::Relaxed);
        }
        match decide(
            &end,
            attempt,
            self.config.max_failures,
            self.config.ack_deadline,
        ) {
            Decision::Ack => settle(lease.ack().await),
            Decision::HandBack(delay) => settle(lease.nack(delay).await),
            Decision::DeadLetter(reason) => {
                self.dead_letter(&message, Some(&job.job_id), &reason, lease)
                    .await
            }
        }
    }

    /// One log line and one counter per job end.
    fn count(&self, id: &crate::ids::JobId, end: &JobEnd) {
        let s = &self.stats;
        match end {
            JobEnd::Done { attempt, .. } => {
                tracing::info!(job = %id, attempt, "job done; result stored");
                Stats::bump(&s.done);
            }
            JobEnd::AlreadyDone => {
                tracing::info!(job = %id, "result already exists; acking without running");
                Stats::bump(&s.already_done);
            }
            JobEnd::TaskFailed(_)
            | JobEnd::Unreadable(_)
            | JobEnd::OtherWork(_)
            | JobEnd::Crashed { .. }
            | JobEnd::StorageRepeated { .. } => {}
            JobEnd::Trapped {
                kind,
                message,
                failures,
            } => {
                tracing::warn!(job = %id, ?kind, failures, reason = %crate::inert::Inert(message), "task trapped");
                Stats::bump(&s.retried);
            }
            JobEnd::Busy { owner, until_ms } => {
                let left_ms = until_ms.saturating_sub(now_ms());
                tracing::info!(job = %id, %owner, left_ms, "another worker runs this job; handing this copy back for later");
                Stats::bump(&s.busy);
            }
            JobEnd::Conflict => {
                tracing::warn!(job = %id, "another worker owns this job now; stopped without writing");
                Stats::bump(&s.conflicts);
            }
            JobEnd::LeaseLost => {
                tracing::warn!(job = %id, "lease lost; stopped without writing");
                Stats::bump(&s.leases_lost);
            }
            JobEnd::Cancelled => {
                tracing::info!(job = %id, "stopped for shutdown; checkpoint flushed; handing the job back");
                Stats::bump(&s.interrupted);
            }
            JobEnd::Storage(m) => {
                tracing::warn!(job = %id, error = %m, "storage failed; handing the job back for later");
                Stats::bump(&s.retried);
            }
            JobEnd::HostFault(m) => {
                tracing::error!(job = %id, error = %m, "host fault (not counted against the job); handing the job back for later");
                Stats::bump(&s.host_faults);
            }
        }
    }

    /// Records the reason (for a valid job), publishes the message to the dead-letter topic
    /// with an `error` attribute, then acks; hands it back for later if either fails.
    async fn dead_letter(
        &self,
        message: &IncomingMessage,
        job: Option<&JobId>,
        reason: &str,
        lease: Lease,
    ) {
        let later = retry_delay(message.delivery_attempt.unwrap_or(1));
        if let Some(job) = job {
            let key = crate::keys::error(job);
            if let Err(e) = self
                .executor
                .store
                .put(&key, reason.as_bytes().to_vec(), Precondition::None)
                .await
            {
                tracing::warn!(job = %job, error = %e, "cannot write the job's error; handing it back for later");
                Stats::bump(&self.stats.retried);
                return settle(lease.nack(later).await);
            }
        }
        let mut attributes: BTreeMap<String, String> = message.attributes.clone();
        attributes.insert("error".into(), truncate(reason, MAX_ATTRIBUTE));
        attributes.insert("original_message_id".into(), message.message_id.clone());
        let out = OutgoingMessage {
            data: message.data.clone(),
            attributes,
        };
        match self
            .queue
            .publish(&self.config.dead_letter_topic_id, vec![out])
            .await
        {
            Ok(_) => {
                tracing::warn!(
                    message_id = %message.message_id,
                    job = job.map(|j| j.as_str()).unwrap_or("-"),
                    reason,
                    "dead-lettered"
                );
                Stats::bump(&self.stats.dead_lettered);
                settle(lease.ack().await);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot publish to the dead-letter topic; handing the message back for later");
                Stats::bump(&self.stats.retried);
                settle(lease.nack(later).await);
            }
        }
    }
}

/// Logs a failed ack or nack: the message then comes back when its lease lapses.
fn settle(result: Result<(), crate::queue::QueueError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not settle a message; it comes back when its lease lapses");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}
