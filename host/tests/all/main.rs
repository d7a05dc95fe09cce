//! The integration tests, one binary (as wasmtime's `tests/all`): one module per area, the
//! shared helpers in `support` compiled once. Run one area with
//! `cargo test --test all <area>::`, one test with `cargo test --test all <area>::<name>`.

mod support;

mod autoscale;
mod bad_input;
mod cli_run;
mod control;
mod demo;
mod failures;
mod files;
mod files_e2e;
mod hostile;
mod keyless;
mod lanes;
mod launch;
mod leasing;
mod localqueue;
mod module_cache;
mod nn;
mod observe;
mod outages;
mod pubsub_emulator;
mod queue_contract;
mod registry;
mod runtime;
mod salad;
mod settings;
mod status;
mod store_contract;
mod store_s3;
mod worker_e2e;
