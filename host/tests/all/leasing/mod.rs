//! Leasing under churn, end to end: real `taskhost` workers against the official Pub/Sub
//! emulator (or the embedded queue) and the S3 test server (or the directory store), killed,
//! frozen and stopped while they run.
//!
//! Properties, not schedules: every result right, nothing dead-lettered, nothing left on the
//! subscription, a stale worker writes nothing, bounded times for stopping and handing over.
//!
//! - `churn`: SIGKILL chaos, a frozen worker whose job moved, two live copies of one job;
//! - `commit`: jobs whose run ended, committing without a slot: bounded, and a SIGKILL amid
//!   them loses nothing;
//! - `shutdown`: SIGTERM hands the job over (both queues), a bounded drain;
//! - `node`: workers on one node hand a dead one's jobs back at once;
//! - `accounting`: a killed run's fuel is counted with the resumed run's.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::CliEnv;
use support::stack::*;

mod accounting;
mod churn;
mod commit;
mod node;
mod shutdown;

/// A short lease, so that a dead worker's jobs come back within seconds (the emulator
/// accepts deadlines below Pub/Sub's 10 s minimum).
const LEASE: Duration = Duration::from_secs(4);

/// A step-counter job document.
fn job(id: &str, steps: u64, step_ms: u64) -> String {
    format!(r#"{{"job_id":"{id}","steps":{steps},"step_ms":{step_ms}}}"#)
}

/// Asserts that the subscription and its dead-letter subscription hold nothing.
async fn assert_nothing_left(stack: &Stack) {
    stack.assert_empty(&stack.dead_letter_subscription()).await;
    stack.assert_empty(&stack.subscription()).await;
}

/// Polls `status` until every job is done (workers may be killed and restarted meanwhile).
async fn wait_all_done(
    stack: &Stack,
    ids: &[String],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = stack.status(ids).await;
        if statuses.values().all(|s| s["state"] == "done") {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "not done within {timeout:?}: {:#?}",
            statuses
                .values()
                .filter(|s| s["state"] != "done")
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn assert_sum(id: &str, steps: u64, status: &Value) {
    let result: Value = serde_json::from_str(status["result"].as_str().expect("a result"))
        .unwrap_or_else(|e| panic!("{id}: result is not JSON: {e}: {status}"));
    assert_eq!(result["sum"], steps * (steps + 1) / 2, "{id}: {status:#}");
}

/// Polls `status` until `id` has at least `steps` durable steps.
async fn wait_progress(stack: &Stack, id: &str, steps: u64) {
    wait_progress_of(&stack.cli, id, steps).await
}

async fn wait_progress_of(cli: &CliEnv, id: &str, steps: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(cli, &[id.to_string()]).await;
        if s[id]["progress"][0].as_u64().unwrap_or(0) >= steps {
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
