//! End to end: the real `taskhost` binary (`setup`, `module push`, `submit`, `worker`,
//! `status`) as separate processes against the official Pub/Sub emulator and the S3 test
//! server. No mocks.
//!
//! The tests share one emulator and one S3 server (started by the first test that needs
//! them, stopped when the last test holding them ends) and are isolated by name: each test
//! has its own Pub/Sub project and its own key prefix in the bucket, so they run
//! concurrently. Every `taskhost` process has a clean environment and a private
//! `TASKHOST_CACHE_DIR`; background workers are [`Proc`]s, SIGKILLed on drop.
//!
//! libtest starts tests in name order: the long ones are named `a_...` so they start first
//! and the short ones fill the gaps (wall time on 2 cores: about two minutes).

use crate::support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::stack::*;
use taskhost::ids::ModuleHash;
use taskhost::keys;
use taskhost::queue::pubsub::MessageValidity;
use taskhost::queue::{OutgoingMessage, Settle};
use taskhost::store::{ObjectStore, Precondition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_everything_once_then_finds_it() {
    let stack = Stack::start("setup").await;
    // A bucket the S3 server does not have yet, so that setup creates it too.
    let cli = stack.cli.set("R2_BUCKET_NAME", "taskhost-setup");
    let expect = |verb: &str| {
        vec![
            format!("{verb} topic setup"),
            format!("{verb} topic setup-dead-letter"),
            format!("{verb} subscription setup-sub"),
            format!("{verb} subscription setup-dead-letter-sub"),
            format!("{verb} bucket taskhost-setup"),
        ]
    };

    let first = cli.run(&["setup"]).await.success();
    assert_eq!(lines(&first.stdout), expect("created"), "{first}");
    let second = cli.run(&["setup"]).await.success();
    assert_eq!(lines(&second.stdout), expect("found"), "{second}");

    // What setup reported is really there: a job published to the topic reaches the
    // subscription, and the dead-letter subscription receives from the dead-letter topic.
    let data = br#"{"job_id":"probe","steps":1}"#.to_vec();
    for topic in ["setup", "setup-dead-letter"] {
        let msg = OutgoingMessage {
            data: data.clone(),
            attributes: BTreeMap::new(),
        };
        stack.pubsub.publish(topic, vec![msg]).await.unwrap();
    }
    for sub in ["setup-sub", "setup-dead-letter-sub"] {
        let got = stack
            .pull(sub, 1, Duration::from_secs(20), Settle::Ack)
            .await;
        assert_eq!(got.len(), 1, "{sub}");
        assert_eq!(got[0].data, data, "{sub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_push_prints_the_hash_is_idempotent_and_refuses_non_components() {
    let stack = Stack::start("push").await;
    let path = support::guests::wasm("step_counter");
    let bytes = std::fs::read(&path).unwrap();
    let hex = sha256_hex(&bytes);
    let key = keys::module(&ModuleHash::of(&bytes));
    let push = |file: std::path::PathBuf| {
        let cli = stack.cli.clone();
        async move { cli.run(&["module", "push", file.to_str().unwrap()]).await }
    };

    let first = push(path.clone()).await.success();
    assert_eq!(first.last_line(), format!("sha256:{hex}"), "{first}");
    let stored = stack
        .store
        .get(&key)
        .await
        .unwrap()
        .expect("module uploaded");
    assert!(
        stored.bytes == bytes,
        "the bucket holds other bytes under {key}"
    );

    let again = push(path.clone()).await.success();
    assert_eq!(again.last_line(), format!("sha256:{hex}"), "{again}");
    assert!(again.stderr.contains("already"), "{again}");

    // Not components: text, and a core module (the 8-byte empty module).
    let cases = [
        (
            "garbage.wasm",
            b"this is not webassembly".to_vec(),
            "not a WebAssembly file",
        ),
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "not a component"),
    ];
    for (name, content, says) in cases {
        let file = stack.cli.write_file(name, &content);
        let out = push(file).await.failure();
        assert_eq!(out.status.code(), Some(3), "not BAD_MODULE: {out}");
        assert!(
            out.stderr.contains("not uploaded") && out.stderr.contains(says),
            "{name}: unclear message: {out}"
        );
        assert!(
            !out.stdout.contains("sha256:"),
            "{name}: printed a hash: {out}"
        );
        let key = keys::module(&ModuleHash::of(&content));
        assert!(
            !stack.store.exists(&key).await.unwrap(),
            "{name} was uploaded"
        );
    }
    // The module and its push record (registry), nothing of the refused files.
    let record = keys::module_record(&ModuleHash::of(&bytes));
    assert_eq!(
        stack.store.list("modules/").await.unwrap(),
        vec![record, key]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_two_dozen_jobs_on_two_workers_leaves_nothing_behind() {
    let stack = Stack::setup("many").await;
    let module = stack.push("step_counter").await;
    let env = stack.cli.set("WORKER_SLOTS", "2");
    let mut w1 = env.spawn("worker-1", &["worker"]);
    let mut w2 = env.spawn("worker-2", &["worker"]);
    w1.wait_for_log("worker started", WORKER_START).await;
    w2.wait_for_log("worker started", WORKER_START).await;

    // The guide's data.csv: job_id,steps, with varied steps.
    let jobs: Vec<(String, u64)> = (0..24u64)
        .map(|i| (format!("job-{i}"), 1 + (i * 7919 + i * i * 31) % 3000))
        .collect();
    let mut csv = String::from("job_id,steps\n");
    for (id, steps) in &jobs {
        csv.push_str(&format!("{id},{steps}\n"));
    }
    let out = stack.submit(&module, "data.csv", &csv).await.success();
    assert!(out.stdout.contains("published 24 jobs"), "{out}");

    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(120), &mut [&mut w1, &mut w2])
        .await;
    for (id, steps) in &jobs {
        let s = &statuses[id];
        assert_step_result(id, *steps, s);
        assert_eq!(s["failures"], 0, "{s:#}");
        // No worker died and no lease lapsed: each job was claimed (and run) exactly once;
        // a duplicate delivery finds the result or a live owner and claims nothing.
        assert_eq!(s["attempts"], 1, "{s:#}");
        assert_eq!(s["error"], Value::Null, "{s:#}");
    }

    tokio::join!(stop(&mut w1), stop(&mut w2));
    // Each job's result was stored exactly once (results are create-only), by one worker.
    let (log1, log2) = (w1.log(), w2.log());
    for (id, _) in &jobs {
        let done = job_lines(&log1, "job done; result stored", id).len()
            + job_lines(&log2, "job done; result stored", id).len();
        assert_eq!(done, 1, "{id}:\n{}", logs(&[&mut w1, &mut w2]));
    }
    // On S3 (no group commit) a job keeps its slot until its result is written: no commit
    // places (docs/design.md section 5, "Receiving").
    for log in [&log1, &log2] {
        assert!(log.contains("committing_peak=0"), "{log}");
        assert!(!log.contains("slot freed"), "{log}");
    }
    let share = |log: &str| log.matches("job done; result stored").count();
    eprintln!(
        "jobs done: worker-1 {}, worker-2 {}",
        share(&log1),
        share(&log2)
    );

    // Every message was acked for good (a lost ack would come back after the 10 s lease)
    // and nothing was dead-lettered.
    let (sub, dead_sub) = (stack.subscription(), stack.dead_letter_subscription());
    let (left, dead) = tokio::join!(
        stack.pull(
            &sub,
            100,
            ACK_DEADLINE + Duration::from_secs(3),
            Settle::Nack
        ),
        stack.pull(&dead_sub, 100, Duration::from_secs(5), Settle::Nack),
    );
    assert!(left.is_empty(), "left on the subscription: {left:?}");
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_module_is_dead_lettered_and_the_worker_keeps_serving() {
    let stack = Stack::setup("tamper").await;
    let good = stack.push("step_counter").await;
    let victim = stack.push("prime_count").await;
    // Someone overwrites the module in the bucket with other (valid!) bytes.
    stack
        .store
        .put(
            &keys::module(&victim.parse().unwrap()),
            support::guests::bytes("step_counter"),
            Precondition::None,
        )
        .await
        .unwrap();

    let mut worker = stack
        .cli
        .set("WORKER_SLOTS", "2")
        .spawn("worker", &["worker"]);
    let bad_doc = r#"{"job_id":"tampered","n":1000}"#;
    stack
        .submit(&victim, "bad.jsonl", &format!("{bad_doc}\n"))
        .await
        .success();

    let dead = stack
        .pull(
            &stack.dead_letter_subscription(),
            1,
            Duration::from_secs(60),
            Settle::Ack,
        )
        .await;
    assert_eq!(dead.len(), 1, "not dead-lettered; log:\n{}", worker.log());
    let msg = &dead[0];
    assert_eq!(msg.data, bad_doc.as_bytes());
    assert_eq!(msg.attributes.get("module"), Some(&victim), "{msg:?}");
    let error = msg.attributes.get("error").expect("an error attribute");
    assert!(
        error.contains(&format!("not {victim}")) && error.contains("tampered"),
        "the error does not name the hash mismatch: {error}"
    );
    let stored = stack
        .store
        .get("jobs/tampered/error")
        .await
        .unwrap()
        .expect("jobs/tampered/error written");
    let stored = String::from_utf8(stored.bytes).unwrap();
    assert!(stored.contains(&format!("not {victim}")), "{stored}");
    assert!(!stack.store.exists("jobs/tampered/result").await.unwrap());
    assert!(
        !stack
            .store
            .exists("jobs/tampered/checkpoint")
            .await
            .unwrap(),
        "the tampered module's job was started"
    );

    // The worker still serves.
    worker.assert_running();
    stack
        .submit(
            &good,
            "good.jsonl",
            "{\"job_id\":\"after-tamper\",\"steps\":50}\n",
        )
        .await
        .success();
    let ids = vec!["after-tamper".to_string()];
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(60), &mut [&mut worker])
        .await;
    assert_step_result("after-tamper", 50, &statuses["after-tamper"]);
    stop(&mut worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason() {
    let stack = Stack::setup("poison").await;
    let good = stack.push("step_counter").await;
    let mut worker = stack
        .cli
        .set("WORKER_SLOTS", "2")
        .spawn("worker", &["worker"]);

    let with_module = |data: &str, module: &str| OutgoingMessage {
        data: data.as_bytes().to_vec(),
        attributes: BTreeMap::from([("module".to_string(), module.to_string())]),
    };
    // (message, what its error attribute must say)
    let poison = [
        (with_module("not json", &good), "not JSON"),
        (with_module(r#"{"steps":3}"#, &good), "no job_id"),
        (
            with_module(r#"{"job_id":"bad-ref","steps":3}"#, "sha256:xyz"),
            "sha256:<64",
        ),
    ];
    let ids = stack
        .pubsub
        .publish(
            &stack.topic,
            poison.iter().map(|(m, _)| m.clone()).collect(),
        )
        .await
        .unwrap();

    let dead = stack
        .pull(
            &stack.dead_letter_subscription(),
            poison.len(),
            Duration::from_secs(60),
            Settle::Ack,
        )
        .await;
    assert_eq!(dead.len(), poison.len(), "{dead:?}; log:\n{}", worker.log());
    for ((sent, says), id) in poison.iter().zip(&ids) {
        let got = dead
            .iter()
            .find(|m| m.attributes.get("original_message_id") == Some(id))
            .unwrap_or_else(|| panic!("message {id} not dead-lettered: {dead:?}"));
        assert_eq!(got.data, sent.data);
        let error = got.attributes.get("error").expect("an error attribute");
        assert!(error.contains(says), "{error:?} should say {says:?}");
    }
    // Nothing was run or stored under `jobs/` for them; each has its `poison/` record with
    // the reason (docs/design.md §4), under the job id when the data named a valid one.
    assert!(stack.store.list("jobs/").await.unwrap().is_empty());
    let records = stack.store.list("poison/").await.unwrap();
    assert_eq!(records.len(), poison.len(), "{records:?}");
    assert!(
        records
            .iter()
            .any(|k| k.starts_with("poison/jobs/bad-ref/")),
        "{records:?}"
    );

    worker.assert_running();
    stack
        .submit(
            &good,
            "good.jsonl",
            "{\"job_id\":\"after-poison\",\"steps\":7}\n",
        )
        .await
        .success();
    let ids = vec!["after-poison".to_string()];
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(60), &mut [&mut worker])
        .await;
    assert_step_result("after-poison", 7, &statuses["after-poison"]);
    stop(&mut worker).await;
    stack.assert_empty(&stack.subscription()).await;
}

/// n for the long job: ~40 s of trial division in wasm on this machine (measured with
/// `taskhost run`: 34 s for 6e7, 24 s for 4e7).
const LONG_N: u64 = 70_000_000;
/// π(7·10^7), the number of primes below [`LONG_N`] (checked with a sieve).
const PRIMES_BELOW_LONG_N: u64 = 4_118_064;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_job_longer_than_three_leases_is_delivered_once() {
    let stack = Stack::setup("long").await;
    let module = stack.push("prime_count").await;
    let mut worker = stack
        .cli
        .set("WORKER_SLOTS", "1")
        .spawn("worker", &["worker"]);
    let id = "primes-long";
    let doc = format!(r#"{{"job_id":"{id}","n":{LONG_N},"chunk":1000000}}"#);
    stack
        .submit(&module, "long.jsonl", &format!("{doc}\n"))
        .await
        .success();

    let ids = vec![id.to_string()];
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(300), &mut [&mut worker])
        .await;
    let s = &statuses[id];
    let result = result_of(s);
    assert_eq!(result["n"], LONG_N, "{s:#}");
    assert_eq!(result["primes"], PRIMES_BELOW_LONG_N, "{s:#}");
    assert_eq!(s["attempts"], 1, "the job was claimed again: {s:#}");
    assert_eq!(s["failures"], 0, "{s:#}");
    assert_eq!(s["progress"], serde_json::json!([LONG_N, LONG_N]), "{s:#}");

    stop(&mut worker).await;
    let log = worker.log();
    let started = job_lines(&log, "job started", id);
    assert_eq!(started.len(), 1, "started {} times:\n{log}", started.len());
    assert!(
        !log.contains("already exists"),
        "the message was delivered again:\n{log}"
    );
    let ended = job_lines(&log, "task run ended", id);
    assert_eq!(ended.len(), 1, "{log}");
    let elapsed = number_after(ended[0], "elapsed_ms=").expect("elapsed_ms logged");
    assert!(
        elapsed >= 3 * ACK_DEADLINE.as_millis() as u64,
        "the job ran only {elapsed} ms: raise LONG_N so it outlasts 3 leases"
    );
    eprintln!("the long job ran {elapsed} ms");
    // No copy of the message is left to come back.
    let left = stack
        .pull(
            &stack.subscription(),
            10,
            Duration::from_secs(3),
            Settle::Nack,
        )
        .await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_on_another_worker_after_sigkill() {
    let stack = Stack::setup("kill").await;
    let module = stack.push("step_counter").await;
    let env = stack.cli.set("WORKER_SLOTS", "1");
    let mut first = env.spawn("worker-a", &["worker"]);
    let id = "interrupted";
    let steps = 40u64;
    let doc = format!(r#"{{"job_id":"{id}","steps":{steps},"step_ms":500,"checkpoint_every":1}}"#);
    stack
        .submit(&module, "job.jsonl", &format!("{doc}\n"))
        .await
        .success();

    // Wait until the checkpoint in the bucket shows progress.
    let ids = vec![id.to_string()];
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        first.assert_running();
        let s = &stack.status(&ids).await[id];
        if let Some(done) = s["progress"][0].as_u64()
            && done >= 3
        {
            assert_eq!(s["state"], "running", "{s:#}");
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {s:#}\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = first.kill9();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(
        seen < steps,
        "the job finished before the kill: raise steps/step_ms"
    );

    let mut second = env.spawn("worker-b", &["worker"]);
    let statuses = stack
        .wait_done(&ids, Duration::from_secs(120), &mut [&mut second])
        .await;
    let s = &statuses[id];
    assert_step_result(id, steps, s);
    assert!(s["attempts"].as_u64().unwrap() >= 2, "{s:#}");
    assert_eq!(
        s["failures"], 0,
        "an interruption was counted as a failure: {s:#}"
    );
    stop(&mut second).await;

    let first_log = first.log();
    assert!(
        first_log.contains(&format!("starting {steps} steps (attempt 1)")),
        "{first_log}"
    );
    let log = second.log();
    let started = job_lines(&log, "job started", id);
    assert_eq!(started.len(), 1, "{log}");
    assert!(started[0].contains("resumed=true"), "{log}");
    assert!(!log.contains(&format!("starting {steps} steps")), "{log}");
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming at step "))
        .unwrap_or_else(|| panic!("the second worker did not resume:\n{log}"));
    let k = number_after(resumed, "resuming at step ").unwrap();
    let attempt = number_after(resumed, "(attempt ").unwrap();
    assert!(
        k >= seen && k < steps,
        "resumed at step {k}, but the checkpoint had reached {seen}:\n{log}"
    );
    assert!(attempt >= 2, "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_jobs_are_valid_under_the_guides_avro_schema() {
    let stack = Stack::start("schema").await;
    let schema = "job-schema";
    let out = stack
        .cli
        .run(&["setup", "--schema-id", schema])
        .await
        .success();
    let printed = lines(&out.stdout);
    for line in [
        format!("created schema {schema}"),
        "created topic schema".to_string(),
    ] {
        assert!(printed.contains(&line), "no {line:?}: {out}");
    }
    let module = stack.push("step_counter").await;

    let csv = "job_id,steps\njob-0,600\njob-1,10\njob-2,1\njob-3,12345\njob-4,0\n";
    let out = stack.submit(&module, "data.csv", csv).await.success();
    assert!(out.stdout.contains("published 5 jobs"), "{out}");

    let published = stack
        .pull(
            &stack.subscription(),
            5,
            Duration::from_secs(30),
            Settle::Ack,
        )
        .await;
    assert_eq!(published.len(), 5, "{published:?}");
    let mut seen = Vec::new();
    for msg in &published {
        let verdict = stack
            .pubsub
            .validate_message(schema, &msg.data)
            .await
            .unwrap_or_else(|e| panic!("the emulator cannot validate against {schema}: {e:#}"));
        assert_eq!(
            verdict,
            MessageValidity::Valid,
            "{}",
            String::from_utf8_lossy(&msg.data)
        );
        assert_eq!(msg.attributes.get("module"), Some(&module), "{msg:?}");
        let doc: Value = serde_json::from_slice(&msg.data).unwrap();
        seen.push((
            doc["job_id"].as_str().unwrap().to_string(),
            doc["steps"].as_i64().unwrap(),
        ));
    }
    seen.sort();
    let want: Vec<(String, i64)> = [(0, 600), (1, 10), (2, 1), (3, 12345), (4, 0)]
        .iter()
        .map(|&(i, s)| (format!("job-{i}"), s))
        .collect();
    assert_eq!(seen, want);

    // The schema really checks: a string where the int goes is invalid...
    let verdict = stack
        .pubsub
        .validate_message(schema, br#"{"job_id":"job-x","steps":"x"}"#)
        .await
        .unwrap_or_else(|e| panic!("the emulator cannot validate against {schema}: {e:#}"));
    assert!(
        matches!(verdict, MessageValidity::Invalid(_)),
        "{verdict:?}"
    );
    // ...and such a row is refused by the topic, so submit fails and says so.
    let out = stack
        .submit(&module, "bad.csv", "job_id,steps\njob-x,x\n")
        .await
        .failure();
    assert!(out.stderr.contains("0 of 1"), "{out}");
}
