//! The sandboxed task runtime: one wasmtime [`Engine`], compiled task modules cached on disk
//! and in memory, and [`Runtime::run`], which runs one job of a module under limits.
//!
//! **Invariants:** a task gets no filesystem, network, environment or arguments; every run
//! gets a fresh store that is thrown away afterwards; fuel metering makes the guest yield to
//! tokio about every [`DEFAULT_FUEL_YIELD_INTERVAL`] units of fuel (~1 ms of guest work),
//! so timers, lease extension and checkpoint uploads keep running beside CPU-bound tasks;
//! compiled code is only ever deserialized from files this process's engine wrote.
//!
//! **API boundary:** the runtime knows nothing of Pub/Sub or object storage: it gets bytes
//! and a [`Checkpointer`], and returns an [`Outcome`].

mod cache;
mod cputime;
mod files;
mod forward;
mod host;
mod nn;
mod outcome;
pub mod output;
pub mod sandbox;
mod selfcheck;
mod v0_1;
mod v0_2;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{CallHook, Engine, Store};

use crate::checkpoint::Checkpointer;
use crate::files::JobFiles;
use crate::ids::{JobId, ModuleHash};
pub use cache::{DEFAULT_CACHE_MAX_BYTES, MAX_BYTES_IN_MEMORY, MAX_MODULES_IN_MEMORY, Prepared};
use host::HostState;
pub use outcome::{ModuleError, Outcome, RunReport, TrapKind, panic_message};
use outcome::{classify_trap, compile_error, is_host_fault};
pub use sandbox::{
    DEFAULT_FUEL_YIELD_INTERVAL, DEFAULT_MAX_CONCURRENT_TASKS, DEFAULT_MEMORY_LIMIT,
    DEFAULT_TASK_TIMEOUT, EVENT_INTERVAL, JobLimits, LimitError, MAX_CALL_BYTES, MAX_RESULT_BYTES,
    MAX_TASK_ERROR_BYTES,
};
pub use selfcheck::COMPILE_CHECK_NORM;

/// The WIT worlds a task module may target (`wit/task.wit`, `wit/v0.2.0/task.wit`,
/// `wit/v0.1.0/task.wit`), newest first: the linker serves all of them.
pub const SUPPORTED_WORLDS: &[&str] = &[
    "taskhost:task/task@0.3.0",
    "taskhost:task/task@0.2.0",
    "taskhost:task/task@0.1.0",
];

/// Generated bindings of the WIT world `taskhost:task/task@0.3.0` (`wit/`, with `wasi:nn`),
/// and of 0.2.0 (`wit/v0.2.0/`) and 0.1.0 (`wit/v0.1.0/`), whose modules run unchanged: a
/// component of any of them links.
// `bindgen!` carries the WIT's doc comments but writes its own items (`Task`, `TaskPre`,
// `TaskIndices`, the `Host` traits' glue) undocumented.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "task",
        path: "../wit",
        imports: {
            "taskhost:task/inputs": async,
            "taskhost:task/artifacts": async | trappable,
            "wasi:nn/graph": async | trappable,
            "wasi:nn/inference": async | trappable,
            "wasi:nn/tensor": trappable,
            "wasi:nn/errors": trappable,
        },
        exports: { default: async },
        with: {
            "taskhost:task/artifacts.artifact": crate::files::ArtifactHandle,
            "wasi:nn/graph.graph": crate::nn::GraphHandle,
            "wasi:nn/tensor.tensor": crate::nn::TensorHandle,
            "wasi:nn/inference.graph-execution-context": crate::nn::ContextHandle,
            "wasi:nn/errors.error": crate::nn::NnError,
        },
    });

    /// The 0.2.0 world: 0.3.0's taskhost interfaces, without `wasi:nn`.
    pub mod v0_2 {
        wasmtime::component::bindgen!({
            world: "task",
            path: "../wit/v0.2.0",
            imports: {
                "taskhost:task/inputs": async,
                "taskhost:task/artifacts": async | trappable,
            },
            exports: { default: async },
            with: { "taskhost:task/artifacts.artifact": crate::files::ArtifactHandle },
        });
    }

    /// The 0.1.0 world: the same interfaces without `inputs` and `artifacts`.
    pub mod v0_1 {
        wasmtime::component::bindgen!({
            world: "task",
            path: "../wit/v0.1.0",
            exports: { default: async },
        });
    }
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled modules are cached; `None` (the default) disables the disk cache. The
    /// library reads no environment: the command line chooses this directory (`--cache-dir`).
    pub cache_dir: Option<PathBuf>,
    /// The disk cache's budget in bytes (every compiled module under `cache_dir` together,
    /// the least recently used removed first, never one a running job uses); `None`:
    /// unbounded. Default [`DEFAULT_CACHE_MAX_BYTES`].
    pub cache_max_bytes: Option<u64>,
    /// Fuel between two yields to tokio.
    pub fuel_yield_interval: u64,
    /// Most tasks running at once in this process: the pooling allocator keeps this many
    /// instance slots (memories, tables, async stacks) ready, so starting a task does no
    /// `mmap`. A task started beyond it fails to instantiate.
    pub max_concurrent_tasks: u32,
    /// Fuel metering on (the default). Off exists only to measure its cost: without it a
    /// task never yields and fuel budgets are ignored.
    pub fuel_metering: bool,
    /// Epoch interruption on (off by default): the guest yields to tokio at each tick of a
    /// thread this runtime starts ([`EPOCH_TICK`]). It exists only to compare its cost with
    /// fuel's (the benchmark runs it with `fuel_metering: false`); the worker never sets it.
    pub epoch_interruption: bool,
    /// Where this runtime, and the jobs run with it, count (module cache, compile time,
    /// checkpoint writes, fuel, bytes). Default: a fresh [`Metrics`](crate::observe::Metrics)
    /// nobody reads.
    pub metrics: Arc<crate::observe::Metrics>,
    /// Model inference for tasks (`wasi:nn`): ONNX Runtime's library, the execution provider,
    /// the memory caps and the graph cache. Default: no ONNX Runtime (no inference).
    pub nn: crate::nn::NnConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            cache_max_bytes: Some(DEFAULT_CACHE_MAX_BYTES),
            fuel_yield_interval: DEFAULT_FUEL_YIELD_INTERVAL,
            fuel_metering: true,
            epoch_interruption: false,
            max_concurrent_tasks: DEFAULT_MAX_CONCURRENT_TASKS,
            metrics: Arc::default(),
            nn: crate::nn::NnConfig::default(),
        }
    }
}

/// One job to run.
pub struct RunRequest<'a> {
    /// The job's id (logs, the job's store keys).
    pub job: &'a JobId,
    /// 1 for the first run, n for the n-th.
    pub attempt: u32,
    /// The job's input document, passed to the task's `run`.
    pub input: &'a str,
    /// The run's caps (fuel, memory, wall clock).
    pub limits: &'a JobLimits,
    /// The job's checkpoint, which the task reads and writes through its imports.
    pub checkpoint: Checkpointer,
    /// The job's inputs and artifacts.
    pub files: JobFiles,
    /// Cancelled ⇒ the task stops at its next yield.
    pub cancel: CancellationToken,
}

/// The engine, the linker and the module caches. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Arc<cache::ModuleCache>,
    fuel_yield_interval: u64,
    fuel_metering: bool,
    epoch_interruption: bool,
    metrics: Arc<crate::observe::Metrics>,
    nn: Arc<crate::nn::NnService>,
}

/// Most bytes of a host panic's message kept in its [`Outcome::HostPanic`].
const MAX_PANIC_MESSAGE_BYTES: usize = 2048;

/// The epoch tick of a runtime with [`RuntimeConfig::epoch_interruption`].
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

impl Runtime {
    /// The engine (with its instance pool of `max_concurrent_tasks` slots) and a linker of
    /// WASI and every [`SUPPORTED_WORLDS`]. `Err`: the config is out of range
    /// ([`RuntimeConfig::check`]), the engine cannot be built (the pool's memory cannot be
    /// reserved). A cache directory that cannot be created leaves the disk cache off
    /// ([`Runtime::check_cache_dir`] says why).
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        config.check()?;
        let engine = Engine::new(&sandbox::engine_config(
            config.fuel_metering,
            config.epoch_interruption,
            config.max_concurrent_tasks,
        ))?;
        if config.epoch_interruption {
            // Ticks until the engine is dropped.
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("taskhost-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })?;
        }
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Task::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        bindings::v0_2::Task::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        bindings::v0_1::Task::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let cache = cache::ModuleCache::new(&engine, config.cache_dir, config.cache_max_bytes);
        let nn = crate::nn::NnService::new(config.nn, config.max_concurrent_tasks as usize);
        Ok(Runtime {
            nn,
            engine,
            linker: Arc::new(linker),
            cache: Arc::new(cache),
            fuel_yield_interval: config.fuel_yield_interval.max(1),
            fuel_metering: config.fuel_metering,
            epoch_interruption: config.epoch_interruption,
            metrics: config.metrics,
        })
    }

    /// The wasmtime engine every module of this runtime is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A module already prepared in this process's memory.
    pub fn cached(&self, hash: &ModuleHash) -> Option<Prepared> {
        self.cache.memory(hash)
    }

    /// The worker's inference service (`wasi:nn`): whether it is served, its graph cache.
    pub fn nn(&self) -> &Arc<crate::nn::NnService> {
        &self.nn
    }

    /// Where this runtime and its jobs count ([`RuntimeConfig::metrics`]).
    pub fn metrics(&self) -> &Arc<crate::observe::Metrics> {
        &self.metrics
    }

    /// A module from memory, or else from the disk cache (then kept in memory).
    pub fn load_cached(&self, hash: &ModuleHash) -> Option<Prepared> {
        if let Some(p) = self.cache.memory(hash) {
            return Some(p);
        }
        let component = self.cache.disk(hash)?;
        match self.link(&component) {
            Ok(p) => {
                tracing::info!(module = %hash, "module loaded from the disk cache");
                Some(self.cache.insert(*hash, p, &component))
            }
            Err(e) => {
                tracing::warn!(module = %hash, error = %e, "cached module no longer links; recompiling");
                None
            }
        }
    }

    /// Checks, compiles, links and caches a module (memory and disk), blocking the calling
    /// thread for the compile (call it from `spawn_blocking` in async code, or use
    /// [`Runtime::prepare`]). `expected` is checked against the bytes' sha256 first.
    pub fn compile(
        &self,
        bytes: &[u8],
        expected: Option<&ModuleHash>,
    ) -> Result<Prepared, ModuleError> {
        if bytes.len() as u64 > crate::modules::MAX_MODULE_BYTES {
            return Err(ModuleError::TooLarge {
                bytes: Some(bytes.len() as u64),
            });
        }
        let hash = ModuleHash::of(bytes);
        if let Some(expected) = expected
            && *expected != hash
        {
            return Err(ModuleError::HashMismatch {
                expected: *expected,
                actual: hash,
            });
        }
        check_header(bytes)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|e| compile_error(&e))?;
        tracing::info!(
            module = %hash,
            ms = started.elapsed().as_millis() as u64,
            "module compiled"
        );
        let prepared = self.link(&component)?;
        self.cache.store_disk(&hash, &component);
        Ok(self.cache.insert(hash, prepared, &component))
    }

    /// [`Runtime::load_cached`], else [`Runtime::compile`] on a blocking thread.
    pub async fn prepare(
        &self,
        bytes: Vec<u8>,
        expected: Option<ModuleHash>,
    ) -> Result<Prepared, ModuleError> {
        if let Some(h) = expected
            && let Some(p) = self.load_cached(&h)
        {
            return Ok(p);
        }
        let rt = self.clone();
        tokio::task::spawn_blocking(move || rt.compile(&bytes, expected.as_ref()))
            .await
            .map_err(|e| ModuleError::Invalid(format!("compiler thread failed: {e}")))?
    }

    fn link(&self, component: &Component) -> Result<Prepared, ModuleError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| ModuleError::WrongWorld(format!("{e:#}")))?;
        let pre =
            bindings::TaskPre::new(pre).map_err(|e| ModuleError::WrongWorld(format!("{e:#}")))?;
        Ok(Arc::new(pre))
    }

    /// Runs one job of a prepared module to its end, a trap, a limit, a conflict or
    /// cancellation. Never panics on guest behaviour; the store is dropped afterwards.
    pub async fn run(&self, module: &Prepared, req: RunRequest<'_>) -> RunReport {
        let started = Instant::now();
        let cpu_at_start = cputime::thread_cpu();
        let job: Arc<str> = req.job.as_str().into();
        let state = HostState::new(
            job.clone(),
            req.attempt,
            req.checkpoint.clone(),
            req.files.clone(),
            self.nn.job(),
            req.limits.memory_bytes,
        );
        let stderr = state.stderr.clone();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(MAX_CALL_BYTES);
        let budget = req.limits.fuel.unwrap_or(u64::MAX);
        if self.fuel_metering {
            store.set_fuel(budget).expect("fuel is enabled");
            store
                .fuel_async_yield_interval(Some(self.fuel_yield_interval))
                .expect("fuel is enabled");
            // The fuel so far, at every host call and fuel yield (a yield is a call out to
            // the host too): what each checkpoint write counts of this run.
            store.call_hook(move |ctx, hook| {
                if let CallHook::CallingHost = hook
                    && let Ok(left) = ctx.get_fuel()
                {
                    ctx.data().checkpoint.record_run_fuel(budget - left);
                }
                Ok(())
            });
        }
        if self.epoch_interruption {
            store.set_epoch_deadline(1);
            store.epoch_deadline_async_yield_and_update(1);
        }

        enum End {
            Done(wasmtime::Result<Result<String, String>>),
            /// A host function panicked (a bug of ours that a task's arguments reached): caught
            /// here so it ends this job as a host fault, never the worker or other jobs.
            Panicked(String),
            TimedOut,
            Cancelled,
        }
        let mut startup = Duration::ZERO;
        // From `cpu_at_start` through the instantiation's polls.
        let mut startup_cpu = Duration::ZERO;
        let end = {
            let input = req.input;
            let store = &mut store;
            let startup = &mut startup;
            let startup_cpu = &mut startup_cpu;
            let call = async move {
                let instantiate = module.instantiate_async(&mut *store);
                let task = cputime::metered(instantiate, cpu_at_start, startup_cpu).await?;
                *startup = started.elapsed();
                task.call_run(&mut *store, input).await
            };
            // The wall-clock limit counts the task's own time: what its input and artifact
            // calls spent waiting on the store is added back (a slow store is not the
            // task's failure), up to the limit itself (`StoreWait::credit`).
            let store_wait = req.files.store_wait.clone();
            let timeout = async move {
                let Some(limit) = req.limits.timeout else {
                    return std::future::pending().await;
                };
                loop {
                    let deadline = started + limit + store_wait.credit(limit);
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(deadline.into()).await;
                }
            };
            let call = std::panic::AssertUnwindSafe(call).catch_unwind();
            tokio::select! {
                r = call => r.map_or_else(|p| End::Panicked(panic_message(&*p)), End::Done),
                _ = timeout => End::TimedOut,
                _ = req.cancel.cancelled() => End::Cancelled,
            }
        };
        let fuel_used = if self.fuel_metering {
            budget - store.get_fuel().unwrap_or(0)
        } else {
            0
        };
        let state = store.data();
        let outcome = if req.checkpoint.is_conflicted() {
            Outcome::Conflict
        } else {
            match end {
                End::Done(Ok(Ok(result))) if result.len() > MAX_RESULT_BYTES => {
                    Outcome::TaskError(format!(
                        "the result document is {} bytes, over the limit of {MAX_RESULT_BYTES}: \
                         store big outputs elsewhere and return a reference",
                        result.len()
                    ))
                }
                End::Done(Ok(Ok(result))) => Outcome::Finished(result),
                End::Done(Ok(Err(msg))) => Outcome::TaskError(sandbox::cut_task_error(msg)),
                End::Done(Err(e))
                    if startup.is_zero() && is_host_fault(&e, state.limiter.memory_hit) =>
                {
                    Outcome::HostFault(format!("cannot start the task: {e:#}"))
                }
                End::Done(Err(e)) => {
                    classify_trap(&e, state.limiter.memory_hit, stderr.last_line())
                }
                End::Panicked(msg) => {
                    // Its message may quote what the task passed (Rust's slicing panics
                    // quote strings): cut, and shown as task text.
                    let msg = crate::inert::cut(&msg, MAX_PANIC_MESSAGE_BYTES);
                    let shown = crate::inert::Inert(msg);
                    tracing::error!(job = %req.job, panic = %shown, "the host panicked running this task");
                    Outcome::HostPanic(format!("the host panicked running this task: {msg}"))
                }
                End::TimedOut => Outcome::Trapped {
                    kind: TrapKind::Timeout,
                    message: format!(
                        "wall-clock limit of {:?} reached",
                        req.limits.timeout.unwrap_or_default()
                    ),
                },
                End::Cancelled => Outcome::Cancelled,
            }
        };
        RunReport {
            outcome,
            fuel_used,
            first_progress: state.first_progress,
            startup,
            startup_cpu,
            elapsed: started.elapsed(),
            output_dropped: stderr.dropped() + state.log.dropped(),
            host_compute: state.nn.compute_time(),
        }
    }
}

fn check_header(bytes: &[u8]) -> Result<(), ModuleError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(ModuleError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        _ => Err(ModuleError::NotWasm),
    }
}
