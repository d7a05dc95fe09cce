//! Facts about the current job.

use crate::bindings::taskhost::task::job as raw;

/// The job's id: 1..=200 characters from `[A-Za-z0-9._-]`.
pub fn id() -> String {
    raw::id()
}

/// Which run of the job this is: 1 for the first run, `n` for the `n`-th (a resume after
/// an interruption, a lost lease or a failure). Use [`crate::checkpoint::load`], not the
/// attempt number, to decide whether to resume: a run may have ended before it saved.
pub fn attempt() -> u32 {
    raw::attempt()
}
