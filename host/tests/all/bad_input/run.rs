//! Publishing the table to one worker and checking every case's outcome.

use super::table::{Case, Expect, modules, table};
use super::*;

pub(super) async fn run_table(b: &Backend) {
    let started = Instant::now();
    let m = modules(b).await;
    // The escape attempt's target: a port we own, so we can tell whether it connected.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let escape_addr = listener.local_addr().unwrap().to_string();
    let cases = table(&m, &escape_addr);
    assert!(cases.len() >= 20);

    let mut worker = b
        .cli
        .set("WORKER_SLOTS", "2")
        .set("MAX_FAILURES", "1")
        .set(
            "MISSING_MODULE_RETRY_SECONDS",
            MISSING_MODULE_RETRY.as_secs().to_string(),
        )
        .set("TASK_TIMEOUT_SECONDS", "5")
        .set("TASK_FUEL", TASK_FUEL.to_string())
        .set("TASK_MEMORY_MB", TASK_MEMORY_MB.to_string())
        .set("ACK_DEADLINE_SECONDS", "10")
        .spawn("worker", &["worker"]);
    // The embedded queue's topics and subscriptions are created by the worker at start.
    worker.wait_for_log("worker started", WORKER_START).await;

    let ids = b
        .queue
        .publish(
            &b.topic,
            cases
                .iter()
                .map(|c| OutgoingMessage {
                    data: c.data.clone(),
                    attributes: c.attributes.clone(),
                })
                .collect(),
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] publish the table: {e:#}", b.label));
    assert_eq!(ids.len(), cases.len());

    let dead = wait_for_outcomes(b, &cases, &ids, &mut worker).await;
    eprintln!(
        "[{}] all {} outcomes after {:?}",
        b.label,
        cases.len(),
        started.elapsed()
    );
    for (case, id) in cases.iter().zip(&ids) {
        check(b, case, dead.get(id), &worker).await;
        if case.attributes.get("module") == Some(&m.absent) {
            check_missing_module_waited(b, case, dead.get(id), &worker);
        }
    }

    // Nothing else was stored under `jobs/`: poison touched no job's objects (its record is
    // under `poison/`, checked above), unusable modules never started a job.
    let mut want: BTreeSet<String> = BTreeSet::new();
    for c in &cases {
        let Some(job) = c.job else { continue };
        let stored: &[fn(&JobId) -> String] = match c.expect {
            Expect::Poison(_) => &[],
            Expect::Unusable(_) => &[keys::error],
            Expect::Failed { .. } => &[keys::checkpoint, keys::error],
            Expect::Finished(_) => &[keys::checkpoint, keys::result],
        };
        want.extend(stored.iter().map(|key| key(&job_id(job))));
    }
    let got: BTreeSet<String> = b
        .store
        .list(keys::JOBS_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(got, want, "[{}] keys under jobs/", b.label);

    // `status` agrees: failed jobs with their reason, finished ones done.
    let job_ids: Vec<&str> = cases
        .iter()
        .filter(|c| !matches!(c.expect, Expect::Poison(_)))
        .filter_map(|c| c.job)
        .collect();
    let statuses = b.status(&job_ids).await;
    for c in &cases {
        let Some(job) = c.job else { continue };
        let Some(s) = statuses.get(job) else { continue };
        let want_state = if c.expect.dead_lettered() {
            "failed"
        } else {
            "done"
        };
        assert_eq!(s["state"], want_state, "[{}] {}: {s:#}", b.label, c.name);
        if let Expect::Failed { failures, .. } = c.expect {
            assert_eq!(
                s["attempts"], 1,
                "[{}] {}: run more than once: {s:#}",
                b.label, c.name
            );
            assert_eq!(s["failures"], failures, "[{}] {}: {s:#}", b.label, c.name);
        }
        if let Expect::Unusable(_) = c.expect {
            assert_eq!(s["attempts"], 0, "[{}] {}: started: {s:#}", b.label, c.name);
        }
    }

    // The sandbox held: no connection reached our port, no file appeared.
    assert!(
        listener.accept().is_err(),
        "[{}] the escape attempt connected to the host",
        b.label
    );
    assert!(!b.cli.dir().join("escape.txt").exists());
    // The flood reached the log only up to its bound (1 MiB per stream), the rest dropped.
    let log = worker.log();
    let flood_lines = job_lines(&log, "flood flood", "bad-flood");
    let bound = 2 * MAX_LOGGED_BYTES / 65 + 2;
    assert!(
        !flood_lines.is_empty() && flood_lines.len() <= bound,
        "[{}] {} flood lines in the log (bound {bound})",
        b.label,
        flood_lines.len()
    );
    assert_eq!(
        job_lines(&log, "dropping the rest", "bad-flood").len(),
        2,
        "[{}] the flood's drop is not logged once per stream",
        b.label
    );

    // The worker kept serving: still running, and a good job still completes.
    worker.assert_running();
    let good = b.cli.write_file(
        "good.jsonl",
        "{\"job_id\":\"after-bad-input\",\"steps\":20}\n",
    );
    b.cli
        .run(&[
            "submit",
            "--quiet",
            "--module",
            &m.step,
            good.to_str().unwrap(),
        ])
        .await
        .success();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = b
            .status(&["after-bad-input"])
            .await
            .remove("after-bad-input")
            .unwrap();
        if s["state"] == "done" {
            break s;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "[{}] the good job did not finish: {s:#}\n{}",
            b.label,
            log_tail(&worker)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_step_result("after-bad-input", 20, &status);

    stop(&mut worker).await;
    // Every message was settled: nothing left on the jobs subscription, no extra dead letter.
    let left = b
        .queue
        .pull_some(&b.subscription(), 50, Duration::from_secs(3), Settle::Nack)
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "[{}] left on the subscription: {left:?}",
        b.label
    );
    let extra = b
        .queue
        .pull_some(
            &b.dead_letter_subscription(),
            50,
            Duration::from_secs(2),
            Settle::Ack,
        )
        .await
        .unwrap();
    assert!(
        extra.is_empty(),
        "[{}] more dead letters: {extra:?}",
        b.label
    );
}

/// Reads the dead-letter subscription (acking) until every case has its expected outcome;
/// returns the dead letters by original message id. Fails fast on a wrong outcome.
pub(super) async fn wait_for_outcomes(
    b: &Backend,
    cases: &[Case],
    ids: &[String],
    worker: &mut Proc,
) -> BTreeMap<String, IncomingMessage> {
    let deadline = Instant::now() + ALL_OUTCOMES;
    let mut dead: BTreeMap<String, IncomingMessage> = BTreeMap::new();
    loop {
        let got = b
            .queue
            .pull_some(
                &b.dead_letter_subscription(),
                100,
                Duration::from_secs(1),
                Settle::Ack,
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] read the dead letters: {e:#}", b.label));
        for msg in got {
            let orig = msg
                .attributes
                .get("original_message_id")
                .unwrap_or_else(|| {
                    panic!(
                        "[{}] a dead letter without original_message_id: {msg:?}",
                        b.label
                    )
                })
                .clone();
            let reason = msg.attributes.get("error").cloned().unwrap_or_default();
            let case = ids.iter().position(|id| *id == orig).map(|i| cases[i].name);
            eprintln!("[{}] dead-lettered {case:?}: {reason}", b.label);
            assert!(
                dead.insert(orig.clone(), msg).is_none(),
                "[{}] {case:?} dead-lettered twice",
                b.label
            );
        }
        let mut pending = Vec::new();
        for (c, id) in cases.iter().zip(ids) {
            match (&c.expect, dead.get(id)) {
                (Expect::Finished(_), Some(msg)) => panic!(
                    "[{}] {}: dead-lettered instead of finishing: {:?}",
                    b.label,
                    c.name,
                    msg.attributes.get("error")
                ),
                (Expect::Finished(_), None) => {
                    // Only finished cases are read from the store while waiting (the S3
                    // test server serves one request at a time); the others' keys are
                    // checked once at the end.
                    let job = c.job.expect("a finished case has a job id");
                    if !b.store.exists(&keys::result(&job_id(job))).await.unwrap() {
                        pending.push(c);
                    }
                }
                (_, None) => pending.push(c),
                (_, Some(_)) => {}
            }
        }
        if pending.is_empty() {
            return dead;
        }
        worker.assert_running();
        if Instant::now() > deadline {
            let mut report = String::new();
            for c in &pending {
                report.push_str(&format!("- {} (job {:?})\n", c.name, c.job));
                if let Some(job) = c.job {
                    for l in job_lines(&worker.log(), "", job) {
                        report.push_str(&format!("    {l}\n"));
                    }
                }
            }
            panic!(
                "[{}] {} of {} cases without their outcome within {ALL_OUTCOMES:?}:\n{report}\n{}",
                b.label,
                pending.len(),
                cases.len(),
                log_tail(worker)
            );
        }
    }
}

/// Checks one case's outcome in full.
pub(super) async fn check(b: &Backend, c: &Case, dead: Option<&IncomingMessage>, worker: &Proc) {
    let what = format!("[{}] {}", b.label, c.name);
    if let Some(job) = c.job {
        // How long each run took (a diagnostic for the limits chosen above).
        let log = worker.log();
        let runs: Vec<u64> = job_lines(&log, "task run ended", job)
            .iter()
            .filter_map(|l| number_after(l, "elapsed_ms="))
            .collect();
        if !runs.is_empty() {
            eprintln!("{what}: runs took {runs:?} ms");
        }
    }
    let Expect::Finished(ok) = &c.expect else {
        let msg = dead.unwrap_or_else(|| panic!("{what}: not dead-lettered"));
        assert_eq!(msg.data, c.data, "{what}: the dead letter's data changed");
        let reason = msg
            .attributes
            .get("error")
            .unwrap_or_else(|| panic!("{what}: no error attribute: {msg:?}"));
        for s in c.expect.says() {
            assert!(
                reason.contains(s.as_str()),
                "{what}: the reason {reason:?} does not say {s:?}"
            );
        }
        // The original attributes, plus `error`, `original_message_id` and the delivery
        // attempt (`attempts`, a number from 1), nothing else.
        let mut want = c.attributes.clone();
        want.insert("error".into(), reason.clone());
        want.insert(
            "original_message_id".into(),
            msg.attributes["original_message_id"].clone(),
        );
        let attempts = msg.attributes.get("attempts").cloned().unwrap_or_default();
        assert!(
            attempts.parse::<u32>().is_ok_and(|n| n >= 1),
            "{what}: attempts {attempts:?}"
        );
        want.insert("attempts".into(), attempts);
        assert_eq!(msg.attributes, want, "{what}: the dead letter's attributes");
        if let Expect::Poison(_) = c.expect {
            // Recorded for `status` before it was published (docs/design.md §4).
            let job = c.job.map(job_id);
            let key = keys::poison(job.as_ref(), &msg.attributes["original_message_id"]);
            assert_eq!(b.text(&key).await.as_ref(), Some(reason), "{what}: {key}");
        }
        if let Some(job) = c.job {
            let error = b.text(&keys::error(&job_id(job))).await;
            let checkpoint = b
                .store
                .exists(&keys::checkpoint(&job_id(job)))
                .await
                .unwrap();
            match c.expect {
                Expect::Poison(_) => {
                    assert_eq!(error, None, "{what}: poison got an error object");
                    assert!(!checkpoint, "{what}: poison was started");
                }
                Expect::Unusable(_) => {
                    assert_eq!(error.as_ref(), Some(reason), "{what}: jobs/{job}/error");
                    assert!(
                        !checkpoint,
                        "{what}: a job of an unusable module was started"
                    );
                }
                Expect::Failed { .. } => {
                    assert_eq!(error.as_ref(), Some(reason), "{what}: jobs/{job}/error");
                    assert!(checkpoint, "{what}: no checkpoint");
                }
                Expect::Finished(_) => unreachable!(),
            }
        }
        return;
    };
    assert!(dead.is_none(), "{what}: dead-lettered");
    let job = c.job.expect("a finished case has a job id");
    let text = b
        .text(&keys::result(&job_id(job)))
        .await
        .unwrap_or_else(|| panic!("{what}: no result"));
    let result: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the result {text:?} is not JSON: {e}"));
    if let Err(e) = ok(&result) {
        panic!("{what}: {e}: {text}\n{}", log_tail(worker));
    }
    assert_eq!(
        b.text(&keys::error(&job_id(job))).await,
        None,
        "{what}: an error object"
    );
    eprintln!("[{}] finished {:?}: {text}", b.label, c.name);
}

/// The worker's last log lines, without the flood's.
pub(super) fn log_tail(worker: &Proc) -> String {
    let log = worker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("flood flood")).collect();
    let from = lines.len().saturating_sub(150);
    format!(
        "=== last lines of the worker's log\n{}",
        lines[from..].join("\n")
    )
}

/// A job whose module is not in the store is handed back while the module may still come,
/// and dead-lettered only once [`MISSING_MODULE_RETRY`] has passed since it was published:
/// not on first sight.
fn check_missing_module_waited(
    b: &Backend,
    c: &Case,
    dead: Option<&IncomingMessage>,
    worker: &Proc,
) {
    let what = format!("[{}] {}", b.label, c.name);
    let job = c.job.expect("the missing-module case has a job id");
    let handed_back = job_lines(
        &worker.log(),
        "module not in the store (yet); handing the job back",
        job,
    )
    .len();
    assert!(
        handed_back >= 1,
        "{what}: dead-lettered without being handed back first:\n{}",
        log_tail(worker)
    );
    let reason = &dead.expect("checked: dead-lettered").attributes["error"];
    let waited = number_after(reason, "not in the store ")
        .unwrap_or_else(|| panic!("{what}: the reason says no wait: {reason:?}"));
    assert!(
        waited >= MISSING_MODULE_RETRY.as_secs(),
        "{what}: dead-lettered {waited} s after publishing, before the {MISSING_MODULE_RETRY:?} window: {reason:?}"
    );
    eprintln!("{what}: handed back {handed_back} times, dead-lettered after {waited} s");
}
