//! Jobs whose task's run ended hold a commit place, not a slot, while their result is made
//! durable and their message settled (docs/design.md section 5, "Receiving"): no more of
//! them than the commit places, and a worker SIGKILLed amid them loses no result and no job.

use std::time::{Duration, Instant};

use support::cli::{CliEnv, Proc};
use taskhost::ids::JobId;
use taskhost::queue::{LocalQueue, Settle};
use taskhost::store::ObjectStore;
use taskhost::store::dir::DirStore;
use taskhost::worker::COMMIT_PLACES_PER_SLOT;

use super::*;
use crate::support;

/// `n` one-step jobs `<label>-<i>` submitted on the embedded default with `slots` slots.
async fn one_step_jobs(label: &str, n: usize, slots: usize) -> (CliEnv, Vec<String>) {
    let cli = CliEnv::embedded(label)
        .set("WORKER_SLOTS", slots.to_string())
        .set("ACK_DEADLINE_SECONDS", "2");
    let module = cli.push_guest("step_counter").await;
    let ids: Vec<String> = (0..n).map(|i| format!("{label}-{i}")).collect();
    let text: String = ids.iter().map(|id| job(id, 1, 0) + "\n").collect();
    cli.submit_file(&module, "jobs.jsonl", &text)
        .await
        .success();
    (cli, ids)
}

/// Waits until `worker` logged `n` jobs done.
async fn wait_done_lines(worker: &mut Proc, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.log().matches("job done; result stored").count() < n {
        worker.assert_running();
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every job's result is in the store and right, and nothing is left on the queue.
async fn assert_all_done(cli: &CliEnv, ids: &[String]) {
    let store = DirStore::open(cli.var("STORE_DIR")).unwrap();
    for id in ids {
        let job: JobId = id.parse().unwrap();
        let result = store
            .get(&taskhost::keys::result(&job))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id}: no result"));
        let v: Value = serde_json::from_slice(&result.bytes).unwrap();
        assert_eq!(v["sum"], 1, "{id}: {v}");
    }
    let queue = LocalQueue::open(cli.var("QUEUE_FILE")).await.unwrap();
    let queue = taskhost::queue::Queue::Local(queue);
    for sub in [
        cli.var("SUBSCRIPTION_ID").to_string(),
        format!("{}-dead-letter-sub", cli.var("TOPIC_ID")),
    ] {
        let left = queue
            .pull_some(&sub, 10, Duration::from_millis(500), Settle::Nack)
            .await
            .unwrap();
        assert!(left.is_empty(), "left on {sub}: {left:?}");
    }
}

/// Messages of the embedded queue not acked yet, on any subscription.
fn undelivered(cli: &CliEnv) -> i64 {
    let conn = rusqlite::Connection::open(cli.var("QUEUE_FILE")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap()
}

/// The most jobs that held a commit place at once, from the worker's last line.
fn committing_peak(worker: &Proc) -> u64 {
    let log = worker.log();
    let at = log
        .rfind("committing_peak=")
        .unwrap_or_else(|| panic!("no committing_peak in:\n{log}"));
    let digits: String = log[at + "committing_peak=".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_jobs_never_outnumber_their_places() {
    let (cli, ids) = one_step_jobs("commit-bound", 120, 1).await;
    let mut worker = cli.spawn("worker", &["worker"]);
    wait_done_lines(&mut worker, ids.len()).await;
    stop(&mut worker).await;
    // With one slot, jobs commit while the next ones run: never more than the places.
    let peak = committing_peak(&worker);
    assert!(
        (1..=COMMIT_PLACES_PER_SLOT as u64).contains(&peak),
        "{peak}: {}",
        worker.log()
    );
    assert_all_done(&cli, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_amid_its_commits_loses_no_result_and_no_job() {
    let (cli, ids) = one_step_jobs("commit-kill", 200, 2).await;
    let mut a = cli.spawn("worker-a", &["worker"]);
    // Killed while jobs are finishing: some written, some being flushed, some acked.
    wait_done_lines(&mut a, 30).await;
    a.kill9();
    let done_by_a = a.log().matches("job done; result stored").count();
    assert!(done_by_a < ids.len(), "the kill came after every job");
    assert!(undelivered(&cli) > 0);
    let mut b = cli.spawn("worker-b", &["worker"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let store = DirStore::open(cli.var("STORE_DIR")).unwrap();
    loop {
        let mut missing = 0;
        for id in &ids {
            let job: JobId = id.parse().unwrap();
            if !store.exists(&taskhost::keys::result(&job)).await.unwrap() {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        b.assert_running();
        assert!(
            Instant::now() < deadline,
            "{missing} without a result\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The messages of the jobs whose result was there but not acked come back and are
    // acked as already done: wait until every message is settled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while undelivered(&cli) > 0 {
        b.assert_running();
        assert!(Instant::now() < deadline, "messages left\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut b).await;
    assert!(
        committing_peak(&b) <= 2 * COMMIT_PLACES_PER_SLOT as u64,
        "{}",
        b.log()
    );
    assert_all_done(&cli, &ids).await;
}
