//! taskhost: a WASM-sandboxed task host for long-running jobs on interruptible nodes.
//!
//! See ARCHITECTURE.md for the code map and the invariants.

// Every public item of the library says what it is (CI's `-D warnings` makes this an error);
// the binary (`src/cli/`), the tests and the benches are not held to it.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod exec;
pub mod files;
pub mod ids;
pub mod inert;
pub mod job;
pub mod keys;
pub mod memory;
pub mod modules;
pub mod nn;
pub mod observe;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod salad;
pub mod status;
pub mod store;
pub mod time;
pub mod worker;

#[cfg(test)]
mod props;
#[cfg(test)]
mod test_guests;
