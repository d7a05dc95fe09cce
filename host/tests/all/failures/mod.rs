//! Failure paths that no other scenario reaches, each through the real parts: the embedded
//! queue and the directory store under real `taskhost worker` processes, the executor in
//! process on both stores.
//!
//! - `worker`: an unreadable checkpoint is dead-lettered with its reason, traps are retried
//!   up to `MAX_FAILURES`, a dead letter whose error write fails hands the message back;
//! - `exec`: the end-of-job ownership proof refuses a result, a full instance pool is a host
//!   fault.

mod exec;
mod worker;
