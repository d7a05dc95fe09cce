//! Every storage key taskhost reads or writes, built in this one module, only from validated
//! ids ([`JobId`], [`ModuleHash`]): no other module formats a key.
//!
//! | key | what |
//! |---|---|
//! | `modules/<sha256-hex>.wasm` | a task module, create-only |
//! | `jobs/<job_id>/checkpoint` | the job's checkpoint: its fence and lease record |
//! | `jobs/<job_id>/result` | the job's result, create-only |
//! | `jobs/<job_id>/error` | why the job was dead-lettered |
//! | `taskhost-probe/<name>` | a worker's startup write check (deleted at once) |

use crate::ids::{JobId, ModuleHash};

/// Where every job's objects live.
pub const JOBS_PREFIX: &str = "jobs/";

pub fn module(hash: &ModuleHash) -> String {
    format!("modules/{}.wasm", hash.hex())
}

pub fn checkpoint(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/checkpoint")
}

pub fn result(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/result")
}

pub fn error(job: &JobId) -> String {
    format!("{JOBS_PREFIX}{job}/error")
}

/// A probe object's key; `name` must be made of `[A-Za-z0-9._-]` (a worker id is).
pub fn probe(name: &str) -> String {
    format!("taskhost-probe/{name}")
}
