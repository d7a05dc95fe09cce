//! The sandbox's limits: fuel yields, sleeping, memory, infinite loops, panics, cancellation,
//! output floods, and no files, sockets or environment.

use super::*;

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
    let (_tmp, store) = dir_store();
    let job: JobId = "c".parse().unwrap();
    let claimed = claim(&store, &job, "t").await;
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        // Part of the scenario: the task spins for a moment (it makes no call that could be
        // observed) before it is cancelled.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let r = run_claimed(
        &rt,
        &m,
        &store,
        &job,
        &ckpt,
        1,
        r#"{"mode":"loop"}"#,
        &JobLimits::default(),
        cancel,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Cancelled);
}

/// How much a misbehaving task writes to stdout (and as much to stderr).
const FLOOD_BYTES: u64 = 128 << 20;
/// How much the host's peak RSS may grow while the flood goes through. A host that kept
/// what went through stdout would grow by at least [`FLOOD_BYTES`]; half of it leaves room
/// for the instance's own memory and the allocator, and still catches any such buffering.
const FLOOD_RSS_BOUND: u64 = FLOOD_BYTES / 2;
/// Set in the child process that runs the flood alone.
const FLOOD_CHILD: &str = "TASKHOST_TEST_FLOOD_CHILD";

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib << 10
}

/// The host's memory is measured in a child process that runs this test alone: in the one
/// test binary, other tests (a 64 MiB memory bomb among them) share the process and its RSS.
/// The child reports its peak RSS growth (`VmHWM` after the run minus `VmRSS` before), so a
/// buffer that was freed again before the end still counts.
#[tokio::test]
async fn flooding_stdout_does_not_grow_host_memory() {
    if std::env::var_os(FLOOD_CHILD).is_some() {
        let rt = runtime();
        let m = prepare(&rt, "misbehave").await;
        let before = proc_status_bytes("VmRSS");
        let r = run_once(
            &rt,
            &m,
            &format!(r#"{{"mode":"flood","bytes":{FLOOD_BYTES}}}"#),
            JobLimits::default(),
        )
        .await;
        let grew = proc_status_bytes("VmHWM").saturating_sub(before);
        // One line: the peak growth, the bytes dropped, the outcome.
        let line = format!("{grew} {} {:?}", r.output_dropped, r.outcome);
        support::child::report("flood", &line);
        return;
    }
    let name = format!(
        "{}::flooding_stdout_does_not_grow_host_memory",
        module_path!().trim_start_matches("all::")
    );
    let child = support::child::ChildProcess::spawn(&name, &[(FLOOD_CHILD, "1".into())]);
    let reported = tokio::task::spawn_blocking(move || child.values("flood"))
        .await
        .unwrap();
    let [line] = &reported[..] else {
        panic!("the child reported {reported:?}")
    };
    let mut fields = line.splitn(3, ' ');
    let mut next = || fields.next().unwrap_or_default();
    let grew: u64 = next().parse().unwrap();
    let dropped: u64 = next().parse().unwrap();
    let outcome = next().to_string();
    assert!(outcome.starts_with("Finished("), "{outcome}");
    assert!(dropped > FLOOD_BYTES / 2, "dropped {dropped}");
    // 256 MiB went through stdout and stderr; the host kept a bounded amount.
    assert!(
        grew < FLOOD_RSS_BOUND,
        "peak RSS grew by {grew} bytes (bound {FLOOD_RSS_BOUND})"
    );
    eprintln!("flood: peak RSS grew by {} KiB", grew >> 10);
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
