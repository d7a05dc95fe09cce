//! Priority lanes (issue 16, item 4) against real servers: urgent jobs submitted behind a
//! backlog start before the backlog's remaining jobs, on the embedded queue and on the
//! Pub/Sub emulator; a worker with one lane reads only it; `setup` creates the lanes; a
//! missing lane subscription is a misconfiguration like a missing subscription; `job retry`
//! and `dead-letter replay` publish to the job's own lane.

use crate::support;

use std::time::{Duration, Instant};

use support::cli::{CliEnv, Proc};
use support::stack::*;
use taskhost::queue::Settle;

/// A backlog job: long enough that the backlog is far from done when the urgent jobs come.
const BACKLOG_JOB: &str = r#""steps":6,"step_ms":100"#;
const BACKLOG: usize = 10;
const URGENT: usize = 3;

async fn push(cli: &CliEnv) -> String {
    cli.push_guest("step_counter").await
}

/// `submit` of `ids` (each with `fields`) to `lane`.
async fn submit(cli: &CliEnv, module: &str, lane: &str, ids: &[String], fields: &str) {
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"job_id\":\"{id}\",{fields}}}\n"))
        .collect();
    let path = cli.write_file(&format!("{lane}-{}.jsonl", ids[0]), text);
    let out = cli
        .run(&[
            "submit",
            "--quiet",
            "--lane",
            lane,
            "--module",
            module,
            path.to_str().unwrap(),
        ])
        .await
        .success();
    assert!(out.stdout.contains("published"), "{out}");
}

/// The job ids of the worker's log in the order it started them (a job started twice counts
/// at its first start).
fn start_order(log: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for line in log.lines().filter(|l| l.contains("job started")) {
        let Some(id) = line.split_whitespace().find_map(|w| w.strip_prefix("job=")) else {
            continue;
        };
        if !order.iter().any(|o| o == id) {
            order.push(id.to_string());
        }
    }
    order
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// Polls `status` until every job of `ids` is done (panicking with the worker's log if the
/// worker exits or two minutes pass).
async fn wait_all_done(cli: &CliEnv, ids: &[String], worker: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let statuses = status(cli, ids).await;
        if statuses.values().all(|s| s["state"] == "done") {
            for (id, s) in &statuses {
                assert_step_result(id, if id.starts_with("bl") { 6 } else { 2 }, s);
            }
            return;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "not done: {statuses:#?}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A one-slot worker on `urgent,default` works through a backlog on `default`; urgent jobs
/// submitted once it is under way start before every backlog job that had not started when
/// their submission returned, but for at most one slot's worth (a pull may have begun just
/// before they were published).
async fn urgent_jobs_overtake_the_backlog(cli: CliEnv) {
    let cli = cli.set("LANES", "urgent,default");
    cli.run(&["setup"]).await.success();
    let module = push(&cli).await;
    let backlog = ids("bl", BACKLOG);
    let urgent = ids("urgent", URGENT);
    submit(&cli, &module, "default", &backlog, BACKLOG_JOB).await;
    let addr = support::probes::metrics_addr();
    let mut worker = cli
        .set("METRICS_ADDR", &addr)
        .spawn("worker", &["worker", "--slots", "1"]);
    // Under way: the first backlog job has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while start_order(&worker.log()).is_empty() {
        worker.assert_running();
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    submit(&cli, &module, "urgent", &urgent, r#""steps":2"#).await;
    let started_before = start_order(&worker.log());
    let mut all = backlog.clone();
    all.extend(urgent.iter().cloned());
    wait_all_done(&cli, &all, &mut worker).await;

    let order = start_order(&worker.log());
    assert_eq!(order.len(), all.len(), "{order:?}");
    let remaining: Vec<&String> = order
        .iter()
        .filter(|id| id.starts_with("bl") && !started_before.contains(id))
        .collect();
    // Not vacuous: most of the backlog was still waiting when the urgent jobs came.
    assert!(remaining.len() >= BACKLOG / 2, "{order:?}");
    let position = |id: &String| order.iter().position(|o| o == id).unwrap();
    let last_urgent = urgent.iter().map(position).max().unwrap();
    let overtaken = remaining
        .iter()
        .filter(|id| position(id) < last_urgent)
        .count();
    assert!(
        overtaken <= 1,
        "{overtaken} backlog jobs started before an urgent one: {order:?} (started before the urgent submission: {started_before:?})\n{}",
        worker.log()
    );
    // The messages pulled are counted by lane (each job at least once).
    let (code, metrics) = support::probes::fetch(&addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for (lane, least) in [("urgent", URGENT), ("default", BACKLOG)] {
        let series = format!("taskhost_lane_messages_pulled_total{{lane=\"{lane}\"}} ");
        let n: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in {metrics}"))
            .parse()
            .unwrap();
        assert!(n >= least, "{lane}: {n}");
    }
    stop(&mut worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_urgent_jobs_overtake_the_backlog_on_the_embedded_queue() {
    let cli = CliEnv::embedded("lanes-local").set("ACK_DEADLINE_SECONDS", "10");
    urgent_jobs_overtake_the_backlog(cli).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_urgent_jobs_overtake_the_backlog_on_pubsub() {
    let stack = Stack::start("lanes-ps").await;
    urgent_jobs_overtake_the_backlog(stack.cli.clone()).await;
}

/// A worker whose one lane is `urgent` runs that lane's jobs and leaves the default lane's
/// messages where they are (never delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_one_lane_reads_only_that_lane() {
    let stack = Stack::start("lanes-one").await;
    let cli = stack.cli.set("LANES", "urgent");
    cli.run(&["setup"]).await.success();
    let module = push(&cli).await;
    let urgent = ids("urgent", 2);
    let plain = ids("plain", 2);
    submit(&cli, &module, "urgent", &urgent, r#""steps":2"#).await;
    submit(&cli, &module, "default", &plain, r#""steps":2"#).await;
    let mut worker = cli.spawn("worker", &["worker", "--slots", "2"]);
    wait_all_done(&cli, &urgent, &mut worker).await;
    stop(&mut worker).await;
    let statuses = status(&cli, &plain).await;
    assert!(
        statuses.values().all(|s| s["state"] == "queued"),
        "{statuses:#?}"
    );
    // Still on the default lane's subscription, never delivered.
    let waiting = stack
        .pull(
            &stack.subscription(),
            10,
            Duration::from_secs(5),
            Settle::Nack,
        )
        .await;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(waiting.iter().all(|m| m.delivery_attempt == Some(1)));
}

/// `setup` with LANES creates each lane's topic and subscription (with the dead-letter
/// policy), then finds them; a job published to a lane's topic reaches its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_lanes() {
    let stack = Stack::start("lanes-setup").await;
    let cli = stack.cli.set("LANES", "urgent,default,bulk");
    let expect = |verb: &str| {
        [
            "topic lanes-setup",
            "topic lanes-setup-dead-letter",
            "subscription lanes-setup-sub",
            "topic lanes-setup-urgent",
            "subscription lanes-setup-sub-urgent",
            "topic lanes-setup-bulk",
            "subscription lanes-setup-sub-bulk",
            "subscription lanes-setup-dead-letter-sub",
        ]
        .map(|what| format!("{verb} {what}"))
    };
    let first = cli.run(&["setup"]).await.success();
    let said = lines(&first.stdout);
    for want in expect("created") {
        assert!(said.contains(&want), "{want}: {first}");
    }
    let second = cli.run(&["setup"]).await.success();
    let said = lines(&second.stdout);
    for want in expect("found") {
        assert!(said.contains(&want), "{want}: {second}");
    }
    for sub in ["lanes-setup-sub-urgent", "lanes-setup-sub-bulk"] {
        let facts = stack.pubsub.lookup_subscription(sub).await.unwrap();
        let facts = facts.unwrap_or_else(|| panic!("{sub} missing"));
        assert_eq!(facts.dead_letter_policy, Some(true), "{sub}");
    }
    let module = push(&cli).await;
    submit(&cli, &module, "bulk", &ids("b", 1), r#""steps":1"#).await;
    let got = stack
        .pull(
            "lanes-setup-sub-bulk",
            1,
            Duration::from_secs(20),
            Settle::Ack,
        )
        .await;
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("b-00"));
    // A lane name that is no name is refused before anything is published.
    let out = cli.set("LANES", "urgent,no good").run(&["setup"]).await;
    assert!(out.failure().stderr.contains("lane name"));
}

/// A worker whose LANES name a lane `setup` never created: with `--exit-on-misconfig` it
/// exits with the sentence; without, it waits not ready and starts by itself once `setup`
/// creates the lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lane_subscription_is_a_misconfiguration() {
    let stack = Stack::setup("lanes-missing").await;
    let cli = stack.cli.set("LANES", "urgent,default");
    let out = cli.run(&["worker", "--exit-on-misconfig"]).await.failure();
    let last = out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        last.contains("subscription `lanes-missing-sub-urgent` does not exist")
            && last.contains("LANES"),
        "{out}"
    );
    let mut worker = cli.spawn("worker", &["worker"]);
    worker
        .wait_for_log("lanes-missing-sub-urgent", Duration::from_secs(30))
        .await;
    cli.run(&["setup"]).await.success();
    worker
        .wait_for_log("worker started", Duration::from_secs(60))
        .await;
    let module = push(&cli).await;
    let urgent = ids("urgent", 1);
    submit(&cli, &module, "urgent", &urgent, r#""steps":2"#).await;
    wait_all_done(&cli, &urgent, &mut worker).await;
    stop(&mut worker).await;
}

/// Polls `status` until `id` is done with the sum of `steps` steps (panicking with the
/// worker's log if it exits or two minutes pass); returns its status.
async fn wait_done(cli: &CliEnv, id: &str, steps: u64, worker: &mut Proc) -> serde_json::Value {
    let s = wait_state(cli, id, worker, |s| s["state"] == "done").await;
    assert_step_result(id, steps, &s);
    s
}

/// A lane's subscription deleted under a running worker (a pull that fails for good: the
/// emulator answers NOT_FOUND) is a misconfiguration of that lane, waited for: the worker
/// stays up and live, `/readyz` names the subscription, the job running on the other lane
/// runs on to its end without being stopped (one attempt), the lane below the broken one is
/// still pulled, and once `setup` recreates the subscription its jobs run. SIGTERM: exit 0.
/// (The running job is on the lane that stays: a job whose own subscription is deleted loses
/// its lease at its next extension, which the lease rule stops, and its message is gone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_deleted_under_a_running_worker_is_waited_for_while_the_rest_runs() {
    let stack = Stack::start("lanes-gone").await;
    let cli = stack.cli.set("LANES", "urgent,default");
    cli.run(&["setup"]).await.success();
    let module = push(&cli).await;
    let long = ids("long", 1);
    submit(
        &cli,
        &module,
        "default",
        &long,
        r#""steps":60,"step_ms":500"#,
    )
    .await;
    let addr = support::probes::metrics_addr();
    let mut worker = cli
        .set("METRICS_ADDR", &addr)
        .spawn("worker", &["worker", "--slots", "2"]);
    wait_state(&cli, &long[0], &mut worker, |s| s["state"] == "running").await;

    let urgent_sub = format!("{}-urgent", stack.subscription());
    let servers = support::stack::servers().await;
    let deleted = servers
        .emulator
        .delete_subscription("e2e-lanes-gone", &urgent_sub);
    assert!(deleted.contains("200"), "{deleted}");
    let broken = Instant::now();
    let (_, body) = support::probes::until(
        &addr,
        "/readyz",
        Duration::from_secs(30),
        &mut worker,
        |(code, body)| *code == 503 && body.contains(&urgent_sub),
    )
    .await;
    assert!(body.contains("misconfigured"), "{body}");
    let live = support::probes::fetch(&addr, "/livez").await;
    assert_eq!(live.map(|a| a.0), Some(200));
    // Still running, and the lane below the broken one is still pulled.
    let s = status(&cli, &long).await;
    assert_eq!(s[&long[0]]["state"], "running", "{s:#?}");
    let below = ids("below", 1);
    submit(&cli, &module, "default", &below, r#""steps":2"#).await;
    wait_done(&cli, &below[0], 2, &mut worker).await;

    // Fixed: the lane's jobs run again, and the worker is ready.
    cli.run(&["setup"]).await.success();
    let urgent = ids("urgent", 1);
    submit(&cli, &module, "urgent", &urgent, r#""steps":2"#).await;
    wait_done(&cli, &urgent[0], 2, &mut worker).await;
    support::probes::until(
        &addr,
        "/readyz",
        Duration::from_secs(30),
        &mut worker,
        |(code, _)| *code == 200,
    )
    .await;
    let fixed_after = broken.elapsed();
    let s = wait_done(&cli, &long[0], 60, &mut worker).await;
    assert_eq!(s["attempts"], 1, "the long job was stopped: {s:#}");
    let log = worker.log();
    assert!(
        log.contains(&format!(
            "the misconfiguration is fixed: pulling from `{urgent_sub}` again"
        )),
        "{log}"
    );
    if fixed_after < Duration::from_secs(55) {
        // Said once, not once per recheck (the next time would be a minute later).
        let said = log.matches("cannot pull from the subscription").count();
        assert_eq!(said, 1, "{log}");
    }
    stop(&mut worker).await;
}

/// With `--exit-on-misconfig`, a subscription deleted under a running worker ends it like a
/// shutdown, then exits 7 with the sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_deleted_under_a_worker_exits_it_with_exit_on_misconfig() {
    let stack = Stack::setup("lanes-gone-exit").await;
    let mut worker = stack
        .cli
        .spawn("worker", &["worker", "--exit-on-misconfig"]);
    worker
        .wait_for_log("worker started", Duration::from_secs(60))
        .await;
    let servers = support::stack::servers().await;
    let sub = stack.subscription();
    let deleted = servers
        .emulator
        .delete_subscription("e2e-lanes-gone-exit", &sub);
    assert!(deleted.contains("200"), "{deleted}");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(7), "{}", worker.log());
    let log = worker.log();
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        last.contains(&format!("cannot pull from the subscription `{sub}`")),
        "{log}"
    );
    assert!(log.contains("worker stopped"), "not drained: {log}");
}

/// `job retry` and `dead-letter replay` publish a job again to the lane it was submitted to
/// (its stored work names it), never to the default lane: a retried job that was never run,
/// and a job that trapped (MAX_FAILURES=1) and was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_or_replayed_job_goes_back_to_its_own_lane() {
    let stack = Stack::start("lanes-again").await;
    let cli = stack.cli.set("LANES", "urgent").set("MAX_FAILURES", "1");
    cli.run(&["setup"]).await.success();
    let counter = push(&cli).await;
    let broken = cli.push_guest("misbehave").await;
    let urgent_sub = format!("{}-urgent", stack.subscription());

    let trapped = ids("trap", 1);
    submit(
        &cli,
        &broken,
        "urgent",
        &trapped,
        r#""steps":3,"mode":"panic""#,
    )
    .await;
    let mut worker = cli.spawn("worker", &["worker", "--slots", "1"]);
    wait_state(&cli, &trapped[0], &mut worker, |s| s["state"] == "failed").await;
    stop(&mut worker).await;

    let never_run = ids("never", 1);
    submit(&cli, &counter, "urgent", &never_run, r#""steps":2"#).await;
    let first = stack
        .pull(&urgent_sub, 10, Duration::from_secs(5), Settle::Ack)
        .await;
    assert_eq!(first.len(), 1, "the submitted message, consumed: {first:?}");
    let out = cli.run(&["job", "retry", &never_run[0]]).await.success();
    assert!(out.stdout.contains("published again"), "{out}");

    // The worker publishes the dead letter after the job's error: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli.run(&["dead-letter", "replay", &trapped[0]]).await;
        if out.stdout.contains("replayed") {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let again = stack
        .pull(&urgent_sub, 10, Duration::from_secs(5), Settle::Ack)
        .await;
    let mut got: Vec<String> = again
        .iter()
        .map(|m| {
            taskhost::job::JobMessage::job_id_of(&m.data)
                .unwrap()
                .to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, [never_run[0].clone(), trapped[0].clone()], "{again:?}");
    // Nothing on the default lane.
    stack.assert_empty(&stack.subscription()).await;
}
