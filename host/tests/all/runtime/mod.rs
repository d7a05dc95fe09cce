//! The sandboxed runtime against the real task modules: results, resume, limits, isolation,
//! fencing, module checks. The fixtures are here; each area is a submodule.

mod cache;
mod fencing;
mod fuel;
mod modules;
mod resume;
mod sandbox;

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
