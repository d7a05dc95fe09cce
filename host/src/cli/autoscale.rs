//! `taskhost autoscale`: sets a SaladCloud container group's replicas to what the backlog
//! needs, once (`--once`, for cron) or every `--period`. The backlog comes from taskhost's own
//! records (`status::scan`: the listing and the `submitted/` batch records), the decision from
//! `salad::autoscale::decide`, the change goes through SaladCloud's public API
//! (`salad::api::SaladApi`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::config::{CacheArgs, StoreArgs};
use super::exit;
use taskhost::ids::JobState;
use taskhost::salad::api::{
    ApiConfig, ApiKey, DEFAULT_API_TIMEOUT, DEFAULT_API_URL, Name, SaladApi,
};
use taskhost::salad::autoscale::{
    self, Action, Backlog, DEFAULT_PERIOD, DEFAULT_QUIET, Decision, Memory, Policy,
};
use taskhost::status;
use taskhost::store::any::AnyStore;

/// Set a SaladCloud container group's replicas to what the backlog needs.
///
/// The backlog is the jobs in taskhost's own records that want a slot (queued, running,
/// waiting), as `taskhost status` counts them. Replicas = ceil(backlog / --slots-per-replica),
/// between --min and --max; more are set at once, fewer only once the need has stayed lower
/// for --quiet-period (then the highest need of that period); a need of 0 stops the group and
/// jobs appearing start it. Runs every --period until Ctrl-C/SIGTERM, or once with --once
/// (the quiet period is then kept in --state-file between runs). The API key comes from
/// SALAD_API_KEY and is never printed.
#[derive(Args, Debug)]
pub struct AutoscaleArgs {
    /// The SaladCloud organization.
    #[arg(long, env = "SALAD_ORGANIZATION")]
    pub organization: String,
    /// The SaladCloud project.
    #[arg(long, env = "SALAD_PROJECT")]
    pub project: String,
    /// The container group running the workers.
    #[arg(long, env = "SALAD_CONTAINER_GROUP")]
    pub container_group: String,
    /// SaladCloud API key (set it in the environment: flags show up in `ps`).
    #[arg(long, env = "SALAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<super::config::Secret>,
    /// SaladCloud's public API.
    #[arg(long, env = "SALAD_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// Jobs one replica runs at once: the workers' WORKER_SLOTS.
    #[arg(long, env = "WORKER_SLOTS")]
    pub slots_per_replica: u32,
    /// Fewest replicas; 0 lets the group be stopped when there is no work.
    #[arg(long, env = "AUTOSCALE_MIN", default_value_t = 0)]
    pub min: u32,
    /// Most replicas (1..=500).
    #[arg(long, env = "AUTOSCALE_MAX")]
    pub max: u32,
    /// Seconds a lower need must last before the group shrinks.
    #[arg(long = "quiet-period", env = "AUTOSCALE_QUIET_SECONDS", default_value_t = DEFAULT_QUIET.as_secs())]
    pub quiet_seconds: u64,
    /// Seconds between rounds (without --once).
    #[arg(long = "period", env = "AUTOSCALE_PERIOD_SECONDS", default_value_t = DEFAULT_PERIOD.as_secs())]
    pub period_seconds: u64,
    /// One round, then exit (for cron): 0 done, 7 the store or the API failed.
    #[arg(long)]
    pub once: bool,
    /// Print the decision, change nothing (reads the group; writes no state).
    #[arg(long)]
    pub dry_run: bool,
    /// Where the quiet period is remembered between runs. Default:
    /// `<cache dir>/autoscale/<organization>.<project>.<container group>.json`.
    #[arg(long, env = "AUTOSCALE_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// A checkpoint written within this many seconds is a running job's (as `status`).
    #[arg(long, env = "ACK_DEADLINE_SECONDS", default_value_t = taskhost::queue::DEFAULT_ACK_DEADLINE_SECS)]
    pub ack_deadline_seconds: u32,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn main(args: AutoscaleArgs) -> anyhow::Result<ExitCode> {
    let policy = Policy {
        slots_per_replica: args.slots_per_replica,
        min: args.min,
        max: args.max,
        quiet: Duration::from_secs(args.quiet_seconds),
    };
    if let Err(why) = policy.check() {
        eprintln!("error: {why}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    let api = match api(&args) {
        Ok(api) => api,
        Err(why) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(exit::ERROR));
        }
    };
    let store = args.store.open()?;
    let state_file = args.state_file.clone().or_else(|| {
        args.cache.dir().map(|d| {
            d.join("autoscale").join(format!(
                "{}.{}.{}.json",
                args.organization, args.project, args.container_group
            ))
        })
    });
    // One round a run: the quiet period lives only in the state file between runs, and
    // without it no run would ever see a quiet period end (never scaling down or stopping).
    if args.once && !args.dry_run && state_file.is_none() {
        eprintln!(
            "error: autoscale --once keeps the quiet period in a state file between runs, and \
             there is nowhere to keep it: set AUTOSCALE_STATE_FILE (or TASKHOST_CACHE_DIR)"
        );
        return Ok(ExitCode::from(exit::ERROR));
    }
    let window = status::running_window(args.ack_deadline_seconds);
    let mut memory = state_file.as_deref().map(read_state).unwrap_or_default();
    let shutdown = super::shutdown_token();
    loop {
        match round(&store, &api, &policy, window, &memory, args.dry_run).await {
            Ok(kept) => {
                if !args.dry_run && kept != memory {
                    if let Some(path) = &state_file
                        && let Err(e) = write_state(path, &kept)
                    {
                        if args.once {
                            // The next run would start the quiet period over: say so.
                            eprintln!(
                                "error: cannot keep the autoscaling state in {}: {e} (without \
                                 it, later runs never scale down)",
                                path.display()
                            );
                            return Ok(ExitCode::from(exit::ERROR));
                        }
                        tracing::warn!(file = %path.display(), "cannot keep the autoscaling state: {e}");
                    }
                    memory = kept;
                }
            }
            Err(e) => {
                if args.once {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(exit::ERROR));
                }
                tracing::warn!("autoscale round failed, trying again next period: {e}");
            }
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(args.period_seconds.max(1))) => {}
        }
    }
}

fn api(args: &AutoscaleArgs) -> Result<SaladApi, String> {
    let key = args.api_key.as_ref().map(|k| k.expose().to_owned()).ok_or(
        "SALAD_API_KEY is not set: an API key of the organization (SaladCloud portal, API Access)",
    )?;
    let config = ApiConfig {
        base_url: args.api_url.clone(),
        organization: Name::parse("SALAD_ORGANIZATION", &args.organization)
            .map_err(|e| e.to_string())?,
        project: Name::parse("SALAD_PROJECT", &args.project).map_err(|e| e.to_string())?,
        container_group: Name::parse("SALAD_CONTAINER_GROUP", &args.container_group)
            .map_err(|e| e.to_string())?,
        api_key: ApiKey::new(key).map_err(|e| e.to_string())?,
        timeout: DEFAULT_API_TIMEOUT,
    };
    SaladApi::new(&config).map_err(|e| e.to_string())
}

/// One round: count, read the group, decide, act (unless `dry_run`), print one line. `Ok`:
/// the memory to keep.
async fn round(
    store: &AnyStore,
    api: &SaladApi,
    policy: &Policy,
    window: Duration,
    memory: &Memory,
    dry_run: bool,
) -> anyhow::Result<Memory> {
    let scan = status::scan(store).await?;
    let (counts, _) = scan.select(window, None);
    let backlog = Backlog {
        queued: counts.queued as u64,
        running: counts.running as u64,
        waiting: counts.waiting as u64,
    };
    let group = api.group().await?;
    let decision = autoscale::decide(policy, &backlog, &group, memory, scan.now_ms);
    println!("{}", line(&backlog, policy, &group, &decision, dry_run));
    if dry_run {
        return Ok(*memory);
    }
    match decision.action {
        Action::Hold => {}
        Action::Scale { to, .. } => api.set_replicas(to).await?,
        Action::Start { replicas } => {
            if group.replicas != replicas {
                api.set_replicas(replicas).await?;
            }
            api.start().await?;
        }
        Action::Stop => api.stop().await?,
    }
    Ok(decision.memory)
}

fn line(
    backlog: &Backlog,
    policy: &Policy,
    group: &autoscale::Group,
    d: &Decision,
    dry_run: bool,
) -> String {
    let state = if group.started {
        format!("started with {} replica(s)", group.replicas)
    } else {
        "stopped".to_owned()
    };
    let action = match d.action {
        Action::Hold => "hold".to_owned(),
        Action::Scale { from, to } => format!("scale {from} -> {to}"),
        Action::Start { replicas } => format!("start with {replicas} replica(s)"),
        Action::Stop => "stop".to_owned(),
    };
    format!(
        "autoscale: backlog {} ({} {}, {} {}, {} {}), {} slot(s) per replica: need {}; group {state}: {action} ({}){}",
        backlog.total(),
        backlog.queued,
        JobState::Queued,
        backlog.running,
        JobState::Running,
        backlog.waiting,
        JobState::Waiting,
        policy.slots_per_replica,
        d.need,
        d.why,
        if dry_run {
            " [dry run: nothing changed]"
        } else {
            ""
        },
    )
}

fn read_state(path: &Path) -> Memory {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the state file atomically (a temporary file renamed over it).
fn write_state(path: &Path, memory: &Memory) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), serde_json::to_vec(memory)?)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
