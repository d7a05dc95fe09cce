//! `taskhost worker`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue};
use crate::checkpoint::Limits;
use crate::exec::Executor;
use crate::ids::ModuleHash;
use crate::queue::Queue;
use crate::runtime::{DEFAULT_MEMORY_LIMIT, JobLimits, Runtime, RuntimeConfig};
use crate::worker::{self, DEFAULT_MAX_FAILURES, DEFAULT_SHUTDOWN_TIMEOUT, WorkerConfig};

/// Lease jobs from the subscription and run them, WORKER_SLOTS at a time, until SIGTERM.
///
/// Pulls only as many messages as it has free slots, and extends each lease every half
/// ACK_DEADLINE_SECONDS while its job runs.
///
/// On SIGTERM (or Ctrl-C): stops pulling at once, stops running tasks at their next yield,
/// flushes their checkpoints (released, so another worker may resume them at once), hands
/// their messages back, and exits 0 within SHUTDOWN_TIMEOUT_SECONDS. A second signal exits at
/// once (code 130).
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pubsub: PubsubArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Jobs run at once (default: the number of CPUs).
    #[arg(long, env = "WORKER_SLOTS")]
    pub slots: Option<usize>,
    /// Trapped runs (panic, fuel, memory, timeout) after which a job is dead-lettered.
    #[arg(long, env = "MAX_FAILURES", default_value_t = DEFAULT_MAX_FAILURES)]
    pub max_failures: u32,
    /// Module for messages that name none (sha256:<hex>).
    #[arg(long, env = "DEFAULT_MODULE")]
    pub default_module: Option<ModuleHash>,
    /// Memory limit per task in MiB.
    #[arg(long, env = "TASK_MEMORY_MB", default_value_t = (DEFAULT_MEMORY_LIMIT >> 20) as u64)]
    pub memory_mb: u64,
    /// Fuel budget per run (a CPU cap; about one unit per wasm instruction); unlimited if unset.
    #[arg(long, env = "TASK_FUEL")]
    pub fuel: Option<u64>,
    /// Wall-clock limit per run in seconds; unlimited if unset.
    #[arg(long, env = "TASK_TIMEOUT_SECONDS")]
    pub timeout_secs: Option<f64>,
    /// Longest time between SIGTERM and exit, in seconds; what is not flushed by then is
    /// redone from the last checkpoint elsewhere (never a wrong result).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    pub shutdown_timeout_secs: f64,
}

pub async fn main(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // First: as a container's PID 1 a SIGTERM without a handler would be ignored.
    let shutdown = super::shutdown_token();
    let store = args.store.open()?;
    let queue = args.pubsub.connect().await?;
    if let Queue::Local(_) = queue {
        // The embedded queue needs no setup step.
        ensure_queue(&queue, &args.topics, &args.subscription).await?;
    }
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let executor = Executor {
        store,
        runtime,
        worker_id: format!("{host}-{}-{}", std::process::id(), short_random()),
        limits: JobLimits {
            memory_bytes: (args.memory_mb as usize) << 20,
            fuel: args.fuel,
            timeout: args.timeout_secs.map(Duration::from_secs_f64),
        },
        checkpoint_limits: Limits::default(),
    };
    let config = WorkerConfig {
        subscription_id: args.subscription.subscription_id.clone(),
        dead_letter_topic_id: args.topics.dead_letter_topic(),
        ack_deadline: Duration::from_secs(args.subscription.ack_deadline_seconds.max(1).into()),
        slots,
        max_failures: args.max_failures,
        default_module: args.default_module,
        shutdown_timeout: Duration::try_from_secs_f64(args.shutdown_timeout_secs).map_err(
            |_| {
                anyhow::anyhow!(
                    "SHUTDOWN_TIMEOUT_SECONDS must be a non-negative number of seconds, not {}",
                    args.shutdown_timeout_secs
                )
            },
        )?,
    };
    worker::run(queue, executor, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Six hex digits: keeps worker ids unique where every container's process is PID 1.
fn short_random() -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex::encode(b)
}
