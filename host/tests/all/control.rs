//! Job control against real servers (issue 16): `job cancel` of a queued, a running and a
//! finished job, cancels racing the jobs' ends, pause + resume, `dead-letter list` /
//! `replay` of poison and failed jobs and `job retry`, once on the embedded queue with the
//! directory store and once on the Pub/Sub emulator with the S3 server; a cancel during a
//! storage outage on a private S3 server.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::s3::S3Server;
use support::stack::*;
use taskhost::queue::{LocalQueue, OutgoingMessage, Queue};

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

/// Pause, then resume: the job continues from its checkpoint (fewer steps run than a restart
/// would) and its result equals an uninterrupted run's. A done job is not resumed (exit 5),
/// nor one without stored work (exit 8).
async fn pause_and_resume(cli: CliEnv) {
    const STEPS: u64 = 200;
    let module = push(&cli).await;
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    let job = format!("{{\"job_id\":\"pr\",\"steps\":{STEPS},\"step_ms\":100}}\n");
    submit(&cli, &module, "pr.jsonl", &job).await;
    wait_state(&cli, "pr", &mut worker, |s| {
        s["state"] == "running" && s["progress"][0].as_u64().unwrap_or(0) >= 10
    })
    .await;
    let out = cli
        .run(&["job", "pause", "pr", "--yes", "--by", "tester"])
        .await
        .success();
    assert!(out.stdout.contains("pr: pause recorded"), "{out}");
    wait_log(&mut worker, STOPPED, "pr").await;
    let paused = wait_state(&cli, "pr", &mut worker, |s| s["state"] == "paused").await;
    let at = paused["progress"][0].as_u64().unwrap();
    assert!((10..STEPS).contains(&at), "{paused:#}");

    let out = cli.run(&["job", "resume", "pr"]).await.success();
    assert!(
        out.stdout.contains("pr: cleared pause; published again"),
        "{out}"
    );
    let done = wait_state(&cli, "pr", &mut worker, |s| s["state"] == "done").await;
    assert_step_result("pr", STEPS, &done);
    assert!(done["control"].is_null(), "{done:#}");
    let log = worker.log();
    let from = job_lines(&log, "resuming at step ", "pr")
        .last()
        .and_then(|l| number_after(l, "resuming at step "))
        .unwrap_or_else(|| panic!("pr was not resumed from its checkpoint:\n{log}"));
    // The resumed run ran STEPS - from steps, a restart STEPS.
    assert!(
        from > 0 && from <= at,
        "resumed at step {from}, paused at {at}\n{log}"
    );

    let out = cli.run(&["job", "resume", "pr"]).await.failure();
    assert_eq!(out.status.code(), Some(5), "{out}");
    assert!(out.stderr.contains("pr: done"), "{out}");
    let out = cli.run(&["job", "resume", "nosuchjob"]).await.failure();
    assert_eq!(out.status.code(), Some(8), "{out}");
    assert!(out.stderr.contains("no stored work"), "{out}");
    stop(&mut worker).await;
}

/// The message ids `dead-letter list --json` shows, by job id.
async fn dead_letters(cli: &CliEnv) -> Vec<Value> {
    let out = cli.run(&["dead-letter", "list", "--json"]).await.success();
    let mut letters: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{out}")))
        .collect();
    letters.sort_by_key(|l| l["message_id"].as_str().unwrap().to_owned());
    letters
}

/// A poison message (no module, a worker without DEFAULT_MODULE) and two jobs that trap
/// (MAX_FAILURES=1) are dead-lettered; `dead-letter list` shows them and loses none (read
/// twice, the same); `dead-letter replay --module` runs the poison one and a failed one on
/// the step counter, their failure counters reset; `job retry --module` runs the other from
/// its stored work; then `replay --all` removes the last, stale dead letter.
async fn replay_poison_and_failed(cli: CliEnv, queue: Queue) {
    let counter = push(&cli).await;
    let broken = cli.push_guest("misbehave").await;
    let cli = cli.set("MAX_FAILURES", "1");
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    worker.wait_for_log("worker started", WORKER_START).await;
    let topic = cli.var("TOPIC_ID").to_owned();
    queue
        .publish(
            &topic,
            vec![OutgoingMessage {
                data: br#"{"job_id":"nomod","steps":4}"#.to_vec(),
                attributes: Default::default(),
            }],
        )
        .await
        .unwrap();
    let jobs = "{\"job_id\":\"bad\",\"steps\":5,\"mode\":\"panic\"}\n\
                {\"job_id\":\"bad2\",\"steps\":3,\"mode\":\"panic\"}\n";
    submit(&cli, &broken, "bad.jsonl", jobs).await;
    for id in ["nomod", "bad", "bad2"] {
        wait_state(&cli, id, &mut worker, |s| s["state"] == "failed").await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = dead_letters(&cli).await;
        if listed.len() >= 3 || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let ids: Vec<&str> = listed
        .iter()
        .map(|l| l["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{listed:#?}");
    for want in ["nomod", "bad", "bad2"] {
        assert!(ids.contains(&want), "{listed:#?}");
    }
    for l in &listed {
        assert!(!l["reason"].as_str().unwrap_or("").is_empty(), "{l:#}");
        assert!(l["dead_lettered_ms"].as_u64().is_some(), "{l:#}");
    }
    let bad = listed.iter().find(|l| l["job_id"] == "bad").unwrap();
    assert_eq!(bad["module"], broken, "{bad:#}");
    // Listing consumed nothing: the same messages again.
    assert_eq!(dead_letters(&cli).await, listed);

    let out = cli
        .run(&[
            "dead-letter",
            "replay",
            "nomod",
            "bad",
            "--module",
            &counter,
        ])
        .await
        .success();
    assert!(out.stdout.contains("nomod: replayed"), "{out}");
    assert!(out.stdout.contains("bad: replayed"), "{out}");
    for (id, steps) in [("nomod", 4), ("bad", 5)] {
        let s = wait_state(&cli, id, &mut worker, |s| s["state"] == "done").await;
        assert_step_result(id, steps, &s);
        assert_eq!(s["failures"], 0, "the failure counter was not reset: {s:#}");
    }
    let left = dead_letters(&cli).await;
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["job_id"], "bad2", "{left:#?}");

    let out = cli
        .run(&["job", "retry", "bad2", "--module", &counter])
        .await
        .success();
    assert!(
        out.stdout.contains("bad2: cleared failures, error"),
        "{out}"
    );
    let s = wait_state(&cli, "bad2", &mut worker, |s| s["state"] == "done").await;
    assert_step_result("bad2", 3, &s);
    // A retry refused (the job is done) leaves its stored work on its module: reset and
    // retried, it runs on the step counter again, not on the module the refused retry named.
    let out = cli
        .run(&["job", "retry", "bad2", "--module", &broken])
        .await
        .failure();
    assert!(out.stderr.contains("bad2: done"), "{out}");
    cli.run(&["job", "reset", "bad2", "--yes"]).await.success();
    cli.run(&["job", "retry", "bad2"]).await.success();
    let s = wait_state(&cli, "bad2", &mut worker, |s| s["state"] == "done").await;
    assert_step_result("bad2", 3, &s);
    // Its dead letter is stale now: `replay --all` removes it without running it again.
    let out = cli
        .run(&["dead-letter", "replay", "--all", "--yes"])
        .await
        .success();
    assert!(out.stdout.contains("bad2: done"), "{out}");
    assert!(dead_letters(&cli).await.is_empty());
    let out = cli
        .run(&["dead-letter", "replay", "--all", "--yes"])
        .await
        .failure();
    assert_eq!(out.status.code(), Some(8), "{out}");
    let out = cli.run(&["dead-letter", "replay", "--all"]).await;
    assert_eq!(out.status.code(), Some(8), "nothing to ask about: {out}");
    stop(&mut worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_on_both_backends() {
    pause_and_resume(embedded("ctl-pause-emb").await).await;
    let stack = Stack::setup_with("ctl-pause-ps", Duration::from_secs(DEADLINE_S)).await;
    pause_and_resume(stack.cli.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_poison_and_failed_jobs_on_both_backends() {
    let cli = embedded("ctl-dl-emb").await;
    let queue = Queue::Local(LocalQueue::open(cli.var("QUEUE_FILE")).await.unwrap());
    replay_poison_and_failed(cli, queue).await;
    let stack = Stack::setup_with("ctl-dl-ps", Duration::from_secs(DEADLINE_S)).await;
    let queue = Queue::PubSub(stack.pubsub.clone());
    replay_poison_and_failed(stack.cli.clone(), queue).await;
}

/// A cancel while storage is frozen waits for it and is applied once it answers (or, if it
/// gave up, says so and exits non-zero); with storage gone it fails loudly (exit 6, naming
/// the job), never silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_storage_outage_is_applied_or_fails_loudly() {
    let servers = servers().await;
    let s3 = S3Server::start().await;
    let cli = CliEnv::new(&servers.emulator, &s3, "e2e-ctl-outage", "ctl-outage")
        .set("ACK_DEADLINE_SECONDS", DEADLINE_S.to_string());
    cli.run(&["setup"]).await.success();
    let module = push(&cli).await;
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    let jobs = "{\"job_id\":\"long\",\"steps\":600,\"step_ms\":100}\n";
    submit(&cli, &module, "long.jsonl", jobs).await;
    wait_state(&cli, "long", &mut worker, |s| s["state"] == "running").await;

    s3.freeze(true);
    let pending = tokio::spawn({
        let cli = cli.clone();
        async move { cli.run(&["job", "cancel", "long", "--yes"]).await }
    });
    tokio::time::sleep(Duration::from_secs(4)).await; // the outage's length: the scenario
    s3.freeze(false);
    let out = pending.await.unwrap();
    let s = if out.status.success() {
        assert!(out.stdout.contains("long: cancel recorded"), "{out}");
        wait_log(&mut worker, STOPPED, "long").await;
        wait_state(&cli, "long", &mut worker, |s| s["state"] == "cancelled").await
    } else {
        assert!(
            out.stderr.contains("long"),
            "a failure must name the job: {out}"
        );
        status(&cli, &["long".into()]).await.remove("long").unwrap()
    };
    assert_eq!(
        out.status.success(),
        s["state"] == "cancelled",
        "exit {:?} but {s:#}",
        out.status
    );
    stop(&mut worker).await;

    drop(s3);
    let out = cli.run(&["job", "cancel", "long", "--yes"]).await.failure();
    assert_eq!(out.status.code(), Some(6), "{out}");
    assert!(
        out.stderr.contains("long") && out.stderr.contains("not recorded"),
        "{out}"
    );
}
