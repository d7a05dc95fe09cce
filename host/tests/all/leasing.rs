//! Leasing under churn, end to end: real `taskhost worker` processes against the official
//! Pub/Sub emulator and the S3 test server, killed, frozen and stopped while they run.
//!
//! Properties, not schedules: every result right, nothing dead-lettered, nothing left on the
//! subscription, a stale worker writes nothing, bounded times for stopping and handing over.

use crate::support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::s3::S3Server;
use support::stack::*;
use taskhost::keys;
use taskhost::queue::{LocalQueue, Queue, Settle};
use taskhost::store::ObjectStore;

/// A short lease, so that a dead worker's jobs come back within seconds (the emulator
/// accepts deadlines below Pub/Sub's 10 s minimum).
const LEASE: Duration = Duration::from_secs(4);

/// A step-counter job document.
fn job(id: &str, steps: u64, step_ms: u64) -> String {
    format!(r#"{{"job_id":"{id}","steps":{steps},"step_ms":{step_ms}}}"#)
}

/// A small deterministic generator (no crate needed): xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Asserts that the subscription and its dead-letter subscription hold nothing.
async fn assert_nothing_left(stack: &Stack) {
    let dead = stack
        .pull(
            &stack.dead_letter_subscription(),
            100,
            Duration::from_secs(3),
            Settle::Nack,
        )
        .await;
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    let left = stack
        .pull(
            &stack.subscription(),
            100,
            Duration::from_secs(3),
            Settle::Nack,
        )
        .await;
    assert!(left.is_empty(), "left on the subscription: {left:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_of_sigkills_loses_no_job() {
    let stack = Stack::setup_with("chaos", LEASE).await;
    let module = stack.push("step_counter").await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let jobs: Vec<(String, u64)> = (0..30)
        .map(|i| (format!("chaos-{i:02}"), 30 + rng.below(40)))
        .collect();
    let text: String = jobs
        .iter()
        .map(|(id, steps)| job(id, *steps, 100) + "\n")
        .collect();
    stack.submit(&module, "chaos.jsonl", &text).await.success();
    // Workers are killed every few seconds, far more often than nodes die: a job may meet
    // three kills in a row before its first checkpoint write, which MAX_CRASHES (default 3)
    // would take for a job that kills its workers (tested in hostile.rs).
    let cli = stack
        .cli
        .set("WORKER_SLOTS", "2")
        .set("MAX_CRASHES", "1000");
    // Workers 0 and 1 restart on their node (their disk kept: the next one hands the dead
    // one's jobs back at once); worker 2 is a new node every time (its leases lapse).
    let nodes = [cli.node("node-0"), cli.node("node-1"), cli.clone()];
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| nodes[i].spawn(&format!("worker-{i}"), &["worker"]))
        .collect();
    let mut logs_of_killed = String::new();

    // At least 60 s of a random worker SIGKILLed (and restarted) every 3 to 6 s.
    let chaos_until = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    // The jobs each kill interrupted (started in the victim's log, not done), and of those
    // the ones on a node whose next worker must hand them back.
    let mut interrupted: Vec<String> = Vec::new();
    let mut on_kept_nodes: Vec<String> = Vec::new();
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(3000 + rng.below(3000))).await;
        let i = rng.below(3) as usize;
        let victim = &mut workers[i];
        victim.assert_running();
        victim.kill9();
        let log = victim.log();
        let in_flight = in_flight(&log, jobs.iter().map(|(id, _)| id));
        if i < 2 {
            on_kept_nodes.extend(in_flight.iter().cloned());
        }
        interrupted.extend(in_flight);
        logs_of_killed.push_str(&log);
        kills += 1;
        workers[i] = nodes[i].spawn(&format!("worker-{i}-{kills}"), &["worker"]);
    }
    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let statuses = wait_all_done(&stack, &ids, Duration::from_secs(240)).await;
    for (id, steps) in &jobs {
        assert_sum(id, *steps, &statuses[id]);
    }
    let resumed = statuses
        .values()
        .filter(|s| s["attempts"].as_u64() > Some(1))
        .count();
    eprintln!(
        "{kills} kills interrupted {} jobs ({} on a kept node); {resumed} of {} jobs ran more than once",
        interrupted.len(),
        on_kept_nodes.len(),
        jobs.len()
    );
    assert!(
        !interrupted.is_empty(),
        "no kill interrupted a job: the chaos proved nothing"
    );
    assert!(
        resumed > 0,
        "no job ran more than once: the chaos proved nothing"
    );
    for w in &mut workers {
        stop(w).await;
    }
    assert_nothing_left(&stack).await;
    let all_logs = logs_of_killed + &logs(&workers.iter_mut().collect::<Vec<_>>());
    assert!(!all_logs.contains("dead-lettered"), "{all_logs}");
    let handed = all_logs.matches("handed a dead worker's job back").count();
    eprintln!("{handed} jobs handed back by a worker restarted on its node");
    // A worker restarted on its node hands back what the dead one held (unless that job's
    // lease lapsed and another worker finished it first: then the hand-back has nothing to do).
    assert!(
        !on_kept_nodes.is_empty(),
        "no kill on a kept node interrupted a job: the hand-back was never exercised"
    );
    assert!(
        handed > 0,
        "jobs {on_kept_nodes:?} were interrupted on a kept node, none was handed back:\n{all_logs}"
    );
}

/// How soon a worker woken past its lease stops the job. The lease's end is in the past the
/// moment it wakes, so nothing needs to be waited for but the task's next step (100 ms) and
/// the cancellation; half a lease is a wide margin that still fails a worker that keeps
/// running the job until some later renewal or write.
const FROZEN_STOP_BOUND: Duration = Duration::from_secs(LEASE.as_secs() / 2);

/// A worker frozen (SIGSTOP) past its lease, whose job another worker took over and finished,
/// writes nothing when it wakes and frees its slot within [`FROZEN_STOP_BOUND`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_whose_job_moved_writes_nothing_when_it_wakes() {
    let stack = Stack::setup_with("frozen", LEASE).await;
    let module = stack.push("step_counter").await;
    let cli = stack.cli.set("WORKER_SLOTS", "1");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let id = "frozen-job".to_string();
    stack
        .submit(&module, "frozen.jsonl", &(job(&id, 60, 100) + "\n"))
        .await
        .success();
    a.wait_for_log("job started", WORKER_START).await;
    wait_progress(&stack, &id, 5).await;
    a.signal(libc::SIGSTOP);

    let mut b = cli.spawn("worker-b", &["worker"]);
    let statuses = wait_all_done(&stack, std::slice::from_ref(&id), Duration::from_secs(90)).await;
    assert_sum(&id, 60, &statuses[&id]);
    assert!(b.log().contains("resumed=true"), "{}", b.log());
    stop(&mut b).await;
    let store = &stack.store;
    let job_id = id.parse().unwrap();
    let (ckpt_key, result_key) = (keys::checkpoint(&job_id), keys::result(&job_id));
    let before = (
        store.get(&ckpt_key).await.unwrap().unwrap().bytes,
        store.get(&result_key).await.unwrap().unwrap().bytes,
    );

    let woke = Instant::now();
    a.signal(libc::SIGCONT);
    a.wait_for_log("stopped without writing", LEASE).await;
    let freed = woke.elapsed();
    assert!(freed < FROZEN_STOP_BOUND, "stopped {freed:?} after waking");
    eprintln!("the woken worker stopped {freed:?} after waking");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (
        store.get(&ckpt_key).await.unwrap().unwrap().bytes,
        store.get(&result_key).await.unwrap().unwrap().bytes,
    );
    assert!(before == after, "the stale worker wrote:\n{}", a.log());

    // Its slot is free: it runs the next job.
    let next = "after-freeze".to_string();
    stack
        .submit(&module, "next.jsonl", &(job(&next, 3, 0) + "\n"))
        .await
        .success();
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&next),
            Duration::from_secs(30),
            &mut [&mut a],
        )
        .await;
    assert_sum(&next, 3, &statuses[&next]);
    stop(&mut a).await;
    assert_nothing_left(&stack).await;
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

/// Two live messages for one job: one run, one result, both messages settled, none
/// dead-lettered; the second copy neither steals the job nor spins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_messages_for_one_job_run_it_once() {
    let stack = Stack::setup_with("twins", LEASE).await;
    let module = stack.push("step_counter").await;
    let id = "twin".to_string();
    let line = job(&id, 40, 100) + "\n";
    stack
        .submit(&module, "twins.jsonl", &format!("{line}{line}"))
        .await
        .success();
    let cli = stack.cli.set("WORKER_SLOTS", "1");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let mut b = cli.spawn("worker-b", &["worker"]);
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&id),
            Duration::from_secs(60),
            &mut [&mut a, &mut b],
        )
        .await;
    assert_sum(&id, 40, &statuses[&id]);
    assert_eq!(
        statuses[&id]["attempts"], 1,
        "claimed twice: {:#}",
        statuses[&id]
    );
    // The copy comes back after at least a lease and is acked once the result exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.log() + &b.log()).contains("result already exists") {
        assert!(Instant::now() < deadline, "{}", logs(&[&mut a, &mut b]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(&mut a).await;
    stop(&mut b).await;
    let all = a.log() + &b.log();
    assert_eq!(job_lines(&all, "job started", &id).len(), 1, "{all}");
    let busy = job_lines(&all, "another worker runs this job", &id).len();
    assert!(busy >= 1, "the copy was never turned away: {all}");
    // Each turn-away waits at least a lease: the copy did not spin.
    assert!(
        busy <= 60 / LEASE.as_secs() as usize,
        "{busy} turn-aways: {all}"
    );
    assert_nothing_left(&stack).await;
}

/// SIGTERM: the job is released and runs on another worker within 2 s; the stopped worker
/// exits 0.
/// The lease of the hand-over test: the job could only move sooner by being handed back.
const HANDOVER_LEASE: Duration = Duration::from_secs(30);
/// How soon after SIGTERM the job must start on the other worker: half the lease, far below
/// a lapse and far above the hand-over itself (a nack, a redelivery, and the other worker's
/// module fetch and compile, ~1.5 s in the debug build).
const HANDOVER_BOUND: Duration = Duration::from_secs(HANDOVER_LEASE.as_secs() / 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_to_another_worker_before_its_lease_could_lapse() {
    let stack = Stack::setup_with("handover", HANDOVER_LEASE).await;
    let module = stack.push("step_counter").await;
    let cli = stack.cli.set("WORKER_SLOTS", "1");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let id = "handover-job".to_string();
    stack
        .submit(&module, "handover.jsonl", &(job(&id, 80, 100) + "\n"))
        .await
        .success();
    a.wait_for_log("job started", WORKER_START).await;
    wait_progress(&stack, &id, 5).await;
    let mut b = cli.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;

    let signalled = Instant::now();
    a.signal(libc::SIGTERM);
    b.wait_for_log("job started", HANDOVER_LEASE).await;
    let handed = signalled.elapsed();
    assert!(
        handed < HANDOVER_BOUND,
        "ran elsewhere {handed:?} after SIGTERM: not handed over, the lease lapsed"
    );
    eprintln!("handed over in {handed:?}");
    let status = a.wait_exit(WORKER_STOP).await;
    assert_eq!(status.code(), Some(0), "{}", a.log());
    assert!(b.log().contains("resumed=true"), "{}", b.log());
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&id),
            Duration::from_secs(60),
            &mut [&mut b],
        )
        .await;
    assert_sum(&id, 80, &statuses[&id]);
    stop(&mut b).await;
    assert_nothing_left(&stack).await;
}

/// With storage frozen, a drain cannot flush: the worker still exits within
/// SHUTDOWN_TIMEOUT_SECONDS, and a second signal makes it exit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_a_second_signal_exits_at_once() {
    let stack = Stack::setup_with("bounded", LEASE).await;
    // This test's own S3 server: it freezes it.
    let s3 = S3Server::start().await;
    let servers = servers().await;
    let cli = CliEnv::new(&servers.emulator, &s3, "e2e-bounded", "bounded")
        .set("ACK_DEADLINE_SECONDS", LEASE.as_secs().to_string())
        .set("WORKER_SLOTS", "1");
    let module = {
        let path = support::guests::wasm("step_counter");
        cli.run(&["module", "push", path.to_str().unwrap()])
            .await
            .success()
            .last_line()
            .to_string()
    };
    for (timeout, second_signal) in [("2", false), ("60", true)] {
        let id = format!("bounded-{timeout}");
        let path = cli.write_file(&format!("{id}.jsonl"), job(&id, 200, 100) + "\n");
        cli.run(&[
            "submit",
            "--quiet",
            "--module",
            &module,
            path.to_str().unwrap(),
        ])
        .await
        .success();
        let mut w = cli
            .set("SHUTDOWN_TIMEOUT_SECONDS", timeout)
            .spawn(&format!("worker-{timeout}"), &["worker"]);
        w.wait_for_log(&format!("job started job={id}"), WORKER_START)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        s3.freeze(true);
        let signalled = Instant::now();
        w.signal(libc::SIGTERM);
        let status = if second_signal {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.assert_running();
            let again = Instant::now();
            w.signal(libc::SIGTERM);
            let status = w.wait_exit(Duration::from_secs(5)).await;
            let took = again.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "second signal: exit took {took:?}"
            );
            assert_eq!(status.code(), Some(130), "{}", w.log());
            status
        } else {
            let status = w.wait_exit(Duration::from_secs(20)).await;
            let took = signalled.elapsed();
            assert!(
                took < Duration::from_secs(5),
                "SHUTDOWN_TIMEOUT 2 s, exit took {took:?}"
            );
            assert_eq!(status.code(), Some(0), "{}", w.log());
            status
        };
        assert!(status.signal().is_none(), "{status}");
        s3.freeze(false);
    }
    drop(stack);
}

/// A worker SIGKILLed and started again on the same node (its cache directory kept, as a
/// restarted container keeps its disk) resumes the jobs it held at once, not when their
/// leases lapse: the new process finds its predecessor dead (its lock is free), releases the
/// checkpoints it held and hands their messages back.
async fn restart_on_the_same_node(cli: CliEnv, queue: Queue, label: &str) {
    let node = cli.set("WORKER_SLOTS", "2").node("node");
    let wasm = support::guests::wasm("step_counter");
    let pushed = node.run(&["module", "push", wasm.to_str().unwrap()]).await;
    let module = pushed.success().last_line().to_string();
    let ids: Vec<String> = (0..2).map(|i| format!("{label}-node-{i}")).collect();
    let text: String = ids.iter().map(|id| job(id, 100, 100) + "\n").collect();
    let jobs = node.write_file("node.jsonl", text);
    let args = [
        "submit",
        "--quiet",
        "--module",
        &module,
        jobs.to_str().unwrap(),
    ];
    node.run(&args).await.success();
    let mut a = node.spawn("worker-a", &["worker"]);
    for id in &ids {
        wait_progress_of(&node, id, 5).await;
    }
    a.kill9();

    let restarted = Instant::now();
    let mut b = node.spawn("worker-b", &["worker"]);
    let deadline = restarted + Duration::from_secs(20);
    while b.log().matches("resumed=true").count() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "not resumed:\n{}\nthe killed worker:\n{}\nits record: {:?}",
            b.log(),
            a.log(),
            walk(&std::path::Path::new(node.var("TASKHOST_CACHE_DIR")).join("workers"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = restarted.elapsed();
    // The leases of the killed worker had at least half of HELD_LEASE (15 s) left.
    eprintln!("{label}: both jobs resumed {took:?} after the restart");
    assert!(
        took < HANDED_BACK_WITHIN,
        "resumed {took:?} after the restart"
    );
    assert_eq!(
        b.log().matches("handed a dead worker's job back").count(),
        ids.len(),
        "{}",
        b.log()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let statuses = loop {
        let statuses = status(&node, &ids).await;
        if statuses.values().all(|s| s["state"] == "done") {
            break statuses;
        }
        assert!(Instant::now() < deadline, "{statuses:#?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for id in &ids {
        assert_sum(id, 100, &statuses[id]);
        assert_eq!(statuses[id]["attempts"], 2, "{id}: {:#}", statuses[id]);
    }
    stop(&mut b).await;
    let sub = node.var("SUBSCRIPTION_ID").to_string();
    let dead_sub = format!("{}-dead-letter-sub", node.var("TOPIC_ID"));
    for sub in [sub, dead_sub] {
        let left = queue
            .pull_some(&sub, 10, Duration::from_secs(2), Settle::Nack)
            .await
            .unwrap_or_else(|e| panic!("pull {sub}: {e:#}"));
        assert!(left.is_empty(), "left on {sub}: {left:?}");
    }
}

/// Every path under `dir` (for failure messages).
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut paths = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        paths.push(e.path().display().to_string());
        if e.path().is_dir() {
            paths.extend(walk(&e.path()));
        }
    }
    paths
}

/// How soon a dead worker's jobs run again when a worker on its node hands them back: a
/// bound with room for a loaded machine, yet below the 15 s a lapse would take at least.
const HANDED_BACK_WITHIN: Duration = Duration::from_secs(8);

/// A lease the dead worker's jobs still have much of when it is restarted: a handover
/// faster than half of it cannot be a lapse.
const HELD_LEASE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_on_its_node_resumes_its_jobs_at_once_on_the_emulator() {
    let stack = Stack::setup_with("node", HELD_LEASE).await;
    let queue = Queue::PubSub(stack.pubsub.clone());
    restart_on_the_same_node(stack.cli.clone(), queue, "emulator").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_on_its_node_resumes_its_jobs_at_once_on_the_embedded_queue() {
    let secs = HELD_LEASE.as_secs().to_string();
    let cli = CliEnv::embedded("node").set("ACK_DEADLINE_SECONDS", secs);
    let queue = LocalQueue::open(cli.var("QUEUE_FILE"))
        .await
        .expect("open the embedded queue");
    restart_on_the_same_node(cli, Queue::Local(queue), "embedded").await;
}

/// A stack named `name` (lease [`HELD_LEASE`]), a node's environment (one slot), and worker
/// A on it running job `<name>-job` of `steps` steps of 100 ms, 3 of them durable.
async fn one_job_on_a_node(name: &str, steps: u64) -> (Stack, CliEnv, Proc, String) {
    let stack = Stack::setup_with(name, HELD_LEASE).await;
    let module = stack.push("step_counter").await;
    let node = stack.cli.set("WORKER_SLOTS", "1").node("node");
    let id = format!("{name}-job");
    let a = node.spawn("worker-a", &["worker"]);
    stack
        .submit(&module, "job.jsonl", &(job(&id, steps, 100) + "\n"))
        .await
        .success();
    wait_progress(&stack, &id, 3).await;
    (stack, node, a, id)
}

/// A frozen worker (SIGSTOP) is not a dead one: a worker started on its node leaves its job
/// alone, and the job finishes in its first run once the frozen worker wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_on_the_node_is_not_taken_for_dead() {
    let (stack, node, mut a, id) = one_job_on_a_node("node-frozen", 40).await;
    a.signal(libc::SIGSTOP);
    let mut b = node.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.signal(libc::SIGCONT);
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&id),
            Duration::from_secs(60),
            &mut [&mut a, &mut b],
        )
        .await;
    assert_sum(&id, 40, &statuses[&id]);
    assert_eq!(statuses[&id]["attempts"], 1, "{:#}", statuses[&id]);
    let log = b.log();
    assert!(!log.contains("handed a dead worker"), "{log}");
    assert!(!log.contains("job started"), "{log}");
    stop(&mut a).await;
    stop(&mut b).await;
    assert_nothing_left(&stack).await;
}

/// A worker that dies on a node where another worker runs (not restarted): the other one
/// finds it within its scan interval and resumes its job at once, long before the lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_the_node_resumes_a_dead_siblings_job_at_once() {
    let (stack, node, mut a, id) = one_job_on_a_node("node-sibling", 60).await;
    let mut b = node.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;
    // B's first look (as it started) found A alive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    let killed = Instant::now();
    b.wait_for_log("resumed=true", Duration::from_secs(20))
        .await;
    let took = killed.elapsed();
    // One scan interval (2 s) and a pull, far below the 15 s or more of lease left.
    eprintln!("the dead sibling's job resumed {took:?} after the kill");
    assert!(took < HANDED_BACK_WITHIN, "resumed {took:?} after the kill");
    assert!(
        b.log().contains("handed a dead worker's job back"),
        "{}",
        b.log()
    );
    let statuses = stack
        .wait_done(
            std::slice::from_ref(&id),
            Duration::from_secs(60),
            &mut [&mut b],
        )
        .await;
    assert_sum(&id, 60, &statuses[&id]);
    assert_eq!(statuses[&id]["attempts"], 2, "{:#}", statuses[&id]);
    stop(&mut b).await;
    assert_nothing_left(&stack).await;
}
