//! The worker's startup checks: what would otherwise fail every job. Every setting is in
//! range (checked by `worker.rs` before anything else: [`bad_setting`]); the store can be
//! written (a probe object, written then deleted); a `DEFAULT_MODULE` given as a tag exists
//! (it is resolved here, once); on Pub/Sub, every lane's subscription and the dead-letter
//! topic exist and the worker may publish to the latter (IAM, where the server can tell).
//! The node's own checks (the cache directory, the compile time) are in `selfcheck`.
//!
//! A store or queue that does not answer is waited for (every 5 s). A misconfiguration is one
//! sentence, waited for (not ready, `/readyz` says the sentence) or an exit with
//! `--exit-on-misconfig`, as [`Misconfig`] decides: the one rule, which the receive loop
//! follows too for a lane whose pulls fail for good.

use std::future::Future;
use std::time::Duration;

use taskhost::ids::{ModuleHash, ModuleRef};
use taskhost::observe::Health;
use taskhost::queue::Queue;
use taskhost::queue::lanes::Lanes;
use taskhost::store::ErrorKind;
use taskhost::store::any::AnyStore;
use taskhost::worker::misconfig::Misconfig;
use tokio_util::sync::CancellationToken;

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
    /// `DEFAULT_MODULE`, resolved by the checks.
    pub default_module: Option<&'a ModuleRef>,
}

/// What the checks found once they passed.
#[derive(Debug)]
pub struct Passed {
    /// `DEFAULT_MODULE`'s hash (a tag resolved once, now).
    pub default_module: Option<ModuleHash>,
}

/// Why a check did not pass.
enum Problem {
    /// The store or the queue did not answer: waited for.
    Unanswered(String),
    /// A setting, a missing resource or a refused permission: one sentence.
    Misconfigured(String),
}

/// Runs the checks until they pass (`Ok(Some(..))`) or `shutdown` comes first (`Ok(None)`).
/// `Err(the sentence)`: a misconfiguration, with `exit_on_misconfig` set.
pub async fn preflight(
    checks: &Checks<'_>,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Passed>> {
    wait_for(|| check(checks), exit_on_misconfig, health, shutdown).await
}

/// A setting the worker cannot run with (`sentence` names it, its value and what it may
/// be): a misconfiguration like the others, though only a restart with it fixed ends it.
/// `Ok(())` once `shutdown` comes; `Err(the sentence)` with `exit_on_misconfig` set.
pub async fn bad_setting(
    sentence: String,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let problem = || async { Err::<(), _>(Problem::Misconfigured(sentence.clone())) };
    wait_for(problem, exit_on_misconfig, health, shutdown).await?;
    Ok(())
}

/// Connects to the queue (`pubsub`'s settings), waiting as for a misconfiguration while that
/// fails (an unreadable or unusable credentials file, an emulator address that does not
/// parse, a queue file that cannot be opened: alike on every node, where an exit would be
/// a crash loop), retried with the same backoff in case it mends. `Ok(None)`: `shutdown`
/// came first. `Err(the sentence)`: with `exit_on_misconfig` set.
pub async fn connect_queue(
    pubsub: &super::config::PubsubArgs,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Queue>> {
    let connect = || async {
        pubsub
            .connect()
            .await
            .map_err(|e| Problem::Misconfigured(format!("cannot connect to the queue: {e:#}")))
    };
    wait_for(connect, exit_on_misconfig, health, shutdown).await
}

/// Sets the embedded queue up (its topics and subscriptions; `setup` is not needed for it),
/// waiting as for a misconfiguration while that fails (a subscription of another topic, a
/// queue file that cannot be written), retried with the same backoff in case it mends.
/// `Ok(None)`: `shutdown` came first. `Err(the sentence)`: with `exit_on_misconfig` set.
pub async fn ensure_embedded_queue(
    queue: &Queue,
    topics: &super::config::TopicArgs,
    subscription: &super::config::SubscriptionArgs,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<()>> {
    let ensure = || async {
        super::config::ensure_queue(queue, topics, subscription)
            .await
            .map(drop)
            .map_err(|e| Problem::Misconfigured(format!("cannot set up the embedded queue: {e:#}")))
    };
    wait_for(ensure, exit_on_misconfig, health, shutdown).await
}

/// Runs `check` until it passes (`Ok(Some(..))`) or `shutdown` comes first (`Ok(None)`),
/// waiting for what does not answer and for a misconfiguration as [`Misconfig`] says.
async fn wait_for<T, F, Fut>(
    mut check: F,
    exit_on_misconfig: bool,
    health: Option<&Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Problem>>,
{
    let mut misconfig = Misconfig::new(exit_on_misconfig);
    loop {
        let wait = match check().await {
            Ok(passed) => {
                if let Some(h) = health {
                    h.set_misconfigured(None);
                }
                misconfig.fixed("starting");
                return Ok(Some(passed));
            }
            Err(Problem::Unanswered(why)) => {
                tracing::warn!("{why}; taking no job until it does (retrying in 5 s)");
                UNANSWERED_RETRY
            }
            Err(Problem::Misconfigured(sentence)) => {
                if let Some(h) = health {
                    h.set_misconfigured(Some(sentence.clone()));
                }
                misconfig.found(&sentence).map_err(anyhow::Error::msg)?
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round of the checks.
async fn check(c: &Checks<'_>) -> Result<Passed, Problem> {
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
    let default_module = match c.default_module {
        None => None,
        Some(r) => Some(default_module(c.store, r).await?),
    };
    let passed = Passed { default_module };
    let Queue::PubSub(pubsub) = c.queue else {
        return Ok(passed);
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
    Ok(passed)
}

/// `DEFAULT_MODULE` resolved (a tag's hash is logged; a hash is taken as it is: a job finds
/// it missing the usual way). A tag that does not exist (yet) is a misconfiguration:
/// waited for, like the others.
async fn default_module(store: &AnyStore, r: &ModuleRef) -> Result<ModuleHash, Problem> {
    use taskhost::registry::{self, RegistryError};
    match registry::resolve(store, r).await {
        Ok(hash) => {
            if let ModuleRef::Tag(t) = r {
                tracing::info!(tag = %t, module = %hash, "DEFAULT_MODULE resolved once, at start: jobs that name no module run this hash");
            }
            Ok(hash)
        }
        Err(RegistryError::Storage(e)) if e.is_transient() => Err(Problem::Unanswered(format!(
            "the store does not answer ({e})"
        ))),
        Err(RegistryError::NoSuchTag(t)) => Err(Problem::Misconfigured(format!(
            "DEFAULT_MODULE {t}: no module is tagged {t}, so jobs that name no module could not run: \
             push one with `taskhost module push FILE --tag {t}` (or tag one with `taskhost module tag`)"
        ))),
        Err(e) => Err(Problem::Misconfigured(format!("DEFAULT_MODULE {r}: {e}"))),
    }
}
