//! The task modules the library's unit tests run (`cfg(test)` only): built by
//! `tests/build-guests.sh` into `$GUEST_TARGET_DIR`, else `guest-tasks/target`.
//!
//! The one file of the library that reads the environment, and it is compiled only into the
//! unit tests; `.ci/run` names it as the exception to "the library reads no environment".

use std::path::PathBuf;

/// The bytes of the release build of the guest crate `name` (e.g. `hostile`); panics with
/// the command that builds it when it is missing.
pub(crate) fn wasm(name: &str) -> Vec<u8> {
    let dir = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/target"),
    };
    let path = dir.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the task modules with tests/build-guests.sh",
            path.display()
        )
    })
}
