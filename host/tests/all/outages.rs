//! Misconfigurations and outages never cost a job: a wrong bucket, wrong credentials or a
//! missing dead-letter topic is one clear sentence at startup and touches no message; the S3
//! server and the Pub/Sub emulator each frozen for 30 s mid-run lose nothing.
//!
//! Each test has its own servers: they are frozen, or their settings are made wrong.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::pubsub::PubsubEmulator;
use support::s3::{READONLY_ACCESS_KEY_ID, READONLY_SECRET_ACCESS_KEY, S3Server};
use taskhost::queue::{Pubsub, Queue, Settle};

/// This test's own servers and the CLI environment for them.
struct Private {
    emulator: PubsubEmulator,
    s3: S3Server,
    cli: CliEnv,
}

impl Private {
    /// Fresh servers, `taskhost setup` done, the step-counter module pushed.
    async fn start(name: &str, ack_deadline_secs: u32) -> (Private, String) {
        let emulator = tokio::task::spawn_blocking(PubsubEmulator::start)
            .await
            .unwrap();
        let s3 = S3Server::start().await;
        let cli = CliEnv::new(&emulator, &s3, "outages", name)
            .set("ACK_DEADLINE_SECONDS", ack_deadline_secs.to_string());
        cli.run(&["setup"]).await.success();
        let wasm = support::guests::wasm("step_counter");
        let module = cli
            .run(&["module", "push", wasm.to_str().unwrap()])
            .await
            .success()
            .last_line()
            .to_string();
        (Private { emulator, s3, cli }, module)
    }

    async fn submit(&self, module: &str, jobs: &[(String, u64)]) {
        let text: String = jobs
            .iter()
            .map(|(id, steps)| {
                format!(r#"{{"job_id":"{id}","steps":{steps},"step_ms":100}}"#) + "\n"
            })
            .collect();
        let path = self.cli.write_file("jobs.jsonl", text);
        self.cli
            .run(&[
                "submit",
                "--quiet",
                "--module",
                module,
                path.to_str().unwrap(),
            ])
            .await
            .success();
    }

    async fn queue(&self) -> Queue {
        let config = self.emulator.config("outages");
        Queue::PubSub(Pubsub::connect(&config).await.unwrap())
    }

    /// Every message of `sub`, handed back (not consumed).
    async fn peek(&self, sub: &str) -> Vec<taskhost::queue::IncomingMessage> {
        self.queue()
            .await
            .pull_some(sub, 100, Duration::from_secs(3), Settle::Nack)
            .await
            .unwrap()
    }

    async fn statuses(&self, ids: &[String]) -> Vec<Value> {
        let mut args = vec!["status", "--json"];
        args.extend(ids.iter().map(String::as_str));
        let out = self.cli.run(&args).await.success();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_done(
        &self,
        ids: &[String],
        timeout: Duration,
        workers: &mut [&mut Proc],
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.statuses(ids).await;
            if s.iter().all(|s| s["state"] == "done") {
                return s;
            }
            for w in workers.iter_mut() {
                w.assert_running();
            }
            let logs: String = workers.iter().map(|w| w.log()).collect();
            assert!(Instant::now() < deadline, "not done: {s:#?}\n{logs}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn jobs(prefix: &str, n: usize, steps: u64) -> Vec<(String, u64)> {
    (0..n).map(|i| (format!("{prefix}-{i}"), steps)).collect()
}

fn assert_sums(jobs: &[(String, u64)], statuses: &[Value]) {
    for ((id, steps), s) in jobs.iter().zip(statuses) {
        assert_eq!(s["job_id"], id.as_str());
        let result: Value = serde_json::from_str(s["result"].as_str().unwrap()).unwrap();
        assert_eq!(result["sum"], steps * (steps + 1) / 2, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_worker_says_why_in_one_sentence_and_touches_no_job() {
    let (p, module) = Private::start("misconfig", 10).await;
    let work = jobs("misconfig", 3, 3);
    p.submit(&module, &work).await;
    let read_only = p
        .cli
        .set("R2_AWS_ACCESS_KEY_ID", READONLY_ACCESS_KEY_ID)
        .set("R2_AWS_SECRET_ACCESS_KEY", READONLY_SECRET_ACCESS_KEY);
    let cases = [
        ("R2_BUCKET_NAME", "no-such-bucket", "NoSuchBucket"),
        (
            "R2_AWS_SECRET_ACCESS_KEY",
            "a-wrong-secret",
            "cannot write to the store",
        ),
        (
            "DEAD_LETTER_TOPIC_ID",
            "no-such-topic",
            "dead-letter topic `no-such-topic` does not exist",
        ),
        (
            "SUBSCRIPTION_ID",
            "no-such-sub",
            "subscription `no-such-sub` does not exist",
        ),
        // A key that may read but not write (both of its settings, in `read_only`).
        (
            "R2_AWS_ACCESS_KEY_ID",
            READONLY_ACCESS_KEY_ID,
            "403 AccessDenied",
        ),
    ];
    for (name, value, says) in cases {
        let started = Instant::now();
        let cli = if value == READONLY_ACCESS_KEY_ID {
            read_only.clone()
        } else {
            p.cli.set(name, value)
        };
        let out = cli.run(&["worker"]).await;
        let took = started.elapsed();
        assert_ne!(out.status.code(), Some(0), "{name}={value}: {out}");
        let last = out
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("");
        assert!(last.contains(says), "{name}={value}: {out}");
        assert!(
            last.contains("cannot write to the store") || !name.starts_with("R2_"),
            "{name}={value}: {out}"
        );
        for secret in ["a-wrong-secret", READONLY_SECRET_ACCESS_KEY] {
            assert!(!last.contains(secret), "the secret is in the error: {last}");
        }
        assert!(took < Duration::from_secs(30), "{name}: took {took:?}");
    }
    // No job was touched: nothing dead-lettered, nothing stored, every message still there,
    // none delivered yet.
    assert!(p.peek("misconfig-dead-letter-sub").await.is_empty());
    let waiting = p.peek("misconfig-sub").await;
    assert_eq!(waiting.len(), 3, "{waiting:?}");
    assert!(
        waiting.iter().all(|m| m.delivery_attempt == Some(1)),
        "{waiting:?}"
    );
    let ids: Vec<String> = work.iter().map(|(id, _)| id.clone()).collect();
    assert!(
        p.statuses(&ids)
            .await
            .iter()
            .all(|s| s["state"] == "queued")
    );
    // Fixed, the same worker runs them.
    let mut w = p.cli.spawn("worker", &["worker"]);
    let statuses = p
        .wait_done(&ids, Duration::from_secs(60), &mut [&mut w])
        .await;
    assert_sums(&work, &statuses);

    // A subscription without a dead-letter policy is not fatal (the worker bounds retries by
    // its own counts) but is said in one sentence at startup.
    let settings = taskhost::queue::SubscriptionSettings {
        ack_deadline_secs: 10,
        ..Default::default()
    };
    p.queue()
        .await
        .ensure_subscription("misconfig-nodl", "misconfig", &settings)
        .await
        .unwrap();
    let mut w = p
        .cli
        .set("SUBSCRIPTION_ID", "misconfig-nodl")
        .spawn("nodl", &["worker"]);
    w.wait_for_log("has no dead-letter policy", Duration::from_secs(30))
        .await;
    w.wait_for_log("worker started", Duration::from_secs(30))
        .await;
    w.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_outages_of_storage_then_of_pubsub_lose_no_job() {
    let (p, module) = Private::start("outage", 10).await;
    let work = jobs("outage", 8, 40);
    p.submit(&module, &work).await;
    let cli = p.cli.set("WORKER_SLOTS", "2");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let mut b = cli.spawn("worker-b", &["worker"]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    p.s3.freeze(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    p.s3.freeze(false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.emulator.freeze(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    p.emulator.freeze(false);

    let ids: Vec<String> = work.iter().map(|(id, _)| id.clone()).collect();
    let statuses = p
        .wait_done(&ids, Duration::from_secs(300), &mut [&mut a, &mut b])
        .await;
    assert_sums(&work, &statuses);
    a.assert_running();
    b.assert_running();
    assert!(p.peek("outage-dead-letter-sub").await.is_empty());
    let logs = a.log() + &b.log();
    assert!(!logs.contains("dead-lettered"), "{logs}");
}
