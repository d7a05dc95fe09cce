//! The sandboxed runtime against the real task modules: results, resume, limits, isolation,
//! fencing, module checks. The fixtures are here; each area is a submodule.

mod cache;
mod durability;
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
    JobLimits, ModuleError, Outcome, Prepared, RunReport, RunRequest, Runtime, TrapKind,
};
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

pub(crate) use support::exec::{dir_store, live_lease, runtime};

/// The guest module `name`, compiled.
async fn prepare(rt: &Runtime, name: &str) -> Prepared {
    support::exec::module(rt, name).await
}

fn fast_ckpt() -> Limits {
    support::exec::fast_checkpoints()
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
    support::exec::executor_on(store, rt, limits, Default::default())
}

/// Executes `job` to its end with no binding, under `lease`, never cancelled.
async fn execute(
    ex: &Executor<DirStore>,
    job: &JobId,
    m: &Prepared,
    input: &str,
    lease: LeaseView,
) -> JobEnd {
    ex.execute(
        job,
        m,
        input,
        &JobBinding::default(),
        lease,
        CancellationToken::new(),
    )
    .await
}

/// Runs `module` once as `attempt` of `job`, saving through `ckpt`.
#[allow(clippy::too_many_arguments)]
async fn run_claimed(
    rt: &Runtime,
    module: &Prepared,
    store: &DirStore,
    job: &JobId,
    ckpt: &Checkpointer,
    attempt: u32,
    input: &str,
    limits: &JobLimits,
    cancel: CancellationToken,
) -> RunReport {
    rt.run(
        module,
        RunRequest {
            job,
            attempt,
            input,
            limits,
            checkpoint: ckpt.clone(),
            files: JobFiles::plain(store.clone(), job, ckpt.clone()),
            cancel,
        },
    )
    .await
}

/// Runs a module once on a fresh claimed checkpoint and returns the report.
async fn run_once(rt: &Runtime, module: &Prepared, input: &str, limits: JobLimits) -> RunReport {
    let (_tmp, store) = dir_store();
    let job: JobId = "j".parse().unwrap();
    let claimed = claim(&store, &job, "test").await;
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    run_claimed(
        rt,
        module,
        &store,
        &job,
        &ckpt,
        1,
        input,
        &limits,
        CancellationToken::new(),
    )
    .await
}
