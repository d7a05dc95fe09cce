//! One job, from its message to its settlement: parse → resolve the module →
//! [`Executor::execute`] → [`decide`] → ack / nack with a delay / dead-letter, with one log
//! line and one counter ([`Stats`]) per job end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Most bytes of a host fault's message in the log line about it.
const MAX_HOST_FAULT_SHOWN: usize = 4096;

use super::counting::{Counted, Hold};
use super::node_record::{self, NodeRecord};
use super::receive::StorageFailures;
use super::{Decision, Stats, WorkerConfig, decide, retry_delay};
use crate::checkpoint::OtherWork;
use crate::exec::{Executor, JobBinding, JobEnd};
use crate::job::JobMessage;
use crate::modules::{self, ResolveError};
use crate::observe::metrics::{JobOutcome, Settle};
use crate::observe::{Health, Metrics};
use crate::queue::lease::Lease;
use crate::queue::{IncomingMessage, OutgoingMessage, Queue};
use crate::runtime::ModuleError;
use crate::store::any::AnyStore;
use crate::store::{ObjectStore, Precondition};
use crate::time::now_ms;

/// What a job whose task's run ended holds while its outputs are written.
enum Held {
    /// A commit place (its slot freed): on a store with group commits.
    Place(Hold),
    /// Its slot, on other stores (held only: dropping it frees the slot).
    Slot { _slot: Hold },
}

impl Held {
    /// The commit place, if it is one; a slot is dropped here (freed).
    fn into_place(self) -> Option<Hold> {
        match self {
            Held::Place(place) => Some(place),
            Held::Slot { .. } => None,
        }
    }
}

/// Pub/Sub allows attribute values of at most 1024 bytes.
const MAX_ATTRIBUTE: usize = 1024;

/// The attributes a dead-lettered message gets (docs/design.md §6): why, the message it was,
/// and its delivery attempt (when the queue counts them). `dead-letter replay` removes them.
pub const DEAD_LETTER_ATTRIBUTES: [&str; 3] =
    ["error", "original_message_id", DEAD_LETTER_ATTEMPTS];
const DEAD_LETTER_ATTEMPTS: &str = "attempts";

/// What every job of a worker shares.
pub(super) struct Worker<S> {
    /// The runtime's metrics, counted per job end and per settlement.
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    pub executor: Executor<S>,
    pub config: WorkerConfig,
    pub stats: Arc<Stats>,
    /// Storage failures in a row, across jobs (the circuit breaker's count).
    pub storage_failures: StorageFailures,
    /// This worker's record of the jobs it runs, on the node's disk.
    pub record: Option<NodeRecord>,
    /// The commit places ([`COMMIT_PLACES_PER_SLOT`](super::COMMIT_PLACES_PER_SLOT) ×
    /// `slots`), on a store with group commits ([`AnyStore::group_commits`]): a job whose
    /// task's run ended takes one for its slot, and holds it while its outputs are written
    /// and its message settled. `None`: a job keeps its slot until its outputs are written.
    pub commits: Option<Arc<tokio::sync::Semaphore>>,
}

impl<S: ObjectStore + Clone + Into<AnyStore>> Worker<S> {
    pub async fn handle(
        &self,
        message: IncomingMessage,
        lease: Lease,
        slot: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let count = Counted::start(&self.stats, &self.metrics);
        let attempt = message.delivery_attempt.unwrap_or(1);
        let job = match JobMessage::parse(
            &message.data,
            &message.attributes,
            self.config.default_module.as_ref(),
        ) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(message_id = %message.message_id, %reason, "poison message");
                self.metrics.job_ended(JobOutcome::Poison);
                // Recorded first, so that `status` shows it; a failed write hands it back.
                let job_id = JobMessage::job_id_of(&message.data);
                let key = crate::keys::poison(job_id.as_ref(), &message.message_id);
                let record = self.executor.store.put(
                    &key,
                    truncate(&reason, MAX_ATTRIBUTE).into_bytes(),
                    Precondition::None,
                );
                if let Err(e) = record.await {
                    tracing::warn!(message_id = %message.message_id, error = %e, "cannot record the poison message; handing it back for later");
                    Stats::bump(&self.stats.retried);
                    let later = retry_delay(attempt);
                    return self.settle(Settle::HandBack, lease.nack(later).await);
                }
                return self.dead_letter(&message, None, &reason, lease).await;
            }
        };
        // Every line of the job's handling carries these (a JSON line as fields).
        let span = tracing::info_span!(
            "job",
            job_id = %job.job_id,
            attempt,
            module = %job.module,
            worker = %self.executor.worker_id,
        );
        self.handle_job(message, job, lease, slot, count, shutdown)
            .instrument(span)
            .await
    }

    /// [`Worker::handle`] for a message that is a job.
    async fn handle_job(
        &self,
        message: IncomingMessage,
        job: JobMessage,
        lease: Lease,
        slot: OwnedSemaphorePermit,
        count: Arc<Counted>,
        shutdown: CancellationToken,
    ) {
        let attempt = message.delivery_attempt.unwrap_or(1);
        let id = &job.job_id;
        // The phases' debug lines time a job from its pull to its settlement (tests/bench/ceiling.py).
        tracing::debug!(job = %id, "message received");
        // Kept until the message is settled (the end of this function).
        let _listed = self.record.as_ref().map(|r| {
            r.list(&node_record::JobEntry {
                subscription: lease.subscription().to_owned(),
                ack_id: lease.ack_id().to_owned(),
                job_id: id.to_string(),
            })
        });
        let store = &self.executor.store;
        let module = match modules::resolve(&self.executor.runtime, store, &job.module).await {
            Ok(m) => m,
            Err(ResolveError::Missing(h)) => {
                let waited = match self.module_retry(&message, attempt) {
                    Ok(delay) => {
                        let waited_s = waited_since_publish(&message).as_secs();
                        tracing::warn!(job = %id, module = %h, waited_s, retry_in = ?delay, "module not in the store (yet); handing the job back");
                        Stats::bump(&self.stats.retried);
                        self.metrics.job_ended(JobOutcome::ModuleMissing);
                        return self.settle(Settle::HandBack, lease.nack(delay).await);
                    }
                    Err(waited) => waited,
                };
                let reason = format!(
                    "module {h} is not in the store {} s after the job was published \
                     (MISSING_MODULE_RETRY_SECONDS={}): push it with `taskhost module push`",
                    waited.as_secs(),
                    self.config.missing_module_retry.as_secs()
                );
                let outcome = JobOutcome::ModuleMissing;
                return self
                    .dead_letter_unless_done(&message, &job, outcome, &reason, lease, attempt)
                    .await;
            }
            Err(ResolveError::Storage(m)) => {
                let what = "cannot fetch the module";
                return self
                    .hand_back_for_storage(id, what, &m, lease, attempt)
                    .await;
            }
            Err(ResolveError::Module(h, ModuleError::NodeFault(m))) => {
                let waited = match self.module_retry(&message, attempt) {
                    Ok(delay) => return self.hand_back_uncompiled(id, &h, &m, lease, delay).await,
                    Err(waited) => waited,
                };
                let reason = format!(
                    "module {h} could not be compiled on the nodes that took the job for {} s \
                     after it was published (MISSING_MODULE_RETRY_SECONDS={}): {m}",
                    waited.as_secs(),
                    self.config.missing_module_retry.as_secs()
                );
                let outcome = JobOutcome::BadModule;
                return self
                    .dead_letter_unless_done(&message, &job, outcome, &reason, lease, attempt)
                    .await;
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "unusable module");
                let (outcome, reason) = (JobOutcome::BadModule, e.to_string());
                return self
                    .dead_letter_unless_done(&message, &job, outcome, &reason, lease, attempt)
                    .await;
            }
        };
        tracing::debug!(job = %id, "module ready");
        let binding = JobBinding {
            work: job.work.clone(),
            on_other_work: if job.restart {
                OtherWork::Restart
            } else if job.upgrade_module {
                OtherWork::UpgradeModule
            } else {
                OtherWork::Refuse
            },
            inputs: job.inputs.clone(),
            deletion_cost: self.config.deletion_cost.clone(),
        };
        // Counted in the deletion cost while it runs.
        let counted = self.config.deletion_cost.as_ref().map(|c| c.job());
        // Once the task's run ends, on a store with group commits its slot takes the next
        // message while this one's outputs are made durable: the job holds a commit place
        // instead, until its message is settled. Elsewhere it keeps its slot until its
        // outputs are written.
        let commits = self.commits.clone();
        let freed = id.clone();
        let held_count = Arc::clone(&count);
        let handoff = async move {
            match commits {
                Some(commits) => {
                    let place = Hold::place(commits, held_count).await;
                    drop(slot);
                    tracing::debug!(job = %freed, "slot freed");
                    Held::Place(place)
                }
                None => Held::Slot {
                    _slot: Hold::slot(slot, held_count),
                },
            }
        };
        let (end, runs, held) = self
            .executor
            .execute_counted(
                id,
                &module,
                &job.input,
                &binding,
                lease.view(),
                shutdown,
                handoff,
            )
            .await;
        // A slot (no group commits) is freed here, while the message is settled; a commit
        // place is kept until it is settled.
        let _committing = held.and_then(Held::into_place);
        // Without a dead-letter policy the queue counts no deliveries: the checkpoint's own
        // count of runs then spaces the retries out.
        let attempt = message.delivery_attempt.unwrap_or(runs.max(1));
        drop(counted);
        self.count(id, &end);
        if let Some(m) = end.node_fault() {
            self.tell_reallocator(m);
        } else if let (Some(r), JobEnd::Done { .. }) = (&self.config.reallocator, &end) {
            r.job_done();
        }
        if matches!(end, JobEnd::Storage(_)) {
            self.storage_failures.failed();
        } else {
            self.storage_failures.answered();
        }
        match decide(
            &end,
            attempt,
            self.config.max_failures,
            self.config.ack_deadline,
        ) {
            Decision::Ack => self.settle(Settle::Ack, lease.ack().await),
            Decision::HandBack(delay) => self.settle(Settle::HandBack, lease.nack(delay).await),
            Decision::DeadLetter(reason) => {
                self.dead_letter(&message, Some(&job), &reason, lease).await
            }
        }
        tracing::debug!(job = %id, "message settled");
    }

    /// Dead-letters a job for its module (missing or unusable: `outcome`, `reason`) unless
    /// its result is stored: a copy of a done job's message (a lost ack, a resubmission)
    /// needs no module, so it is acked as already done, once the result is durable. A
    /// message that asks to start over is dead-lettered all the same. A store that cannot
    /// tell hands the message back for later.
    async fn dead_letter_unless_done(
        &self,
        message: &IncomingMessage,
        job: &JobMessage,
        outcome: JobOutcome,
        reason: &str,
        lease: Lease,
        attempt: u32,
    ) {
        let (store, key) = (&self.executor.store, crate::keys::result(&job.job_id));
        let done = match job.restart {
            true => Ok(false),
            false => match store.exists(&key).await {
                Ok(true) => match crate::checkpoint::peek(store, &job.job_id).await {
                    // A result a start-over has yet to delete is not this work's.
                    Ok(Some(h)) if !h.outputs_current() => Ok(false),
                    _ => store.make_durable(&key).await.map(|()| true),
                },
                other => other,
            },
        };
        match done {
            Ok(true) => {
                self.count(&job.job_id, &JobEnd::AlreadyDone);
                self.settle(Settle::Ack, lease.ack().await);
            }
            Ok(false) => {
                self.metrics.job_ended(outcome);
                self.dead_letter(message, Some(job), reason, lease).await;
            }
            Err(e) => {
                let what = "cannot tell whether the job is done";
                let error = e.to_string();
                self.hand_back_for_storage(&job.job_id, what, &error, lease, attempt)
                    .await;
            }
        }
    }

    /// Hands a job back for later because the store failed (`what` it was doing: `error`).
    async fn hand_back_for_storage(
        &self,
        id: &crate::ids::JobId,
        what: &str,
        error: &str,
        lease: Lease,
        attempt: u32,
    ) {
        self.storage_failures.failed();
        let delay = retry_delay(attempt);
        tracing::warn!(job = %id, error = %error, retry_in = ?delay, "{what}; handing the job back");
        Stats::bump(&self.stats.retried);
        self.metrics.job_ended(JobOutcome::Storage);
        self.settle(Settle::HandBack, lease.nack(delay).await);
    }

    /// The delay to hand a job back with while its module is not ready (not in the store
    /// yet, or not compiled by the nodes that took it), up to `MISSING_MODULE_RETRY_SECONDS`
    /// after it was published; `Err`: that window is over (how long ago it was published).
    fn module_retry(&self, message: &IncomingMessage, attempt: u32) -> Result<Duration, Duration> {
        let window = self.config.missing_module_retry;
        let waited = waited_since_publish(message);
        if waited >= window {
            return Err(waited);
        }
        Ok(retry_delay(attempt).min(window - waited + Duration::from_secs(1)))
    }

    /// A module this node could not compile (out of memory, a system call refused): a host
    /// fault, not counted against the job, which goes back for `delay` (to another node, or
    /// to this one once it recovers). Counted toward reallocating the node only when the
    /// node's fixed check module does not compile either: a module that needs more than
    /// every node gives must not send the fleet from node to node.
    async fn hand_back_uncompiled(
        &self,
        id: &crate::ids::JobId,
        module: &crate::ids::ModuleHash,
        error: &str,
        lease: Lease,
        delay: Duration,
    ) {
        let rt = self.executor.runtime.clone();
        let node_cannot = matches!(
            tokio::task::spawn_blocking(move || rt.compile_check()).await,
            Ok(Err(ModuleError::NodeFault(_)))
        );
        Stats::bump(&self.stats.host_faults);
        self.metrics.job_ended(JobOutcome::HostFault);
        let why = if node_cannot {
            self.tell_reallocator(&format!("cannot compile module {module}: {error}"));
            "this node cannot compile modules, not even its check module"
        } else {
            "this node could not compile the module, though its check module compiles"
        };
        tracing::error!(job = %id, module = %module, error = %error, retry_in = ?delay, "{why} (a host fault, not counted against the job); handing the job back for later");
        self.settle(Settle::HandBack, lease.nack(delay).await);
    }

    /// Counts a host fault toward reallocating the node (on SaladCloud).
    fn tell_reallocator(&self, message: &str) {
        if let Some(r) = &self.config.reallocator {
            let (r, m) = (Arc::clone(r), message.to_owned());
            tokio::spawn(async move { r.host_fault(&m).await });
        }
    }

    /// One log line and one counter per job end.
    fn count(&self, id: &crate::ids::JobId, end: &JobEnd) {
        self.metrics.job_ended(outcome(end));
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
            JobEnd::Stopped(c) => {
                tracing::info!(job = %id, action = c.action.as_str(), by = %crate::inert::Inert(&c.by), at_ms = c.at_ms, "stopped by a user's request; nothing more written; acking");
                Stats::bump(&s.stopped);
            }
            JobEnd::Storage(m) => {
                tracing::warn!(job = %id, error = %m, "storage failed; handing the job back for later");
                Stats::bump(&s.retried);
            }
            JobEnd::HostFault(m) => {
                // A panic's message may quote what a task passed (Rust's slicing panics quote strings).
                let m = crate::inert::Inert(crate::inert::cut(m, MAX_HOST_FAULT_SHOWN));
                tracing::error!(job = %id, error = %m, "host fault (not counted against the job); handing the job back for later");
                Stats::bump(&s.host_faults);
            }
            JobEnd::HostPanic(m) => {
                tracing::error!(job = %id, error = %crate::inert::Inert(m), "a host function panicked serving the task (a bug of ours; counted as a crash of the job); handing the job back for later");
                Stats::bump(&s.host_faults);
            }
        }
    }

    /// Records the reason (for a valid job), publishes the message to the dead-letter topic
    /// with an `error` attribute, then acks; hands it back for later if either fails.
    async fn dead_letter(
        &self,
        message: &IncomingMessage,
        job: Option<&JobMessage>,
        reason: &str,
        lease: Lease,
    ) {
        let later = retry_delay(message.delivery_attempt.unwrap_or(1));
        if let Some(job) = job {
            let key = crate::keys::error(&job.job_id);
            if let Err(e) = self
                .executor
                .store
                .put(&key, reason.as_bytes().to_vec(), Precondition::None)
                .await
            {
                tracing::warn!(job = %job.job_id, error = %e, "cannot write the job's error; handing it back for later");
                Stats::bump(&self.stats.retried);
                return self.settle(Settle::HandBack, lease.nack(later).await);
            }
        }
        let mut attributes: BTreeMap<String, String> = message.attributes.clone();
        attributes.insert("error".into(), truncate(reason, MAX_ATTRIBUTE));
        attributes.insert("original_message_id".into(), message.message_id.clone());
        if let Some(n) = message.delivery_attempt {
            attributes.insert(DEAD_LETTER_ATTEMPTS.into(), n.to_string());
        }
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
                    job = job.map(|j| j.job_id.as_str()).unwrap_or("-"),
                    reason,
                    "dead-lettered"
                );
                Stats::bump(&self.stats.dead_lettered);
                self.settle(Settle::DeadLetter, lease.ack().await);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot publish to the dead-letter topic; handing the message back for later");
                self.metrics.queue_error(e.kind());
                Stats::bump(&self.stats.retried);
                self.settle(Settle::HandBack, lease.nack(later).await);
            }
        }
    }
}

impl<S> Worker<S> {
    /// Counts the message as settled with `action`, then [`log_unsettled`]s a failure.
    fn settle(&self, action: Settle, result: Result<(), crate::queue::QueueError>) {
        self.metrics.settled(action);
        log_unsettled(result);
    }

    /// Tells the probes, if any.
    pub fn health(&self, f: impl FnOnce(&Health)) {
        if let Some(h) = self.config.health.as_deref() {
            f(h)
        }
    }
}

/// The metrics' outcome of a job end.
fn outcome(end: &JobEnd) -> JobOutcome {
    match end {
        JobEnd::Done { .. } => JobOutcome::Done,
        JobEnd::AlreadyDone => JobOutcome::AlreadyDone,
        JobEnd::TaskFailed(_) => JobOutcome::TaskFailed,
        JobEnd::Trapped { .. } => JobOutcome::Trapped,
        JobEnd::Busy { .. } => JobOutcome::Busy,
        JobEnd::Conflict => JobOutcome::Conflict,
        JobEnd::LeaseLost => JobOutcome::LeaseLost,
        JobEnd::Cancelled => JobOutcome::Interrupted,
        JobEnd::Stopped(c) if c.action == crate::checkpoint::Action::Pause => JobOutcome::Paused,
        JobEnd::Stopped(_) => JobOutcome::Cancelled,
        JobEnd::Unreadable(_) => JobOutcome::Unreadable,
        JobEnd::OtherWork(_) => JobOutcome::OtherWork,
        JobEnd::HostFault(_) => JobOutcome::HostFault,
        JobEnd::HostPanic(_) => JobOutcome::HostPanic,
        JobEnd::Storage(_) => JobOutcome::Storage,
        JobEnd::Crashed { .. } => JobOutcome::Crashed,
        JobEnd::StorageRepeated { .. } => JobOutcome::StorageRepeated,
    }
}

/// Logs an ack or nack that failed (the message then comes back when its lease lapses).
/// Which of the two is [`decide`]'s choice; this only reports the outcome.
fn log_unsettled(result: Result<(), crate::queue::QueueError>) {
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

/// How long ago `message` was published (zero when the queue does not say).
fn waited_since_publish(message: &IncomingMessage) -> Duration {
    Duration::from_millis(
        message
            .publish_time_ms
            .map_or(0, |t| now_ms().saturating_sub(t)),
    )
}
