//! `taskhost run` as a user runs it: a separate process, exit codes, messages.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

fn taskhost(store: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env("TASKHOST_CACHE_DIR", cache)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_prints_the_result_and_resumes_after_a_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let wasm = support::guests::wasm("step_counter");
    let wasm = wasm.to_str().unwrap();

    let out = taskhost(
        &store,
        &cache,
        &["run", wasm, "--input", r#"{"job_id":"job-0","steps":600}"#],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(v["sum"], 180300);
    assert!(stderr(&out).contains("module compiled"), "{}", stderr(&out));

    // A second process reuses the compiled module from the disk cache, and the finished
    // job is not run again.
    let out = taskhost(
        &store,
        &cache,
        &["run", wasm, "--input", r#"{"job_id":"job-0","steps":600}"#],
    );
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("loaded from the disk cache"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("module compiled"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("already done"), "{}", stderr(&out));
    assert_eq!(last_line(&out), v.to_string());

    // Cut off by fuel: exit 4, checkpoint kept; rerun resumes and finishes.
    let input = r#"{"job_id":"big","steps":4000000,"checkpoint_every":1000}"#;
    let out = taskhost(
        &store,
        &cache,
        &["run", wasm, "--input", input, "--fuel", "30000000"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run again to resume"),
        "{}",
        stderr(&out)
    );
    let out = taskhost(&store, &cache, &["run", wasm, "--input", input]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("attempt 2"), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(v["sum"], 4000000u64 * 4000001 / 2);
}

#[test]
fn run_explains_each_failure_class() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let text = tmp.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let misbehave = support::guests::wasm("misbehave");
    let other = support::guests::wasm("other_world");
    let cases: &[(&Path, &str, &[&str], i32, &str)] = &[
        (&text, "{}", &[], 3, "not a WebAssembly file"),
        (&core, "{}", &[], 3, "not a component"),
        (&other, "{}", &[], 3, "another world"),
        // Any other error (a file, a setting) is 7, apart from the task's own failure (1).
        (Path::new("/nonexistent.wasm"), "{}", &[], 7, "cannot read"),
        (&misbehave, "{}", &["--memory-mb", "0"], 7, "TASK_MEMORY_MB"),
        (
            &misbehave,
            "{}",
            &["--memory-mb", "lots"],
            2,
            "invalid value",
        ),
        (
            &misbehave,
            r#"{"mode":"fail"}"#,
            &[],
            1,
            "the task failed: the task failed on purpose",
        ),
        (&misbehave, r#"{"mode":"panic"}"#, &[], 4, "panicked"),
        (
            &misbehave,
            r#"{"mode":"loop"}"#,
            &["--fuel", "1000000"],
            4,
            "fuel budget exhausted",
        ),
        (
            &misbehave,
            r#"{"mode":"loop"}"#,
            &["--timeout-secs", "0.2"],
            4,
            "wall-clock limit",
        ),
        (
            &misbehave,
            r#"{"mode":"membomb"}"#,
            &["--memory-mb", "32"],
            4,
            "memory limit",
        ),
    ];
    for (i, (module, input, extra, code, msg)) in cases.iter().enumerate() {
        let job = format!("case-{i}");
        let mut args = vec![
            "run",
            module.to_str().unwrap(),
            "--input",
            input,
            "--job-id",
            &job,
        ];
        args.extend_from_slice(extra);
        let out = taskhost(&store, &cache, &args);
        assert_eq!(out.status.code(), Some(*code), "case {i}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(msg),
            "case {i}: wanted {msg:?} in {}",
            stderr(&out)
        );
    }
}

/// A job whose checkpoint cannot be used (bytes that are no checkpoint) is not a storage
/// error to retry (6) but an error that running again will not cure (7), and the message
/// says what will.
#[test]
fn an_unusable_checkpoint_is_not_a_storage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let checkpoint = store.join("jobs/garbled/checkpoint");
    std::fs::create_dir_all(checkpoint.parent().unwrap()).unwrap();
    std::fs::write(&checkpoint, b"no checkpoint at all").unwrap();
    let wasm = support::guests::wasm("step_counter");
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "--input",
        "{}",
        "--job-id",
        "garbled",
    ];
    let out = taskhost(&store, &cache, &args);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("taskhost job reset garbled"),
        "{}",
        stderr(&out)
    );
}

/// A log filter that does not parse is not ignored in silence: the warning names it.
#[test]
fn a_log_filter_that_does_not_parse_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["run", "/nonexistent.wasm", "--input", "{}"])
        .env("RUST_LOG", "taskhost=[[[")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("does not parse") && err.contains("taskhost=[[["),
        "{err}"
    );
}

/// Whatever a task writes (`log.write`, stdout, stderr, its error) stays inside the host's
/// log lines, escaped and marked as the task's: no line of the log, nor of `status`, starts
/// with the text it forged (misbehave's `forge` mode puts it after newlines, carriage
/// returns, ANSI escapes, NUL, line separators and bidi overrides).
#[test]
fn task_text_cannot_forge_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let misbehave = support::guests::wasm("misbehave");
    let args = [
        "run",
        misbehave.to_str().unwrap(),
        "--input",
        r#"{"mode":"forge"}"#,
        "--job-id",
        "forge",
    ];
    let out = taskhost(&store, &cache, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stderr(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["status", "forge", "--store-dir"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("failed"), "{status}");

    for (what, text) in [("the log", &log), ("status", &status)] {
        // A terminal starts over at a carriage return too.
        for line in text.split(['\n', '\r']) {
            assert!(
                !line.trim_start().starts_with("FORGED"),
                "{what} has a forged line {line:?}:\n{text}"
            );
        }
        let control = text.chars().find(|&c| c != '\n' && c.is_control());
        assert_eq!(control, None, "{what}:\n{text}");
    }
    // Every piece arrived, one event each, escaped, in the task's field.
    let forged = "FORGED: job done; result stored";
    for want in [
        format!(r#"source="task" stream="log" text=innocent\n{forged}"#),
        format!(r#"source="task" stream="log" text=innocent\r{forged}"#),
        format!(r#"stream="log" text=\u{{1b}}[1A\u{{1b}}[2K\r{forged} \u{{1b}}[31mred"#),
        format!(r#"source="task" stream="stdout" text=innocent\r{forged}"#),
        format!(r#"stream="stdout" text=\u{{1b}}[2K\u{{1b}}[0G{forged}\u{{0}} 日本語"#),
        format!(r#"stream="stderr" text=innocent\r{forged}\u{{2028}}{forged}\u{{202e}}{forged}"#),
        format!(r"the task failed: innocent\n{forged}\r{forged}"),
    ] {
        assert!(log.contains(&want), "{want:?} missing from:\n{log}");
    }
    assert!(
        status.contains(&format!(r"error innocent\n{forged}\r{forged}")),
        "{status}"
    );
}

#[test]
fn run_help_explains_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--input",
        "--store",
        "--job-id",
        "--fuel",
        "--memory-mb",
        "--timeout-secs",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// `job reset` deletes a job's stored state (asking first; `--yes` for scripts), so the same
/// job id can then run other work; without it, other work is refused.
#[test]
fn job_reset_lets_a_job_id_run_other_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let wasm = support::guests::wasm("step_counter");
    let wasm = wasm.to_str().unwrap();
    let run = |steps: u32| {
        let input = format!(r#"{{"job_id":"again","steps":{steps}}}"#);
        taskhost(&store, &cache, &["run", wasm, "--input", &input])
    };
    let reset = |extra: &[&str]| {
        let mut args = vec!["job", "reset", "again"];
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_taskhost"))
            .args(&args)
            .arg("--store-dir")
            .arg(&store)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    assert!(run(10).status.success());
    let other = run(20);
    assert_eq!(other.status.code(), Some(5), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("stored for other work"),
        "{}",
        stderr(&other)
    );

    // Not a terminal and no --yes: nothing deleted.
    let refused = reset(&[]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(run(20).status.code(), Some(5));

    let done = reset(&["--yes"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(said.contains("deleted result, checkpoint"), "{said}");
    let out = run(20);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(v["sum"], 210);
}

/// `taskhost task new` writes a crate that builds as is and runs under `taskhost run`.
#[test]
fn task_new_writes_a_crate_that_builds_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = (tmp.path().join("store"), tmp.path().join("cache"));
    let made = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["task", "new", "my-task", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(String::from_utf8_lossy(&made.stdout).contains("cargo build --release"));
    let again = Command::new(env!("CARGO_BIN_EXE_taskhost"))
        .args(["task", "new", "my-task", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!again.status.success() && stderr(&again).contains("exists already"));

    // Built where the repository's own guests build, so the dependencies are compiled once.
    let target = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-tasks/target"),
    };
    let crate_dir = tmp.path().join("my-task");
    let build = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the new crate does not build:\n{}",
        stderr(&build)
    );
    let wasm = target.join("wasm32-wasip2/release/my_task.wasm");
    let input = r#"{"job_id": "try-1", "count": 10}"#;
    let out = taskhost(
        &store,
        &cache,
        &["run", wasm.to_str().unwrap(), "--input", input],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&last_line(&out)).unwrap();
    assert_eq!(doc["sum"], 55, "{doc}");
}
