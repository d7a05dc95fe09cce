//! Progress of the job, shown by `taskhost status` and in metrics.

use crate::bindings::taskhost::task::progress as raw;

/// Reports that `done` of `total` units of work are complete.
///
/// Cheap (the host only keeps the latest value, and stores it with the next
/// checkpoint): call it as often as every step. The units are the task's own (steps,
/// numbers, bytes, ...); `done` should not exceed `total`.
pub fn report(done: u64, total: u64) {
    raw::report(done, total);
}
