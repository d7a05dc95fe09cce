//! `taskhost job reset JOB_ID...`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::config::StoreArgs;
use crate::checkpoint::{self, now_ms};
use crate::ids::JobId;
use crate::keys;
use crate::store::ObjectStore;

/// Manage jobs' stored state.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Delete everything stored for the jobs (checkpoint, result, error), so that their next
    /// message starts them from nothing, whatever work it names. Asks first (`--yes` for
    /// scripts). A job that a live worker runs is left alone.
    Reset(ResetArgs),
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
            return Ok(ExitCode::from(1));
        }
    }
    let mut refused = 0;
    for id in &ids {
        // A live lease on a job without a result: a worker runs it now. (A finished job's
        // last lease is left to expire; it holds nothing.)
        if let Some(h) = checkpoint::peek(&store, id).await?
            && h.lease_until_ms > now_ms()
            && !store.exists(&keys::result(id)).await?
        {
            eprintln!(
                "error: job {id} is running on `{}` now; not reset (stop it, or wait until its lease ends)",
                h.owner
            );
            refused += 1;
            continue;
        }
        // The result first: a reset cut short never leaves a result whose artifacts are gone.
        let mut deleted = Vec::new();
        let artifacts = store.list(&keys::artifacts_prefix(id)).await?;
        let mut keys = vec![
            ("result", keys::result(id)),
            ("manifest", keys::manifest(id)),
            ("error", keys::error(id)),
        ];
        keys.extend(artifacts.into_iter().map(|k| ("artifact", k)));
        keys.push(("checkpoint", keys::checkpoint(id)));
        for (what, key) in keys {
            if store.size(&key).await?.is_some() {
                store.delete(&key).await?;
                if deleted.last() != Some(&what) {
                    deleted.push(what);
                }
            }
        }
        if deleted.is_empty() {
            println!("{id}: nothing stored");
        } else {
            println!("{id}: deleted {}", deleted.join(", "));
        }
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
