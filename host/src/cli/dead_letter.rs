//! `taskhost dead-letter list` and `taskhost dead-letter replay`: the dead-letter
//! subscription read without losing a message (`queue::browse`: held, then handed back), and
//! chosen messages published to the jobs topic again after their jobs' failure counters are
//! reset (`checkpoint::requeue`), then acked off the dead letters.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue};
use super::exit;
use super::requeue::job_ids;
use taskhost::checkpoint::requeue::{Requeue, Requeued, requeue};
use taskhost::ids::{JobId, ModuleHash, ModuleRef};
use taskhost::inert::Inert;
use taskhost::job::JobMessage;
use taskhost::queue::lanes::LaneName;
use taskhost::queue::{IncomingMessage, OutgoingMessage, Queue};

/// Messages read at most by one command.
const DEFAULT_LIMIT: usize = 10_000;
/// The attributes Pub/Sub adds to a message its dead-letter policy forwarded.
const PUBSUB_FORWARDED: &str = "CloudPubSubDeadLetterSource";
const PUBSUB_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// Read and replay the dead letters (the dead-letter topic's subscription).
#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    pub command: DeadLetterCommand,
}

#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; clap's derive wants the args inline"
)]
pub enum DeadLetterCommand {
    /// List the dead-lettered messages: job id, reason, module, attempts, when. Every
    /// message is read, held and handed back: none is lost or consumed.
    List(ListArgs),
    /// Publish dead-lettered jobs to the jobs topic again, their failure counters reset (the
    /// checkpoint header's failures, crashes and storage-failed runs; the `error` and poison
    /// records) so they are not dead-lettered again at once, then remove them from the dead
    /// letters. The checkpoint is kept: a job resumes from it. Asks first with `--all`
    /// (`--yes` for scripts).
    Replay(ReplayArgs),
}

/// Where the dead letters are.
#[derive(Args, Debug)]
pub struct Source {
    #[command(flatten)]
    pub pubsub: PubsubArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Used only by the embedded queue, which creates its subscriptions on first use.
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
    /// Read at most this many messages.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON document per message, one per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: Source,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The jobs whose dead letters to replay.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub job_ids: Vec<String>,
    /// Every dead letter, poison messages without a job id too.
    #[arg(long)]
    pub all: bool,
    /// Run them on this module instead (`sha256:<hex>` or `NAME[:TAG]`, resolved once, now):
    /// each job resumes from its checkpoint on the same input (`upgrade_module`).
    #[arg(long)]
    pub module: Option<ModuleRef>,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub source: Source,
}

pub async fn main(args: DeadLetterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeadLetterCommand::List(a) => list(a).await,
        DeadLetterCommand::Replay(a) => replay(a).await,
    }
}

impl Source {
    async fn connect(&self) -> anyhow::Result<(Queue, String)> {
        let queue = self.pubsub.connect().await?;
        if let Queue::Local(_) = queue {
            ensure_queue(&queue, &self.topics, &self.subscription).await?;
        }
        Ok((
            queue,
            SubscriptionArgs::dead_letter_subscription(&self.topics),
        ))
    }
}

/// One dead letter as `list` shows it.
#[derive(Debug, Serialize)]
struct Letter {
    message_id: String,
    job_id: Option<String>,
    reason: Option<String>,
    module: Option<String>,
    attempts: Option<u32>,
    dead_lettered_ms: Option<u64>,
}

impl Letter {
    fn of(m: &IncomingMessage) -> Letter {
        let doc: Option<serde_json::Value> = serde_json::from_slice(&m.data).ok();
        let module = doc
            .as_ref()
            .and_then(|d| d.get("module")?.as_str().map(str::to_owned))
            .or_else(|| m.attributes.get("module").cloned());
        let reason = m.attributes.get("error").cloned().or_else(|| {
            m.attributes
                .keys()
                .any(|k| k.starts_with(PUBSUB_FORWARDED))
                .then(|| "delivery attempts exhausted (the subscription's policy)".to_owned())
        });
        let attempts = m
            .attributes
            .get("attempts")
            .or_else(|| m.attributes.get(PUBSUB_DELIVERY_COUNT))
            .and_then(|a| a.parse().ok());
        Letter {
            message_id: m.message_id.clone(),
            job_id: JobMessage::job_id_of(&m.data).map(|id| id.to_string()),
            reason,
            module,
            attempts,
            dead_lettered_ms: m.publish_time_ms,
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let (queue, sub) = args.source.connect().await?;
    let mut browse = queue.browse(&sub, args.source.limit).await?;
    let letters: Vec<Letter> = browse.messages().into_iter().map(Letter::of).collect();
    browse.release().await?;
    if args.json {
        for l in &letters {
            let line = serde_json::to_string(l)?;
            println!("{}", taskhost::inert::json(&line));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        println!("no dead letters on {sub}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<20} {:<19} {:>8}  REASON",
        "JOB", "WHEN (UTC)", "MODULE", "ATTEMPTS"
    );
    for l in &letters {
        let module = l.module.as_deref().map_or("-".into(), |m| {
            let short: String = m.chars().take(19).collect();
            short
        });
        println!(
            "{:<24} {:<20} {:<19} {:>8}  {}",
            l.job_id.as_deref().unwrap_or("-"),
            l.dead_lettered_ms.map_or("-".into(), taskhost::time::utc),
            Inert(&module),
            l.attempts.map_or("-".into(), |a| a.to_string()),
            Inert(l.reason.as_deref().unwrap_or("-")),
        );
    }
    println!("{} dead letter(s) on {sub}", letters.len());
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let wanted: BTreeSet<JobId> = job_ids(&args.job_ids)?.into_iter().collect();
    let store = args.store.open()?;
    let module = match &args.module {
        Some(r) => Some(super::module::resolve_ref(&store, r).await?),
        None => None,
    };
    let (queue, sub) = args.source.connect().await?;
    let mut browse = queue.browse(&sub, args.source.limit).await?;
    let chosen: Vec<IncomingMessage> = browse
        .messages()
        .into_iter()
        .filter(|m| {
            args.all || JobMessage::job_id_of(&m.data).is_some_and(|id| wanted.contains(&id))
        })
        .cloned()
        .collect();
    let mut code = ExitCode::SUCCESS;
    let found: BTreeSet<JobId> = chosen
        .iter()
        .filter_map(|m| JobMessage::job_id_of(&m.data))
        .collect();
    for id in wanted.difference(&found) {
        eprintln!("{id}: no dead letter names it");
        code = ExitCode::from(exit::NOT_FOUND);
    }
    if chosen.is_empty() {
        browse.release().await?;
        eprintln!("nothing to replay");
        return Ok(ExitCode::from(exit::NOT_FOUND));
    }
    if args.all && !args.yes {
        let ids: Vec<JobId> = found.iter().cloned().collect();
        let asked =
            super::job_control::confirm(&format!("Replay {} dead letter(s)", chosen.len()), &ids);
        if !matches!(asked, Ok(true)) {
            browse.release().await?;
            asked?;
            eprintln!("nothing changed");
            return Ok(ExitCode::from(exit::DECLINED));
        }
    }
    // Each job's counters are reset once, before anything is published; its lane is the
    // one its stored work names (the default lane when it has none).
    let mut verdicts: BTreeMap<JobId, Requeued> = BTreeMap::new();
    let mut lanes: BTreeMap<JobId, LaneName> = BTreeMap::new();
    for id in &found {
        let verdict = match super::requeue::read_work(&store, id).await {
            Ok(work) => {
                if let Ok(work) = work {
                    lanes.insert(id.clone(), work.lane());
                }
                requeue(&store, id, Requeue::Retry).await
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok(v) => {
                verdicts.insert(id.clone(), v);
            }
            Err(e) => {
                browse.release().await?;
                eprintln!(
                    "error: {id}: storage failed: {e:#}; nothing was replayed (the dead letters are kept; run again)"
                );
                return Ok(ExitCode::from(exit::STORAGE));
            }
        }
    }
    let topic = &args.source.topics.topic_id;
    let mut publish: BTreeMap<String, Vec<OutgoingMessage>> = BTreeMap::new();
    let mut settled: Vec<&str> = Vec::new();
    let mut said = Vec::new();
    for m in &chosen {
        let id = JobMessage::job_id_of(&m.data);
        let name = id
            .as_ref()
            .map_or(format!("message {}", m.message_id), |i| i.to_string());
        match id.as_ref().map(|i| &verdicts[i]) {
            None | Some(Requeued::Ready { .. }) => {
                let lane = id.as_ref().and_then(|i| lanes.get(i));
                let lane_topic =
                    lane.map_or_else(|| topic.clone(), |l| super::requeue::lane_topic(l, topic));
                publish
                    .entry(lane_topic)
                    .or_default()
                    .push(outgoing(m, module.as_ref()));
                settled.push(&m.message_id);
                said.push(format!("{name}: replayed"));
            }
            Some(Requeued::Done) => {
                settled.push(&m.message_id);
                said.push(format!(
                    "{name}: done (its result exists); its dead letter is removed"
                ));
            }
            Some(Requeued::Stopped(c)) => {
                eprintln!(
                    "{name}: {} by a user; left on the dead letters",
                    c.action.as_str()
                );
                code = ExitCode::from(exit::CONFLICT);
            }
            Some(Requeued::Running { owner }) => {
                eprintln!("{name}: running on `{owner}` now; left on the dead letters");
                code = ExitCode::from(exit::CONFLICT);
            }
        }
    }
    // Replayed on another module: recorded first as running it (a module `prune` keeps).
    if let Some(m) = &module {
        let replayed: Vec<&JobId> = found
            .iter()
            .filter(|id| matches!(verdicts.get(*id), Some(Requeued::Ready { .. })))
            .collect();
        if let Err(e) = super::submit::record_module(&store, m, &replayed).await {
            browse.release().await?;
            return Err(e);
        }
    }
    for (topic, messages) in publish {
        if let Err(e) = queue.publish(&topic, messages).await {
            browse.release().await?;
            anyhow::bail!(
                "cannot publish to {topic}: {e}; the dead letters are kept (replaying a job twice is harmless: run again)"
            );
        }
    }
    if let Err(e) = browse.ack(&settled).await {
        eprintln!(
            "warning: replayed, but could not remove them from the dead letters ({e}): they show again, and replaying a job twice is harmless"
        );
    }
    browse.release().await?;
    for line in said {
        println!("{line}");
    }
    Ok(code)
}

/// The dead letter as a job message again: without the dead-letter attributes (ours and
/// Pub/Sub's), on `module` when one is given.
fn outgoing(m: &IncomingMessage, module: Option<&ModuleHash>) -> OutgoingMessage {
    let mut attributes: BTreeMap<String, String> = m
        .attributes
        .iter()
        .filter(|(k, _)| {
            !taskhost::worker::DEAD_LETTER_ATTRIBUTES.contains(&k.as_str())
                && !k.starts_with(PUBSUB_FORWARDED)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let data = match module {
        Some(h) => {
            attributes.insert("module".into(), h.to_string());
            match std::str::from_utf8(&m.data) {
                Ok(text) => taskhost::job::with_module(text, h).into_bytes(),
                Err(_) => m.data.clone(),
            }
        }
        None => m.data.clone(),
    };
    OutgoingMessage { data, attributes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str, attributes: &[(&str, &str)]) -> IncomingMessage {
        IncomingMessage {
            message_id: "7".into(),
            data: data.as_bytes().to_vec(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delivery_attempt: None,
            publish_time_ms: Some(5),
        }
    }

    #[test]
    fn a_dead_letter_is_shown_and_replayed_without_its_dead_letter_attributes() {
        let m = ModuleHash::of(b"m");
        let n = ModuleHash::of(b"n");
        let ours = message(
            r#"{"job_id":"a","steps":3}"#,
            &[
                ("module", &m.to_string()),
                ("error", "it broke"),
                ("original_message_id", "1"),
                ("attempts", "4"),
                ("team", "x"),
            ],
        );
        let l = Letter::of(&ours);
        assert_eq!(l.job_id.as_deref(), Some("a"));
        assert_eq!(l.reason.as_deref(), Some("it broke"));
        assert_eq!(l.module, Some(m.to_string()));
        assert_eq!((l.attempts, l.dead_lettered_ms), (Some(4), Some(5)));

        let again = outgoing(&ours, None);
        assert_eq!(again.data, ours.data, "the job as it was");
        let keys: Vec<&str> = again.attributes.keys().map(String::as_str).collect();
        assert_eq!(keys, ["module", "team"]);
        let moved = outgoing(&ours, Some(&n));
        assert_eq!(moved.attributes["module"], n.to_string());
        let job = JobMessage::parse(&moved.data, &moved.attributes, None).unwrap();
        assert_eq!(job.module, n);
        assert!(
            job.upgrade_module,
            "resumes the same input on the new module"
        );

        // Forwarded by Pub/Sub's own policy; and a poison message that is not JSON.
        let forwarded = message(
            r#"{"job_id":"b","module":"x"}"#,
            &[
                (PUBSUB_DELIVERY_COUNT, "100"),
                ("CloudPubSubDeadLetterSourceSubscription", "s"),
            ],
        );
        let l = Letter::of(&forwarded);
        assert!(l.reason.unwrap().contains("delivery attempts exhausted"));
        assert_eq!((l.attempts, l.module.as_deref()), (Some(100), Some("x")));
        assert!(outgoing(&forwarded, None).attributes.is_empty());
        let poison = message("not json", &[("error", "message data is not JSON")]);
        assert_eq!(Letter::of(&poison).job_id, None);
        let moved = outgoing(&poison, Some(&n));
        assert_eq!(moved.data, b"not json");
        assert_eq!(moved.attributes["module"], n.to_string());
    }
}
