//! Unit tests of the executor: the panic boundary and the crash count.

use std::time::Duration;

use super::*;
use crate::checkpoint::{self, Limits, OtherWork};
use crate::runtime::RuntimeConfig;
use crate::store::Precondition;
use crate::store::dir::DirStore;

/// The job id whose `job.id()` host call panics (see `runtime::host`).
pub(crate) const PANICKING_JOB: &str = "panic-in-host";

fn hostile() -> Vec<u8> {
    crate::test_guests::wasm("hostile")
}

async fn executor(store: DirStore) -> (Executor<DirStore>, Prepared) {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = runtime.prepare(hostile(), None).await.unwrap();
    let ex = Executor {
        store,
        runtime,
        worker_id: "test".into(),
        limits: JobLimits::default(),
        checkpoint_limits: Limits {
            min_write_interval: Duration::from_millis(20),
            ..Limits::default()
        },
        file_limits: FileLimits::default(),
        max_crashes: 2,
    };
    (ex, module)
}

async fn run(ex: &Executor<DirStore>, module: &Prepared, job: &str) -> JobEnd {
    let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
    let job: JobId = job.parse().unwrap();
    let end = ex
        .execute(
            &job,
            module,
            r#"{"mode": "id"}"#,
            &JobBinding::default(),
            lease,
            CancellationToken::new(),
        )
        .await;
    renewing.cancel();
    end
}

/// A host function that panics ends that job as a host fault: its checkpoint is
/// released, the run counts as a crash, other jobs run on; past the crash limit the job
/// is not run again.
#[tokio::test]
async fn a_host_panic_ends_one_job_and_counts_as_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let (ex, module) = executor(store.clone()).await;
    let job: JobId = PANICKING_JOB.parse().unwrap();
    for crashes in 1..=2 {
        let end = run(&ex, &module, PANICKING_JOB).await;
        assert!(
            matches!(&end, JobEnd::HostPanic(m) if m.contains("injected")),
            "{end:?}"
        );
        assert_eq!(
            end.node_fault(),
            None,
            "a panic follows the job, not the node"
        );
        let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
        assert_eq!(header.lease_until_ms, 0, "released");
        assert_eq!(header.crashes, crashes);
        // The accounting counts a crashed run at the next claim, for good.
        assert_eq!(header.crashed_runs, crashes - 1);
        assert_eq!(header.failures, 0, "never the task's failure");
        // Another job on the same executor is untouched.
        let ok = run(&ex, &module, &format!("fine-{crashes}")).await;
        assert!(matches!(ok, JobEnd::Done { .. }), "{ok:?}");
    }
    let end = run(&ex, &module, PANICKING_JOB).await;
    assert!(
        matches!(end, JobEnd::Crashed { crashes: 2, .. }),
        "past MAX_CRASHES the job is not run: {end:?}"
    );
}

/// A crash counted for a job is forgiven by a clean end.
#[tokio::test]
async fn a_clean_end_clears_the_crash_count() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let (ex, module) = executor(store.clone()).await;
    // A claim whose run never ended (a killed worker), then released as a dead
    // sibling's would be.
    let job: JobId = "killed".parse().unwrap();
    let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
    let claimed = checkpoint::claim(
        &store,
        &job,
        "dead",
        &lease,
        &Work::default(),
        OtherWork::Refuse,
    )
    .await
    .unwrap();
    renewing.cancel();
    assert_eq!(claimed.header.crashes, 1);
    let mut header = claimed.header;
    header.lease_until_ms = 0;
    let stored = store.get(&checkpoint::key(&job)).await.unwrap().unwrap();
    store
        .put(
            &checkpoint::key(&job),
            checkpoint::encode(&header, None),
            Precondition::Matches(stored.etag),
        )
        .await
        .unwrap();
    // The next run ends cleanly (a task error) and clears the count.
    let (lease, renewing) = LeaseView::detached(Duration::from_secs(30));
    let end = ex
        .execute(
            &job,
            &module,
            r#"{"mode": "nonsense"}"#,
            &JobBinding::default(),
            lease,
            CancellationToken::new(),
        )
        .await;
    renewing.cancel();
    assert!(matches!(end, JobEnd::TaskFailed(_)), "{end:?}");
    let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!((header.attempts, header.crashes), (2, 0));
    // Forgiven for the crash limit, not in the accounting; the run that ended is counted.
    let usage = header.usage();
    assert_eq!((usage.crashes, usage.attempts), (1, 2));
    assert!(
        usage.fuel > 0 && usage.fuel == header.fuel_used,
        "{usage:?}"
    );
}
