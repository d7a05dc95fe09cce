//! Churn: workers SIGKILLed at random, a worker frozen past its lease, two live messages
//! for one job.

use std::time::{Duration, Instant};

use support::cli::Proc;
use taskhost::keys;
use taskhost::store::ObjectStore;

use super::*;
use crate::support;

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

/// The chaos's lease: long enough that a worker restarted on its node is up and hands the
/// dead one's jobs back before their leases end (at least half of it is left at the kill)
/// even on a loaded machine; with the short [`LEASE`], a slow restart let another worker
/// claim the lapsed job first, and the hand-back had nothing left to do. The jobs of the
/// node that is new every time still come back by lapsing, 20 s at most after a kill.
const CHAOS_LEASE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_of_sigkills_loses_no_job() {
    let stack = Stack::setup_with("chaos", CHAOS_LEASE).await;
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
/// the cancellation; 3 s is room for a loaded machine to schedule the woken process, yet it
/// still fails a worker that keeps running the job until its end (8 s or more of its 100
/// steps were left when it was frozen).
const FROZEN_STOP_BOUND: Duration = Duration::from_secs(3);

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
        .submit(&module, "frozen.jsonl", &(job(&id, 100, 100) + "\n"))
        .await
        .success();
    a.wait_for_log("job started", WORKER_START).await;
    wait_progress(&stack, &id, 5).await;
    a.signal(libc::SIGSTOP);

    let mut b = cli.spawn("worker-b", &["worker"]);
    let statuses = wait_all_done(&stack, std::slice::from_ref(&id), Duration::from_secs(90)).await;
    assert_sum(&id, 100, &statuses[&id]);
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
    // Nothing waited for, nothing slept on: once its process has exited the stale worker can
    // write nothing more, so what is stored now is all it ever wrote.
    stop(&mut a).await;
    let after = (
        store.get(&ckpt_key).await.unwrap().unwrap().bytes,
        store.get(&result_key).await.unwrap().unwrap().bytes,
    );
    assert!(before == after, "the stale worker wrote:\n{}", a.log());
    assert_nothing_left(&stack).await;
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
