//! `taskhost demo` as the README runs it (a shorter variant), and its verification failing.

use crate::support;

use std::process::{Command, Output};

fn demo(dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args([
            "demo",
            "--quiet",
            "--jobs",
            "6",
            "--workers",
            "2",
            "--steps",
            "60",
        ])
        .args(["--step-ms", "25", "--timeout-secs", "90", "--module"])
        .arg(support::guests::wasm("step_counter"))
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .env_remove("PROJECT_ID")
        .env_remove("R2_BUCKET_NAME")
        .output()
        .unwrap()
}

#[test]
fn the_demo_kills_a_worker_resumes_its_jobs_and_verifies_every_result() {
    let tmp = tempfile::tempdir().unwrap();
    let out = demo(tmp.path(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("6/6 results verified"), "{text}");
    assert!(text.contains("SIGKILL"), "{text}");
    assert!(
        text.contains("resumed on another worker from step"),
        "{text}"
    );
    let resumes = text
        .lines()
        .find_map(|l| l.strip_prefix("resumes   "))
        .expect("a resumes line");
    assert!(!resumes.starts_with("0 of"), "{text}");
    // One more job was cancelled mid-run: stopped, no result.
    assert!(text.contains("cancelled demo-cancel at step"), "{text}");
    assert!(
        text.contains("cancel    demo-cancel: cancelled at step"),
        "{text}"
    );
    assert!(text.contains("no result"), "{text}");
    assert!(text.trim_end().ends_with("demo ok"), "{text}");
}

#[test]
fn the_demo_fails_when_a_result_is_wrong() {
    // A wrong result stored (with its checkpoint, as a finished job leaves them) before the
    // demo runs: the worker acks the job without running it (its result exists), so only the
    // demo's own verification can catch it. (A result without a checkpoint would be taken
    // for a stale worker's write and replaced by the job's owner.)
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("store/jobs/demo-03");
    std::fs::create_dir_all(&job).unwrap();
    let header = taskhost::checkpoint::Header::default();
    std::fs::write(
        job.join("checkpoint"),
        taskhost::checkpoint::encode(&header, None),
    )
    .unwrap();
    std::fs::write(
        job.join("result"),
        r#"{"job_id":"demo-03","steps":75,"sum":1}"#,
    )
    .unwrap();
    let out = demo(tmp.path(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("WRONG     demo-03: wrong result"), "{text}");
    assert!(text.contains("demo FAILED: 1 of 6"), "{text}");
}
