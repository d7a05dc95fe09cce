//! `taskhost run FILE.wasm --input JSON`: one job locally, no queue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::config::{CacheArgs, LimitArgs, StoreDirArgs};
use super::exit;
use taskhost::checkpoint::Limits;
use taskhost::exec::{Executor, JobBinding, JobEnd};
use taskhost::ids::JobId;
use taskhost::inert::Inert;
use taskhost::queue::lease::LeaseView;
use taskhost::runtime::Runtime;
use taskhost::store::ObjectStore;
use taskhost::store::dir::DirStore;

/// Run one job of a task module locally, resuming from its checkpoint in the store.
///
/// Prints the result document as the last line of stdout. Exit codes: 0 done,
/// 1 the task reported a failure, 3 not a usable task module, 4 the task trapped or hit a
/// limit (its checkpoint is kept: run again to resume), 5 another worker owns the job,
/// 6 storage failed, 7 any other error (a setting, a file), 130 interrupted (checkpoint
/// saved).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The task module (a wasm32-wasip2 component of the taskhost:task world).
    pub module: PathBuf,
    /// The job document (JSON) given to the task as its input.
    #[arg(long)]
    pub input: String,
    #[command(flatten)]
    pub store: StoreDirArgs,
    /// Job id; defaults to the input's "job_id", else "local".
    #[arg(long)]
    pub job_id: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub files: super::config::FileArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub nn: super::nn::NnArgs,
}

pub async fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let job_id = match &args.job_id {
        Some(id) => id.clone(),
        None => serde_json::from_str::<serde_json::Value>(&args.input)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "local".to_owned()),
    };
    let job: JobId = job_id
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid job id: {e}"))?;
    let runtime = Runtime::new(taskhost::runtime::RuntimeConfig {
        nn: args.nn.config(),
        ..args.cache.runtime_config()
    })?;
    let hash = taskhost::ids::ModuleHash::of(&bytes);
    let module = match runtime.prepare(bytes, Some(hash)).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {} is {e}", args.module.display());
            return Ok(ExitCode::from(exit::BAD_MODULE));
        }
    };
    let store = DirStore::open(&args.store.store_dir)?;
    let limits = args.limits.job_limits()?;
    let executor = Executor {
        store,
        runtime,
        worker_id: format!("run-{}", std::process::id()),
        limits,
        checkpoint_limits: Limits::default(),
        file_limits: super::config::file_limits(&args.files)?,
        max_crashes: taskhost::exec::DEFAULT_MAX_CRASHES,
    };
    let cancel = super::shutdown_token();
    // Bound to its work like a worker's job; `run` never discards or upgrades stored work.
    let inputs = match serde_json::from_str::<serde_json::Value>(&args.input) {
        Ok(serde_json::Value::Object(obj)) => taskhost::job::parse_inputs(&obj)
            .map_err(|e| anyhow::anyhow!("the job document's inputs: {e}"))?,
        _ => Default::default(),
    };
    let binding = JobBinding {
        work: taskhost::job::Work::of(&hash, &args.input),
        on_other_work: taskhost::checkpoint::OtherWork::Refuse,
        inputs,
        deletion_cost: None,
    };
    // No queue here: the job's lease renews itself while this process runs.
    let (lease, renewing) = LeaseView::detached(RUN_LEASE);
    let end = executor
        .execute(&job, &module, &args.input, &binding, lease, cancel)
        .await;
    renewing.cancel();
    if end == JobEnd::AlreadyDone {
        let stored = executor.store.get(&taskhost::keys::result(&job)).await?;
        eprintln!("job {job} was already done; its stored result:");
        println!(
            "{}",
            stored.map_or_else(String::new, |o| String::from_utf8_lossy(&o.bytes)
                .into_owned())
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(&job, end))
}

/// The lease `taskhost run` records in the checkpoint header, renewed every half of it: a
/// killed `run` blocks other claimers of the job for at most this long. Each write of the
/// job (an artifact's completion: a copy and an fsync of the whole object on the directory
/// store) must end within what is left of it less twice the skew allowance, 1 to 6 s of a
/// 10 s lease, which a slow disk overran: a minute leaves 26 to 56 s.
const RUN_LEASE: Duration = Duration::from_secs(60);

fn report(job: &JobId, end: JobEnd) -> ExitCode {
    match end {
        JobEnd::AlreadyDone => ExitCode::SUCCESS,
        JobEnd::Done { result, attempt } => {
            eprintln!("job {job} done (attempt {attempt})");
            println!("{result}");
            ExitCode::SUCCESS
        }
        JobEnd::TaskFailed(msg) => {
            eprintln!("error: the task failed: {}", Inert(&msg));
            ExitCode::from(exit::TASK_FAILED)
        }
        JobEnd::Trapped {
            kind,
            message,
            failures,
        } => {
            eprintln!(
                "error: the task stopped ({kind:?}: {}); failure {failures} counted, \
                 checkpoint kept: run again to resume",
                Inert(&message)
            );
            ExitCode::from(exit::TRAPPED)
        }
        JobEnd::Conflict | JobEnd::LeaseLost => {
            eprintln!("error: another worker owns job {job} now; nothing was written");
            ExitCode::from(exit::CONFLICT)
        }
        JobEnd::Stopped(c) => {
            eprintln!(
                "error: job {job} was {} by {} (`taskhost job resume` continues a paused job)",
                if c.action == taskhost::checkpoint::Action::Pause {
                    "paused"
                } else {
                    "cancelled"
                },
                Inert(&c.by)
            );
            ExitCode::from(exit::CONFLICT)
        }
        JobEnd::Busy { owner, .. } => {
            eprintln!("error: job {job} is running on `{owner}` now; try again later");
            ExitCode::from(exit::CONFLICT)
        }
        JobEnd::HostFault(msg) => {
            eprintln!(
                "error: a fault of the host, not the task's; nothing is lost, try again: {msg}"
            );
            ExitCode::from(exit::STORAGE)
        }
        JobEnd::HostPanic(msg) => {
            eprintln!(
                "error: a host function panicked serving the task (a bug of taskhost's, please \
                 report it); the checkpoint is kept: {}",
                Inert(&msg)
            );
            ExitCode::from(exit::ERROR)
        }
        JobEnd::Crashed { crashes, last } => {
            eprintln!(
                "error: job {job}'s last {crashes} runs ended without a clean end and saved \
                 nothing between; not running it again (last failure: {last}); \
                 `taskhost job reset {job}` starts it over"
            );
            ExitCode::from(exit::TRAPPED)
        }
        JobEnd::StorageRepeated { runs, last } => {
            eprintln!(
                "error: the store failed job {job}'s own input or artifact calls in {runs} runs in a row: {last}"
            );
            ExitCode::from(exit::STORAGE)
        }
        JobEnd::OtherWork(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(exit::CONFLICT)
        }
        JobEnd::Unreadable(msg) => {
            eprintln!(
                "error: job {job}'s checkpoint cannot be used: {msg}; running again will not \
                 help: `taskhost job reset {job}` starts it over"
            );
            ExitCode::from(exit::ERROR)
        }
        JobEnd::Cancelled => {
            eprintln!("interrupted: job {job}'s checkpoint is saved; run again to resume");
            ExitCode::from(exit::INTERRUPTED)
        }
        JobEnd::Storage(msg) => {
            eprintln!("error: storage failed, nothing is lost, try again: {msg}");
            ExitCode::from(exit::STORAGE)
        }
    }
}
