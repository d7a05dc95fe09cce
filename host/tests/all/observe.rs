//! What an operator sees from the outside (issue 15): `/metrics` scraped during a real run
//! counts what happened; `/readyz` follows the store's outage while `/livez` stays up; every
//! JSON log line parses and a job's lines carry its fields; no secret reaches a log line,
//! a metric or an error.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::CliEnv;
use support::probes::{fetch, metrics_addr, until, value};
use support::s3::{S3Server, SECRET_ACCESS_KEY};
use support::stack::{Stack, WORKER_START, stop};
use taskhost::checkpoint;
use taskhost::ids::JobId;
use taskhost::queue::OutgoingMessage;
use taskhost::store::{ObjectStore, Precondition};

/// A service-account key file whose private key is `secret` (never valid; only seen).
fn key_file(cli: &CliEnv, secret: &str) -> std::path::PathBuf {
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "obs",
        "private_key_id": "0123456789abcdef",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        "client_email": "worker@obs.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    });
    cli.write_file("key.json", key.to_string())
}

/// The secret of the key file the metrics run is given.
const KEY_SECRET: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-obs-private-key-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_metrics_count_what_happened_and_its_json_lines_carry_the_job() {
    let stack = Stack::setup("obs-metrics").await;
    let module = stack.push("step_counter").await;
    let addr = metrics_addr();
    let keys = key_file(&stack.cli, KEY_SECRET);
    let mut worker = stack
        .cli
        .set("WORKER_SLOTS", "2")
        .set("METRICS_ADDR", &addr)
        .set("LOG_FORMAT", "json")
        .set("SALAD_MACHINE_ID", "machine-7")
        .set("SALAD_CONTAINER_GROUP_ID", "group-3")
        .set("GOOGLE_APPLICATION_CREDENTIALS", keys.to_str().unwrap())
        .spawn("worker", &["worker"]);
    until(&addr, "/readyz", WORKER_START, &mut worker, |(s, _)| {
        *s == 200
    })
    .await;

    // A job long enough to be taken from the worker mid-run: its checkpoint is overwritten
    // as another worker's claim would, released, so the redelivered copy takes it back.
    let conflicted = "obs-conflict".to_string();
    let text = format!(r#"{{"job_id":"{conflicted}","steps":40,"step_ms":150}}"#) + "\n";
    stack.submit(&module, "long.jsonl", &text).await.success();
    let key = checkpoint::key(&conflicted.parse::<JobId>().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (header, data) = loop {
        if let Some(obj) = stack.store.get(&key).await.unwrap() {
            let (h, d) = checkpoint::decode(&obj.bytes).unwrap();
            if d.is_some() {
                break (h, d);
            }
        }
        assert!(Instant::now() < deadline, "no save; log:\n{}", worker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Scraped during the run: the job runs.
    let (_, during) = fetch(&addr, "/metrics").await.unwrap();
    assert!(value(&during, "taskhost_jobs_running") >= 1.0, "{during}");
    let taken = checkpoint::Header {
        owner: "another-worker".into(),
        lease_until_ms: 0,
        nonce: "taken".into(),
        ..header
    };
    let bytes = checkpoint::encode(&taken, data.as_deref());
    stack
        .store
        .put(&key, bytes, Precondition::None)
        .await
        .unwrap();

    // Five short jobs, and one message that is no job.
    let good: Vec<String> = (0..5).map(|i| format!("obs-good-{i}")).collect();
    let text: String = good
        .iter()
        .map(|id| format!(r#"{{"job_id":"{id}","steps":3,"step_ms":10}}"#) + "\n")
        .collect();
    stack.submit(&module, "good.jsonl", &text).await.success();
    let poison = OutgoingMessage {
        data: b"not json".to_vec(),
        attributes: [("module".to_string(), module.clone())].into(),
    };
    stack
        .pubsub
        .publish(&stack.topic, vec![poison])
        .await
        .unwrap();

    let mut ids = good.clone();
    ids.push(conflicted.clone());
    stack
        .wait_done(&ids, Duration::from_secs(120), &mut [&mut worker])
        .await;
    // The dead-letter is settled once the publish is acked: wait for its count.
    let (_, text) = until(
        &addr,
        "/metrics",
        Duration::from_secs(60),
        &mut worker,
        |(_, t)| t.contains("taskhost_messages_settled_total{action=\"dead_letter\"} 1"),
    )
    .await;

    let ended = |outcome: &str| {
        value(
            &text,
            &format!("taskhost_jobs_ended_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(ended("done"), 6.0, "{text}");
    assert_eq!(ended("poison"), 1.0, "{text}");
    assert_eq!(ended("conflict"), 1.0, "{text}");
    assert_eq!(
        ended("trapped") + ended("storage") + ended("host_fault"),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "taskhost_messages_settled_total{action=\"ack\"}"),
        6.0
    );
    assert_eq!(
        value(
            &text,
            "taskhost_checkpoint_writes_total{result=\"conflict\"}"
        ),
        1.0
    );
    assert!(value(&text, "taskhost_checkpoint_writes_total{result=\"ok\"}") >= 1.0);
    assert!(value(&text, "taskhost_checkpoint_written_bytes_total") > 0.0);
    assert_eq!(value(&text, "taskhost_slots"), 2.0);
    assert_eq!(value(&text, "taskhost_jobs_running"), 0.0);
    assert!(value(&text, "taskhost_pulls_total{result=\"messages\"}") >= 1.0);
    // Fetched and compiled once; every other of the 7 job deliveries found it cached.
    assert_eq!(
        value(&text, "taskhost_module_cache_total{result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "taskhost_module_cache_total{result=\"hit\"}"),
        6.0
    );
    assert_eq!(value(&text, "taskhost_module_compile_seconds_count"), 1.0);
    assert!(value(&text, "taskhost_fuel_used_total") > 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a job id in the metrics: {id}");
    }
    assert_eq!(fetch(&addr, "/livez").await.unwrap().0, 200);
    assert_eq!(fetch(&addr, "/startupz").await.unwrap().0, 200);
    assert_eq!(fetch(&addr, "/nothing").await.unwrap().0, 404);

    stop(&mut worker).await;
    let log = worker.log();
    let mut job_lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert_eq!(v["salad_machine_id"], "machine-7", "{line}");
        assert_eq!(v["salad_container_group_id"], "group-3", "{line}");
        if v["message"] == "job done; result stored" {
            job_lines += 1;
            assert!(ids.iter().any(|id| v["job_id"] == *id.as_str()), "{line}");
            assert!(v["attempt"].as_u64().is_some_and(|a| a >= 1), "{line}");
            assert_eq!(v["module"], module.as_str(), "{line}");
            assert!(
                v["worker"].as_str().is_some_and(|w| !w.is_empty()),
                "{line}"
            );
        }
    }
    assert_eq!(job_lines, 6, "{log}");
    // The secrets it was given: in no line and no metric.
    for secret in [SECRET_ACCESS_KEY, KEY_SECRET] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
        assert!(!text.contains(secret) && !during.contains(secret));
    }
}

/// The heartbeat interval of the idle worker whose store freezes.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How soon `/readyz` must follow the store (docs/design.md §10): the next heartbeat write,
/// then `STORE_CHECK_INTERVAL` for it to wait unanswered and `STORE_CHECK_TIMEOUT` for the
/// check (11 s), with twice as much again for a loaded machine; the same for the way back, when
/// any call succeeds or the next check (every 5 s) does.
const NOTICED: Duration = Duration::from_secs(
    3 * (HEARTBEAT.as_secs()
        + taskhost::observe::health::STORE_CHECK_INTERVAL.as_secs()
        + taskhost::observe::health::STORE_CHECK_TIMEOUT.as_secs()),
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_the_store_is_frozen_and_livez_stays_200() {
    // Its own S3 server (it is frozen) and the embedded queue.
    let s3 = S3Server::start().await;
    let cli = CliEnv::embedded("obs-ready").on_s3(&s3);
    cli.run(&["setup"]).await.success();
    let addr = metrics_addr();
    // An idle worker: its heartbeat is its only store call, and what tells it the store
    // stopped answering (its write waits; the probe asks STORE_CHECK_INTERVAL later).
    let mut worker = cli
        .set("METRICS_ADDR", &addr)
        .set("HEARTBEAT_SECONDS", HEARTBEAT.as_secs().to_string())
        .spawn("worker", &["worker"]);
    until(&addr, "/readyz", WORKER_START, &mut worker, |(s, _)| {
        *s == 200
    })
    .await;
    assert_eq!(fetch(&addr, "/startupz").await.unwrap().0, 200);

    s3.freeze(true);
    let frozen = Instant::now();
    let deadline = frozen + NOTICED;
    let why = loop {
        let (status, body) = fetch(&addr, "/readyz").await.expect("readyz answers");
        // Liveness never follows an outage.
        assert_eq!(fetch(&addr, "/livez").await.map(|a| a.0), Some(200));
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "still ready {NOTICED:?} into the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.contains("store"), "{why}");
    // Stays not ready, and alive, for as long as the store is frozen (a few more checks).
    let held = Instant::now() + Duration::from_secs(8);
    while Instant::now() < held {
        assert_eq!(fetch(&addr, "/readyz").await.map(|a| a.0), Some(503));
        assert_eq!(fetch(&addr, "/livez").await.map(|a| a.0), Some(200));
        assert_eq!(fetch(&addr, "/startupz").await.map(|a| a.0), Some(200));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s3.freeze(false);
    until(&addr, "/readyz", NOTICED, &mut worker, |(s, _)| *s == 200).await;
    let (_, text) = fetch(&addr, "/metrics").await.unwrap();
    assert_eq!(
        value(&text, "taskhost_jobs_ended_total{outcome=\"done\"}"),
        0.0
    );

    worker.signal(libc::SIGTERM);
    worker.wait_exit(support::stack::WORKER_STOP).await;
    assert!(!worker.log().contains(SECRET_ACCESS_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_key_files_appear_in_no_error() {
    let s3 = support::stack::servers().await;
    // A wrong S3 secret: the worker stops at its probe write with one sentence.
    let wrong = "wrong-secret-obs-5f1d9c0b7e";
    let cli = CliEnv::embedded("obs-secrets")
        .set("R2_BUCKET_NAME", support::s3::BUCKET)
        .set("R2_S3_ENDPOINT_URL", s3.s3.endpoint())
        .set("R2_AWS_ACCESS_KEY_ID", support::s3::ACCESS_KEY_ID)
        .set("R2_AWS_SECRET_ACCESS_KEY", wrong);
    for format in ["text", "json"] {
        let out = cli
            .set("LOG_FORMAT", format)
            .run(&["worker", "--exit-on-misconfig"])
            .await
            .failure();
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains(wrong), "{out}");
        assert!(all.contains("cannot write to the store"), "{out}");
        // The documented code for any other error, in either log format (JSON exited 1).
        assert_eq!(out.status.code(), Some(7), "{format}: {out}");
        if format == "json" {
            for line in out.stderr.lines() {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            }
        }
    }
    // A key file for real Pub/Sub whose token endpoint refuses: the error names the file's
    // trouble, never its key.
    let secret = "MIIEvQ-obs-unusable-private-key-0a6c4e";
    let keys = key_file(&cli, secret);
    let out = cli
        .set("PROJECT_ID", "obs-no-such-project")
        .set("GOOGLE_APPLICATION_CREDENTIALS", keys.to_str().unwrap())
        .set("R2_AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .run(&["setup"])
        .await
        .failure();
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("credentials"), "{out}");
    assert!(!all.contains(secret), "{out}");
    assert!(!all.contains(SECRET_ACCESS_KEY), "{out}");
}

/// On the embedded default a job whose run ended frees its slot and holds a commit place
/// until its result is durable and its message settled: the metrics and the heartbeat then
/// count it as committing, not running, so "running" never exceeds the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_jobs_are_counted_apart_from_running_ones_on_the_embedded_default() {
    const JOBS: usize = 60;
    let cli = CliEnv::embedded("obs-commit");
    cli.run(&["setup"]).await.success();
    let module = cli.push_guest("step_counter").await;
    let addr = metrics_addr();
    let mut worker = cli
        .set("METRICS_ADDR", &addr)
        .set("HEARTBEAT_SECONDS", "1")
        .spawn("worker", &["worker", "--slots", "1"]);
    until(&addr, "/readyz", WORKER_START, &mut worker, |(s, _)| {
        *s == 200
    })
    .await;
    let jobs: String = (0..JOBS)
        .map(|i| format!(r#"{{"job_id":"commit-{i}","steps":1}}"#) + "\n")
        .collect();
    cli.submit_file(&module, "commit.jsonl", &jobs)
        .await
        .success();

    let places = taskhost::worker::COMMIT_PLACES_PER_SLOT as f64;
    let heartbeats = cli.dir().join("store").join("workers");
    let mut beats_read = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, text) = fetch(&addr, "/metrics").await.expect("metrics answer");
        let running = value(&text, "taskhost_jobs_running");
        let committing = value(&text, "taskhost_jobs_committing");
        assert!((0.0..=1.0).contains(&running), "{text}");
        assert!((0.0..=places).contains(&committing), "{text}");
        for entry in std::fs::read_dir(&heartbeats).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let beat: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(beat["running"].as_u64().unwrap() <= 1, "{beat}");
            assert!(
                beat["committing"].as_u64().unwrap() as f64 <= places,
                "{beat}"
            );
            beats_read += 1;
        }
        if value(&text, "taskhost_jobs_ended_total{outcome=\"done\"}") == JOBS as f64 {
            break;
        }
        worker.assert_running();
        assert!(Instant::now() < deadline, "not done: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(beats_read > 0, "no heartbeat read");
    // Settled: nothing runs or commits; the gauges are balanced.
    let (_, text) = until(
        &addr,
        "/metrics",
        Duration::from_secs(30),
        &mut worker,
        |(_, t)| value(t, "taskhost_messages_settled_total{action=\"ack\"}") == JOBS as f64,
    )
    .await;
    assert_eq!(value(&text, "taskhost_jobs_running"), 0.0, "{text}");
    assert_eq!(value(&text, "taskhost_jobs_committing"), 0.0, "{text}");
    worker.signal(libc::SIGTERM);
    worker.wait_exit(support::stack::WORKER_STOP).await;
    // Every job took a commit place on this store.
    let log = worker.log();
    let peak = log
        .split("committing_peak=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no committing_peak in the exit line:\n{log}"));
    assert!((1..=places as u64).contains(&peak), "{log}");
}
