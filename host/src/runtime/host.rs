//! The host side of the WIT world: what a task can call, and the store's data.
//!
//! Host functions here never block and never fail the store: checkpoint saves go to the
//! in-memory [`Checkpointer`] (uploads happen in the background), so none of them is
//! `async`. Errors are WIT errors the guest handles (the inner result), not traps.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::taskhost::task::{checkpoint, job, log, progress};
use super::output::{LogPipe, task_event};
use super::sandbox::{
    MAX_LOG_BYTES_PER_RUN, MAX_LOG_MESSAGE_BYTES, TaskLimiter, wasi_with_nothing_granted,
};
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
        nn: NnJob,
        memory_bytes: usize,
    ) -> Self {
        let stdout = LogPipe::new(job.clone(), "stdout");
        let stderr = LogPipe::new(job.clone(), "stderr");
        let wasi = wasi_with_nothing_granted(stdout, stderr.clone());
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: TaskLimiter::new(memory_bytes),
            job,
            attempt,
            checkpoint,
            files,
            nn,
            stderr,
            first_progress: None,
            logged: 0,
            log_dropped: 0,
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
        if message.len() > MAX_LOG_MESSAGE_BYTES {
            message.truncate(crate::inert::cut(&message, MAX_LOG_MESSAGE_BYTES).len());
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
