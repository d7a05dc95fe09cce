//! Accounting across a SIGKILL (issue 19 item 6): the fuel a killed run used up to its last
//! checkpoint write is recorded, and the run that resumes the job adds its own to it.

use std::time::Duration;

use taskhost::checkpoint;

use super::*;

/// A worker SIGKILLed after a few checkpoint writes, the job resumed by another: its
/// recorded fuel is exactly the killed run's (as its last write left it, more than 0) plus
/// the resumed run's, and no less than what an uninterrupted run of the same job uses (the
/// killed run's last write counts at least the steps it saved, which the resumed run does
/// not redo; fuel per step is deterministic).
///
/// The killed run's fuel is the one the resumed run's claim read (its "job started" line's
/// `fuel_before`), not a read of the checkpoint right after the SIGKILL: a write the killed
/// worker had already sent can still land after that read (the store may have it stored
/// before it answers). That read only bounds it from below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_fuel_is_counted_with_the_resumed_runs() {
    let stack = Stack::setup_with("killfuel", LEASE).await;
    let module = stack.push("step_counter").await;
    let (killed, whole) = ("fuel-killed".to_string(), "fuel-whole".to_string());
    let steps = 40;
    stack
        .submit(&module, "killed.jsonl", &(job(&killed, steps, 100) + "\n"))
        .await
        .success();
    let cli = stack.cli.set("WORKER_SLOTS", "1");
    let mut a = cli.spawn("worker-a", &["worker"]);
    wait_progress(&stack, &killed, 5).await;
    // While the job runs, its header counts the running run's fuel so far.
    let running = &stack.status(std::slice::from_ref(&killed)).await[&killed];
    let seen = running["accounting"]["fuel"].as_u64().unwrap_or(0);
    assert!(
        seen > 0,
        "a running job's header counts no fuel: {running:#}"
    );
    a.kill9();
    let job_id = killed.parse().unwrap();
    let header = checkpoint::peek(&stack.store, &job_id)
        .await
        .unwrap()
        .expect("the killed run's checkpoint");
    // At least what the killed run had written when it was killed (a write in flight may
    // still add to it).
    let fuel_killed = header.fuel_used;
    assert!(
        fuel_killed >= seen,
        "the last write counts less fuel ({fuel_killed}) than an earlier one ({seen})"
    );
    assert_eq!(header.attempts, 1, "{header:?}");

    stack
        .submit(&module, "whole.jsonl", &(job(&whole, steps, 100) + "\n"))
        .await
        .success();
    let mut b = cli.spawn("worker-b", &["worker"]);
    let ids = [killed.clone(), whole.clone()];
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(120), &mut [&mut b])
        .await;
    stop(&mut b).await;
    let log = b.log();
    let ended = job_lines(&log, "task run ended", &killed);
    assert_eq!(ended.len(), 1, "{log}");
    let fuel_resumed = number_after(ended[0], "fuel=").expect("fuel logged");
    let started = job_lines(&log, "job started", &killed);
    assert_eq!(started.len(), 1, "{log}");
    assert!(started[0].contains("resumed=true"), "{log}");
    // What the killed run's checkpoint counted when the resumed run claimed it.
    let fuel_before = number_after(started[0], "fuel_before=").expect("fuel_before logged");
    assert!(
        fuel_before >= fuel_killed,
        "the resumed run inherited less fuel ({fuel_before}) than the killed run's checkpoint \
         counted after the kill ({fuel_killed})"
    );
    for id in &ids {
        assert_sum(id, steps, &statuses[id]);
    }
    let total = |id: &String| {
        statuses[id]["accounting"]["fuel"]
            .as_u64()
            .unwrap_or_else(|| panic!("no fuel recorded: {:#}", statuses[id]))
    };
    let (recorded, uninterrupted) = (total(&killed), total(&whole));
    eprintln!(
        "killed run {fuel_before} (read after the kill: {fuel_killed}) + resumed run {fuel_resumed} = {recorded}; uninterrupted {uninterrupted}"
    );
    assert_eq!(statuses[&killed]["accounting"]["attempts"], 2);
    assert_eq!(
        recorded,
        fuel_before + fuel_resumed,
        "every attempt counted once"
    );
    assert!(recorded > fuel_resumed);
    assert!(
        recorded >= uninterrupted,
        "both attempts together ({recorded}) count less than one whole run ({uninterrupted})"
    );
    assert_nothing_left(&stack).await;
}
