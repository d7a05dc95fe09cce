//! `taskhost job cancel` and `taskhost job pause`: a user's request to stop jobs, recorded
//! in each job's checkpoint header (docs/design.md §5, "Job control").

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::config::StoreArgs;
use taskhost::checkpoint::control::{self, Requested};
use taskhost::checkpoint::{Action, Control};
use taskhost::ids::{JobId, JobState};
use taskhost::store::any::AnyStore;
use taskhost::time::now_ms;

/// Which jobs to stop, and who asks.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// The jobs to stop.
    #[arg(required_unless_present_any = ["state", "all"], conflicts_with_all = ["state", "all"])]
    pub job_ids: Vec<String>,
    /// Every job in this state (queued, running or waiting), as `status` lists it.
    #[arg(long, value_parser = stoppable)]
    pub state: Option<JobState>,
    /// Every job that is queued, running or waiting.
    #[arg(long, conflicts_with = "state")]
    pub all: bool,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    /// Who asks, as `status` shows it.
    #[arg(long, env = "USER", default_value = "unknown")]
    pub by: String,
    /// In the selection by state, a checkpoint written within this many seconds is a
    /// running job's (as `status`).
    #[arg(long, env = "ACK_DEADLINE_SECONDS", default_value_t = taskhost::queue::DEFAULT_ACK_DEADLINE_SECS)]
    pub ack_deadline_seconds: u32,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn stoppable(s: &str) -> Result<JobState, String> {
    match s.parse::<JobState>()? {
        st @ (JobState::Queued | JobState::Running | JobState::Waiting) => Ok(st),
        other => Err(format!(
            "{other} jobs cannot be stopped (queued, running or waiting)"
        )),
    }
}

/// Records `action` for the jobs `args` names; exit 0 when every one is recorded (or was),
/// 5 when one was done, 6 when the store failed (the jobs before it are recorded; the store
/// is waited for as long as its client's attempt timeout, so a short outage only delays it).
pub async fn stop(args: StopArgs, action: Action) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let ids = select(&store, &args).await?;
    let verb = match action {
        Action::Cancel => "Cancel",
        Action::Pause => "Pause",
    };
    if ids.is_empty() {
        eprintln!("no job to {}", action.as_str());
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirm(&format!("{verb} {} job(s)", ids.len()), &ids)? {
        eprintln!("nothing changed");
        return Ok(ExitCode::from(super::exit::DECLINED));
    }
    let record = Control {
        action,
        by: args.by.clone(),
        at_ms: now_ms(),
    };
    let mut finished = 0;
    for (i, id) in ids.iter().enumerate() {
        let requested = match control::request(&store, id, &record).await {
            Ok(requested) => requested,
            Err(e) => {
                // Loud, never silent: the command stops here, and says what is not recorded.
                let rest = ids.len() - i - 1;
                let after = if rest > 0 {
                    format!(", nor for the {rest} job(s) after it")
                } else {
                    String::new()
                };
                eprintln!(
                    "error: {id}: storage failed: {e:#}; its {} is not recorded, or only in \
                     part{after} (running the command again is safe)",
                    action.as_str()
                );
                return Ok(ExitCode::from(super::exit::STORAGE));
            }
        };
        match requested {
            Requested::Recorded {
                done_since: true, ..
            }
            | Requested::AlreadyDone => {
                println!("{id}: done (its result exists); left as it is");
                finished += 1;
            }
            Requested::Recorded { running: true, .. } => {
                println!(
                    "{id}: {} recorded; its worker stops it at its next lease extension",
                    action.as_str()
                )
            }
            Requested::Recorded { .. } => println!("{id}: {} recorded", action.as_str()),
            Requested::AlreadyRecorded(c) => {
                println!(
                    "{id}: already {} by {} at {} ms",
                    c.action.as_str(),
                    c.by,
                    c.at_ms
                )
            }
        }
    }
    Ok(if finished == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::CONFLICT)
    })
}

/// The jobs named, or those in the state asked for (from `status`'s listing).
async fn select(store: &AnyStore, args: &StopArgs) -> anyhow::Result<Vec<JobId>> {
    if !args.job_ids.is_empty() {
        return args
            .job_ids
            .iter()
            .map(|s| {
                s.parse::<JobId>()
                    .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
            })
            .collect();
    }
    let window = Duration::from_secs(u64::from(args.ack_deadline_seconds.max(1)) + 1);
    let scan = taskhost::status::scan(store).await?;
    let (_, ids) = scan.select(window, args.state);
    Ok(ids
        .into_iter()
        .filter(|id| {
            let st = scan.jobs[*id].state(scan.now_ms, window);
            matches!(st, JobState::Queued | JobState::Running | JobState::Waiting)
        })
        .cloned()
        .collect())
}

/// Asks on the terminal; refuses without one.
pub fn confirm(what: &str, ids: &[JobId]) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {} without asking: pass --yes",
            what.to_lowercase()
        );
    }
    let shown: Vec<&str> = ids.iter().take(10).map(JobId::as_str).collect();
    let more = if ids.len() > 10 { ", ..." } else { "" };
    eprint!("{what} ({}{more})? [y/N] ", shown.join(", "));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
