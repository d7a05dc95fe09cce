//! Workers on one node: a dead worker's jobs are handed back at once by the next worker
//! started there or by one running beside it; a frozen worker is not taken for dead.

use std::time::{Duration, Instant};

use support::cli::{CliEnv, Proc};
use taskhost::queue::{LocalQueue, Queue, Settle};
use taskhost::worker::node_record::SCAN_INTERVAL;

use super::*;
use crate::support;

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

/// Waits until `n` workers have recorded themselves on `node`'s disk (`<cache>/workers`).
async fn wait_records(node: &CliEnv, n: usize) {
    let root = std::path::Path::new(node.var("TASKHOST_CACHE_DIR")).join("workers");
    let deadline = Instant::now() + WORKER_START;
    loop {
        let records = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        if records >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{records} records: {:?}",
            walk(&root)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// How long the frozen worker stays frozen: longer than one of its sibling's scans.
const FROZEN_FOR: Duration = Duration::from_millis(SCAN_INTERVAL.as_millis() as u64 * 3 / 2);

/// A frozen worker (SIGSTOP) is not a dead one: a worker started on its node leaves its job
/// alone, and the job finishes in its first run once the frozen worker wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_on_the_node_is_not_taken_for_dead() {
    let (stack, node, mut a, id) = one_job_on_a_node("node-frozen", 40).await;
    a.signal(libc::SIGSTOP);
    let mut b = node.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;
    // Part of the scenario, not a wait for a condition: A stays frozen through more than one
    // of B's scans, each of which must leave it alone.
    tokio::time::sleep(FROZEN_FOR).await;
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
    // B has recorded itself on the node: its scans have begun (or begin now). Whether the
    // first one runs before or after the kill, B must find A dead within one scan interval.
    wait_records(&node, 2).await;
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
