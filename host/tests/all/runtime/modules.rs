//! Module checks: files that are not task modules, the older WIT versions, too many memories.

use super::*;

#[tokio::test]
async fn files_that_are_not_task_modules_get_clear_errors() {
    let rt = runtime();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    type Check = fn(&ModuleError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("text", b"hello world".to_vec(), |e| {
            *e == ModuleError::NotWasm
        }),
        ("empty", vec![], |e| *e == ModuleError::NotWasm),
        ("core module", core_module, |e| {
            *e == ModuleError::CoreModule
        }),
        (
            "truncated component",
            support::guests::bytes("step_counter")[..1000].to_vec(),
            |e| matches!(e, ModuleError::Invalid(_)),
        ),
        ("other world", support::guests::bytes("other_world"), |e| {
            matches!(e, ModuleError::WrongWorld(_))
        }),
    ];
    for (name, bytes, check) in cases {
        let err = match rt.prepare(bytes, None).await {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e,
        };
        assert!(check(&err), "{name}: {err:?}");
        assert!(!err.to_string().is_empty());
    }
    // A hash that does not match the bytes.
    let bytes = support::guests::bytes("step_counter");
    let wrong = taskhost::ids::ModuleHash::of(b"something else");
    assert!(matches!(
        rt.prepare(bytes, Some(wrong)).await,
        Err(ModuleError::HashMismatch { .. })
    ));
}

#[tokio::test]
async fn a_module_built_for_wit_0_1_0_still_runs() {
    let rt = runtime();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/step_counter_v0.1.0.wasm"
    ))
    .unwrap();
    let m = rt.prepare(bytes, None).await.unwrap();
    let (_tmp, store) = dir_store();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let job: JobId = "old".parse().unwrap();
    let input = r#"{"job_id":"old","steps":600}"#;
    let end = execute(&ex, &job, &m, input, live_lease()).await;
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    let doc: serde_json::Value = serde_json::from_str(&result).unwrap();
    // 600 saves through the 0.1.0 `checkpoint` interface succeeded (the task fails on any
    // save error) and its result is the guide's.
    assert_eq!(doc["sum"], 180300, "{result}");
}

#[tokio::test]
async fn a_module_built_for_wit_0_2_0_still_runs() {
    use support::exec::{executor, live_lease, run};
    let rt = runtime();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/digest_v0.2.0.wasm"
    ))
    .unwrap();
    let described = taskhost::registry::describe::describe(&bytes).unwrap();
    assert_eq!(described.world.as_deref(), Some("taskhost:task@0.2.0"));
    let m = rt.prepare(bytes, None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = taskhost::store::any::AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    store
        .put("in/data", b"123456789".to_vec(), Precondition::None)
        .await
        .unwrap();
    let ex = executor(store.clone(), rt, taskhost::files::FileLimits::default());
    let input = r#"{"job_id":"old2","copy":true}"#;
    let end = run(
        &ex,
        &m,
        "old2",
        input,
        &[("data", "in/data")],
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    // Its input read and its artifacts went through the 0.2.0 interfaces: the CRC-32 of
    // "123456789" is the check value of the IEEE polynomial.
    let doc: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(doc["crc32"], "cbf43926", "{result}");
    let copy = taskhost::keys::artifact(&"old2".parse().unwrap(), "copy.bin");
    assert_eq!(store.get(&copy).await.unwrap().unwrap().bytes, b"123456789");
}

/// A component whose core module declares `memories` memories of `pages` 64 KiB pages each,
/// exporting a `run` of the task world that traps if it is ever called.
fn component_with_memories(memories: usize, pages: u32) -> Vec<u8> {
    let mems: String = (0..memories)
        .map(|i| match i {
            0 => format!("(memory (export \"memory\") {pages})\n"),
            _ => format!("(memory {pages})\n"),
        })
        .collect();
    wat::parse_str(format!(
        r#"(component
  (core module $m
    {mems}
    (func (export "run") (param i32 i32) (result i32) unreachable)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable))
  (core instance $i (instantiate $m))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc")))))"#
    ))
    .unwrap()
}

/// A component with more memories than a task may have is refused as a module, never a
/// host fault retried forever, and the worker's other tasks still start.
#[tokio::test]
async fn a_component_with_many_memories_is_the_tasks_fault() {
    let rt = runtime();
    let one = rt.prepare(component_with_memories(1, 1), None).await;
    let one = one.expect("a one-memory component prepares");
    let r = run_once(&rt, &one, "{}", JobLimits::default()).await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Trapped {
                kind: TrapKind::Panic,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    // Each core module may define one memory (the instance pool's slot shape): more is
    // refused when the module is prepared (`module push` refuses it; a worker dead-letters
    // the job with this reason), never a run that fails as the host's fault.
    match rt.prepare(component_with_memories(4, 1), None).await {
        Err(ModuleError::Invalid(m)) => assert!(m.contains("memories count of 4"), "{m}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a core module with four memories was accepted"),
    }
    other_tasks_still_run(&rt).await;
}

/// A step-counter job runs to its end on `rt`: what a bad module did left the worker's
/// other tasks able to start.
async fn other_tasks_still_run(rt: &Runtime) {
    let step = prepare(rt, "step_counter").await;
    let r = run_once(
        rt,
        &step,
        r#"{"job_id":"j","steps":3}"#,
        JobLimits::default(),
    )
    .await;
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
}

/// A component whose core module's start function calls `wasi:cli/exit` with an error: the
/// import returns an error (not a trap) while the component is being instantiated.
fn component_exiting_in_start() -> Vec<u8> {
    wat::parse_str(
        r#"(component
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit" (func (param "status" (result))))))
  (core func $exit (canon lower (func $exit "exit")))
  (core module $m
    (import "host" "exit" (func $exit (param i32)))
    (memory (export "memory") 1)
    (func $start (call $exit (i32.const 1)))
    (start $start)
    (func (export "run") (param i32 i32) (result i32) unreachable)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable))
  (core instance $i (instantiate $m
    (with "host" (instance (export "exit" (func $exit))))))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc")))))"#,
    )
    .unwrap()
}

/// A task whose start function makes an import fail (here `exit` with an error, which the
/// host answers with an error, not a trap) fails as the task's own doing, never a host
/// fault (which would hand the job back forever and count against the node).
#[tokio::test]
async fn an_import_failing_in_the_start_function_is_the_tasks_fault() {
    let rt = runtime();
    let m = rt
        .prepare(component_exiting_in_start(), None)
        .await
        .expect("the component prepares");
    let r = run_once(&rt, &m, "{}", JobLimits::default()).await;
    assert!(
        matches!(&r.outcome, Outcome::Trapped { message, .. } if message.contains("exit status 1")),
        "{:?}",
        r.outcome
    );
    // Its slot went back.
    other_tasks_still_run(&rt).await;
}
