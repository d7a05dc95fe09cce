//! `taskhost job resume` and `taskhost job retry`: a paused or a failed job published again
//! from its stored work (`jobs/<id>/work`), after what stopped it is cleared
//! (`checkpoint::requeue`; docs/design.md §5, "Job control"). Also the publishing that
//! `dead-letter replay` shares.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue};
use super::exit;
use taskhost::checkpoint::requeue::{Requeue, Requeued, requeue};
use taskhost::ids::{JobId, ModuleHash, ModuleRef};
use taskhost::job::StoredWork;
use taskhost::queue::lanes::{Lane, LaneName};
use taskhost::queue::{OutgoingMessage, Queue};
use taskhost::store::any::AnyStore;
use taskhost::store::{ObjectStore, StoreError};

/// Messages per publish call.
const PUBLISH_BATCH: usize = 500;

/// Which jobs to publish again, and where.
#[derive(Args, Debug)]
pub struct RequeueArgs {
    /// The jobs.
    #[arg(required = true)]
    pub job_ids: Vec<String>,
    /// Run them on this module instead (`sha256:<hex>` or a tag `NAME[:TAG]`, resolved
    /// once, now), resuming from their checkpoints on the same input (`upgrade_module`);
    /// their stored work is updated to it.
    #[arg(long)]
    pub module: Option<ModuleRef>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pubsub: PubsubArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Used only by the embedded queue, which creates its subscription on first use.
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
}

/// Parses job ids, naming the one that does not parse.
pub fn job_ids(ids: &[String]) -> anyhow::Result<Vec<JobId>> {
    ids.iter()
        .map(|s| {
            s.parse::<JobId>()
                .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
        })
        .collect()
}

/// `job resume` (`what` = [`Requeue::Resume`]) or `job retry` ([`Requeue::Retry`]).
/// Exit 0 when every job was published; 8 when one has no stored work; 5 when one is done,
/// cancelled, or (retry) paused or running; 6 when the store failed (the jobs before it are
/// published, the rest untouched).
pub async fn main(args: RequeueArgs, what: Requeue) -> anyhow::Result<ExitCode> {
    let ids = job_ids(&args.job_ids)?;
    let store = args.store.open()?;
    let module = match &args.module {
        Some(r) => Some(super::module::resolve_ref(&store, r).await?),
        None => None,
    };
    // Connected first: a queue that cannot be reached changes nothing in the store.
    let queue = args.pubsub.connect().await?;
    let mut ready: Vec<(JobId, StoredWork, Vec<&'static str>)> = Vec::new();
    let mut code = ExitCode::SUCCESS;
    let mut failed: Option<(JobId, StoreError)> = None;
    for id in &ids {
        match prepare(&store, id, what, module.as_ref()).await {
            Ok(Prepared::Ready(work, cleared)) => ready.push((id.clone(), work, cleared)),
            Ok(Prepared::Refused(why, c)) => {
                eprintln!("{id}: {why}; left as it is");
                code = ExitCode::from(c);
            }
            Err(e) => {
                failed = Some((id.clone(), e));
                break;
            }
        }
    }
    // What was cleared is published, whatever failed after it, each job to its own lane;
    // moved to another module, recorded first as running it (a module `prune` keeps).
    if let Some(m) = &module {
        let ids: Vec<&JobId> = ready.iter().map(|(id, _, _)| id).collect();
        if let Err(e) = super::submit::record_module(&store, m, &ids).await {
            // Published all the same (their work names the module); `status` and the
            // module's usage credit them to the module they were submitted on.
            eprintln!("warning: {e:#}: `module prune` may not see that these jobs use {m}");
        }
    }
    let works: Vec<StoredWork> = ready.iter().map(|(_, w, _)| w.clone()).collect();
    if let Queue::Local(_) = queue {
        let mut subscription = args.subscription.clone();
        for work in &works {
            if !subscription.lanes.contains(&work.lane()) {
                subscription.lanes.push(work.lane());
            }
        }
        ensure_queue(&queue, &args.topics, &subscription).await?;
    }
    if let Err(e) = publish(&queue, &args.topics.topic_id, &works).await {
        let names: Vec<&str> = ready.iter().map(|(id, _, _)| id.as_str()).collect();
        anyhow::bail!(
            "{e:#}: {} not published (nothing is lost: run the command again for them)",
            names.join(", ")
        );
    }
    for (id, _, cleared) in &ready {
        let note = match (what, cleared.is_empty()) {
            (Requeue::Resume, true) => " (it was not paused)",
            (Requeue::Retry, true) => " (nothing was recorded against it)",
            _ => "",
        };
        let cleared = if cleared.is_empty() {
            String::new()
        } else {
            format!("cleared {}; ", cleared.join(", "))
        };
        println!("{id}: {cleared}published again{note}");
    }
    if let Some((id, e)) = failed {
        eprintln!(
            "error: {id}: storage failed: {e:#}; it and the jobs after it were not changed or published (run again)"
        );
        return Ok(ExitCode::from(exit::STORAGE));
    }
    Ok(code)
}

/// What [`prepare`] decided for one job.
enum Prepared {
    /// Cleared (what), and its work to publish.
    Ready(StoredWork, Vec<&'static str>),
    /// Not to be published: why, and the exit code that says so.
    Refused(String, u8),
}

/// Reads the job's stored work and clears what stops it ([`requeue`]); with `module`, moves
/// the stored work to it first, and back when the job is not requeued (done, stopped,
/// running): a refused retry changes nothing.
async fn prepare(
    store: &AnyStore,
    id: &JobId,
    what: Requeue,
    module: Option<&ModuleHash>,
) -> Result<Prepared, StoreError> {
    let work = match read_work(store, id).await? {
        Ok(work) => work,
        Err(why) => return Ok(Prepared::Refused(why, exit::NOT_FOUND)),
    };
    let key = taskhost::keys::work(id);
    let (work, original) = match module {
        Some(m) => {
            let moved = work.on_module(m);
            let tag = store
                .put(&key, moved.encode(), taskhost::store::Precondition::None)
                .await?;
            (moved, Some((work, tag)))
        }
        None => (work, None),
    };
    let requeued = requeue(store, id, what).await?;
    if let (false, Some((original, tag))) = (matches!(requeued, Requeued::Ready { .. }), original) {
        // Unless another command rewrote it since.
        let back = taskhost::store::Precondition::Matches(tag);
        match store.put(&key, original.encode(), back).await {
            Ok(_) | Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(match requeued {
        Requeued::Ready { cleared } => Prepared::Ready(work, cleared),
        Requeued::Done => Prepared::Refused("done (its result exists)".into(), exit::CONFLICT),
        Requeued::Stopped(c) => {
            let hint = match c.action {
                taskhost::checkpoint::Action::Pause => "; `job resume` continues it",
                taskhost::checkpoint::Action::Cancel => "",
            };
            Prepared::Refused(
                format!(
                    "{} by {} at {}{hint}",
                    past(c.action),
                    taskhost::inert::Inert(&c.by),
                    taskhost::time::utc(c.at_ms)
                ),
                exit::CONFLICT,
            )
        }
        Requeued::Running { owner } => {
            Prepared::Refused(format!("running on `{owner}` now"), exit::CONFLICT)
        }
    })
}

fn past(action: taskhost::checkpoint::Action) -> &'static str {
    match action {
        taskhost::checkpoint::Action::Cancel => "cancelled",
        taskhost::checkpoint::Action::Pause => "paused",
    }
}

/// The job's stored work: `Ok(Err(why))` when there is none or it is unusable.
pub async fn read_work(
    store: &AnyStore,
    id: &JobId,
) -> Result<Result<StoredWork, String>, StoreError> {
    let key = taskhost::keys::work(id);
    Ok(match store.get(&key).await? {
        None => Err(format!(
            "no stored work ({key}: a job published other than by `taskhost submit`, or before \
             work was stored): `taskhost dead-letter replay {id}` if it was dead-lettered, \
             else submit it again"
        )),
        Some(o) => StoredWork::decode(&o.bytes).map_err(|e| format!("{key}: {e}")),
    })
}

/// Publishes `works`, each to its lane's topic of the jobs topic `topic`, in batches.
pub async fn publish(queue: &Queue, topic: &str, works: &[StoredWork]) -> anyhow::Result<()> {
    let mut by_lane: BTreeMap<LaneName, Vec<OutgoingMessage>> = BTreeMap::new();
    for w in works {
        by_lane.entry(w.lane()).or_default().push(OutgoingMessage {
            data: w.data().as_bytes().to_vec(),
            attributes: w.attributes(),
        });
    }
    for (lane, messages) in by_lane {
        let topic = lane_topic(&lane, topic);
        for chunk in messages.chunks(PUBLISH_BATCH) {
            queue.publish(&topic, chunk.to_vec()).await?;
        }
    }
    Ok(())
}

/// The topic of the lane `lane` of the jobs topic `topic` (the naming rule of
/// [`taskhost::queue::lanes`]).
pub fn lane_topic(lane: &LaneName, topic: &str) -> String {
    Lane::named(lane, topic, "").topic
}
