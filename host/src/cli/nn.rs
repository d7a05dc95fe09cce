//! The wasi-nn settings of the commands that run tasks (`worker`, `run`).

use std::path::PathBuf;

use clap::Args;
use taskhost::nn::{NnConfig, Provider};

/// Model inference for tasks (`wasi:nn`, world 0.3.0) on ONNX Runtime.
#[derive(Args, Debug, Clone)]
pub struct NnArgs {
    /// ONNX Runtime's shared library (`libonnxruntime.so*`, e.g. from the `onnxruntime` or
    /// `onnxruntime-gpu` wheel's `onnxruntime/capi/`), release 1.27 or newer (older ones let a
    /// model read the worker's files and memory: refused). Unset: tasks run, but a graph load
    /// gets `unsupported-operation`.
    #[arg(long = "ort-dylib-path", env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub ort_dylib_path: Option<PathBuf>,
    /// ONNX Runtime's execution provider: `cpu`, or `cuda` (needs `onnxruntime-gpu`'s library
    /// and CUDA on the machine; a graph load fails when CUDA cannot be used).
    #[arg(long = "nn-provider", env = "TASK_NN_PROVIDER", default_value = "cpu", value_parser = parse_provider)]
    pub provider: Provider,
    /// ONNX Runtime threads per inference.
    #[arg(long = "nn-threads", env = "TASK_NN_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Host memory one job may hold in graphs and tensors, in MiB; past it a load or an
    /// inference fails with `too-large`.
    #[arg(long = "nn-job-memory-mb", env = "TASK_NN_JOB_MEMORY_MB", default_value_t = taskhost::nn::DEFAULT_JOB_MEMORY >> 20)]
    pub job_memory_mb: u64,
    /// Host memory all jobs of the worker may hold in graphs and tensors (cached graphs
    /// included), in MiB.
    #[arg(long = "nn-worker-memory-mb", env = "TASK_NN_WORKER_MEMORY_MB", default_value_t = taskhost::nn::DEFAULT_WORKER_MEMORY >> 20)]
    pub worker_memory_mb: u64,
    /// Loaded graphs kept for later jobs with the same model, in MiB of their estimated memory.
    #[arg(long = "nn-cache-mb", env = "TASK_NN_CACHE_MB", default_value_t = taskhost::nn::DEFAULT_CACHE_BYTES >> 20)]
    pub cache_mb: u64,
}

fn parse_provider(s: &str) -> Result<Provider, String> {
    s.parse()
}

impl NnArgs {
    /// The library's settings.
    pub fn config(&self) -> NnConfig {
        NnConfig {
            ort_dylib: self.ort_dylib_path.clone(),
            provider: self.provider,
            threads: self.threads.max(1),
            job_memory: self.job_memory_mb.saturating_mul(1 << 20),
            worker_memory: self.worker_memory_mb.saturating_mul(1 << 20),
            cache_bytes: self.cache_mb.saturating_mul(1 << 20),
        }
    }
}
