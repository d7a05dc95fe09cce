//! Fuel is deterministic and fully counted (issue 19 item 6): the same job uses the same
//! fuel however often it yields, and a job cut off and resumed records every run's fuel in
//! its checkpoint header and, once done, in its result's accounting; a write made while a
//! task computes counts its fuel so far.

use super::*;

use taskhost::checkpoint::Usage;
use taskhost::runtime::RuntimeConfig;

/// The fuel this runtime's jobs used so far (its `taskhost_fuel_used_total`).
fn fuel_counted(rt: &Runtime) -> u64 {
    let text = rt.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix("taskhost_fuel_used_total "))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

#[tokio::test]
async fn the_same_job_uses_the_same_fuel_however_often_it_yields() {
    let rt = runtime();
    // Yields to tokio every 1,000 units instead of every 1,000,000.
    let often = Runtime::new(RuntimeConfig {
        fuel_yield_interval: 1_000,
        ..RuntimeConfig::default()
    })
    .unwrap();
    for (module, input) in [
        ("prime_count", r#"{"job_id":"j","n":200000,"chunk":20000}"#),
        (
            "step_counter",
            r#"{"job_id":"j","steps":3000,"checkpoint_every":100}"#,
        ),
    ] {
        let m = prepare(&rt, module).await;
        let m_often = prepare(&often, module).await;
        let mut fuel = Vec::new();
        for (rt, m) in [(&rt, &m), (&rt, &m), (&often, &m_often)] {
            let r = run_once(rt, m, input, JobLimits::default()).await;
            assert!(
                matches!(r.outcome, Outcome::Finished(_)),
                "{module}: {:?}",
                r.outcome
            );
            fuel.push(r.fuel_used);
        }
        assert!(fuel[0] > 0, "{module}: {fuel:?}");
        assert!(
            fuel.iter().all(|f| *f == fuel[0]),
            "{module}: the same job used {fuel:?}"
        );
    }
}

/// Three runs of one job: cut off by its fuel budget, then by its wall-clock limit, then
/// to the end. The header adds up each run's fuel as it ends, and the done job's
/// accounting (its result's note) is the sum of all three.
#[tokio::test]
async fn every_runs_fuel_is_counted_in_the_jobs_accounting() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path()).unwrap();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "fuel-1".parse().unwrap();
    let steps = 3_000_000u64;
    let input = format!(r#"{{"job_id":"fuel-1","steps":{steps},"checkpoint_every":1000}}"#);
    let header_fuel = async || {
        checkpoint::peek(&store, &job)
            .await
            .unwrap()
            .unwrap()
            .fuel_used
    };
    let execute = async |limits: JobLimits, input: &str| {
        executor(store.clone(), rt.clone(), limits)
            .execute(
                &job,
                &m,
                input,
                &JobBinding::default(),
                live_lease(),
                CancellationToken::new(),
            )
            .await
    };

    // Run 1: a fuel budget far below what the job needs; all of it is used.
    let budget = 20_000_000;
    let end = execute(
        JobLimits {
            fuel: Some(budget),
            ..JobLimits::default()
        },
        &input,
    )
    .await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Fuel,
                ..
            }
        ),
        "{end:?}"
    );
    let run1 = fuel_counted(&rt);
    assert_eq!(run1, budget, "the run used its whole budget");
    assert_eq!(header_fuel().await, run1);

    // Run 2: a wall-clock limit cuts it off (step_ms makes it slow).
    let slow = format!(r#"{{"job_id":"fuel-1","steps":{steps},"checkpoint_every":1,"step_ms":1}}"#);
    let end = execute(
        JobLimits {
            timeout: Some(Duration::from_millis(300)),
            ..JobLimits::default()
        },
        &slow,
    )
    .await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Timeout,
                ..
            }
        ),
        "{end:?}"
    );
    let run2 = fuel_counted(&rt) - run1;
    assert!(run2 > 0);
    assert_eq!(header_fuel().await, run1 + run2);

    // Run 3: to the end. The result's note carries the sum of the three runs.
    let end = execute(JobLimits::default(), &input).await;
    assert!(matches!(end, JobEnd::Done { .. }), "{end:?}");
    let run3 = fuel_counted(&rt) - run1 - run2;
    assert!(run3 > 0);
    let result = store
        .get(&taskhost::keys::result(&job))
        .await
        .unwrap()
        .expect("the result is stored");
    let usage: Usage = serde_json::from_str(&result.note.expect("the accounting note")).unwrap();
    assert_eq!(usage.attempts, 3);
    assert_eq!(usage.fuel, run1 + run2 + run3, "{usage:?}");
}

/// A task that computes without host calls is counted as it goes: a write of its checkpoint
/// made while it computes (as a lease refresh makes one) carries the fuel used so far, which
/// the runtime reads at each fuel yield (a yield is a call out to the host too).
#[tokio::test]
async fn a_write_while_the_task_computes_counts_its_fuel_so_far() {
    const SEEN: u64 = 20_000_000;
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "prime_count").await;
    let job: JobId = "fuel-so-far".parse().unwrap();
    let claimed = claim(&store, &job, "test").await;
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    // One chunk: no host call from the start of the computation to its end, far later than
    // the test waits (trial division up to 10^9 takes hours): the run goes on until it is
    // cancelled, once a write has counted SEEN, however slowly the writes come.
    let input = r#"{"job_id":"fuel-so-far","n":1000000000,"chunk":1000000000}"#;
    let (limits, cancel) = (JobLimits::default(), CancellationToken::new());
    let run = run_claimed(
        &rt,
        &m,
        &store,
        &job,
        &ckpt,
        1,
        input,
        &limits,
        cancel.clone(),
    );
    tokio::pin!(run);
    let written = async {
        loop {
            ckpt.update_header(|_| {});
            ckpt.flush(false).await.unwrap();
            let header = checkpoint::peek(&store, &job).await.unwrap().unwrap();
            if header.fuel_used > SEEN {
                return header.fuel_used;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let seen = tokio::select! {
        r = &mut run => panic!(
            "the run ended ({:?}, fuel {}) before a write counted {SEEN}",
            r.outcome, r.fuel_used
        ),
        seen = written => seen,
    };
    cancel.cancel();
    let report = run.await;
    assert!(
        matches!(report.outcome, Outcome::Cancelled),
        "{:?}",
        report.outcome
    );
    assert!(
        seen <= report.fuel_used,
        "a write counted {seen}, the run used {}",
        report.fuel_used
    );
}
