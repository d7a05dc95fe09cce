//! One leased message, kept alive for as long as its job runs: written once, above both
//! backends.
//!
//! A [`Lease`] extends its message's ack deadline every half deadline (the guide's cadence),
//! counted from the send time of the last successful extension. A failed extension is
//! retried at once with backoff ([`FIRST_RETRY`] doubling up to [`MAX_RETRY`]; each try
//! given a fifth of the deadline, at least 1 s) until it succeeds or the lease's guaranteed
//! end passes, so a lease survives the queue being unreachable for 40 % of a deadline.
//!
//! The lease is **lost** when an extension is refused (the backend says the ack id is no
//! longer ours, or the call fails permanently) or when its guaranteed end passes without a
//! successful extension. Then [`LeaseView::lost`] is cancelled at once: the job stops at its
//! next yield and writes nothing more.
//!
//! **Invariant:** [`LeaseView::until`] never runs ahead of the server's deadline: it is the
//! send time of the request that set the deadline plus that deadline, and the server counts
//! from when it received the request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Queue, QueueError, Received, Stamp};
use crate::observe::Metrics;
use crate::observe::metrics::ExtensionResult;

/// First wait before retrying a failed extension.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two tries of a failing extension.
pub const MAX_RETRY: Duration = Duration::from_secs(5);
/// Time limit of one extension, ack or nack call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of an ack or a nack before giving up (the lease then lapses by itself).
const SETTLE_TRIES: u32 = 3;

/// What a job sees of its lease: whether it is lost, and until when it is guaranteed.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaseView {
    /// Cancelled once the lease is known to be gone.
    pub lost: CancellationToken,
    /// The lease's guaranteed end, updated after each successful extension.
    pub until: watch::Receiver<Stamp>,
    /// The ack deadline each extension sets.
    pub deadline: Duration,
}

impl LeaseView {
    /// A lease that no queue backs (`taskhost run`): it renews itself every half `deadline`
    /// for as long as the returned token is not cancelled, and is never lost.
    pub fn detached(deadline: Duration) -> (LeaseView, CancellationToken) {
        let (tx, rx) = watch::channel(Stamp::now().plus(deadline));
        let stop = CancellationToken::new();
        let done = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(deadline / 2);
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tick.tick() => { tx.send_replace(Stamp::now().plus(deadline)); }
                }
            }
        });
        let view = LeaseView {
            lost: CancellationToken::new(),
            until: rx,
            deadline,
        };
        (view, stop)
    }

    /// The guaranteed end now.
    pub fn until(&self) -> Stamp {
        *self.until.borrow()
    }
}

struct Shared {
    queue: Queue,
    subscription: String,
    ack_id: String,
    deadline: Duration,
    /// Where extensions and failed calls are counted ([`Lease::observe`]).
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

/// The lease on one pulled message. Ack it, nack it, or drop it (= hand back at once, best
/// effort, in the background).
pub struct Lease {
    shared: Arc<Shared>,
    view: LeaseView,
    keeper: tokio::task::JoinHandle<()>,
    settled: bool,
    /// The nack's delay when the lease is dropped unsettled, unless its token is cancelled
    /// by then ([`Lease::handed_back_on_drop_after`]).
    drop_delay: Option<(Duration, CancellationToken)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("ack_id", &self.shared.ack_id)
            .field("until", &self.view.until())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Starts keeping the lease of `received` (pulled from `subscription` of `queue`),
    /// extending it by `deadline` each time, or by what the server sets when it is asked for
    /// `deadline` ([`Queue::deadline_set`]: Pub/Sub's at most 600 s), which the lease's end
    /// is counted with.
    pub fn start(
        queue: Queue,
        subscription: &str,
        received: &Received,
        deadline: Duration,
    ) -> Lease {
        let deadline = queue.deadline_set(deadline);
        let shared = Arc::new(Shared {
            queue,
            subscription: subscription.to_owned(),
            ack_id: received.ack_id.clone(),
            deadline,
            metrics: std::sync::OnceLock::new(),
        });
        let (tx, rx) = watch::channel(received.leased_until);
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(extend_until_lost(Arc::clone(&shared), tx, lost.clone()));
        Lease {
            shared,
            view: LeaseView {
                lost,
                until: rx,
                deadline,
            },
            keeper,
            settled: false,
            drop_delay: None,
        }
    }

    /// A lease dropped unsettled (its handler panicked) hands its message back after `delay`
    /// instead of at once: what a host fault's hand-back waits, never an immediate
    /// redelivery loop across the workers. Once `at_once` is cancelled (a shutdown, whose
    /// timeout drops the handlers left), it hands it back at once again.
    pub fn handed_back_on_drop_after(
        mut self,
        delay: Duration,
        at_once: CancellationToken,
    ) -> Lease {
        self.drop_delay = Some((delay, at_once));
        self
    }

    /// Counts this lease's extensions (with their lateness) and failed calls in `metrics`.
    pub fn observe(self, metrics: Arc<Metrics>) -> Lease {
        let _ = self.shared.metrics.set(metrics);
        self
    }

    /// The subscription the message was pulled from.
    pub fn subscription(&self) -> &str {
        &self.shared.subscription
    }

    /// The message's ack id.
    pub fn ack_id(&self) -> &str {
        &self.shared.ack_id
    }

    /// What the job sees of this lease.
    pub fn view(&self) -> LeaseView {
        self.view.clone()
    }

    /// Whether the lease is known to be gone.
    pub fn is_lost(&self) -> bool {
        self.view.lost.is_cancelled()
    }

    /// Stops extending and acknowledges (a few tries). `Err`: the ack did not go through;
    /// the message will come back, and the job's stored result absorbs it.
    pub async fn ack(mut self) -> Result<(), QueueError> {
        self.stop();
        let s = Arc::clone(&self.shared);
        let acked = retry(|| async {
            s.queue
                .acknowledge(&s.subscription, std::slice::from_ref(&s.ack_id))
                .await
        })
        .await;
        s.count_error(&acked);
        acked
    }

    /// Stops extending and hands the message back after `delay` (zero: now; the queue
    /// redelivers it, possibly to another worker, counting a delivery attempt). `delay` is
    /// capped at 600 s, Pub/Sub's longest deadline.
    pub async fn nack(mut self, delay: Duration) -> Result<(), QueueError> {
        self.stop();
        nack(&self.shared, delay).await
    }

    fn stop(&mut self) {
        self.settled = true;
        self.keeper.abort();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.keeper.abort();
        let shared = Arc::clone(&self.shared);
        let delay = match &self.drop_delay {
            Some((delay, at_once)) if !at_once.is_cancelled() => *delay,
            _ => Duration::ZERO,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = nack(&shared, delay).await;
            });
        }
    }
}

impl Shared {
    fn count_error<T>(&self, result: &Result<T, QueueError>) {
        if let (Err(e), Some(m)) = (result, self.metrics.get()) {
            m.queue_error(e.kind());
        }
    }

    fn count_extension(&self, result: ExtensionResult, lateness: Option<Duration>) {
        if let Some(m) = self.metrics.get() {
            m.lease_extended(result, lateness);
        }
    }
}

async fn nack(shared: &Shared, delay: Duration) -> Result<(), QueueError> {
    let delay = delay.min(Duration::from_secs(super::MAX_ACK_DEADLINE_SECS.into()));
    let nacked = retry(|| async {
        shared
            .queue
            .modify_ack_deadline(
                &shared.subscription,
                std::slice::from_ref(&shared.ack_id),
                delay,
            )
            .await
            .map(drop)
    })
    .await;
    shared.count_error(&nacked);
    nacked
}

/// Runs `call` up to [`SETTLE_TRIES`] times while it fails transiently, each try bounded by
/// [`CALL_TIMEOUT`].
async fn retry<F, Fut>(call: F) -> Result<(), QueueError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), QueueError>>,
{
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::timeout(CALL_TIMEOUT)),
        };
        match result {
            Err(e) if e.is_transient() && tries < SETTLE_TRIES => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}

/// The keeper task: extends every half deadline until aborted or the lease is lost.
async fn extend_until_lost(
    shared: Arc<Shared>,
    until: watch::Sender<Stamp>,
    lost: CancellationToken,
) {
    let Shared {
        queue,
        subscription,
        ack_id,
        deadline,
        ..
    } = &*shared;
    let ack_ids = std::slice::from_ref(ack_id);
    loop {
        let end = *until.borrow();
        let due = end
            .instant
            .checked_sub(*deadline / 2)
            .unwrap_or(end.instant);
        tokio::time::sleep_until(due).await;
        let mut wait = FIRST_RETRY;
        loop {
            let sent = Stamp::now();
            let Some(left) = end
                .instant
                .checked_duration_since(sent.instant)
                .filter(|d| !d.is_zero())
            else {
                tracing::warn!(
                    subscription,
                    late_us = sent.instant.saturating_duration_since(due).as_micros() as u64,
                    "lease lost: its deadline passed without a successful extension"
                );
                shared.count_extension(ExtensionResult::Lost, None);
                lost.cancel();
                return;
            };
            // A short limit per try: a hung call must not use up the time left for retries.
            let limit = (*deadline / 5)
                .clamp(Duration::from_secs(1), CALL_TIMEOUT)
                .min(left);
            let call = queue.modify_ack_deadline(subscription, ack_ids, *deadline);
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(refused)) if !refused.is_empty() => {
                    tracing::warn!(
                        subscription,
                        "lease lost: the queue refused its extension (the message was handed to someone else)"
                    );
                    shared.count_extension(ExtensionResult::Lost, None);
                    lost.cancel();
                    return;
                }
                Ok(Ok(_)) => {
                    until.send_replace(sent.plus(*deadline));
                    let late = sent.instant.saturating_duration_since(due);
                    shared.count_extension(ExtensionResult::Ok, Some(late));
                    // Exact values for tests/bench/lease_lateness.py (the metric has buckets).
                    tracing::debug!(
                        subscription,
                        late_us = late.as_micros() as u64,
                        "lease extended"
                    );
                    break;
                }
                Ok(Err(e)) if !e.is_transient() => {
                    tracing::warn!(subscription, error = %e, "lease lost: its extension failed permanently");
                    shared.count_error(&Err::<(), _>(e));
                    shared.count_extension(ExtensionResult::Lost, None);
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(subscription, error = %e, retry_in = ?wait, "lease extension failed; retrying");
                    shared.count_error(&Err::<(), _>(e));
                    shared.count_extension(ExtensionResult::Retried, None);
                }
                Err(_) => {
                    tracing::warn!(subscription, retry_in = ?wait, "lease extension timed out; retrying");
                    shared.count_error(&Err::<(), _>(QueueError::timeout(limit)));
                    shared.count_extension(ExtensionResult::Retried, None);
                }
            }
            let left = end
                .instant
                .saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(wait.min(left)).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}
