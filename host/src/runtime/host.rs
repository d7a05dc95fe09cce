//! The host side of the WIT world: what a task can call, and the store's data.
//!
//! Host functions here never block and never fail the store: checkpoint saves go to the
//! in-memory [`Checkpointer`] (uploads happen in the background), so none of them is
//! `async`. Errors are WIT errors the guest handles (the inner result), not traps.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::taskhost::task::{checkpoint, job, log, progress};
use super::output::{LogPipe, task_event};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::files::JobFiles;

/// Longest log message kept from a task (bytes); longer ones are cut.
const MAX_LOG_MESSAGE: usize = 8192;
/// Bytes of `log.write` messages kept per run (1 MiB, like each output stream); the rest is
/// counted and dropped.
pub const MAX_LOG_BYTES_PER_RUN: usize = 1 << 20;

/// Everything a running task's store holds.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    pub(super) job: Arc<str>,
    pub(super) attempt: u32,
    pub(super) checkpoint: Checkpointer,
    pub(super) files: JobFiles,
    pub(super) stderr: LogPipe,
    /// The first progress report of this run (proves where a resumed run started).
    pub(super) first_progress: Option<(u64, u64)>,
    /// Bytes of `log.write` messages logged in this run, and dropped past the cap.
    logged: usize,
    pub(super) log_dropped: u64,
}

impl HostState {
    pub(super) fn new(
        job: Arc<str>,
        attempt: u32,
        checkpoint: Checkpointer,
        files: JobFiles,
        memory_bytes: usize,
    ) -> Self {
        let stdout = LogPipe::new(job.clone(), "stdout");
        let stderr = LogPipe::new(job.clone(), "stderr");
        // Nothing is granted: no preopened directories, no env, no args, no network
        // (TCP/UDP/DNS are off by default and the address check denies everything).
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let limits = MemoryLimiter {
            limit: memory_bytes,
            used: 0,
            hit: false,
        };
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            job,
            attempt,
            checkpoint,
            files,
            stderr,
            first_progress: None,
            logged: 0,
            log_dropped: 0,
        }
    }
}

/// Most linear memories one task may have (a wasm32-wasip2 component has one).
pub const MAX_MEMORIES_PER_TASK: usize = 2;
/// Most core instances one task may have (the task plus a few adapter shims).
pub const MAX_INSTANCES_PER_TASK: usize = 8;
/// Most tables one task may have.
pub const MAX_TABLES_PER_TASK: usize = 8;

/// Caps the task's memory: the sum of all its linear memories (a component may declare
/// several), and how many memories, instances and tables it has, so one task can neither
/// take the host's memory nor the instance pool's slots of the others. Remembers that the
/// memory cap was hit so the failure is reported as "memory limit" whatever the guest's
/// allocator does next.
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes of all the task's linear memories.
    used: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit || maximum.is_some_and(|m| desired > m) {
            self.hit = true;
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
        // Tables hold function references; 1M entries is far beyond any sane task.
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub(super) fn to_wit(e: CheckpointError) -> checkpoint::CheckpointError {
    match e {
        CheckpointError::Conflict => checkpoint::CheckpointError::Conflict,
        CheckpointError::TooLarge(n) => checkpoint::CheckpointError::TooLarge(n),
        CheckpointError::Storage(m) => checkpoint::CheckpointError::Storage(m),
    }
}

impl checkpoint::Host for HostState {
    fn save(&mut self, data: Vec<u8>) -> Result<(), checkpoint::CheckpointError> {
        let _span =
            tracing::trace_span!("checkpoint.save", job = %self.job, bytes = data.len()).entered();
        // The artifacts' durable state travels with the data (what `resume` continues from).
        let artifacts = self.files.artifacts.snapshot();
        self.checkpoint.save_with(data, artifacts).map_err(to_wit)
    }

    fn load(&mut self) -> Result<Option<Vec<u8>>, checkpoint::CheckpointError> {
        let _span = tracing::trace_span!("checkpoint.load", job = %self.job).entered();
        self.checkpoint.load().map_err(to_wit)
    }
}

impl progress::Host for HostState {
    fn report(&mut self, done: u64, total: u64) {
        self.first_progress.get_or_insert((done, total));
        self.checkpoint.report_progress(done, total);
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) {
        self.log(level, message)
    }
}

impl HostState {
    pub(super) fn log(&mut self, level: log::Level, mut message: String) {
        if self.logged >= MAX_LOG_BYTES_PER_RUN {
            if self.log_dropped == 0 {
                tracing::warn!(
                    job = &*self.job,
                    "the task logged over {MAX_LOG_BYTES_PER_RUN} bytes; dropping the rest"
                );
            }
            self.log_dropped += message.len() as u64;
            return;
        }
        self.logged += message.len();
        if message.len() > MAX_LOG_MESSAGE {
            message.truncate(crate::inert::cut(&message, MAX_LOG_MESSAGE).len());
            message.push_str("...");
        }
        task_event(level, &self.job, "log", &message);
    }
}

impl job::Host for HostState {
    fn id(&mut self) -> String {
        // Fault injection for the unit tests of the panic boundary (`exec`): no other way
        // makes a host function panic once its bugs are fixed.
        #[cfg(test)]
        if &*self.job == crate::exec::tests::PANICKING_JOB {
            panic!("a host panic injected by the tests");
        }
        self.job.to_string()
    }

    fn attempt(&mut self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        let mut l = MemoryLimiter {
            limit: 100,
            used: 0,
            hit: false,
        };
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory may not take the first one's share.
        assert!(l.memory_growing(0, 60, None).is_err());
        assert!(l.hit);
        // Growing an existing memory counts only the growth.
        let mut l = MemoryLimiter {
            limit: 100,
            used: 0,
            hit: false,
        };
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
    }
}
