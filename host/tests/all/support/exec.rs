//! Running jobs in process with the executor, on both stores: the fixtures the file and the
//! hostile-task areas share.

use std::collections::BTreeMap;
use std::time::Duration;

use taskhost::checkpoint::{Limits, OtherWork};
use taskhost::exec::{DEFAULT_MAX_CRASHES, Executor, JobBinding, JobEnd};
use taskhost::files::FileLimits;
use taskhost::ids::JobId;
use taskhost::job::Work;
use taskhost::queue::lease::LeaseView;
use taskhost::runtime::{JobLimits, Prepared, Runtime, RuntimeConfig};
use taskhost::store::ObjectStore;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use tokio_util::sync::CancellationToken;

use super::s3::S3Server;

/// A fresh store of each kind; the S3 server lives as long as the returned guard.
pub async fn stores() -> Vec<(&'static str, AnyStore, Box<dyn std::any::Any>)> {
    let (dir, d) = dir_store();
    let d = AnyStore::Dir(d);
    let s3 = S3Server::start().await;
    let s = AnyStore::S3(s3.store(""));
    vec![("dir", d, Box::new(dir)), ("s3", s, Box::new(s3))]
}

/// A runtime with no disk cache.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// The guest module `name`, compiled.
pub async fn module(rt: &Runtime, name: &str) -> Prepared {
    rt.prepare(super::guests::bytes(name), None).await.unwrap()
}

/// Checkpoint limits for tests: writes may follow each other every 20 ms.
pub fn fast_checkpoints() -> Limits {
    Limits {
        min_write_interval: Duration::from_millis(20),
        ..Limits::default()
    }
}

/// An executor on `store` with `limits` and `files`, whose checkpoints may be written every
/// 20 ms.
pub fn executor_on<S: ObjectStore + Clone>(
    store: S,
    rt: Runtime,
    limits: JobLimits,
    files: FileLimits,
) -> Executor<S> {
    Executor {
        store,
        runtime: rt,
        worker_id: "test".into(),
        limits,
        checkpoint_limits: fast_checkpoints(),
        file_limits: files,
        max_crashes: DEFAULT_MAX_CRASHES,
    }
}

/// An executor on `store` with the default job limits and `files`.
pub fn executor(store: AnyStore, rt: Runtime, files: FileLimits) -> Executor<AnyStore> {
    executor_on(store, rt, JobLimits::default(), files)
}

/// A job bound to `input` with the message's `inputs` (name, key).
pub fn binding(input: &str, inputs: &[(&str, &str)]) -> JobBinding {
    JobBinding {
        work: Work::of(&taskhost::ids::ModuleHash::of(b"module"), input),
        on_other_work: OtherWork::Refuse,
        inputs: inputs
            .iter()
            .map(|(n, k)| (n.parse().expect("a valid input name"), k.to_string()))
            .collect::<BTreeMap<_, _>>(),
        deletion_cost: None,
    }
}

/// Runs job `job` of module `m` to its end.
pub async fn run(
    ex: &Executor<AnyStore>,
    m: &Prepared,
    job: &str,
    input: &str,
    inputs: &[(&str, &str)],
    lease: LeaseView,
    stop: CancellationToken,
) -> JobEnd {
    let job: JobId = job.parse().unwrap();
    ex.execute(&job, m, input, &binding(input, inputs), lease, stop)
        .await
}

/// A lease that renews itself for as long as the test runs.
pub fn live_lease() -> LeaseView {
    LeaseView::detached(Duration::from_secs(60)).0
}

/// A fresh directory store; it lives as long as the returned directory.
pub fn dir_store() -> (tempfile::TempDir, DirStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    (tmp, store)
}
