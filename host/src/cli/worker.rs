//! `taskhost worker`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::config::{
    CacheArgs, LimitArgs, PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue,
};
use taskhost::checkpoint::Limits;
use taskhost::exec::Executor;
use taskhost::ids::ModuleRef;
use taskhost::observe::{Health, Metrics};
use taskhost::queue::Queue;
use taskhost::runtime::{Runtime, RuntimeConfig};
use taskhost::worker::{
    self, DEFAULT_MAX_FAILURES, DEFAULT_MISSING_MODULE_RETRY, DEFAULT_SHUTDOWN_TIMEOUT,
    WorkerConfig,
};

/// Lease jobs from the subscription and run them, WORKER_SLOTS at a time, until SIGTERM.
///
/// Pulls only as many messages as it has free slots, and extends each lease every half
/// ACK_DEADLINE_SECONDS while its job runs. With LANES, it reads each lane's subscription
/// in order and takes work from the first one that has any.
///
/// On SIGTERM (or Ctrl-C): stops pulling at once, stops running tasks at their next yield,
/// flushes their checkpoints (released, so another worker may resume them at once), hands
/// their messages back, and exits 0 within SHUTDOWN_TIMEOUT_SECONDS. A second signal exits at
/// once (code 130).
///
/// Workers record the jobs they run under the cache directory (workers/). A worker started
/// where one died (a crash, an OOM kill, a container restarted with its disk) hands the dead
/// one's jobs back at once instead of waiting for their leases to lapse.
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
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub files: super::config::FileArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub nn: super::nn::NnArgs,
    /// Jobs run at once (default: the number of CPUs).
    #[arg(long, env = "WORKER_SLOTS")]
    pub slots: Option<usize>,
    /// Trapped runs (panic, fuel, memory, timeout) after which a job is dead-lettered.
    #[arg(long, env = "MAX_FAILURES", default_value_t = DEFAULT_MAX_FAILURES)]
    pub max_failures: u32,
    /// Runs in a row that ended without a clean end (the worker was killed, ran out of
    /// memory or crashed; a host panic; a lost job) and saved no checkpoint between, after
    /// which a job is dead-lettered instead of taking another worker down.
    #[arg(long, env = "MAX_CRASHES", default_value_t = taskhost::exec::DEFAULT_MAX_CRASHES)]
    pub max_crashes: u32,
    /// Module for messages that name none: `sha256:<hex>`, or a tag `NAME[:TAG]` resolved
    /// once, when the worker starts (the hash is logged; moving the tag later changes
    /// nothing for this worker: restart it to follow the tag). A tag that does not exist yet
    /// is a misconfiguration: waited for (see --exit-on-misconfig).
    #[arg(long, env = "DEFAULT_MODULE")]
    pub default_module: Option<ModuleRef>,
    /// Longest time between SIGTERM and exit, in seconds; what is not flushed by then is
    /// redone from the last checkpoint elsewhere (never a wrong result).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    pub shutdown_timeout_secs: f64,
    /// How long after a job was published its missing module is waited for (the job goes
    /// back with a growing delay meanwhile), in seconds; then it is dead-lettered. The same
    /// for a module the nodes that take the job cannot compile for a reason of their own
    /// (out of memory).
    #[arg(long, env = "MISSING_MODULE_RETRY_SECONDS", default_value_t = DEFAULT_MISSING_MODULE_RETRY.as_secs())]
    pub missing_module_retry_secs: u64,
    /// The host name a worker's id starts with (`<host>-<pid>-<random>`); default: the
    /// contents of /etc/hostname.
    #[arg(long = "host-name", env = "HOSTNAME", value_name = "NAME")]
    pub host_name: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and the health probes (`/livez`, `/readyz`,
    /// `/startupz`) on this address, e.g. `0.0.0.0:9464` (off when unset).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// SaladCloud's instance metadata service, used only on SaladCloud (SALAD_MACHINE_ID
    /// set): the deletion cost, reallocation. Always reached directly, never through a proxy.
    #[arg(long, env = "SALAD_IMDS_URL", default_value = taskhost::salad::imds::DEFAULT_IMDS_URL)]
    pub salad_imds_url: String,
    /// Exit (code 7) on a misconfiguration (a setting out of range, or from the environment
    /// and not parsing; a missing bucket, subscription or dead-letter topic, a refused
    /// permission; or, while running, a lane's subscription that fails for good: after
    /// handing the running jobs back like a shutdown), as scripts may want. By default the worker stays up and not ready, logs
    /// the problem once a minute, rechecks it with backoff and goes on by itself once it is
    /// fixed, running jobs and other lanes meanwhile (on SaladCloud an exit would be a crash
    /// loop that burns nodes).
    #[arg(long, env = "EXIT_ON_MISCONFIG")]
    pub exit_on_misconfig: bool,
    /// On SaladCloud: host faults in a row (a run failed for a reason that is not the task's,
    /// no job done between) after which the worker asks SaladCloud for another node (the
    /// node is kept from the workload for 48 h); 0: never.
    #[arg(long, env = "REALLOCATE_AFTER_HOST_FAULTS", default_value_t = taskhost::salad::reallocate::DEFAULT_AFTER_HOST_FAULTS)]
    pub reallocate_after_host_faults: u32,
    /// On SaladCloud: seconds the node's clock may disagree with the store's before the
    /// worker asks for another node; 0: never.
    #[arg(long, env = "REALLOCATE_AFTER_CLOCK_OFF_SECONDS", default_value_t = taskhost::salad::reallocate::DEFAULT_AFTER_CLOCK_OFF.as_secs())]
    pub reallocate_after_clock_off_secs: u64,
    /// On SaladCloud: seconds the startup self-check's compile of a fixed module (about 0.2 s
    /// on an ordinary machine) may take, three tries in a row, before the worker asks for
    /// another node; 0: never. Off SaladCloud the compile is not checked.
    #[arg(long, env = "REALLOCATE_AFTER_COMPILE_SECONDS", default_value_t = super::selfcheck::DEFAULT_COMPILE_LIMIT.as_secs_f64())]
    pub reallocate_after_compile_secs: f64,
    /// Seconds between two sweeps of the module caches, which drop the modules the bucket no
    /// longer holds (`module rm`, `module prune`; one listing of `modules/` each); 0: never.
    #[arg(long, env = "CACHE_SWEEP_SECONDS", default_value_t = taskhost::modules::DEFAULT_SWEEP_INTERVAL.as_secs())]
    pub cache_sweep_secs: u64,
    /// Seconds between two writes of this worker's heartbeat record (`workers/<worker id>`,
    /// shown by `taskhost status --workers`; deleted on a clean exit); 0: no heartbeat.
    #[arg(long, env = "HEARTBEAT_SECONDS", default_value_t = taskhost::worker::heartbeat::DEFAULT_INTERVAL.as_secs())]
    pub heartbeat_secs: u64,
    /// The machine its heartbeat names (SaladCloud sets SALAD_MACHINE_ID); default: the
    /// host name.
    #[arg(long = "machine-id", env = "SALAD_MACHINE_ID", value_name = "ID")]
    pub machine_id: Option<String>,
}

/// The worker's settings, each checked before anything else is done: one out of range is a
/// misconfiguration (docs/design.md §6), waited for like the startup checks' (or an exit
/// with `--exit-on-misconfig`), never an exit by default.
struct Settings {
    limits: taskhost::runtime::JobLimits,
    file_limits: taskhost::files::FileLimits,
    store: taskhost::store::any::AnyStore,
    slots: usize,
    lanes: taskhost::queue::lanes::Lanes,
    ack_deadline: Duration,
    shutdown_timeout: Duration,
    imds: Option<taskhost::salad::Imds>,
}

impl Settings {
    /// Every setting of `args`, checked (the ack deadline against what `queue`'s server
    /// accepts). `Err`: the sentence naming the setting, its value and what it may be.
    fn read(args: &WorkerArgs, queue: &Queue, on_salad: bool) -> Result<Settings, String> {
        let text = |e: anyhow::Error| format!("{e:#}");
        let limits = args.limits.job_limits().map_err(text)?;
        let file_limits = super::config::file_limits(&args.files).map_err(text)?;
        let slots = match args.slots {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        taskhost::runtime::sandbox::check_concurrent_tasks(slots as u64)
            .map_err(|e| format!("WORKER_SLOTS={slots} (--slots): {e}"))?;
        let lanes = args.subscription.lanes(&args.topics).map_err(text)?;
        let secs = args.subscription.ack_deadline_seconds;
        let accepted = queue.ack_deadlines();
        if !accepted.contains(&secs) {
            return Err(format!(
                "ACK_DEADLINE_SECONDS={secs} (--ack-deadline-seconds): the queue accepts {}..={} seconds",
                accepted.start(),
                accepted.end()
            ));
        }
        let shutdown_timeout = Duration::try_from_secs_f64(args.shutdown_timeout_secs).map_err(
            |_| {
                format!(
                    "SHUTDOWN_TIMEOUT_SECONDS={} (--shutdown-timeout-secs): must be a non-negative number of seconds",
                    args.shutdown_timeout_secs
                )
            },
        )?;
        let imds = on_salad
            .then(|| {
                taskhost::salad::Imds::new(&taskhost::salad::ImdsConfig {
                    base_url: args.salad_imds_url.clone(),
                    ..Default::default()
                })
            })
            .transpose()
            .map_err(|e| {
                format!(
                    "SALAD_IMDS_URL={} (--salad-imds-url): {e}",
                    args.salad_imds_url
                )
            })?;
        let store = args.store.open().map_err(|e| format!("the store: {e:#}"))?;
        Ok(Settings {
            limits,
            file_limits,
            store,
            slots,
            lanes,
            ack_deadline: Duration::from_secs(secs.into()),
            shutdown_timeout,
            imds,
        })
    }
}

pub async fn main(args: WorkerArgs, on_salad: bool) -> anyhow::Result<ExitCode> {
    // First: as a container's PID 1 a SIGTERM without a handler would be ignored.
    let shutdown = super::shutdown_token();
    let metrics = Arc::new(Metrics::new());
    let health = args.metrics_addr.map(|_| Arc::new(Health::new()));
    // The server outlives the shutdown (`/readyz` says the worker is draining) and stops
    // when this function returns.
    let server = tokio_util::sync::CancellationToken::new();
    let _server = server.clone().drop_guard();
    if let (Some(addr), Some(health)) = (args.metrics_addr, &health) {
        let bound = taskhost::observe::serve(addr, metrics.clone(), health.clone(), server.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on METRICS_ADDR={addr}: {e}"))?;
        tracing::info!(address = %bound, "serving /metrics, /livez, /readyz, /startupz");
    }
    let queue = match args.pubsub.connect().await {
        Ok(queue) => queue,
        Err(_) => {
            // Not this node's doing: the startup probe passes (another node would fail
            // alike), readiness says why; connected once it mends.
            if let Some(h) = &health {
                h.set_started();
            }
            let exit = args.exit_on_misconfig;
            let connected =
                super::preflight::connect_queue(&args.pubsub, exit, health.as_deref(), &shutdown);
            match connected.await? {
                Some(queue) => queue,
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    };
    let settings = match Settings::read(&args, &queue, on_salad) {
        Ok(s) => s,
        Err(sentence) => {
            // Not this node's doing: the startup probe passes (another node would have the
            // same setting), readiness says why.
            if let Some(h) = &health {
                h.set_started();
            }
            let exit = args.exit_on_misconfig;
            super::preflight::bad_setting(sentence, exit, health.as_deref(), &shutdown).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let Settings {
        limits,
        file_limits,
        store,
        slots,
        lanes,
        ack_deadline,
        shutdown_timeout,
        imds,
    } = settings;
    let deletion_cost = imds
        .clone()
        .map(|imds| taskhost::salad::DeletionCost::spawn(imds, server.clone()));
    let reallocator = imds.clone().map(|imds| {
        Arc::new(taskhost::salad::Reallocator::new(
            imds,
            taskhost::salad::ReallocateConfig {
                after_host_faults: args.reallocate_after_host_faults,
                after_clock_off: Duration::from_secs(args.reallocate_after_clock_off_secs),
            },
        ))
    });
    let store = store.observed(metrics.clone(), health.clone());
    if let Queue::Local(_) = queue
        && ensure_queue(&queue, &args.topics, &args.subscription)
            .await
            .is_err()
    {
        // The embedded queue needs no setup step. One that cannot be set up is waited for
        // like a queue that cannot be connected to: the startup probe passes, readiness
        // says why.
        if let Some(h) = &health {
            h.set_started();
        }
        let exit = args.exit_on_misconfig;
        let ensured = super::preflight::ensure_embedded_queue(
            &queue,
            &args.topics,
            &args.subscription,
            exit,
            health.as_deref(),
            &shutdown,
        );
        if ensured.await?.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    // One instance slot per job slot: a job never waits for or fails on a full pool.
    let host = super::config::host_name(args.host_name.as_deref());
    let worker_id = taskhost::ids::WorkerId::new(&host).to_string();
    let heartbeat =
        (args.heartbeat_secs > 0).then(|| taskhost::worker::heartbeat::HeartbeatConfig {
            interval: Duration::from_secs(args.heartbeat_secs),
            machine: args
                .machine_id
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| host.clone()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
    let dead_letter_topic = args.topics.dead_letter_topic();
    // The node's own parts first: the startup probe passes once they are up, whatever the
    // store and the queue do (they are waited for, on any node alike).
    let runtime_config = RuntimeConfig {
        max_concurrent_tasks: slots as u32,
        metrics,
        nn: args.nn.config(),
        ..args.cache.runtime_config()
    };
    let record_dir = runtime_config.cache_dir.as_ref().map(|d| d.join("workers"));
    let cache_dir = runtime_config.cache_dir.clone();
    let runtime = Runtime::new(runtime_config)?;
    if let Some(h) = &health {
        h.set_started();
        tokio::spawn(taskhost::observe::health::watch_store(
            h.clone(),
            store.clone(),
            taskhost::keys::probe(&worker_id),
            server.clone(),
        ));
    }
    // The node's own checks: a node that fails them is given up on SaladCloud (it stays up,
    // taking no job, until SaladCloud moves the instance).
    // The compile check only matters where a slow node can be given up: on SaladCloud.
    let compile_limit = Duration::try_from_secs_f64(args.reallocate_after_compile_secs)
        .ok()
        .filter(|d| !d.is_zero() && reallocator.is_some());
    if let Some(problem) =
        super::selfcheck::run(&runtime, cache_dir.as_deref(), compile_limit).await
    {
        let asked = match &reallocator {
            Some(r) => r.self_check_failed(&problem.0).await,
            None => false,
        };
        if asked {
            if let Some(h) = &health {
                h.set_node_failed(problem.0.clone());
            }
            tracing::error!(problem = %problem.0, "this node failed its self-check: reallocation asked, taking no job here");
            shutdown.cancelled().await;
            return Ok(ExitCode::SUCCESS);
        }
        tracing::error!(problem = %problem.0, "this node failed its self-check; working on");
    }
    let probe_key = taskhost::keys::probe(&worker_id);
    let checks = super::preflight::Checks {
        store: &store,
        queue: &queue,
        lanes: &lanes,
        dead_letter_topic: &dead_letter_topic,
        probe_key: &probe_key,
        default_module: args.default_module.as_ref(),
    };
    let Some(passed) = super::preflight::preflight(
        &checks,
        args.exit_on_misconfig,
        health.as_deref(),
        &shutdown,
    )
    .await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let default_module = passed.default_module;
    if args.cache_sweep_secs > 0 {
        tokio::spawn(taskhost::modules::keep_swept(
            runtime.clone(),
            store.clone(),
            Duration::from_secs(args.cache_sweep_secs),
            server.clone(),
        ));
    }

    let executor = Executor {
        store,
        runtime,
        worker_id,
        limits,
        checkpoint_limits: Limits::default(),
        file_limits,
        max_crashes: args.max_crashes,
    };
    let config = WorkerConfig {
        lanes,
        dead_letter_topic_id: dead_letter_topic,
        ack_deadline,
        slots,
        max_failures: args.max_failures,
        default_module,
        missing_module_retry: Duration::from_secs(args.missing_module_retry_secs),
        record_dir,
        health,
        deletion_cost,
        reallocator,
        heartbeat,
        shutdown_timeout,
        exit_on_misconfig: args.exit_on_misconfig,
    };
    worker::run(queue, executor, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
