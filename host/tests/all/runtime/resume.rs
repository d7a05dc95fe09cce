//! Results, task errors, and runs cut off by fuel or a timeout that resume from their checkpoint.

use super::*;

#[tokio::test]
async fn step_counter_gives_the_guides_result() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let r = run_once(
        &rt,
        &m,
        r#"{"job_id":"job-0","steps":600}"#,
        JobLimits::default(),
    )
    .await;
    let Outcome::Finished(doc) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"job_id":"job-0","steps":600,"sum":180300})
    );
    // The task reports where it starts: step 0 on a fresh job.
    assert_eq!(r.first_progress, Some((0, 600)));
    assert!(r.fuel_used > 0);
}

#[tokio::test]
async fn bad_input_is_a_task_error() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let r = run_once(&rt, &m, r#"{"job_id":"x"}"#, JobLimits::default()).await;
    assert!(
        matches!(r.outcome, Outcome::TaskError(ref m) if m.contains("steps")),
        "{:?}",
        r.outcome
    );
}

/// A run cut off by its fuel budget (then by a timeout) resumes from its checkpoint and
/// ends with the same result as an uninterrupted run.
#[tokio::test]
async fn interrupted_runs_resume_from_the_checkpoint() {
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "resume-1".parse().unwrap();
    let steps = 3_000_000u64;
    let input = format!(r#"{{"job_id":"resume-1","steps":{steps},"checkpoint_every":1000}}"#);

    // Attempt 1: a fuel budget far below what the job needs.
    let ex = executor(
        store.clone(),
        rt.clone(),
        JobLimits {
            fuel: Some(20_000_000),
            ..JobLimits::default()
        },
    );
    let end = execute(&ex, &job, &m, &input, live_lease()).await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Fuel,
                failures: 1,
                ..
            }
        ),
        "{end:?}"
    );
    let saved = saved_step(&store, &job).await;
    assert!(saved > 0 && saved < steps, "saved step {saved}");

    // Attempt 2: a timeout cuts it off again (step_ms makes it slow), later than attempt 1.
    let slow =
        format!(r#"{{"job_id":"resume-1","steps":{steps},"checkpoint_every":1,"step_ms":1}}"#);
    let ex2 = executor(
        store.clone(),
        rt.clone(),
        JobLimits {
            timeout: Some(Duration::from_millis(300)),
            ..JobLimits::default()
        },
    );
    let end = execute(&ex2, &job, &m, &slow, live_lease()).await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Timeout,
                failures: 2,
                ..
            }
        ),
        "{end:?}"
    );
    let saved2 = saved_step(&store, &job).await;
    assert!(
        saved2 > saved,
        "attempt 2 saved {saved2}, attempt 1 {saved}"
    );

    // Attempt 3: no limits; it must start right after the saved step.
    let ex3 = executor(store.clone(), rt.clone(), JobLimits::default());
    let claimed = claim(&store, &job, "t").await;
    assert_eq!(claimed.header.attempts, 3);
    let ckpt = Checkpointer::start(store.clone(), &job, claimed, fast_ckpt(), live_lease());
    let report = run_claimed(
        &ex3.runtime,
        &m,
        &store,
        &job,
        &ckpt,
        3,
        &input,
        &JobLimits::default(),
        CancellationToken::new(),
    )
    .await;
    // The task's first progress report is where it starts: the step attempt 2 saved.
    assert_eq!(report.first_progress.map(|p| p.0), Some(saved2));
    let Outcome::Finished(doc) = report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["sum"], serde_json::json!(steps * (steps + 1) / 2));
    ckpt.flush(false).await.unwrap();
}

async fn saved_step(store: &DirStore, job: &JobId) -> u64 {
    let obj = store
        .get(&taskhost::keys::checkpoint(job))
        .await
        .unwrap()
        .unwrap();
    let (_, data) = checkpoint::decode(&obj.bytes).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&data.expect("task data saved")).unwrap();
    v["step"].as_u64().unwrap()
}
