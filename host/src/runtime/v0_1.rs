//! The 0.1.0 world's imports, served by the same host state as 0.3.0's (its interfaces are
//! 0.3.0's taskhost interfaces without `inputs` and `artifacts`).

super::forward::forward_core!(
    world: super::bindings::v0_1::taskhost::task,
    now: super::bindings::taskhost::task
);
