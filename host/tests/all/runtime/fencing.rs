//! Fencing through the checkpoint: stale writers, oversized checkpoints, finished jobs, tasks
//! that ignore conflicts, job ids reused for other work.

use super::*;

/// A worker whose checkpoint was claimed by another gets a conflict and writes nothing more.
#[tokio::test]
async fn a_stale_writer_gets_a_conflict_and_writes_nothing() {
    let (_tmp, store) = dir_store();
    let job: JobId = "stale".parse().unwrap();

    // At the protocol level.
    let a = claim_for(&store, &job, "a", 0).await;
    let ckpt_a = Checkpointer::start(store.clone(), &job, a, fast_ckpt(), static_lease(0));
    ckpt_a.save(b"from a".to_vec()).unwrap();
    ckpt_a.flush(false).await.unwrap();
    let b = claim(&store, &job, "b").await;
    assert_eq!(b.data.as_deref(), Some(&b"from a"[..]));
    assert_eq!(b.header.attempts, 2);
    ckpt_a.save(b"stale".to_vec()).unwrap();
    assert_eq!(
        ckpt_a.flush(false).await,
        Err(checkpoint::CheckpointError::Conflict)
    );
    assert_eq!(
        ckpt_a.save(b"again".to_vec()),
        Err(checkpoint::CheckpointError::Conflict)
    );
    let now = store
        .get(&taskhost::keys::checkpoint(&job))
        .await
        .unwrap()
        .unwrap();
    let (h, data) = checkpoint::decode(&now.bytes).unwrap();
    assert_eq!(h.owner, "b");
    assert_eq!(data.as_deref(), Some(&b"from a"[..]));

    // Through a running task: another worker claims mid-run; the task sees the conflict.
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let job2: JobId = "stale-2".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let thief = {
        let store = store.clone();
        let job2 = job2.clone();
        tokio::spawn(async move {
            // Wait until the first worker's task runs (it has saved), then take the job over.
            wait_saved(&store, &taskhost::keys::checkpoint(&job2)).await;
            // The running worker writes often: our claim may lose a race; retry until won.
            let unbound = Work::default();
            loop {
                let lease = live_lease();
                match checkpoint::claim(&store, &job2, "thief", &lease, &unbound, OtherWork::Refuse)
                    .await
                {
                    Ok(c) => break c,
                    Err(checkpoint::ClaimError::Busy { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    // The running worker's lease is never extended: it has expired when the thief claims.
    let end = execute(&ex, &job2, &m, r#"{"mode":"save_loop"}"#, static_lease(100)).await;
    assert_eq!(end, JobEnd::Conflict);
    let stolen = thief.await.unwrap();
    let after = store
        .get(&taskhost::keys::checkpoint(&job2))
        .await
        .unwrap()
        .unwrap();
    let (h, _) = checkpoint::decode(&after.bytes).unwrap();
    assert_eq!(h.owner, "thief");
    assert_eq!(
        h.nonce, stolen.header.nonce,
        "the stale worker wrote after the takeover"
    );
    assert!(!store.exists(&taskhost::keys::result(&job2)).await.unwrap());
}

#[tokio::test]
async fn checkpoints_over_the_limit_are_refused() {
    let (_tmp, store) = dir_store();
    let job: JobId = "big".parse().unwrap();
    let claimed = claim(&store, &job, "t").await;
    let ckpt = Checkpointer::start(
        store.clone(),
        &job,
        claimed,
        Limits {
            max_bytes: 1024,
            ..fast_ckpt()
        },
        live_lease(),
    );
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let r = run_claimed(
        &rt,
        &m,
        &store,
        &job,
        &ckpt,
        1,
        r#"{"mode":"save_loop","count":1,"bytes":4096}"#,
        &JobLimits::default(),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(r.outcome, Outcome::TaskError(ref m) if m.contains("1024")),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn a_finished_job_is_not_run_again() {
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "once".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let input = r#"{"job_id":"once","steps":10}"#;
    let first = execute(&ex, &job, &m, input, live_lease()).await;
    assert!(
        matches!(first, JobEnd::Done { attempt: 1, .. }),
        "{first:?}"
    );
    let second = execute(&ex, &job, &m, input, live_lease()).await;
    assert_eq!(second, JobEnd::AlreadyDone);
    let stored = store
        .get(&taskhost::keys::result(&job))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&stored.bytes).contains("55"));
    // The second call did not claim: attempts stay at 1.
    let h = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!(h.attempts, 1);
    // A result is create-only.
    assert!(
        store
            .put(
                &taskhost::keys::result(&job),
                b"x".to_vec(),
                Precondition::Absent
            )
            .await
            .is_err()
    );
}

/// How long after a job ended a write it should not have made is looked for: fifteen times
/// the checkpoint writer's 20 ms spacing ([`fast_ckpt`]).
const LATE_WRITE_WINDOW: Duration = Duration::from_millis(300);

/// Waits until the checkpoint at `key` holds task bytes: the task runs and has saved.
async fn wait_saved(store: &DirStore, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(obj) = store.get(key).await.unwrap()
            && checkpoint::decode(&obj.bytes).is_ok_and(|(_, data)| data.is_some())
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{key}: nothing saved");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A task that ignores `conflict` errors is stopped by the host within a second of the
/// takeover, whatever it does with the error; nothing more is written.
#[tokio::test]
async fn a_task_that_ignores_conflicts_is_stopped_within_a_second() {
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "misbehave").await;
    let job: JobId = "stubborn".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let key = taskhost::keys::checkpoint(&job);
    let thief = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            wait_saved(&store, &key).await;
            // Another worker's claim, as the store sees it: the object changes under us.
            let header = checkpoint::Header {
                owner: "thief".into(),
                nonce: "thief-nonce".into(),
                ..checkpoint::Header::default()
            };
            let taken = checkpoint::encode(&header, Some(b"thief's"));
            store.put(&key, taken, Precondition::None).await.unwrap();
            std::time::Instant::now()
        })
    };
    let input = r#"{"mode":"save_loop","ignore_errors":true,"every_ms":20}"#;
    let end = execute(&ex, &job, &m, input, live_lease()).await;
    let stopped = std::time::Instant::now();
    let taken_at = thief.await.unwrap();
    assert_eq!(end, JobEnd::Conflict);
    let took = stopped - taken_at;
    assert!(
        took < Duration::from_secs(1),
        "stopped {took:?} after the takeover"
    );
    // Nothing written after the takeover, no result (a late write would show within the
    // window: the absence of a write is no event to wait for).
    tokio::time::sleep(LATE_WRITE_WINDOW).await;
    let now = store.get(&key).await.unwrap().unwrap();
    let (h, data) = checkpoint::decode(&now.bytes).unwrap();
    assert_eq!(
        (h.owner.as_str(), h.nonce.as_str()),
        ("thief", "thief-nonce")
    );
    assert_eq!(data.as_deref(), Some(&b"thief's"[..]));
    assert!(!store.exists(&taskhost::keys::result(&job)).await.unwrap());
}

/// A job id reused for other work is refused with a reason naming both, unless the message
/// asks to start over (then the old result is gone) or to resume with a newer module.
#[tokio::test]
async fn a_job_id_reused_for_other_work_is_refused_unless_asked() {
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "reused".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    let module = taskhost::ids::ModuleHash::of(b"step counter v1");
    let bind = |input: &str, module: &taskhost::ids::ModuleHash, on_other_work| JobBinding {
        work: Work::of(module, input),
        on_other_work,
        inputs: Default::default(),
        deletion_cost: None,
    };
    let run = |input: &'static str, binding: JobBinding| {
        let ex = ex.clone();
        let (m, job) = (m.clone(), job.clone());
        async move {
            ex.execute(
                &job,
                &m,
                input,
                &binding,
                live_lease(),
                CancellationToken::new(),
            )
            .await
        }
    };
    let ten = r#"{"job_id":"reused","steps":10}"#;
    let twenty = r#"{"job_id":"reused","steps":20}"#;
    let first = run(ten, bind(ten, &module, OtherWork::Refuse)).await;
    assert!(
        matches!(first, JobEnd::Done { ref result, .. } if result.contains("\"sum\":55")),
        "{first:?}"
    );

    // The same work again: done already. Other input: refused, naming both.
    assert_eq!(
        run(ten, bind(ten, &module, OtherWork::Refuse)).await,
        JobEnd::AlreadyDone
    );
    let refused = run(twenty, bind(twenty, &module, OtherWork::Refuse)).await;
    let JobEnd::OtherWork(reason) = &refused else {
        panic!("{refused:?}")
    };
    let (old, new) = (Work::of(&module, ten), Work::of(&module, twenty));
    assert!(
        reason.contains(&old.input_sha256) && reason.contains(&new.input_sha256),
        "{reason}"
    );
    assert!(reason.contains("restart"), "{reason}");
    // Another module on the same input: refused too, unless it is an upgrade.
    let v2 = taskhost::ids::ModuleHash::of(b"step counter v2");
    let refused = run(ten, bind(ten, &v2, OtherWork::Refuse)).await;
    assert!(
        matches!(&refused, JobEnd::OtherWork(r) if r.contains(&v2.to_string())),
        "{refused:?}"
    );
    assert_eq!(
        run(ten, bind(ten, &v2, OtherWork::UpgradeModule)).await,
        JobEnd::AlreadyDone
    );
    // An upgrade may not change the input.
    let refused = run(twenty, bind(twenty, &v2, OtherWork::UpgradeModule)).await;
    assert!(matches!(refused, JobEnd::OtherWork(_)), "{refused:?}");

    // Start over: the old result goes, and the listing's markers of a cancel or pause that
    // `job cancel` / `job pause` left (else the listing shows the new run as stopped); the
    // new work runs from nothing.
    let markers = [
        taskhost::keys::stopped(&job, "cancel"),
        taskhost::keys::stopped(&job, "pause"),
    ];
    for marker in &markers {
        store
            .put(marker, b"{}".to_vec(), taskhost::store::Precondition::None)
            .await
            .unwrap();
    }
    let again = run(twenty, bind(twenty, &module, OtherWork::Restart)).await;
    for marker in &markers {
        assert!(!store.exists(marker).await.unwrap(), "{marker} left");
    }
    assert!(
        matches!(again, JobEnd::Done { ref result, attempt: 1 } if result.contains("\"sum\":210")),
        "{again:?}"
    );
    let stored = store
        .get(&taskhost::keys::result(&job))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&stored.bytes).contains("\"sum\":210"));
    let h = checkpoint::peek(&store, &job).await.unwrap().unwrap();
    assert_eq!(
        (h.input_sha256.as_str(), h.attempts),
        (new.input_sha256.as_str(), 1)
    );
    // A redelivered restart message finds its own work done: it does not start over again.
    assert_eq!(
        run(twenty, bind(twenty, &module, OtherWork::Restart)).await,
        JobEnd::AlreadyDone
    );
}

/// A manifest that a worker which lost the job wrote before its result (its artifacts are
/// not the job's) does not outlive the run that finishes the job without artifacts.
#[tokio::test]
async fn a_manifest_an_earlier_owner_left_goes_with_a_run_without_artifacts() {
    let (_tmp, store) = dir_store();
    let rt = runtime();
    let m = prepare(&rt, "step_counter").await;
    let job: JobId = "left-manifest".parse().unwrap();
    let ex = executor(store.clone(), rt, JobLimits::default());
    // The earlier owner's run: claimed (attempt 1), its manifest written, then it lost the
    // job (its lease ended, released here) before the result.
    let input = r#"{"job_id":"left-manifest","steps":3}"#;
    let work = Work::of(&taskhost::ids::ModuleHash::of(b"step counter"), input);
    let (lease, stop) = taskhost::queue::lease::LeaseView::detached(Duration::from_secs(30));
    let earlier = checkpoint::claim(&store, &job, "earlier", &lease, &work, OtherWork::Refuse)
        .await
        .unwrap();
    stop.cancel();
    let mut header = earlier.header.clone();
    header.lease_until_ms = 0;
    let key = taskhost::keys::checkpoint(&job);
    let released = checkpoint::encode(&header, None);
    store.put(&key, released, Precondition::None).await.unwrap();
    let manifest = taskhost::keys::manifest(&job);
    let stale = br#"{"artifacts":[{"name":"old.bin","size":3,"etag":"x"}]}"#.to_vec();
    store
        .put(&manifest, stale, Precondition::None)
        .await
        .unwrap();

    let binding = JobBinding {
        work,
        on_other_work: OtherWork::Refuse,
        inputs: Default::default(),
        deletion_cost: None,
    };
    let end = ex
        .execute(
            &job,
            &m,
            input,
            &binding,
            live_lease(),
            CancellationToken::new(),
        )
        .await;
    assert!(matches!(end, JobEnd::Done { attempt: 2, .. }), "{end:?}");
    assert!(
        !store.exists(&manifest).await.unwrap(),
        "the earlier owner's manifest is left"
    );
}
