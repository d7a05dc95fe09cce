//! A task that writes huge buffers: the host's memory stays bounded.

use crate::support;
use support::cli::wait_with_peak_rss;

/// The artifacts of the huge-writes run, and the size of each write call.
const HUGE_ARTIFACTS: u64 = 8;
const HUGE_CALL: u64 = 64 << 20;
/// What that run's host may hold at once: the guest's memory (its call buffer), the call's
/// copy, one part per open artifact, and the process's own (engine, compiled module,
/// runtime: 64 MiB). Measured with the fixed mmap threshold: about 190 MiB.
const HUGE_WRITES_HELD: u64 =
    2 * HUGE_CALL + HUGE_ARTIFACTS * taskhost::files::PART_BYTES as u64 + (64 << 20);
/// The bound on its peak RSS: halfway from what it may hold to what a host that kept each
/// artifact's whole call buffer instead of a part would hold (the bug: ~450 MiB more).
const HUGE_WRITES_RSS_BOUND: u64 =
    HUGE_WRITES_HELD + HUGE_ARTIFACTS * (HUGE_CALL - taskhost::files::PART_BYTES as u64) / 2;

/// Peak resident memory of a `taskhost run` whose task writes 8 artifacts in 64 MiB calls:
/// the host holds one part (8 MiB) per open artifact besides the call's own buffer, not a
/// copy of everything written (before the fix each artifact kept a 64 MiB buffer: ~700 MiB).
#[test]
fn huge_artifact_writes_keep_host_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = support::guests::wasm("hostile");
    let (out, err) = (tmp.path().join("out"), tmp.path().join("err"));
    let child = std::process::Command::new(support::cli::BIN)
        .args(["run", wasm.to_str().unwrap(), "--store"])
        .arg(tmp.path().join("store"))
        .args([
            "--memory-mb",
            "256",
            "--input",
            r#"{"job_id":"big","mode":"big_writes","artifacts":8,"call_mb":64,"calls":1}"#,
        ])
        .env("TASKHOST_CACHE_DIR", tmp.path().join("cache"))
        // The binary's Rust heap is mimalloc's (measured: 212 to 216 MiB); these two keep
        // glibc's malloc, which served it before and still serves C code, from keeping freed
        // buffers resident by schedule (an arena per thread, and a mmap threshold that rises
        // with each large buffer freed): a fixed threshold makes every buffer of 128 KiB or
        // more a mapping of its own, returned when freed, so the peak counts what is held.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let (status, peak) = wait_with_peak_rss(child);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status, 0, "{stderr}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    let doc: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(doc["written"], 8u64 << 26);
    eprintln!("peak RSS of taskhost run: {} MiB", peak >> 20);
    assert!(
        peak < HUGE_WRITES_RSS_BOUND,
        "peak RSS {} MiB (bound {} MiB)",
        peak >> 20,
        HUGE_WRITES_RSS_BOUND >> 20
    );
}
