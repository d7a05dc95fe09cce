//! The worker: leases job messages from Pub/Sub and runs them, `slots` at a time.
//!
//! Per message: validate → skip if the result exists → resolve the module (memory → disk
//! cache → bucket → verify → compile) → [`Executor::execute`] (claim, run, durable result)
//! → ack / nack / dead-letter as the failure classes of DESIGN.md say.
//!
//! **Invariants:** a message is acked only after its result (or its error, for a
//! dead-lettered job) is durable, or after it was published to the dead-letter topic;
//! a lapsed lease or an interruption is never counted as a failure (only traps are, in the
//! checkpoint header); on shutdown no new message is taken, running tasks stop at their next
//! yield, their checkpoints are flushed and their messages nacked at once.
//! **API boundary:** only this module and `pubsub` know about acks and deliveries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exec::{self, Executor, JobEnd};
use crate::ids::ModuleHash;
use crate::job::JobMessage;
use crate::modules::{self, ResolveError};
use crate::pubsub::{IncomingMessage, OutgoingMessage, SubscribeSettings};
use crate::queue::{Lease, Queue, QueueDelivery};
use crate::store::{ObjectStore, Precondition};

/// Default number of trapped runs after which a job is dead-lettered.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Deliveries of a job whose module is missing before it is dead-lettered (the module may
/// still be on its way to the bucket).
pub const MISSING_MODULE_DELIVERIES: u32 = 3;
/// Pub/Sub allows attribute values of at most 1024 bytes.
const MAX_ATTRIBUTE: usize = 1024;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub subscription_id: String,
    pub dead_letter_topic_id: String,
    pub ack_deadline_secs: u32,
    pub slots: usize,
    pub max_failures: u32,
    pub default_module: Option<ModuleHash>,
}

/// Counters, one per failure class (logged at exit and readable by tests).
#[derive(Debug, Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub already_done: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
    pub conflicts: AtomicU64,
    pub interrupted: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs until `shutdown` is cancelled (then drains as described in the module docs) or the
/// subscription fails permanently.
pub async fn run<S: ObjectStore + Clone>(
    queue: Queue,
    executor: Executor<S>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Stats>> {
    let mut sub = queue
        .subscribe(
            &config.subscription_id,
            &SubscribeSettings {
                max_outstanding_messages: config.slots.max(1),
                ack_deadline_secs: config.ack_deadline_secs,
                ..SubscribeSettings::default()
            },
        )
        .await?;
    tracing::info!(
        subscription = %config.subscription_id,
        slots = config.slots,
        ack_deadline_secs = config.ack_deadline_secs,
        "worker started"
    );
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        queue,
        executor,
        config,
        stats: stats.clone(),
    });
    let mut jobs = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = sub.next() => match next {
                Ok(Some(delivery)) => {
                    let ctx = ctx.clone();
                    let cancel = shutdown.child_token();
                    jobs.spawn(async move { ctx.handle(delivery, cancel).await });
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.context("the subscription failed")),
            },
            Some(joined) = jobs.join_next(), if !jobs.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a job handler panicked; its message was nacked");
                }
            }
        }
    };
    tracing::info!(
        running = jobs.len(),
        "worker stopping: no new jobs; waiting for running ones"
    );
    while let Some(joined) = jobs.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a job handler panicked; its message was nacked");
        }
    }
    sub.shutdown().await;
    tracing::info!(
        done = stats.done.load(Ordering::Relaxed),
        already_done = stats.already_done.load(Ordering::Relaxed),
        dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
        retried = stats.retried.load(Ordering::Relaxed),
        conflicts = stats.conflicts.load(Ordering::Relaxed),
        interrupted = stats.interrupted.load(Ordering::Relaxed),
        "worker stopped"
    );
    result.map(|()| stats)
}

struct Ctx<S> {
    queue: Queue,
    executor: Executor<S>,
    config: WorkerConfig,
    stats: Arc<Stats>,
}

impl<S: ObjectStore + Clone> Ctx<S> {
    async fn handle(&self, delivery: QueueDelivery, cancel: CancellationToken) {
        let QueueDelivery { message, handle } = delivery;
        let attempt = message.delivery_attempt.unwrap_or(1);
        let job = match JobMessage::parse(
            &message.data,
            &message.attributes,
            self.config.default_module.as_ref(),
        ) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(message_id = %message.message_id, %reason, "poison message");
                return self.dead_letter(&message, None, &reason, handle).await;
            }
        };
        let id = &job.job_id;
        let store = &self.executor.store;
        match store.exists(&exec::result_key(id)).await {
            Ok(true) => {
                tracing::info!(job = %id, "result already exists; acking without running");
                Stats::bump(&self.stats.already_done);
                return handle.ack();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "storage failed; handing the job back");
                Stats::bump(&self.stats.retried);
                return handle.nack();
            }
        }
        let module = match modules::resolve(&self.executor.runtime, store, &job.module).await {
            Ok(m) => m,
            Err(ResolveError::Missing(h)) if attempt < MISSING_MODULE_DELIVERIES => {
                tracing::warn!(job = %id, module = %h, attempt, "module not in the bucket (yet); handing the job back");
                Stats::bump(&self.stats.retried);
                return handle.nack();
            }
            Err(ResolveError::Storage(m)) => {
                tracing::warn!(job = %id, error = %m, "cannot fetch the module; handing the job back");
                Stats::bump(&self.stats.retried);
                return handle.nack();
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "unusable module");
                let reason = e.to_string();
                return self
                    .dead_letter(&message, Some(&job), &reason, handle)
                    .await;
            }
        };
        match self.executor.execute(id, &module, &job.input, cancel).await {
            JobEnd::Done { attempt, .. } => {
                tracing::info!(job = %id, attempt, "job done; result stored");
                Stats::bump(&self.stats.done);
                handle.ack();
            }
            JobEnd::AlreadyDone(_) => {
                Stats::bump(&self.stats.already_done);
                handle.ack();
            }
            JobEnd::TaskFailed(msg) => {
                let reason = format!("the task failed: {msg}");
                self.dead_letter(&message, Some(&job), &reason, handle)
                    .await;
            }
            JobEnd::Trapped {
                kind,
                message: what,
                failures,
            } => {
                if failures >= self.config.max_failures {
                    let reason = format!(
                        "failed {failures} times (limit {}); last: {kind:?}: {what}",
                        self.config.max_failures
                    );
                    self.dead_letter(&message, Some(&job), &reason, handle)
                        .await;
                } else {
                    tracing::warn!(job = %id, ?kind, failures, "task trapped: {what}; handing the job back");
                    Stats::bump(&self.stats.retried);
                    handle.nack();
                }
            }
            JobEnd::Conflict => {
                // Another worker owns the job: write nothing, count nothing. Our lease has
                // lapsed anyway, so handing the message back is a no-op for Pub/Sub.
                tracing::warn!(job = %id, "another worker owns this job now; stopped without writing");
                Stats::bump(&self.stats.conflicts);
                handle.nack();
            }
            JobEnd::Cancelled => {
                tracing::info!(job = %id, "stopped for shutdown; checkpoint flushed; handing the job back");
                Stats::bump(&self.stats.interrupted);
                handle.nack();
            }
            JobEnd::Storage(m) => {
                tracing::warn!(job = %id, error = %m, "storage failed; handing the job back");
                Stats::bump(&self.stats.retried);
                handle.nack();
            }
        }
    }

    /// Records the reason (for a valid job), publishes the message to the dead-letter topic
    /// with an `error` attribute, then acks; nacks instead if the publish fails.
    async fn dead_letter(
        &self,
        message: &IncomingMessage,
        job: Option<&JobMessage>,
        reason: &str,
        handle: Lease,
    ) {
        if let Some(job) = job {
            let key = exec::error_key(&job.job_id);
            if let Err(e) = self
                .executor
                .store
                .put(&key, reason.as_bytes().to_vec(), Precondition::None)
                .await
            {
                tracing::warn!(job = %job.job_id, error = %e, "cannot write the job's error; handing it back");
                return handle.nack();
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
                    job = job.map(|j| j.job_id.as_str()).unwrap_or("-"),
                    reason,
                    "dead-lettered"
                );
                Stats::bump(&self.stats.dead_lettered);
                handle.ack();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot publish to the dead-letter topic; handing the message back");
                Stats::bump(&self.stats.retried);
                handle.nack();
            }
        }
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
