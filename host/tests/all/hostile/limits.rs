//! What a hostile task can make the host spend is capped: its wall-clock time even when
//! nearly all of it is store wait, and the host resources it holds at once.

use std::time::{Duration, Instant};

use taskhost::exec::JobEnd;
use taskhost::runtime::TrapKind;
use taskhost::runtime::sandbox::MAX_RESOURCES_PER_TASK;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

use super::{executor, result_doc};
use crate::support::exec::{live_lease, module, run, runtime};

/// Reads that each need the store (one byte of one input, then of the other) keep nearly
/// all of a run's time in store wait, which the wall-clock limit adds back only up to the
/// limit itself: the run ends as a timeout within twice its limit. (Before the fix the
/// credit had no cap: only the task's own time between the calls counted, and this run
/// took 11.6 s of its 2 s limit here; a slower store stretches it without end.)
#[tokio::test]
async fn store_wait_buys_at_most_the_limit_again() {
    let rt = runtime();
    let m = module(&rt, "hostile").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    for key in ["inputs/a", "inputs/b"] {
        store
            .put(key, b"0123456789".to_vec(), Precondition::None)
            .await
            .unwrap();
    }
    let mut ex = executor(store, rt);
    let limit = Duration::from_secs(2);
    ex.limits.timeout = Some(limit);
    let input = r#"{"mode":"ping_pong_reads","inputs":{"a":"inputs/a","b":"inputs/b"}}"#;
    let inputs = [("a", "inputs/a"), ("b", "inputs/b")];
    let started = Instant::now();
    let running = run(
        &ex,
        &m,
        "pingpong",
        input,
        &inputs,
        live_lease(),
        CancellationToken::new(),
    );
    let end = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the task was still running after 60 s");
    let took = started.elapsed();
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Timeout,
                ..
            }
        ),
        "{end:?}"
    );
    // Twice the limit, and the job's claim and end around it.
    assert!(
        took >= limit && took < 2 * limit + Duration::from_secs(3),
        "{took:?}"
    );
}

/// A task holding more host resources than `MAX_RESOURCES_PER_TASK` (wasi-nn tensors here,
/// one table entry each) traps with a message that says so, instead of growing the
/// worker's memory; one under the cap runs, and so does the next job on the same runtime.
#[tokio::test]
async fn a_task_holds_a_bounded_number_of_host_resources() {
    let rt = runtime();
    let m = module(&rt, "hostile").await;
    let tmp = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(tmp.path()).unwrap());
    let ex = executor(store, rt);
    let many = r#"{"mode":"many_resources","count":100000}"#;
    let end = run(
        &ex,
        &m,
        "many",
        many,
        &[],
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    let JobEnd::Trapped {
        kind: TrapKind::Other,
        message,
        ..
    } = &end
    else {
        panic!("expected a trap, got {end:?}");
    };
    assert!(
        message.contains(&MAX_RESOURCES_PER_TASK.to_string()) && message.contains("resources"),
        "{message}"
    );
    let some = format!(
        r#"{{"mode":"many_resources","count":{}}}"#,
        MAX_RESOURCES_PER_TASK / 2
    );
    let end = run(
        &ex,
        &m,
        "some",
        &some,
        &[],
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(result_doc(&end)["made"], MAX_RESOURCES_PER_TASK as u64 / 2);
}
