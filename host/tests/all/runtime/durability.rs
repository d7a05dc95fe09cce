//! What the directory store makes durable when: a claim returns before it is durable (a
//! power loss that undoes it killed its worker too), a job's result is durable when the job
//! ends as done, so before the worker acks it (docs/design.md section 5, "End of a job").

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_need_not_be_durable_but_a_done_jobs_result_is() {
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let (_tmp, store) = dir_store();

    // A claim returns once it is visible: nothing flushed it.
    let claimed: JobId = "claimed-only".parse().unwrap();
    claim(&store, &claimed, "w1").await;
    let checkpoint = taskhost::keys::checkpoint(&claimed);
    assert!(store.exists(&checkpoint).await.unwrap());
    assert!(
        !store.is_durable(&checkpoint),
        "the claim waited for a flush"
    );

    // Jobs run at once on one store: each that ends done has its result (and its claim,
    // in the same directory) durable by then.
    let ex = executor(store.clone(), rt, JobLimits::default());
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (ex, m, store) = (ex.clone(), m.clone(), store.clone());
        jobs.spawn(async move {
            let id: JobId = format!("durable-{i}").parse().unwrap();
            let input = format!(r#"{{"job_id":"{id}","steps":1}}"#);
            let end = execute(&ex, &id, &m, &input, live_lease()).await;
            assert!(matches!(end, JobEnd::Done { .. }), "{id}: {end:?}");
            let result = taskhost::keys::result(&id);
            assert!(
                store.is_durable(&result),
                "{id}: done before its result was durable"
            );
            assert!(store.is_durable(&taskhost::keys::checkpoint(&id)));
        });
    }
    while let Some(job) = jobs.join_next().await {
        job.unwrap();
    }
    // Their flushes made the earlier claim durable too.
    assert!(store.is_durable(&checkpoint));
}
