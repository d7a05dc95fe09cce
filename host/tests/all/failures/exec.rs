//! The executor's refusals, in process on both stores: a result the end-of-job ownership
//! proof does not cover is not written, and a task the instance pool has no slot for is the
//! host's fault; either way the job is handed back and nothing is counted against it.

use std::time::Duration;

use taskhost::checkpoint::{self, CLOCK_SKEW_ALLOWANCE};
use taskhost::exec::JobEnd;
use taskhost::files::FileLimits;
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::queue::Stamp;
use taskhost::queue::lease::LeaseView;
use taskhost::runtime::{Runtime, RuntimeConfig};
use taskhost::store::ObjectStore;
use taskhost::worker::{DEFAULT_MAX_FAILURES, Decision, decide, retry_delay};
use tokio_util::sync::CancellationToken;

use crate::support::exec::{executor, live_lease, module, run, runtime, stores};

/// The lease of the ownership-proof test: never extended, so it ends this long after the
/// claim.
const UNRENEWED_LEASE: Duration = Duration::from_secs(6);
/// The task's run: a second past the end of what the proof covers (the lease less twice the
/// skew allowance, [`checkpoint::skew_allowance_ms`]), and still inside the lease: the lease
/// is not lost, only too close to its end to prove that no other worker may claim the job.
fn task_run() -> Duration {
    let allowance = Duration::from_millis(checkpoint::skew_allowance_ms(
        UNRENEWED_LEASE.as_millis() as u64,
    ));
    assert!(allowance <= CLOCK_SKEW_ALLOWANCE);
    let proof_ends = UNRENEWED_LEASE - 2 * allowance;
    let run = proof_ends + Duration::from_secs(1);
    assert!(run < UNRENEWED_LEASE, "{run:?}");
    run
}

/// A task that finishes when the lease its last checkpoint write recorded is too close to
/// its end (the refresh never came): the proof fails, no result is written, the job is
/// handed back at once, and nothing is counted against it.
#[tokio::test]
async fn no_result_is_written_without_the_end_of_job_ownership_proof() {
    let rt = runtime();
    let m = module(&rt, "misbehave").await;
    let sleep = task_run();
    for (kind, store, _guard) in stores().await {
        let ex = executor(store.clone(), rt.clone(), FileLimits::default());
        // Held (never lost) but never extended.
        let (_keeper, until) = tokio::sync::watch::channel(Stamp::now().plus(UNRENEWED_LEASE));
        let lease = LeaseView {
            lost: CancellationToken::new(),
            until,
            deadline: UNRENEWED_LEASE,
        };
        let input = format!(r#"{{"mode":"sleep","ms":{}}}"#, sleep.as_millis());
        let stop = CancellationToken::new();
        let end = run(&ex, &m, "unproven", &input, &[], lease, stop).await;
        assert_eq!(end, JobEnd::LeaseLost, "{kind}");
        let job: JobId = "unproven".parse().unwrap();
        assert!(
            !store.exists(&keys::result(&job)).await.unwrap(),
            "{kind}: a result was written without the proof"
        );
        let decision = decide(&end, 1, DEFAULT_MAX_FAILURES, UNRENEWED_LEASE);
        assert_eq!(decision, Decision::HandBack(Duration::ZERO), "{kind}");
        let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
        assert_eq!(header.failures, 0, "{kind}: {header:?}");
    }
}

/// A task started while the instance pool has no free slot (one slot here, held by a
/// running task; the worker sizes the pool to its slots, so only a host bug gets here)
/// ends as a host fault: its checkpoint released, no failure counted, handed back later;
/// the running task is untouched (it runs until it is cancelled, after the check: the slot
/// stays held however slow the check is), and once it ends the slot runs the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_beyond_the_instance_pool_is_a_host_fault_handed_back() {
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: None,
        max_concurrent_tasks: 1,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let m = module(&rt, "misbehave").await;
    for (kind, store, _guard) in stores().await {
        let ex = executor(store.clone(), rt.clone(), FileLimits::default());
        let holder: JobId = "holder".parse().unwrap();
        let hold = CancellationToken::new();
        let holding = run(
            &ex,
            &m,
            "holder",
            r#"{"mode":"save_loop","every_ms":100}"#,
            &[],
            live_lease(),
            hold.clone(),
        );
        let beyond = async {
            // The holder's task runs (it has saved): it holds the pool's one slot.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let got = store.get(&keys::checkpoint(&holder)).await.unwrap();
                let saved = got.is_some_and(|o| checkpoint::decode(&o.bytes).unwrap().1.is_some());
                if saved {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{kind}: never saved");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let input = r#"{"mode":"sleep","ms":10}"#;
            let stop = CancellationToken::new();
            let end = run(&ex, &m, "beyond", input, &[], live_lease(), stop).await;
            hold.cancel();
            end
        };
        let (held, end) = tokio::join!(holding, beyond);
        // Ended by its cancel only, nothing else.
        assert!(matches!(held, JobEnd::Cancelled), "{kind}: {held:?}");
        assert!(
            matches!(&end, JobEnd::HostFault(m) if m.contains("cannot start the task")),
            "{kind}: {end:?}"
        );
        let job: JobId = "beyond".parse().unwrap();
        let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
        assert_eq!(header.lease_until_ms, 0, "{kind}: released: {header:?}");
        assert_eq!(
            header.failures, 0,
            "{kind}: counted as a failure: {header:?}"
        );
        assert!(!store.exists(&keys::result(&job)).await.unwrap(), "{kind}");
        let decision = decide(&end, 1, DEFAULT_MAX_FAILURES, Duration::from_secs(10));
        assert_eq!(decision, Decision::HandBack(retry_delay(1)), "{kind}");
        // The slot is free again: the job runs when it comes back.
        let input = r#"{"mode":"sleep","ms":10}"#;
        let again = run(
            &ex,
            &m,
            "beyond",
            input,
            &[],
            live_lease(),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(again, JobEnd::Done { .. }), "{kind}: {again:?}");
    }
}
