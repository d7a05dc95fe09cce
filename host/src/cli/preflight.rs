//! The worker's startup checks: what would otherwise fail every job. The store can be
//! written (a probe object, written then deleted); on Pub/Sub, every lane's subscription and the
//! dead-letter topic exist and the worker may publish to the latter (IAM, where the server
//! can tell).
//!
//! A store or queue that does not answer is waited for (every 5 s). A misconfiguration is one
//! sentence: by default the worker stays up and not ready (`/readyz` says the sentence),
//! logs it once a minute, rechecks with backoff ([`FIRST_RECHECK`] doubling to
//! [`MAX_RECHECK`]) and starts by itself once it is fixed. On SaladCloud an exit would be a
//! crash loop that burns nodes (a node where the container exited non-zero is not given to
//! the workload again), and the fleet would recover from the fix only by being redeployed.
//! `--exit-on-misconfig` exits with the sentence instead (for scripts).

use std::time::{Duration, Instant};

use taskhost::observe::Health;
use taskhost::queue::Queue;
use taskhost::queue::lanes::Lanes;
use taskhost::store::ErrorKind;
use taskhost::store::any::AnyStore;
use tokio_util::sync::CancellationToken;

/// The first recheck of a misconfiguration: 1 s after it was found.
pub const FIRST_RECHECK: Duration = Duration::from_secs(1);
/// The longest wait between rechecks of a misconfiguration: 30 s.
pub const MAX_RECHECK: Duration = Duration::from_secs(30);
/// How often a misconfiguration that persists is logged again: once a minute.
pub const MISCONFIG_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The wait before asking a store or queue that did not answer again: 5 s.
const UNANSWERED_RETRY: Duration = Duration::from_secs(5);

/// What the worker checks before its first pull.
pub struct Checks<'a> {
    pub store: &'a AnyStore,
    pub queue: &'a Queue,
    /// The lanes whose subscriptions must exist.
    pub lanes: &'a Lanes,
    pub dead_letter_topic: &'a str,
    /// The probe object's key (`keys::probe`).
    pub probe_key: &'a str,
}

/// Why a check did not pass.
enum Problem {
    /// The store or the queue did not answer: waited for.
    Unanswered(String),
    /// A setting, a missing resource or a refused permission: one sentence.
    Misconfigured(String),
}

/// Runs the checks until they pass (`Ok(true)`) or `shutdown` comes first (`Ok(false)`).
/// `Err(the sentence)`: a misconfiguration, with `exit_on_misconfig` set.
pub async fn preflight(
    checks: &Checks<'_>,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut recheck = FIRST_RECHECK;
    let mut logged: Option<(String, Instant)> = None;
    loop {
        let wait = match check(checks).await {
            Ok(()) => {
                if let Some(h) = health {
                    h.set_misconfigured(None);
                }
                if logged.is_some() {
                    tracing::info!("the misconfiguration is fixed: starting");
                }
                return Ok(true);
            }
            Err(Problem::Unanswered(why)) => {
                tracing::warn!("{why}; taking no job until it does (retrying in 5 s)");
                UNANSWERED_RETRY
            }
            Err(Problem::Misconfigured(sentence)) => {
                if exit_on_misconfig {
                    anyhow::bail!(sentence);
                }
                if let Some(h) = health {
                    h.set_misconfigured(Some(sentence.clone()));
                }
                let due = logged.as_ref().is_none_or(|(last, at)| {
                    *last != sentence || at.elapsed() >= MISCONFIG_LOG_INTERVAL
                });
                if due {
                    tracing::error!(
                        "{sentence} (not ready; rechecking, and starting by itself once fixed)"
                    );
                    logged = Some((sentence, Instant::now()));
                }
                let wait = recheck;
                recheck = (recheck * 2).min(MAX_RECHECK);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round of the checks.
async fn check(c: &Checks<'_>) -> Result<(), Problem> {
    match taskhost::store::probe(c.store, c.probe_key).await {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            return Err(Problem::Unanswered(format!(
                "the store does not answer ({e})"
            )));
        }
        Err(e) => {
            // A missing bucket and a refused key say themselves what to check.
            let check = match e.kind() {
                ErrorKind::NotFound | ErrorKind::AccessDenied => "",
                _ => {
                    " (check R2_BUCKET_NAME, R2_S3_ENDPOINT_URL and that the R2 token may read and write the bucket)"
                }
            };
            return Err(Problem::Misconfigured(format!(
                "cannot write to the store, so no job can run: {e}{check}"
            )));
        }
    }
    let Queue::PubSub(pubsub) = c.queue else {
        return Ok(());
    };
    let queue_error = |e: taskhost::queue::pubsub::PubsubError| {
        if e.is_transient() {
            Problem::Unanswered(format!("Pub/Sub does not answer ({e})"))
        } else {
            Problem::Misconfigured(e.to_string())
        }
    };
    for lane in c.lanes.iter() {
        let subscription = &lane.subscription;
        let Some(facts) = pubsub
            .lookup_subscription(subscription)
            .await
            .map_err(queue_error)?
        else {
            let set = if lane.name.is_default() {
                "or set SUBSCRIPTION_ID".to_owned()
            } else {
                format!("with LANES naming `{}`", lane.name)
            };
            return Err(Problem::Misconfigured(format!(
                "the subscription `{subscription}` does not exist: run `taskhost setup` ({set})"
            )));
        };
        if facts.dead_letter_policy == Some(false) {
            tracing::warn!(
                "the subscription `{subscription}` has no dead-letter policy, so Pub/Sub counts no \
                 deliveries: failing jobs are still bounded by the worker's own counts (MAX_FAILURES, \
                 MAX_CRASHES), but `taskhost setup` gives it one"
            );
        }
    }
    let dead_letter_topic = c.dead_letter_topic;
    if !pubsub
        .topic_exists(dead_letter_topic)
        .await
        .map_err(queue_error)?
    {
        return Err(Problem::Misconfigured(format!(
            "the dead-letter topic `{dead_letter_topic}` does not exist, so failed jobs could not be set aside: \
             run `taskhost setup` (or set DEAD_LETTER_TOPIC_ID)"
        )));
    }
    if pubsub
        .may_publish(dead_letter_topic)
        .await
        .map_err(queue_error)?
        == Some(false)
    {
        return Err(Problem::Misconfigured(format!(
            "the worker's credentials may not publish to the dead-letter topic `{dead_letter_topic}`, \
             so failed jobs could not be set aside: grant its service account \
             roles/pubsub.publisher on that topic"
        )));
    }
    Ok(())
}
