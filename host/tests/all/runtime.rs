//! The sandboxed runtime against the real task modules: results, limits, resume, isolation.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskhost::checkpoint::{self, Checkpointer, Claimed, Limits, OtherWork};
use taskhost::exec::{Executor, JobBinding, JobEnd};
use taskhost::files::JobFiles;
use taskhost::ids::JobId;
use taskhost::job::Work;
use taskhost::queue::Stamp;
use taskhost::queue::lease::LeaseView;
use taskhost::runtime::{
    JobLimits, ModuleError, Outcome, Prepared, RunReport, RunRequest, Runtime, RuntimeConfig,
    TrapKind,
};
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

async fn prepare(rt: &Runtime, name: &str) -> Prepared {
    rt.prepare(support::guests::bytes(name), None)
        .await
        .unwrap()
}

fn fast_ckpt() -> Limits {
    Limits {
        min_write_interval: Duration::from_millis(20),
        ..Limits::default()
    }
}

/// A lease that renews itself for as long as the test runs.
fn live_lease() -> LeaseView {
    LeaseView::detached(Duration::from_secs(60)).0
}

/// A lease that is never extended: it ends `for_ms` from now.
fn static_lease(for_ms: u64) -> LeaseView {
    let (_, until) = tokio::sync::watch::channel(Stamp::now().plus(Duration::from_millis(for_ms)));
    LeaseView {
        lost: CancellationToken::new(),
        until,
        deadline: Duration::from_millis(for_ms),
    }
}

/// Claims `job` for `owner` under a lease that ends `for_ms` from now.
async fn claim_for(store: &DirStore, job: &JobId, owner: &str, for_ms: u64) -> Claimed {
    let unbound = Work::default();
    checkpoint::claim(
        store,
        job,
        owner,
        &static_lease(for_ms),
        &unbound,
        OtherWork::Refuse,
    )
    .await
    .unwrap()
}

async fn claim(store: &DirStore, job: &JobId, owner: &str) -> Claimed {
    claim_for(store, job, owner, 60_000).await
}

fn executor(store: DirStore, rt: Runtime, limits: JobLimits) -> Executor<DirStore> {
    Executor {
        store,
        runtime: rt,
        worker_id: "test".into(),
        limits,
        checkpoint_limits: fast_ckpt(),
        file_limits: Default::default(),
        max_crashes: taskhost::exec::DEFAULT_MAX_CRASHES,
    }
}

/// Runs a module once on a fresh claimed checkpoint and returns the report.
async fn run_once(rt: &Runtime, module: &Prepared, input: &str, limits: JobLimits) -> RunReport {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let job: JobId = "j".parse().unwrap();
    let claimed = claim(&store, &job, "test").await;
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    rt.run(
        module,
        RunRequest {
            job: &job,
            attempt: 1,
            input,
            limits: &limits,
            checkpoint: ckpt.clone(),
            files: JobFiles::plain(store.clone(), &job, ckpt.clone()),
            cancel: CancellationToken::new(),
        },
    )
    .await
}

#[tokio::test]
async fn step_counter_gives_the_guides_result() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let r = run_once(
        &rt,
        &m,
        r#"{"job_id":"job-0","steps":600}"#,
        JobLimits::default(),
    )
    .await;
    let Outcome::Finished(doc) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"job_id":"job-0","steps":600,"sum":180300})
    );
    // The task reports where it starts: step 0 on a fresh job.
    assert_eq!(r.first_progress, Some((0, 600)));
    assert!(r.fuel_used > 0);
}

#[tokio::test]
async fn bad_input_is_a_task_error() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let r = run_once(&rt, &m, r#"{"job_id":"x"}"#, JobLimits::default()).await;
    assert!(
        matches!(r.outcome, Outcome::TaskError(ref m) if m.contains("steps")),
        "{:?}",
        r.outcome
    );
}

/// A run cut off by its fuel budget (then by a timeout) resumes from its checkpoint and
/// ends with the same result as an uninterrupted run.
#[tokio::test]
async fn interrupted_runs_resume_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "resume-1".parse().unwrap();
    let steps = 3_000_000u64;
    let input = format!(r#"{{"job_id":"resume-1","steps":{steps},"checkpoint_every":1000}}"#);

    // Attempt 1: a fuel budget far below what the job needs.
    let ex = executor(
        store.clone(),
        rt.clone(),
        JobLimits {
            fuel: Some(20_000_000),
            ..JobLimits::default()
        },
    );
    let end = ex
        .execute(
            &job,
            &m,
            &input,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Fuel,
                failures: 1,
                ..
            }
        ),
        "{end:?}"
    );
    let saved = saved_step(&store, &job).await;
    assert!(saved > 0 && saved < steps, "saved step {saved}");

    // Attempt 2: a timeout cuts it off again (step_ms makes it slow), later than attempt 1.
    let slow =
        format!(r#"{{"job_id":"resume-1","steps":{steps},"checkpoint_every":1,"step_ms":1}}"#);
    let ex2 = executor(
        store.clone(),
        rt.clone(),
        JobLimits {
            timeout: Some(Duration::from_millis(300)),
            ..JobLimits::default()
        },
    );
    let end = ex2
        .execute(
            &job,
            &m,
            &slow,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Timeout,
                failures: 2,
                ..
            }
        ),
        "{end:?}"
    );
    let saved2 = saved_step(&store, &job).await;
    assert!(
        saved2 > saved,
        "attempt 2 saved {saved2}, attempt 1 {saved}"
    );

    // Attempt 3: no limits; it must start right after the saved step.
    let ex3 = executor(store.clone(), rt.clone(), JobLimits::default());
    let claimed = claim(&store, &job, "t").await;
    assert_eq!(claimed.header.attempts, 3);
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    let report = ex3
        .runtime
        .run(
            &m,
            RunRequest {
                job: &job,
                attempt: 3,
                input: &input,
                limits: &JobLimits::default(),
                checkpoint: ckpt.clone(),
                files: JobFiles::plain(store.clone(), &job, ckpt.clone()),
                cancel: CancellationToken::new(),
            },
        )
        .await;
    // The task's first progress report is where it starts: the step attempt 2 saved.
    assert_eq!(report.first_progress.map(|p| p.0), Some(saved2));
    let Outcome::Finished(doc) = report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["sum"], serde_json::json!(steps * (steps + 1) / 2));
    ckpt.flush(false).await.unwrap();
}

async fn saved_step(store: &DirStore, job: &JobId) -> u64 {
    let obj = store
        .get(&taskhost::keys::checkpoint(job))
        .await
        .unwrap()
        .unwrap();
    let (_, data) = checkpoint::decode(&obj.bytes).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&data.expect("task data saved")).unwrap();
    v["step"].as_u64().unwrap()
}

/// A task that counts 5 ms ticks on the current runtime: it only ticks when the runtime's
/// thread is free.
fn spawn_ticker() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_millis(5));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    (ticks, ticker)
}

/// Fuel yields keep a current-thread runtime responsive while a CPU-bound task runs.
#[tokio::test(flavor = "current_thread")]
async fn cpu_bound_task_does_not_starve_the_runtime() {
    let rt = runtime();
    let m = prepare(&rt, "prime_count").await;
    let (ticks, ticker) = spawn_ticker();
    let r = run_once(
        &rt,
        &m,
        r#"{"job_id":"p","n":3000000}"#,
        JobLimits::default(),
    )
    .await;
    ticker.abort();
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
    let expected = r.elapsed.as_millis() as u64 / 5;
    let got = ticks.load(Ordering::Relaxed);
    assert!(
        r.elapsed > Duration::from_millis(100),
        "the task must run long enough to matter ({:?})",
        r.elapsed
    );
    // Without yields the ticker gets at most 2 ticks (before and after the run). The bound
    // is loose because the OS may deschedule this thread on a shared, loaded machine.
    assert!(
        got >= 10 && got * 10 >= expected,
        "{got} ticks in {:?} (expected ~{expected})",
        r.elapsed
    );
}

/// A task sleeping through the WASI clock does not block the host thread: a current-thread
/// runtime keeps ticking while it sleeps.
#[tokio::test(flavor = "current_thread")]
async fn a_sleeping_task_does_not_block_the_thread() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let (ticks, ticker) = spawn_ticker();
    let r = run_once(
        &rt,
        &m,
        r#"{"job_id":"s","steps":20,"step_ms":20}"#,
        JobLimits::default(),
    )
    .await;
    ticker.abort();
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
    assert!(r.elapsed >= Duration::from_millis(400), "{:?}", r.elapsed);
    let got = ticks.load(Ordering::Relaxed);
    // A blocking sleep would leave the ticker at most 2 ticks; ~80 are possible.
    assert!(
        got >= 20,
        "{got} ticks while the task slept {:?}",
        r.elapsed
    );
}

#[tokio::test]
async fn memory_bomb_traps_at_the_limit() {
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let limits = JobLimits {
        memory_bytes: 64 << 20,
        ..JobLimits::default()
    };
    let r = run_once(&rt, &m, r#"{"mode":"membomb"}"#, limits).await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Trapped {
                kind: TrapKind::Memory,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_fuel_and_by_timeout() {
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let r = run_once(
        &rt,
        &m,
        r#"{"mode":"loop"}"#,
        JobLimits {
            fuel: Some(50_000_000),
            ..JobLimits::default()
        },
    )
    .await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Trapped {
                kind: TrapKind::Fuel,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    assert!(r.fuel_used >= 50_000_000);

    let r = run_once(
        &rt,
        &m,
        r#"{"mode":"loop"}"#,
        JobLimits {
            timeout: Some(Duration::from_millis(200)),
            ..JobLimits::default()
        },
    )
    .await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Trapped {
                kind: TrapKind::Timeout,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let r = run_once(&rt, &m, r#"{"mode":"panic"}"#, JobLimits::default()).await;
    match r.outcome {
        Outcome::Trapped {
            kind: TrapKind::Panic,
            message,
        } => {
            assert!(message.contains("panicked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cancellation_stops_a_running_task() {
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let job: JobId = "c".parse().unwrap();
    let claimed = claim(&store, &job, "t").await;
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let r = rt
        .run(
            &m,
            RunRequest {
                job: &job,
                attempt: 1,
                input: r#"{"mode":"loop"}"#,
                limits: &JobLimits::default(),
                checkpoint: ckpt.clone(),
                files: JobFiles::plain(store.clone(), &job, ckpt.clone()),
                cancel,
            },
        )
        .await;
    assert_eq!(r.outcome, Outcome::Cancelled);
}

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

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn flooding_stdout_does_not_grow_host_memory() {
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let flood: u64 = 128 << 20;
    let before = rss_bytes();
    let r = run_once(
        &rt,
        &m,
        &format!(r#"{{"mode":"flood","bytes":{flood}}}"#),
        JobLimits::default(),
    )
    .await;
    let grew = rss_bytes().saturating_sub(before);
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
    assert!(r.output_dropped > flood / 2, "dropped {}", r.output_dropped);
    // 256 MiB went through stdout and stderr; the host kept a bounded amount.
    assert!(grew < 48 << 20, "RSS grew by {grew} bytes");
}

#[tokio::test]
async fn a_task_cannot_reach_files_sockets_or_environment() {
    // A listener the task would reach if networking were granted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let r = run_once(
        &rt,
        &m,
        &format!(r#"{{"mode":"escape","addr":"{addr}"}}"#),
        JobLimits::default(),
    )
    .await;
    let Outcome::Finished(doc) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for k in ["read", "create", "list", "connect"] {
        let s = v[k].as_str().unwrap_or_default();
        assert!(s.starts_with("error"), "{k} was allowed: {doc}");
    }
    assert_eq!(v["env"], 0, "{doc}");
    assert!(v["args"].as_u64().unwrap() <= 1, "{doc}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the task connected to the host");
    assert!(!std::path::Path::new("escape.txt").exists());
}

/// A worker whose checkpoint was claimed by another gets a conflict and writes nothing more.
#[tokio::test]
async fn a_stale_writer_gets_a_conflict_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let job: JobId = "stale".parse().unwrap();

    // At the protocol level.
    let a = claim_for(&store, &job, "a", 0).await;
    let ckpt_a = Checkpointer::start(store.clone(), &job, a, fast_ckpt(), static_lease(0));
    ckpt_a.save(b"from a".to_vec()).unwrap();
    ckpt_a.flush(false).await.unwrap();
    let b = claim(&store, &job, "b").await;
    assert_eq!(b.data.as_deref(), Some(&b"from a"[..]));
    assert_eq!(b.header.attempts, 2);
    ckpt_a.save(b"stale".to_vec()).unwrap();
    assert_eq!(
        ckpt_a.flush(false).await,
        Err(checkpoint::CheckpointError::Conflict)
    );
    assert_eq!(
        ckpt_a.save(b"again".to_vec()),
        Err(checkpoint::CheckpointError::Conflict)
    );
    let now = store
        .get(&taskhost::keys::checkpoint(&job))
        .await
        .unwrap()
        .unwrap();
    let (h, data) = checkpoint::decode(&now.bytes).unwrap();
    assert_eq!(h.owner, "b");
    assert_eq!(data.as_deref(), Some(&b"from a"[..]));

    // Through a running task: another worker claims mid-run; the task sees the conflict.
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let job2: JobId = "stale-2".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let thief = {
        let store = store.clone();
        let job2 = job2.clone();
        tokio::spawn(async move {
            // Wait until the first worker has claimed, then take the job over.
            loop {
                if store
                    .exists(&taskhost::keys::checkpoint(&job2))
                    .await
                    .unwrap()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            // The running worker writes often: our claim may lose a race; retry until won.
            let unbound = Work::default();
            loop {
                let lease = live_lease();
                match checkpoint::claim(&store, &job2, "thief", &lease, &unbound, OtherWork::Refuse)
                    .await
                {
                    Ok(c) => break c,
                    Err(checkpoint::ClaimError::Busy { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    // The running worker's lease is never extended: it has expired when the thief claims.
    let end = ex
        .execute(
            &job2,
            &m,
            r#"{"mode":"save_loop"}"#,
            &JobBinding::default(),
            static_lease(100),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(end, JobEnd::Conflict);
    let stolen = thief.await.unwrap();
    let after = store
        .get(&taskhost::keys::checkpoint(&job2))
        .await
        .unwrap()
        .unwrap();
    let (h, _) = checkpoint::decode(&after.bytes).unwrap();
    assert_eq!(h.owner, "thief");
    assert_eq!(
        h.nonce, stolen.header.nonce,
        "the stale worker wrote after the takeover"
    );
    assert!(!store.exists(&taskhost::keys::result(&job2)).await.unwrap());
}

#[tokio::test]
async fn checkpoints_over_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let job: JobId = "big".parse().unwrap();
    let claimed = claim(&store, &job, "t").await;
    let ckpt = Checkpointer::start(
        store.clone(),
        &job,
        claimed,
        Limits {
            max_bytes: 1024,
            ..fast_ckpt()
        },
        live_lease(),
    );
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let r = rt
        .run(
            &m,
            RunRequest {
                job: &job,
                attempt: 1,
                input: r#"{"mode":"save_loop","count":1,"bytes":4096}"#,
                limits: &JobLimits::default(),
                checkpoint: ckpt.clone(),
                files: JobFiles::plain(store.clone(), &job, ckpt.clone()),
                cancel: CancellationToken::new(),
            },
        )
        .await;
    assert!(
        matches!(r.outcome, Outcome::TaskError(ref m) if m.contains("1024")),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn a_finished_job_is_not_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "once".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let input = r#"{"job_id":"once","steps":10}"#;
    let first = ex
        .execute(
            &job,
            &m,
            input,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(first, JobEnd::Done { attempt: 1, .. }),
        "{first:?}"
    );
    let second = ex
        .execute(
            &job,
            &m,
            input,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(second, JobEnd::AlreadyDone);
    let stored = store
        .get(&taskhost::keys::result(&job))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&stored.bytes).contains("55"));
    // The second call did not claim: attempts stay at 1.
    let h = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!(h.attempts, 1);
    // A result is create-only.
    assert!(
        store
            .put(
                &taskhost::keys::result(&job),
                b"x".to_vec(),
                Precondition::Absent
            )
            .await
            .is_err()
    );
}

/// A task that ignores `conflict` errors is stopped by the host within a second of the
/// takeover, whatever it does with the error; nothing more is written.
#[tokio::test]
async fn a_task_that_ignores_conflicts_is_stopped_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let job: JobId = "stubborn".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let key = taskhost::keys::checkpoint(&job);
    let thief = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            while !store.exists(&key).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Another worker's claim, as the store sees it: the object changes under us.
            let header = checkpoint::Header {
                owner: "thief".into(),
                nonce: "thief-nonce".into(),
                ..checkpoint::Header::default()
            };
            let taken = checkpoint::encode(&header, Some(b"thief's"));
            store.put(&key, taken, Precondition::None).await.unwrap();
            std::time::Instant::now()
        })
    };
    let input = r#"{"mode":"save_loop","ignore_errors":true,"every_ms":20}"#;
    let end = ex
        .execute(
            &job,
            &m,
            input,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    let stopped = std::time::Instant::now();
    let taken_at = thief.await.unwrap();
    assert_eq!(end, JobEnd::Conflict);
    let took = stopped - taken_at;
    assert!(
        took < Duration::from_secs(1),
        "stopped {took:?} after the takeover"
    );
    // Nothing written after the takeover, no result.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = store.get(&key).await.unwrap().unwrap();
    let (h, data) = checkpoint::decode(&now.bytes).unwrap();
    assert_eq!(
        (h.owner.as_str(), h.nonce.as_str()),
        ("thief", "thief-nonce")
    );
    assert_eq!(data.as_deref(), Some(&b"thief's"[..]));
    assert!(!store.exists(&taskhost::keys::result(&job)).await.unwrap());
}

/// A job id reused for other work is refused with a reason naming both, unless the message
/// asks to start over (then the old result is gone) or to resume with a newer module.
#[tokio::test]
async fn a_job_id_reused_for_other_work_is_refused_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "reused".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let module = taskhost::ids::ModuleHash::of(b"step counter v1");
    let bind = |input: &str, module: &taskhost::ids::ModuleHash, on_other_work| JobBinding {
        work: Work::of(module, input),
        on_other_work,
        inputs: Default::default(),
    };
    let run = |input: &'static str, binding: JobBinding| {
        let ex = ex.clone();
        let (m, job) = (m.clone(), job.clone());
        async move {
            ex.execute(
                &job,
                &m,
                input,
                &binding,
                live_lease(),
                CancellationToken::new(),
            )
            .await
        }
    };
    let ten = r#"{"job_id":"reused","steps":10}"#;
    let twenty = r#"{"job_id":"reused","steps":20}"#;
    let first = run(ten, bind(ten, &module, OtherWork::Refuse)).await;
    assert!(
        matches!(first, JobEnd::Done { ref result, .. } if result.contains("\"sum\":55")),
        "{first:?}"
    );

    // The same work again: done already. Other input: refused, naming both.
    assert_eq!(
        run(ten, bind(ten, &module, OtherWork::Refuse)).await,
        JobEnd::AlreadyDone
    );
    let refused = run(twenty, bind(twenty, &module, OtherWork::Refuse)).await;
    let JobEnd::OtherWork(reason) = &refused else {
        panic!("{refused:?}")
    };
    let (old, new) = (Work::of(&module, ten), Work::of(&module, twenty));
    assert!(
        reason.contains(&old.input_sha256) && reason.contains(&new.input_sha256),
        "{reason}"
    );
    assert!(reason.contains("restart"), "{reason}");
    // Another module on the same input: refused too, unless it is an upgrade.
    let v2 = taskhost::ids::ModuleHash::of(b"step counter v2");
    let refused = run(ten, bind(ten, &v2, OtherWork::Refuse)).await;
    assert!(
        matches!(&refused, JobEnd::OtherWork(r) if r.contains(&v2.to_string())),
        "{refused:?}"
    );
    assert_eq!(
        run(ten, bind(ten, &v2, OtherWork::UpgradeModule)).await,
        JobEnd::AlreadyDone
    );
    // An upgrade may not change the input.
    let refused = run(twenty, bind(twenty, &v2, OtherWork::UpgradeModule)).await;
    assert!(matches!(refused, JobEnd::OtherWork(_)), "{refused:?}");

    // Start over: the old result goes, the new work runs from nothing.
    let again = run(twenty, bind(twenty, &module, OtherWork::Restart)).await;
    assert!(
        matches!(again, JobEnd::Done { ref result, attempt: 1 } if result.contains("\"sum\":210")),
        "{again:?}"
    );
    let stored = store
        .get(&taskhost::keys::result(&job))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&stored.bytes).contains("\"sum\":210"));
    let h = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!(
        (h.input_sha256.as_str(), h.attempts),
        (new.input_sha256.as_str(), 1)
    );
    // A redelivered restart message finds its own work done: it does not start over again.
    assert_eq!(
        run(twenty, bind(twenty, &module, OtherWork::Restart)).await,
        JobEnd::AlreadyDone
    );
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
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let job: JobId = "old".parse().unwrap();
    let input = r#"{"job_id":"old","steps":600}"#;
    let end = ex
        .execute(
            &job,
            &m,
            input,
            &JobBinding::default(),
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    let doc: serde_json::Value = serde_json::from_str(&result).unwrap();
    // 600 saves through the 0.1.0 `checkpoint` interface succeeded (the task fails on any
    // save error) and its result is the guide's.
    assert_eq!(doc["sum"], 180300, "{result}");
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
    let step = prepare(&rt, "step_counter").await;
    let r = run_once(
        &rt,
        &step,
        r#"{"job_id":"j","steps":3}"#,
        JobLimits::default(),
    )
    .await;
    assert!(matches!(r.outcome, Outcome::Finished(_)), "{:?}", r.outcome);
}
