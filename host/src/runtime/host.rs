//! The host side of the WIT world: what a task can call, and the store's data.
//!
//! Host functions here never block and never fail the store: checkpoint saves go to the
//! in-memory [`Checkpointer`] (uploads happen in the background), so none of them is
//! `async`. Errors are WIT errors the guest handles (the inner result), not traps.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::taskhost::task::{checkpoint, job, log, progress};
use super::output::{LogBudget, LogPipe};
use super::sandbox::{MAX_RESOURCES_PER_TASK, TaskLimiter, wasi_with_nothing_granted};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::files::JobFiles;
use crate::nn::NnJob;

/// Everything a running task's store holds.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: TaskLimiter,
    pub(super) job: Arc<str>,
    pub(super) attempt: u32,
    pub(super) checkpoint: Checkpointer,
    pub(super) files: JobFiles,
    /// The run's inference (`wasi:nn`): its graphs, tensors and host compute time.
    pub(super) nn: NnJob,
    pub(super) stderr: LogPipe,
    /// The first progress report of this run (proves where a resumed run started).
    pub(super) first_progress: Option<(u64, u64)>,
    /// What `log.write` messages may still log in this run, and the bytes dropped.
    pub(super) log: LogBudget,
}

impl HostState {
    pub(super) fn new(
        job: Arc<str>,
        attempt: u32,
        checkpoint: Checkpointer,
        files: JobFiles,
        nn: NnJob,
        memory_bytes: usize,
    ) -> Self {
        let stdout = LogPipe::new(job.clone(), "stdout");
        let stderr = LogPipe::new(job.clone(), "stderr");
        let wasi = wasi_with_nothing_granted(stdout, stderr.clone());
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES_PER_TASK);
        HostState {
            wasi,
            table,
            limiter: TaskLimiter::new(memory_bytes),
            job,
            attempt,
            checkpoint,
            files,
            nn,
            stderr,
            first_progress: None,
            log: LogBudget::default(),
        }
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
        self.log.log(&self.job, level, message)
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
