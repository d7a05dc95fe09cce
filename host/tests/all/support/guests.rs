//! Paths of the task modules built by `tests/build-guests.sh`.

use std::path::PathBuf;

/// The built `.wasm` of a guest crate (`step_counter`, `prime_count`, `misbehave`,
/// `other_world`). Panics with the fix when it is missing: tests never skip.
pub fn wasm(name: &str) -> PathBuf {
    let dir = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/target"),
    };
    let path = dir
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the task modules first with tests/build-guests.sh \
         (tests/run-all.sh does it)",
        path.display()
    );
    path
}

pub fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(wasm(name)).unwrap()
}
