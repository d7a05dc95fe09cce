//! Model inference for tasks (`wasi:nn`, world 0.3.0) on ONNX Runtime, loaded at run time
//! from [`NnConfig::ort_dylib`].
//!
//! **Invariants:** ONNX Runtime runs in the worker's process, so everything a task hands it is
//! checked first (model bytes hashed and size-capped, tensor dimensions, types and data lengths
//! with checked arithmetic, see [`tensor`]); a model ONNX Runtime rejects is an error for the
//! task. Host memory for graphs and tensors is held in two [`budget::Budget`]s, the job's and
//! the worker's: nothing is allocated on a task's behalf past either. Loading and inference run
//! on the job's inference thread ([`thread`]: long-lived, a 64 MiB stack, never an async
//! thread or the task's fiber); an inference whose task is stopped (wall-clock limit,
//! cancellation) is terminated through ONNX Runtime's run options, and a call's charges are
//! held by the call itself, so a stopped run's graph build (which cannot be terminated) keeps
//! them until it returns. The threads alive are bounded ([`MAX_STOPPED_THREADS`]). ONNX Runtime is loaded at
//! the worker's first graph load, not at its start (which only checks the library). A worker
//! without ONNX Runtime runs every task; `load` answers `unsupported-operation`.
//!
//! **API boundary:** this module knows nothing of WIT: `runtime/nn.rs` adapts the generated
//! `wasi:nn` traits onto [`NnJob`].

pub mod budget;
pub mod cache;
pub mod engine;
mod job;
pub mod tensor;
pub mod thread;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub use job::{ContextHandle, CopyCharge, GraphHandle, ModelCharge, NnJob, TensorHandle};

/// Where inference runs: ONNX Runtime's execution provider for every graph of the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    /// The CPU (the default; the one tested).
    #[default]
    Cpu,
    /// An NVIDIA GPU through CUDA (`onnxruntime-gpu`'s library and CUDA's on the machine). A
    /// graph load fails with ONNX Runtime's message when CUDA cannot be used.
    Cuda,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Provider, String> {
        match s {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            _ => Err(format!("unknown execution provider `{s}` (cpu or cuda)")),
        }
    }
}

/// What a task's graph load gets when the worker's ONNX Runtime cannot be used.
const NOT_LOADED: &str = "this worker's ONNX Runtime did not load (the worker's log says why)";

/// Idle inference threads a worker keeps for its next jobs, at most, and never more than its
/// slots (a job holds one while it runs, so more would never be taken).
const MAX_IDLE_THREADS: usize = 16;

/// Inference threads a worker has alive beyond one per slot, at most: those still finishing a
/// stopped run's call (a graph build ONNX Runtime cannot terminate; a terminated inference
/// ends soon). Each holds a core until its call returns and reserves a 64 MiB stack, so a task
/// whose slow loads keep hitting its wall-clock limit cannot grow them without end; past the
/// bound a load or inference is `runtime-error` ("inference threads busy"), the worker stays
/// up.
pub const MAX_STOPPED_THREADS: usize = 16;

/// A graph's estimated host memory is this many times its model's size (the model's bytes
/// while it loads, then the session's weights and buffers).
pub const GRAPH_COST_FACTOR: u64 = 2;
/// The most dimensions a tensor a task makes may have (its rank). ONNX sets no limit, but
/// no model a task could want comes near it: numpy (1.x) stops at 32, ONNX Runtime's CUDA
/// kernels at 8. A constructor past it traps the task, before anything is charged or kept.
pub const MAX_TENSOR_RANK: usize = 32;

/// Bytes of a name the task passed (or a model declares) that a wasi-nn error message
/// quotes, at most: the rest is cut (`...`). Errors are kept in the task's resource table
/// until it drops them, so a message never holds a task's text at length.
pub const MAX_QUOTED_BYTES: usize = 64;

/// Bytes of a wasi-nn error message, at most (ONNX Runtime's own messages may quote the
/// model): the rest is cut.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Default [`NnConfig::job_memory`]: 1 GiB.
pub const DEFAULT_JOB_MEMORY: u64 = 1 << 30;
/// Default [`NnConfig::worker_memory`]: 4 GiB.
pub const DEFAULT_WORKER_MEMORY: u64 = 4 << 30;
/// Default [`NnConfig::cache_bytes`]: 2 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

/// The worker's wasi-nn settings.
#[derive(Clone, Debug)]
pub struct NnConfig {
    /// ONNX Runtime's shared library (`libonnxruntime.so*`); `None`: no inference on this
    /// worker (a task's `load` gets `unsupported-operation`).
    pub ort_dylib: Option<PathBuf>,
    /// The execution provider.
    pub provider: Provider,
    /// ONNX Runtime's intra-op threads per inference.
    pub threads: usize,
    /// Host memory one job may hold in graphs and tensors at once, in bytes.
    pub job_memory: u64,
    /// Host memory all jobs of the worker may hold in graphs and tensors at once (cached
    /// graphs included), in bytes.
    pub worker_memory: u64,
    /// Bytes of graphs kept loaded for later jobs (within `worker_memory`).
    pub cache_bytes: u64,
}

impl Default for NnConfig {
    fn default() -> Self {
        NnConfig {
            ort_dylib: None,
            provider: Provider::Cpu,
            threads: 1,
            job_memory: DEFAULT_JOB_MEMORY,
            worker_memory: DEFAULT_WORKER_MEMORY,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The wasi-nn error code a task sees (the WIT `error-code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A tensor, name or argument does not fit the graph.
    InvalidArgument,
    /// Not an ONNX model (or another encoding than ONNX).
    InvalidEncoding,
    /// ONNX Runtime failed.
    RuntimeError,
    /// This worker serves no inference (no ONNX Runtime), or a type it does not serve.
    UnsupportedOperation,
    /// Past the job's or the worker's memory cap.
    TooLarge,
    /// No input of that name.
    NotFound,
}

/// A wasi-nn error: its code and what happened (the WIT `error` resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NnError {
    /// The code.
    pub code: ErrorCode,
    /// What happened, for the task (no paths, keys or secrets).
    pub message: String,
}

impl NnError {
    /// An error of `code` saying `message`, cut to [`MAX_MESSAGE_BYTES`] (between
    /// characters).
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> NnError {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let keep = crate::inert::cut(&message, MAX_MESSAGE_BYTES - 3).len();
            message.truncate(keep);
            message.push_str("...");
        }
        NnError { code, message }
    }
}

/// `text` (a name the task passed, or one its model declares) as an error message quotes it:
/// in backquotes, at most [`MAX_QUOTED_BYTES`] of it (`...` when cut), made inert
/// ([`crate::inert::Inert`]) for the log lines the message may reach.
pub(crate) fn quoted(text: &str) -> String {
    let kept = crate::inert::cut(text, MAX_QUOTED_BYTES);
    let more = if kept.len() < text.len() { "..." } else { "" };
    format!("`{}{more}`", crate::inert::Inert(kept))
}

/// Counts of what the worker's graph loads did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NnStats {
    /// Graphs built by ONNX Runtime (cache misses that loaded).
    pub built: u64,
    /// Loads served from the cache.
    pub cache_hits: u64,
    /// Graphs loaded now (the cache's).
    pub cached: usize,
    /// Bytes held in the worker's budget now.
    pub worker_bytes: u64,
}

/// The worker's inference service: ONNX Runtime (when configured; loaded at the first graph
/// load, so a worker that runs no inference never maps it), the memory budget of all its jobs
/// and the graph cache. One per [`Runtime`](crate::runtime::Runtime).
pub struct NnService {
    /// Why this worker serves no inference: no library configured, or one that failed the
    /// start-up check ([`engine::check_library`]).
    unserved: Option<String>,
    /// ONNX Runtime, once the first graph load loaded it (or failed to).
    ort: OnceLock<Result<engine::Ort, String>>,
    config: NnConfig,
    worker: Arc<budget::Budget>,
    cache: cache::GraphCache,
    built: AtomicU64,
    hits: AtomicU64,
    /// Inference threads: ended jobs' idle ones for the next, and the bound on those alive.
    threads: thread::Pool,
}

impl NnService {
    /// The service for `config`. A configured library is checked (it is a file and exports
    /// ONNX Runtime's entry point) but not loaded: a worker that never loads a graph pays
    /// nothing for it. A library that fails the check is logged now, at start, and leaves the
    /// worker without inference (every other task runs); it never fails the worker. `slots`:
    /// the jobs the worker runs at once (its inference threads are bounded by them).
    pub fn new(config: NnConfig, slots: usize) -> Arc<NnService> {
        let unserved = match &config.ort_dylib {
            None => Some(
                "this worker has no ONNX Runtime (its ORT_DYLIB_PATH setting is not set)"
                    .to_owned(),
            ),
            Some(path) => match engine::check_library(path) {
                Ok(()) => {
                    tracing::info!(library = %path.display(), provider = ?config.provider, "ONNX Runtime found: wasi-nn served (the library loads at the first graph load)");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ONNX Runtime is not usable: tasks get no inference");
                    Some(NOT_LOADED.to_owned())
                }
            },
        };
        Arc::new(NnService {
            unserved,
            ort: OnceLock::new(),
            worker: budget::Budget::new(config.worker_memory),
            cache: cache::GraphCache::new(config.cache_bytes.min(config.worker_memory)),
            config,
            built: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            threads: thread::Pool::new(
                slots.min(MAX_IDLE_THREADS),
                slots.saturating_add(MAX_STOPPED_THREADS),
            ),
        })
    }

    /// ONNX Runtime, loaded by the first caller (blocking: on an inference thread). A library
    /// that does not load is logged once; every call then answers the same error.
    pub(crate) fn ort(&self) -> Result<&engine::Ort, String> {
        let loaded = self.ort.get_or_init(|| {
            let Some(path) = &self.config.ort_dylib else {
                return Err(self.unserved.clone().unwrap_or_default());
            };
            match engine::load(path, self.config.provider, self.config.threads) {
                Ok(ort) => {
                    tracing::info!(library = %path.display(), provider = ?self.config.provider, "ONNX Runtime loaded");
                    Ok(ort)
                }
                Err(e) => {
                    tracing::error!(error = %e, "ONNX Runtime did not load: tasks get no inference");
                    Err(NOT_LOADED.to_owned())
                }
            }
        });
        loaded.as_ref().map_err(Clone::clone)
    }

    /// Whether ONNX Runtime is loaded in this worker now (it is at the first graph load).
    pub fn loaded(&self) -> bool {
        matches!(self.ort.get(), Some(Ok(_)))
    }

    /// Whether this worker serves inference: a library is configured, passed the start-up
    /// check and (if loaded already) loaded.
    pub fn available(&self) -> bool {
        self.unserved.is_none() && !matches!(self.ort.get(), Some(Err(_)))
    }

    /// The settings.
    pub fn config(&self) -> &NnConfig {
        &self.config
    }

    /// A new run's state: its own budget of [`NnConfig::job_memory`].
    pub fn job(self: &Arc<Self>) -> NnJob {
        NnJob::new(self.clone())
    }

    /// What the graph loads did so far.
    pub fn stats(&self) -> NnStats {
        NnStats {
            built: self.built.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
            cached: self.cache.len(),
            worker_bytes: self.worker.used(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quote_a_tasks_text_short_and_inert_and_are_capped() {
        let long = "n".repeat(1 << 20);
        let q = quoted(&long);
        assert_eq!(q, format!("`{}...`", &long[..MAX_QUOTED_BYTES]));
        assert_eq!(quoted("x"), "`x`");
        // Cut between characters, escaped: at most 6 bytes shown per byte kept.
        let hostile = format!("日本{}", "\x1b".repeat(1 << 20));
        let q = quoted(&hostile);
        assert!(q.len() <= 6 * MAX_QUOTED_BYTES + 5, "{}", q.len());
        assert!(q.starts_with("`日本\\u{1b}") && !q.contains('\x1b'), "{q}");
        let e = NnError::new(ErrorCode::RuntimeError, "é".repeat(1 << 20));
        assert!(e.message.len() <= MAX_MESSAGE_BYTES, "{}", e.message.len());
        assert!(e.message.ends_with("é..."));
        let short = NnError::new(ErrorCode::RuntimeError, "as it is");
        assert_eq!(short.message, "as it is");
    }
}
