//! `taskhost job reset JOB_ID...` (and the subcommands of `job_control`).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::config::StoreArgs;
use taskhost::checkpoint::requeue::Requeue;
use taskhost::checkpoint::{self, ownership};
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::store::{ETag, ObjectStore};
use taskhost::time::now_ms;

/// Manage jobs' stored state.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Delete everything stored for the jobs (checkpoint, result, error, artifacts), so that
    /// their next message starts them from nothing, whatever work it names. Asks first
    /// (`--yes` for scripts). A job that a live worker runs, or that a worker claims while
    /// it is being reset, is left alone.
    Reset(ResetArgs),
    /// Cancel jobs: a worker never starts a cancelled job, and stops a running one within
    /// half an ack deadline (at its next lease extension) without writing anything more.
    /// A job whose result exists stays done. Asks first (`--yes` for scripts).
    Cancel(super::job_control::StopArgs),
    /// Pause jobs: a cancel that keeps the checkpoint; `job resume` continues them.
    Pause(super::job_control::StopArgs),
    /// Continue paused jobs from their checkpoints: clears each pause, then publishes the
    /// job's stored work again (a job that is not paused is published again too: a resume
    /// whose publish failed is redone this way). A cancelled or done job is left alone.
    Resume(super::requeue::RequeueArgs),
    /// Run failed jobs again from their stored work: resets their failure counters (the
    /// checkpoint header's failures, crashes and storage-failed runs; the `error` and
    /// poison records), then publishes them. The checkpoint is kept: a job resumes from it.
    /// A done, cancelled, paused or running job is left alone. (Its dead letter stays:
    /// `dead-letter replay` does the same from the dead letters and removes them.)
    Retry(super::requeue::RequeueArgs),
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// The jobs to reset.
    #[arg(required = true)]
    pub job_ids: Vec<String>,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn main(args: JobArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        JobCommand::Reset(r) => reset(r).await,
        JobCommand::Cancel(a) => super::job_control::stop(a, checkpoint::Action::Cancel).await,
        JobCommand::Pause(a) => super::job_control::stop(a, checkpoint::Action::Pause).await,
        JobCommand::Resume(a) => super::requeue::main(a, Requeue::Resume).await,
        JobCommand::Retry(a) => super::requeue::main(a, Requeue::Retry).await,
    }
}

async fn reset(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let ids = args
        .job_ids
        .iter()
        .map(|s| {
            s.parse::<JobId>()
                .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<JobId>>>()?;
    let store = args.store.open()?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to delete the state of {} job(s) without asking: pass --yes",
                ids.len()
            );
        }
        let names: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        eprint!(
            "Delete the checkpoint, result and error of {} job(s) ({})? [y/N] ",
            ids.len(),
            names.join(", ")
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing deleted");
            return Ok(ExitCode::from(super::exit::DECLINED));
        }
    }
    let mut refused = 0;
    for id in &ids {
        let looked = look(&store, id).await?;
        if let Some(owner) = &looked.running {
            eprintln!(
                "error: job {id} is running on `{owner}` now; not reset (stop it, or wait until its lease ends)"
            );
            refused += 1;
            continue;
        }
        match delete_looked(&store, id, looked).await? {
            Reset::Deleted(deleted) if deleted.is_empty() => println!("{id}: nothing stored"),
            Reset::Deleted(deleted) => println!("{id}: deleted {}", deleted.join(", ")),
            Reset::Changed { deleted } => {
                let before = if deleted.is_empty() {
                    String::new()
                } else {
                    format!(" (deleted before that: {})", deleted.join(", "))
                };
                eprintln!(
                    "error: job {id} changed while it was being reset (a worker claimed it?); \
                     left alone{before}"
                );
                refused += 1;
            }
        }
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::CONFLICT)
    })
}

/// What `reset` read of a job: what it will delete, and only while the checkpoint is still
/// the one read.
#[derive(Debug)]
struct Looked {
    /// The checkpoint's tag as read; `None`: the job had none.
    checkpoint: Option<ETag>,
    /// The owner of a live lease on a job without a result: a worker runs it now.
    running: Option<String>,
    /// The keys that existed, in the order they are deleted (the checkpoint last).
    keys: Vec<(&'static str, String)>,
}

/// Reads what is stored for `id`. An unreadable checkpoint holds no lease: it is deleted
/// like any other (a reset is what such a job needs).
async fn look<S: ObjectStore>(store: &S, id: &JobId) -> anyhow::Result<Looked> {
    let checkpoint = store.get(&keys::checkpoint(id)).await?;
    let header = checkpoint
        .as_ref()
        .and_then(|c| checkpoint::decode(&c.bytes).ok())
        .map(|(h, _)| h);
    let current = header
        .as_ref()
        .is_none_or(checkpoint::Header::outputs_current);
    let done = current && store.exists(&keys::result(id)).await?;
    // A live lease on a job without a result (of its work): a worker runs it now. (A
    // finished job's last lease is left to expire; it holds nothing.)
    let live = |h: &checkpoint::Header| {
        ownership::recorded(h.lease_until_ms, h.lease_period_ms, now_ms())
            == ownership::Recorded::Live
    };
    let running = header.filter(|h| live(h) && !done).map(|h| h.owner);
    // The result first: a reset cut short never leaves a result whose artifacts are gone.
    let mut candidates = vec![
        ("result", keys::result(id)),
        ("manifest", keys::manifest(id)),
        ("error", keys::error(id)),
        ("cancelled", keys::stopped(id, "cancel")),
        ("paused", keys::stopped(id, "pause")),
    ];
    let artifacts = store.list(&keys::artifacts_prefix(id)).await?;
    candidates.extend(artifacts.into_iter().map(|k| ("artifact", k)));
    let mut found = Vec::new();
    for (what, key) in candidates {
        if store.size(&key).await?.is_some() {
            found.push((what, key));
        }
    }
    if checkpoint.is_some() {
        found.push(("checkpoint", keys::checkpoint(id)));
    }
    Ok(Looked {
        checkpoint: checkpoint.map(|c| c.etag),
        running,
        keys: found,
    })
}

/// What [`delete_looked`] did.
#[derive(Debug, PartialEq, Eq)]
enum Reset {
    /// Everything looked at is gone: what there was, by kind.
    Deleted(Vec<&'static str>),
    /// The checkpoint changed (or appeared) since it was read, before `deleted` was all
    /// that was deleted: the job was left alone from then on.
    Changed { deleted: Vec<&'static str> },
}

/// Deletes the keys `look` found, each only while the job's checkpoint is still the one
/// read: a worker that claimed the job since (its claim writes the checkpoint) keeps it.
///
/// The store has no conditional delete, so this is a check (a HEAD of the checkpoint) right
/// before each delete, not an atomic one: a claim landing between the two still loses its
/// checkpoint. That worker's next checkpoint write is then refused (`If-Match` on a missing
/// object): it stops and writes nothing more, as after any conflict. A run that ends before
/// its next checkpoint write (its end needs none) still stores its result.
async fn delete_looked<S: ObjectStore>(
    store: &S,
    id: &JobId,
    looked: Looked,
) -> anyhow::Result<Reset> {
    let checkpoint = keys::checkpoint(id);
    let mut deleted = Vec::new();
    for (what, key) in looked.keys {
        if store.head(&checkpoint).await? != looked.checkpoint {
            return Ok(Reset::Changed { deleted });
        }
        store.delete(&key).await?;
        if deleted.last() != Some(&what) {
            deleted.push(what);
        }
    }
    Ok(Reset::Deleted(deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskhost::checkpoint::{Header, encode};
    use taskhost::store::Precondition;
    use taskhost::store::dir::DirStore;

    async fn put(store: &DirStore, key: &str, bytes: Vec<u8>) -> ETag {
        store.put(key, bytes, Precondition::None).await.unwrap()
    }

    fn header(owner: &str, lease_until_ms: u64) -> Vec<u8> {
        let h = Header {
            owner: owner.into(),
            lease_until_ms,
            nonce: owner.into(),
            ..Header::default()
        };
        encode(&h, Some(b"data"))
    }

    /// A finished job: checkpoint (its lease ended), result, manifest, two artifacts.
    async fn finished(store: &DirStore, id: &JobId) -> ETag {
        put(store, &keys::result(id), b"{}".to_vec()).await;
        put(store, &keys::manifest(id), b"{}".to_vec()).await;
        for name in ["a", "b"] {
            let key = format!("{}{name}", keys::artifacts_prefix(id));
            put(store, &key, b"x".to_vec()).await;
        }
        put(store, &keys::checkpoint(id), header("w1", 1)).await
    }

    #[tokio::test]
    async fn a_reset_deletes_what_it_looked_at() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let id: JobId = "j".parse().unwrap();
        finished(&store, &id).await;
        let looked = look(&store, &id).await.unwrap();
        assert_eq!(looked.running, None);
        // Appears after the look: not looked at, not deleted.
        put(&store, &keys::error(&id), b"late".to_vec()).await;
        assert_eq!(
            delete_looked(&store, &id, looked).await.unwrap(),
            Reset::Deleted(vec!["result", "manifest", "artifact", "checkpoint"])
        );
        assert_eq!(store.list("jobs/").await.unwrap(), vec![keys::error(&id)]);
        // An unreadable checkpoint is no obstacle.
        put(&store, &keys::checkpoint(&id), b"garbage".to_vec()).await;
        let looked = look(&store, &id).await.unwrap();
        assert_eq!(
            delete_looked(&store, &id, looked).await.unwrap(),
            Reset::Deleted(vec!["error", "checkpoint"])
        );
        assert!(store.list("jobs/").await.unwrap().is_empty());
        let looked = look(&store, &id).await.unwrap();
        assert_eq!(
            delete_looked(&store, &id, looked).await.unwrap(),
            Reset::Deleted(vec![])
        );
    }

    #[tokio::test]
    async fn a_job_claimed_since_it_was_read_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::open(tmp.path()).unwrap();
        let id: JobId = "j".parse().unwrap();
        let tag = finished(&store, &id).await;
        store.delete(&keys::result(&id)).await.unwrap();
        let looked = look(&store, &id).await.unwrap();
        assert_eq!(looked.running, None, "its lease ended");
        // A worker claims the job before the reset deletes anything.
        let claim = header("w2", now_ms() + 60_000);
        store
            .put(
                &keys::checkpoint(&id),
                claim.clone(),
                Precondition::Matches(tag),
            )
            .await
            .unwrap();
        assert_eq!(
            delete_looked(&store, &id, looked).await.unwrap(),
            Reset::Changed { deleted: vec![] }
        );
        let stored = store.get(&keys::checkpoint(&id)).await.unwrap().unwrap();
        assert_eq!(stored.bytes, claim);
        assert_eq!(
            store
                .list(&keys::artifacts_prefix(&id))
                .await
                .unwrap()
                .len(),
            2
        );
        // Looked at again, it is running: not reset.
        let looked = look(&store, &id).await.unwrap();
        assert_eq!(looked.running.as_deref(), Some("w2"));

        // A job with no checkpoint when read: one created since is a change too.
        let fresh: JobId = "fresh".parse().unwrap();
        put(&store, &keys::error(&fresh), b"e".to_vec()).await;
        let looked = look(&store, &fresh).await.unwrap();
        put(&store, &keys::checkpoint(&fresh), header("w3", 1)).await;
        assert_eq!(
            delete_looked(&store, &fresh, looked).await.unwrap(),
            Reset::Changed { deleted: vec![] }
        );
        assert!(store.exists(&keys::error(&fresh)).await.unwrap());
    }
}
