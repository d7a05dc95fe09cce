//! Every cap of the sandbox, in one place: the named values with why they are what they are
//! and what they do not cover (wasmtime's `limits.rs` is the model), the checks of the
//! settable ones ([`JobLimits::check`], [`FileLimits::check`], [`RuntimeConfig::check`],
//! each failing with a [`LimitError`]), and the mechanisms that enforce them: the engine's
//! instance pool (`engine_config`), the store's [`TaskLimiter`] and a WASI context with
//! nothing granted (`wasi_with_nothing_granted`).
//!
//! The contract is the table in docs/design.md, section 2, "The sandbox's caps"; a change
//! to a value here changes that table in the same commit.
//!
//! The caps of a job's files (`PART_BYTES`, `MAX_READ_BYTES`, ...) are defined in
//! [`crate::files`], the layer below that enforces them, and re-exported here so that the
//! whole list reads in one place.

use std::time::Duration;

use wasmtime::{Config, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::RuntimeConfig;
use super::output::LogPipe;
pub use crate::checkpoint::DEFAULT_MAX_CHECKPOINT_BYTES;
use crate::files::FileLimits;
pub use crate::files::{
    DEFAULT_ARTIFACT_BYTES, DEFAULT_ARTIFACTS_TOTAL_BYTES, DEFAULT_INPUT_READ_BYTES,
    DEFAULT_MAX_ARTIFACTS, MAX_ARTIFACT_BYTES, MAX_OPEN_ARTIFACTS, MAX_READ_BYTES, PART_BYTES,
};

// ---- Memory, instances, tables -------------------------------------------------------------

/// Default memory cap per task: 512 MiB, all its linear memories together.
///
/// Caveat: it caps the task's linear memories only; what the host holds for the task (its
/// checkpoint, artifact parts, the argument of an import call) comes on top: docs/design.md,
/// "Host memory a task can make the worker use".
pub const DEFAULT_MEMORY_LIMIT: usize = 512 << 20;
/// Largest memory cap a job may have: 4 GiB, the address space the instance pool reserves
/// for each memory (a wasm32 memory cannot be larger anyway).
pub const MAX_MEMORY_LIMIT: usize = 4 << 30;
/// Most linear memories one task may have (a wasm32-wasip2 component has one).
pub const MAX_MEMORIES_PER_TASK: usize = 2;
/// Most core instances one task may have (the task plus a few adapter shims).
pub const MAX_INSTANCES_PER_TASK: usize = 8;
/// Most tables one task may have.
pub const MAX_TABLES_PER_TASK: usize = 8;
/// Most elements of one table: tables hold function references, and 1M entries is far beyond
/// any sane task. Caveat: counted per table, not against the memory cap.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Most host resources a task holds at once (its store's resource table: WASI streams and
/// pollables, artifacts, wasi-nn graphs, tensors and errors): each costs the host a table
/// entry and what it holds, outside the task's memory cap. Far above what a task uses (a
/// few dozen); past it the call that would make one more traps the task (wasmtime's own
/// default is 1,000,000, about 150 MB of entries).
pub const MAX_RESOURCES_PER_TASK: usize = 10_000;
/// Most bytes of a pooled memory kept resident between two tasks of one slot, where the
/// kernel has `PAGEMAP_SCAN` (Linux 6.7+): the pages the task wrote, up to this many bytes,
/// are copied back to the module's initial image instead of being given back to the kernel,
/// so the next task of the slot takes no page faults, copy-on-write copies or TLB shootdowns
/// on them, and the reset needs no `madvise`. Costs up to this much RSS per idle pooled
/// memory (only pages a task wrote; the rest is given back as before). The worst case per
/// idle job slot, every memory and table of it written that far: [`MAX_MEMORIES_PER_TASK`]
/// × this + [`MAX_TABLES_PER_TASK`] × [`POOL_TABLE_KEEP_RESIDENT_BYTES`] = 2 × 1 MiB +
/// 8 × 64 KiB = 2.5 MiB (without `PAGEMAP_SCAN`: 2 × 64 KiB + 8 × 64 KiB = 640 KiB).
pub const POOL_KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// The same without `PAGEMAP_SCAN` (older kernels): there the first bytes of the memory are
/// reset by `memset` whether written or not, so a large value costs every reset.
pub const POOL_KEEP_RESIDENT_BYTES_NO_SCAN: usize = 64 << 10;
/// Most bytes of a pooled table kept resident between two tasks, with or without
/// `PAGEMAP_SCAN`: tables hold function references (a pointer each), a few KiB for a task, so
/// 64 KiB (8,192 entries) covers them while a slot's [`MAX_TABLES_PER_TASK`] tables add at
/// most 512 KiB (a slot's worst case: see [`POOL_KEEP_RESIDENT_BYTES`]).
pub const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

// ---- What crosses the boundary -------------------------------------------------------------

/// Largest result document a task may return: 1 MiB. A larger one ends the job as a task
/// error ("store big outputs elsewhere and return a reference"): the result is one object
/// read whole by `status` and the submitter. Caveat: the task's string is lifted into host
/// memory before its length is known, so the host may hold up to [`MAX_CALL_BYTES`] for it.
pub const MAX_RESULT_BYTES: usize = 1 << 20;
/// Longest error text a task's `err` keeps: 16 KiB; the rest is cut (on a character
/// boundary, marked "..."). The text is stored (`jobs/<id>/error`, the header's
/// `last_failure`) and shown in logs. Caveat: as for the result, the whole string is
/// lifted first.
pub const MAX_TASK_ERROR_BYTES: usize = 16 << 10;
/// Most bytes a task may pass to the host in one import call (a `list<u8>` or `string`
/// argument): wasmtime copies an argument into host memory before the host sees it, so
/// this bounds that copy. A larger argument traps the task. (wasmtime's "hostcall fuel";
/// its default is this same 128 MiB, set here so the bound is ours and documented.)
/// Caveat: it bounds one call's copy, for the length of the call, not the task's total.
pub const MAX_CALL_BYTES: usize = 128 << 20;
/// A task's error text cut to [`MAX_TASK_ERROR_BYTES`] (on a character boundary, marked
/// "..." within the cap).
pub(super) fn cut_task_error(mut text: String) -> String {
    if text.len() > MAX_TASK_ERROR_BYTES {
        let keep = crate::inert::cut(&text, MAX_TASK_ERROR_BYTES - 3).len();
        text.truncate(keep);
        text.push_str("...");
    }
    text
}
/// Longest `log.write` message kept (bytes); a longer one is cut between characters.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8192;
/// Bytes of `log.write` messages kept per run (1 MiB, like each output stream), each event
/// charged its message and [`LOG_EVENT_COST`]; the rest is counted and dropped.
pub const MAX_LOG_BYTES_PER_RUN: usize = 1 << 20;
/// What each event of task text (a `log.write` message, a line of stdout or stderr) is
/// charged against its cap beyond its own bytes: about what the host's line around it
/// costs, so empty messages cannot flood the log either (at most cap / 128 events).
pub const LOG_EVENT_COST: usize = 128;
/// Longest line of a task's stdout or stderr (bytes); a longer one is split, never inside
/// a character. It is also what the host buffers per stream.
pub const MAX_OUTPUT_LINE_BYTES: usize = 4096;
/// Bytes of each output stream (stdout, stderr) logged per run: 1 MiB, each line charged its
/// bytes and [`LOG_EVENT_COST`]; the rest is counted and dropped. Writes never fail.
pub const MAX_OUTPUT_BYTES_PER_STREAM: u64 = 1 << 20;

// ---- Time and scheduling -------------------------------------------------------------------

/// Default wall-clock limit of one run (`TASK_TIMEOUT_SECONDS`): 24 h, long enough for
/// multi-hour jobs, short enough that a task sleeping forever gives its slot back. Caveat:
/// the task's own time: what its input and artifact calls waited on the store is added back.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Fuel between two yields to the async runtime; about 1 ms of guest work on this class of
/// machine (fuel counts roughly one unit per wasm instruction). Caveat: a host call that
/// blocks is not interrupted by it; none of ours does.
pub const DEFAULT_FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// Task polls between two looks at the async runtime's timers and I/O while its threads are
/// busy (tokio's `event_interval`; its default is 61): a running task's poll lasts up to a
/// fuel yield interval, so this bounds how long a due lease extension waits behind running
/// tasks (a few ms, not a tenth of a second). The binary builds its runtime with it.
pub const EVENT_INTERVAL: u32 = 8;
/// Default instance slots of the pooling allocator (see [`RuntimeConfig::max_concurrent_tasks`]).
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 64;
/// Most instance slots (`WORKER_SLOTS`): 1024. Each reserves address space for
/// [`MAX_MEMORIES_PER_TASK`] memories of [`MAX_MEMORY_LIMIT`].
pub const MAX_CONCURRENT_TASKS: u32 = 1024;

/// A limit out of its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// [`JobLimits::memory_bytes`] is 0 or over [`MAX_MEMORY_LIMIT`].
    Memory(usize),
    /// A wall-clock limit that is not a finite, non-negative number of seconds.
    Timeout(String),
    /// [`FileLimits::artifact_bytes`] is 0 or over [`MAX_ARTIFACT_BYTES`].
    ArtifactBytes(u64),
    /// [`FileLimits::artifacts_total_bytes`] is 0.
    ArtifactsTotal,
    /// [`RuntimeConfig::max_concurrent_tasks`] is 0 or over [`MAX_CONCURRENT_TASKS`].
    ConcurrentTasks(u64),
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitError::Memory(n) => write!(
                f,
                "the memory limit must be from 1 byte to {} MiB, not {n} bytes",
                MAX_MEMORY_LIMIT >> 20
            ),
            LimitError::Timeout(t) => write!(
                f,
                "the wall-clock limit must be a number of seconds (0: no limit), not {t}"
            ),
            LimitError::ArtifactBytes(n) => write!(
                f,
                "the largest artifact must be from 1 byte to {} MiB, not {n} bytes",
                MAX_ARTIFACT_BYTES >> 20
            ),
            LimitError::ArtifactsTotal => {
                f.write_str("the limit of a job's artifacts together must be at least 1 byte")
            }
            LimitError::ConcurrentTasks(n) => write!(
                f,
                "the concurrent tasks must be from 1 to {MAX_CONCURRENT_TASKS}, not {n}"
            ),
        }
    }
}

impl std::error::Error for LimitError {}

/// Limits of one run of a job. Build it with [`JobLimits::new`] (checked), or as a literal
/// and then [`JobLimits::check`] it.
#[derive(Clone, Debug)]
pub struct JobLimits {
    /// Largest size of all the task's linear memories together, in bytes
    /// (1..=[`MAX_MEMORY_LIMIT`]).
    pub memory_bytes: usize,
    /// Fuel budget of this run (a CPU cap); `None` is unlimited.
    pub fuel: Option<u64>,
    /// Wall-clock limit of this run; `None` is unlimited.
    pub timeout: Option<Duration>,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            memory_bytes: DEFAULT_MEMORY_LIMIT,
            fuel: None,
            timeout: Some(DEFAULT_TASK_TIMEOUT),
        }
    }
}

impl JobLimits {
    /// Checked limits of one run.
    pub fn new(
        memory_bytes: usize,
        fuel: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<JobLimits, LimitError> {
        let limits = JobLimits {
            memory_bytes,
            fuel,
            timeout,
        };
        limits.check()?;
        Ok(limits)
    }

    /// Whether each limit is in its range.
    pub fn check(&self) -> Result<(), LimitError> {
        if !(1..=MAX_MEMORY_LIMIT).contains(&self.memory_bytes) {
            return Err(LimitError::Memory(self.memory_bytes));
        }
        Ok(())
    }
}

/// A wall-clock limit given in seconds: 0 is none; negative, NaN or infinite is an error.
pub fn timeout_from_secs(secs: f64) -> Result<Option<Duration>, LimitError> {
    let timeout =
        Duration::try_from_secs_f64(secs).map_err(|_| LimitError::Timeout(secs.to_string()))?;
    Ok((!timeout.is_zero()).then_some(timeout))
}

impl FileLimits {
    /// Whether each limit is in its range: an artifact of 1..=[`MAX_ARTIFACT_BYTES`] (what
    /// 10,000 parts of [`PART_BYTES`] hold), a total of at least 1 byte.
    pub fn check(&self) -> Result<(), LimitError> {
        if !(1..=MAX_ARTIFACT_BYTES).contains(&self.artifact_bytes) {
            return Err(LimitError::ArtifactBytes(self.artifact_bytes));
        }
        if self.artifacts_total_bytes == 0 {
            return Err(LimitError::ArtifactsTotal);
        }
        Ok(())
    }
}

impl RuntimeConfig {
    /// Whether the instance slots are 1..=[`MAX_CONCURRENT_TASKS`] ([`crate::runtime::Runtime::new`]
    /// checks it).
    pub fn check(&self) -> Result<(), LimitError> {
        check_concurrent_tasks(self.max_concurrent_tasks as u64).map(|_| ())
    }
}

/// `n` instance slots, if 1..=[`MAX_CONCURRENT_TASKS`].
pub fn check_concurrent_tasks(n: u64) -> Result<u32, LimitError> {
    match u32::try_from(n) {
        Ok(slots) if (1..=MAX_CONCURRENT_TASKS).contains(&slots) => Ok(slots),
        _ => Err(LimitError::ConcurrentTasks(n)),
    }
}

/// The engine's configuration: component model, fuel metering (if on), epoch interruption
/// (if on: benchmarks only), and an instance pool of `slots` tasks, each slot sized to one
/// task's caps above.
pub(super) fn engine_config(fuel_metering: bool, epoch_interruption: bool, slots: u32) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.consume_fuel(fuel_metering);
    cfg.epoch_interruption(epoch_interruption);
    // No `.eh_frame` for compiled code: it only serves outside unwinders (a profiler's DWARF
    // walk through task frames); wasmtime's own traps and backtraces do without it, and a
    // module loads without registering it (issue 19 item 3).
    cfg.native_unwind_info(false);
    // Pooled instance slots: a warm start reuses a slot (copy-on-write memory image, no
    // mmap), which is what makes starting a cached module take microseconds. A wasip2
    // component holds a few core instances (the task plus WASI adapter shims).
    let slots = slots.max(1);
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    // Each store is capped at its share (TaskLimiter), so tasks cannot starve each other.
    pool.total_component_instances(slots)
        .total_core_instances(slots * MAX_INSTANCES_PER_TASK as u32)
        .total_memories(slots * MAX_MEMORIES_PER_TASK as u32)
        .total_tables(slots * MAX_TABLES_PER_TASK as u32)
        .total_stacks(slots)
        // Each task's own limit is enforced by the store's limiter, not by the pool.
        .max_memory_size(MAX_MEMORY_LIMIT);
    let keep_resident = if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes);
        POOL_KEEP_RESIDENT_BYTES
    } else {
        POOL_KEEP_RESIDENT_BYTES_NO_SCAN
    };
    pool.linear_memory_keep_resident(keep_resident)
        .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES);
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    cfg
}

/// WASI with nothing granted: no preopened directories, no env, no args, no network
/// (TCP/UDP/DNS are off and the address check denies everything); stdout and stderr go to
/// the host's log. Clocks and random work.
pub(super) fn wasi_with_nothing_granted(stdout: LogPipe, stderr: LogPipe) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout)
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .build()
}

/// The store's limiter: caps the sum of all the task's linear memories (a component may
/// declare several) and how many memories, instances and tables it has, so one task can
/// neither take the host's memory nor the instance pool's slots of the others. Remembers
/// that the memory cap was hit so the failure is reported as "memory limit" whatever the
/// guest's allocator does next.
pub struct TaskLimiter {
    limit: usize,
    /// Bytes of all the task's linear memories.
    used: usize,
    pub(super) memory_hit: bool,
}

impl TaskLimiter {
    /// A limiter of `memory_bytes` for all the task's memories together.
    pub(super) fn new(memory_bytes: usize) -> TaskLimiter {
        TaskLimiter {
            limit: memory_bytes,
            used: 0,
            memory_hit: false,
        }
    }

    /// The cap on all the task's memories together, in bytes.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit || maximum.is_some_and(|m| desired > m) {
            self.memory_hit = true;
            // Trap at once instead of letting the guest's allocator abort less clearly.
            wasmtime::bail!("memory limit of {} bytes reached", self.limit);
        }
        self.used = total;
        Ok(true)
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_TASK
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_TASK
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_TASK
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|m| desired <= m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        let mut l = TaskLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory may not take the first one's share.
        assert!(l.memory_growing(0, 60, None).is_err());
        assert!(l.memory_hit);
        // Growing an existing memory counts only the growth.
        let mut l = TaskLimiter::new(100);
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(40, 70, None).unwrap());
        assert!(l.memory_growing(0, 30, None).unwrap());
        assert!(l.memory_growing(0, 1, None).is_err());
        assert_eq!(
            (l.memories(), l.instances(), l.tables()),
            (
                MAX_MEMORIES_PER_TASK,
                MAX_INSTANCES_PER_TASK,
                MAX_TABLES_PER_TASK
            )
        );
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(!l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
    }

    /// Each check at and just past its bounds.
    #[test]
    fn the_checks_take_their_range_and_refuse_past_it() {
        let job = |memory_bytes| JobLimits::new(memory_bytes, None, None).map(|_| ());
        assert_eq!(job(0), Err(LimitError::Memory(0)));
        assert_eq!(job(1), Ok(()));
        assert_eq!(job(MAX_MEMORY_LIMIT), Ok(()));
        assert_eq!(
            job(MAX_MEMORY_LIMIT + 1),
            Err(LimitError::Memory(MAX_MEMORY_LIMIT + 1))
        );
        assert!(JobLimits::default().check().is_ok());

        assert_eq!(timeout_from_secs(0.0), Ok(None));
        assert_eq!(
            timeout_from_secs(1.5),
            Ok(Some(Duration::from_millis(1500)))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(timeout_from_secs(bad), Err(LimitError::Timeout(_))),
                "{bad}"
            );
        }

        let files = |artifact_bytes, artifacts_total_bytes| {
            FileLimits {
                artifact_bytes,
                artifacts_total_bytes,
                ..FileLimits::default()
            }
            .check()
        };
        assert!(FileLimits::default().check().is_ok());
        assert_eq!(files(MAX_ARTIFACT_BYTES, 1), Ok(()));
        assert_eq!(files(0, 1), Err(LimitError::ArtifactBytes(0)));
        assert_eq!(
            files(MAX_ARTIFACT_BYTES + 1, 1),
            Err(LimitError::ArtifactBytes(MAX_ARTIFACT_BYTES + 1))
        );
        assert_eq!(files(1, 0), Err(LimitError::ArtifactsTotal));

        assert_eq!(check_concurrent_tasks(1), Ok(1));
        assert_eq!(
            check_concurrent_tasks(MAX_CONCURRENT_TASKS as u64),
            Ok(MAX_CONCURRENT_TASKS)
        );
        assert_eq!(
            check_concurrent_tasks(0),
            Err(LimitError::ConcurrentTasks(0))
        );
        assert_eq!(
            check_concurrent_tasks(u64::MAX),
            Err(LimitError::ConcurrentTasks(u64::MAX))
        );
    }
}
