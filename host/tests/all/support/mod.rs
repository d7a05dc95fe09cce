//! Helpers shared by the integration tests: the task modules, and real servers (the
//! official Pub/Sub emulator, an S3 server) started on free ports and stopped by PID.
// The servers are stopped, frozen and thawed with kill(2), which has no safe form in std.
#![allow(unsafe_code)]

pub mod bytes;
pub mod child;
pub mod cli;
pub mod embedded;
pub mod exec;
pub mod guests;
pub mod http;
pub mod imds;
pub mod probes;
pub mod pubsub;
pub mod s3;
pub mod salad_api;
#[cfg(target_arch = "x86_64")]
pub mod seccomp;
pub mod stack;
pub mod sts;
