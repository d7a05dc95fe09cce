//! Job control against real servers (issue 16): `job cancel` of a queued, a running and a
//! finished job, and cancels racing the jobs' ends, once on the embedded queue with the
//! directory store and once on the Pub/Sub emulator with the S3 server.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::stack::*;

/// The ack deadline of these tests: a running job's owner rewrites its header every 5 s.
const DEADLINE_S: u64 = 10;
/// From `job cancel` to the task stopped: half the deadline, the checkpoint's write spacing
/// and the debug build's slack.
const STOP_BOUND: Duration = Duration::from_secs(8);

/// What the worker logs when a user's request stops a job.
const STOPPED: &str = "stopped by a user's request";

async fn embedded(topic: &str) -> CliEnv {
    let cli = CliEnv::embedded(topic).set("ACK_DEADLINE_SECONDS", DEADLINE_S.to_string());
    cli.run(&["setup"]).await.success();
    cli
}

async fn push(cli: &CliEnv) -> String {
    cli.push_guest("step_counter").await
}

async fn submit(cli: &CliEnv, module: &str, name: &str, jobs: &str) {
    cli.submit_file(module, name, jobs).await.success();
}

/// Polls `status` of `id` until `done` holds of it.
async fn wait_state(
    cli: &CliEnv,
    id: &str,
    worker: &mut Proc,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(cli, &[id.to_string()]).await.remove(id).unwrap();
        if done(&s) {
            return s;
        }
        worker.assert_running();
        assert!(Instant::now() < deadline, "{id}: {s:#}\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the worker's log until it shows `what` for job `id`.
async fn wait_log(worker: &mut Proc, what: &str, id: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if !job_lines(&worker.log(), what, id).is_empty() {
            return Instant::now();
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "no {what:?} for {id}:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queued, a running and a finished job cancelled: the first never starts, the second
/// stops within [`STOP_BOUND`] without writing a result, the third stays done; `status`
/// shows who cancelled and when.
async fn cancel_queued_running_and_finished(cli: CliEnv) {
    let module = push(&cli).await;
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    submit(
        &cli,
        &module,
        "done.jsonl",
        "{\"job_id\":\"fin\",\"steps\":3}\n",
    )
    .await;
    wait_state(&cli, "fin", &mut worker, |s| s["state"] == "done").await;

    // Running: 600 steps of 100 ms.
    submit(
        &cli,
        &module,
        "long.jsonl",
        "{\"job_id\":\"long\",\"steps\":600,\"step_ms\":100}\n",
    )
    .await;
    wait_state(&cli, "long", &mut worker, |s| s["state"] == "running").await;
    let asked = Instant::now();
    let out = cli
        .run(&["job", "cancel", "long", "--yes", "--by", "tester"])
        .await
        .success();
    assert!(out.stdout.contains("long: cancel recorded"), "{out}");
    let stopped = wait_log(&mut worker, STOPPED, "long").await;
    let took = stopped - asked;
    assert!(
        took < STOP_BOUND,
        "stopped {took:?} after the cancel\n{}",
        worker.log()
    );
    let s = status(&cli, &["long".into()]).await.remove("long").unwrap();
    assert_eq!(s["state"], "cancelled", "{s:#}");
    assert_eq!(s["control"]["by"], "tester", "{s:#}");
    assert_eq!(s["control"]["action"], "cancel", "{s:#}");
    assert!(s["result"].is_null(), "{s:#}");

    // Finished: stays done (exit 5 says it was not cancelled).
    let out = cli.run(&["job", "cancel", "fin", "--yes"]).await.failure();
    assert_eq!(out.status.code(), Some(5), "{out}");
    assert_step_result("fin", 3, &status(&cli, &["fin".into()]).await["fin"]);

    // Queued: cancelled by state while no worker runs, never started.
    stop(&mut worker).await;
    submit(&cli, &module, "q.jsonl", "{\"job_id\":\"q\",\"steps\":3}\n").await;
    let out = cli
        .run(&["job", "cancel", "--state", "queued", "--yes"])
        .await
        .success();
    assert!(out.stdout.contains("q: cancel recorded"), "{out}");
    let mut worker = cli.spawn("worker2", &["worker", "--slots", "2"]);
    wait_log(&mut worker, STOPPED, "q").await;
    assert!(
        job_lines(&worker.log(), "job started", "q").is_empty(),
        "{}",
        worker.log()
    );
    // The overview counts it from the listing.
    let o = cli.run(&["status", "--json"]).await.success();
    let o: Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(o["counts"]["cancelled"], 2, "{o:#}");
    assert_eq!(o["counts"]["done"], 1, "{o:#}");
    stop(&mut worker).await;
}

/// Cancels racing the jobs' ends: every job ends exactly one way, done with its result or
/// cancelled without one, and a done job's worker logged no stop for it.
async fn cancel_racing_the_end(cli: CliEnv) {
    let module = push(&cli).await;
    let ids: Vec<String> = (0..12).map(|i| format!("race{i}")).collect();
    let jobs: String = ids
        .iter()
        .map(|id| format!("{{\"job_id\":\"{id}\",\"steps\":4,\"step_ms\":150}}\n"))
        .collect();
    let mut worker = cli.spawn("worker", &["worker", "--slots", "4"]);
    submit(&cli, &module, "race.jsonl", &jobs).await;
    for id in &ids {
        cli.run(&["job", "cancel", id, "--yes"]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let statuses = loop {
        let st = status(&cli, &ids).await;
        // Settled: done, or cancelled and its message acked by a worker or never started.
        let open: Vec<_> = st
            .iter()
            .filter(|(id, s)| !settled(s, &worker.log(), id))
            .collect();
        if open.is_empty() {
            break st;
        }
        assert!(Instant::now() < deadline, "{open:#?}\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let log = worker.log();
    for (id, s) in &statuses {
        let done = !job_lines(&log, "job done; result stored", id).is_empty();
        let stopped = !job_lines(&log, STOPPED, id).is_empty();
        if s["state"] == "done" {
            assert_step_result(id, 4, s);
            assert!(!stopped, "{id} is done, yet stopped:\n{log}");
        } else {
            assert_eq!(s["state"], "cancelled", "{s:#}");
            assert!(s["result"].is_null() && !done, "{id}: {s:#}\n{log}");
        }
    }
    stop(&mut worker).await;
}

/// Done, or cancelled with its message settled by a worker.
fn settled(status: &Value, log: &str, id: &str) -> bool {
    let cancelled = status["state"] == "cancelled" && !job_lines(log, STOPPED, id).is_empty();
    status["state"] == "done" || cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_embedded_default() {
    cancel_queued_running_and_finished(embedded("ctl-emb").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_pubsub_and_s3() {
    let stack = Stack::setup_with("ctl-ps", Duration::from_secs(DEADLINE_S)).await;
    cancel_queued_running_and_finished(stack.cli.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_races_the_end_on_both_backends() {
    cancel_racing_the_end(embedded("ctl-race-emb").await).await;
    let stack = Stack::setup_with("ctl-race-ps", Duration::from_secs(DEADLINE_S)).await;
    cancel_racing_the_end(stack.cli.clone()).await;
}
