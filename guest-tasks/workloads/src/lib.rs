//! `workloads.wasm`: the benchmark's task module, one of five CPU-bound workloads per job.
//!
//! Input: `{"job_id": .., "workload": "md" | "sha256" | "sort" | "json" | "compress",
//! "scale": N}` (what `scale` means: [`workloads_core`]). It runs
//! [`workloads_core::Workload::run`], the same code the host's benchmark runs natively,
//! in one go (no checkpoint: the benchmark measures the code, not the checkpoints).
//!
//! Output: `{"job_id": .., "workload": .., "scale": N, "checksum": C}`, where `C` equals
//! what the native run returns.

use serde::{Deserialize, Serialize};
use taskhost_guest::{Error, Task};
use workloads_core::Workload;

/// The job document.
#[derive(Deserialize)]
struct Input {
    job_id: String,
    workload: String,
    scale: u64,
}

/// The result document.
#[derive(Serialize)]
struct Output {
    job_id: String,
    workload: String,
    scale: u64,
    checksum: u64,
}

struct Workloads;

impl Task for Workloads {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, Error> {
        let workload: Workload = input.workload.parse()?;
        let checksum = workload.run(input.scale);
        Ok(Output {
            job_id: input.job_id,
            workload: input.workload,
            scale: input.scale,
            checksum,
        })
    }
}

taskhost_guest::export_task!(Workloads);
