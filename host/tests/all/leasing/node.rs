//! Workers on one node: a dead worker's jobs are handed back at once by the next worker
//! started there or by one running beside it; a frozen worker is not taken for dead.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::cli::{CliEnv, Proc};
use taskhost::checkpoint;
use taskhost::queue::{LocalQueue, Queue, Settle};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::worker::node_record::SCAN_INTERVAL;

use super::*;
use crate::support;

/// A worker SIGKILLed and started again on the same node (its cache directory kept, as a
/// restarted container keeps its disk) resumes the jobs it held at once, not when their
/// leases lapse: the new process finds its predecessor dead (its lock is free), releases the
/// checkpoints it held and hands their messages back. `store`: the jobs' store.
async fn restart_on_the_same_node(cli: CliEnv, queue: Queue, store: AnyStore, label: &str) {
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
    let mut lease_end = u64::MAX;
    for id in &ids {
        lease_end = lease_end.min(recorded_lease_end(&store, id).await);
    }

    let restarted = Instant::now();
    let mut b = node.spawn("worker-b", &["worker"]);
    let record = || walk(&std::path::Path::new(node.var("TASKHOST_CACHE_DIR")).join("workers"));
    wait_resumed_before(&mut b, ids.len(), lease_end, || {
        format!(
            "the killed worker:\n{}\nits record: {:?}",
            a.log(),
            record()
        )
    })
    .await;
    eprintln!(
        "{label}: both jobs resumed {:?} after the restart",
        restarted.elapsed()
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

/// A lease the dead worker's jobs still have much of when it is restarted (at least half:
/// it is extended every half deadline), so that the worker that hands them back has time to
/// start even on a loaded machine (30 s or more) before their lease ends.
const HELD_LEASE: Duration = Duration::from_secs(60);

/// The end of the lease that `id`'s checkpoint records (ms since the Unix epoch). The queue
/// hands the message out again no sooner: the recorded end is the send time of the request
/// that set the deadline plus the deadline, and the server counts from later. Read after the
/// holder was killed: a write of it still in flight can only move the end later, so this one
/// is the stricter.
async fn recorded_lease_end(store: &AnyStore, id: &str) -> u64 {
    let header = checkpoint::peek(store, &id.parse().unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{id}: no checkpoint"));
    assert!(
        header.lease_until_ms > 0,
        "{id}: no lease recorded: {header:?}"
    );
    header.lease_until_ms
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until `w` has resumed `n` jobs; fails if that is not seen before `lease_end` (ms
/// since the Unix epoch; the end of the dead holder's leases): what is resumed later may
/// have lapsed rather than been handed back. Seen by polling the log, so a little after it
/// happened: the check errs on the strict side.
async fn wait_resumed_before(w: &mut Proc, n: usize, lease_end: u64, context: impl Fn() -> String) {
    while w.log().matches("resumed=true").count() < n {
        assert!(
            now_ms() < lease_end,
            "not resumed before the dead worker's lease ended (a handover is at once, a \
             lapse is not):\n{}\n{}",
            w.log(),
            context()
        );
        w.assert_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_on_its_node_resumes_its_jobs_at_once_on_the_emulator() {
    let stack = Stack::setup_with("node", HELD_LEASE).await;
    let queue = Queue::PubSub(stack.pubsub.clone());
    let store = stack.store.clone().into();
    restart_on_the_same_node(stack.cli.clone(), queue, store, "emulator").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_on_its_node_resumes_its_jobs_at_once_on_the_embedded_queue() {
    let secs = HELD_LEASE.as_secs().to_string();
    let cli = CliEnv::embedded("node").set("ACK_DEADLINE_SECONDS", secs);
    let queue = LocalQueue::open(cli.var("QUEUE_FILE"))
        .await
        .expect("open the embedded queue");
    let store = DirStore::open(cli.var("STORE_DIR")).unwrap().into();
    restart_on_the_same_node(cli, Queue::Local(queue), store, "embedded").await;
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

/// A frozen worker (SIGSTOP) is not a dead one: a worker running on its node leaves its job
/// alone, and the job finishes in its first run once the frozen worker wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_on_the_node_is_not_taken_for_dead() {
    let (stack, node, mut a, id) = one_job_on_a_node("node-frozen", 40).await;
    let mut b = node.spawn("worker-b", &["worker"]);
    b.wait_for_log("worker started", WORKER_START).await;
    // B has recorded itself on the node: its scans have begun. A is frozen only now, so
    // the whole freeze falls within B's scans, not within B's start.
    wait_records(&node, 2).await;
    a.signal(libc::SIGSTOP);
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
    let lease_end = recorded_lease_end(&stack.store.clone().into(), &id).await;
    // One scan interval (2 s) and a pull, far below the 30 s or more of lease left.
    wait_resumed_before(&mut b, 1, lease_end, || a.log()).await;
    eprintln!(
        "the dead sibling's job resumed {:?} after the kill",
        killed.elapsed()
    );
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
