//! Misconfigurations and outages never cost a job: a wrong bucket, wrong credentials or a
//! missing dead-letter topic is one clear sentence at startup and touches no message (with
//! `--exit-on-misconfig`, an exit; by default the worker waits, not ready, and starts by
//! itself once the problem is fixed); the S3 server and the Pub/Sub emulator each frozen
//! for 30 s mid-run lose nothing.
//!
//! Each test has its own servers: they are frozen, or their settings are made wrong.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{CliEnv, Proc};
use support::pubsub::PubsubEmulator;
use support::s3::{READONLY_ACCESS_KEY_ID, READONLY_SECRET_ACCESS_KEY, S3Server};
use support::stack::in_flight;
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
        let module = cli.push_guest("step_counter").await;
        (Private { emulator, s3, cli }, module)
    }

    async fn submit(&self, module: &str, jobs: &[(String, u64)]) {
        let text: String = jobs
            .iter()
            .map(|(id, steps)| {
                format!(r#"{{"job_id":"{id}","steps":{steps},"step_ms":100}}"#) + "\n"
            })
            .collect();
        self.cli
            .submit_file(module, "jobs.jsonl", &text)
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
        let statuses: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // One line per job, in order: a check over all of them means something only then.
        let printed: Vec<&str> = statuses
            .iter()
            .filter_map(|s| s["job_id"].as_str())
            .collect();
        assert_eq!(printed, ids, "status printed other jobs:\n{out}");
        statuses
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
        // `--exit-on-misconfig`: the exit scripts want (by default the worker waits, below).
        let out = cli.run(&["worker", "--exit-on-misconfig"]).await;
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

/// Issue 18: a worker started against a bucket that does not exist stays up and not ready,
/// says why once, and starts by itself once the bucket is created: no crash loop, no
/// redeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_a_missing_bucket_and_starts_once_it_exists() {
    let servers = support::stack::servers().await;
    let bucket = format!("late-{}", std::process::id());
    let port = support::pubsub::free_port();
    let addr = format!("127.0.0.1:{port}");
    let cli = CliEnv::embedded("late-bucket")
        .set("R2_BUCKET_NAME", &bucket)
        .set("R2_S3_ENDPOINT_URL", servers.s3.endpoint())
        .set("R2_AWS_ACCESS_KEY_ID", support::s3::ACCESS_KEY_ID)
        .set("R2_AWS_SECRET_ACCESS_KEY", support::s3::SECRET_ACCESS_KEY)
        .set("METRICS_ADDR", &addr)
        .set("ACK_DEADLINE_SECONDS", "10");
    let mut worker = cli.spawn("worker", &["worker"]);
    worker
        .wait_for_log("cannot write to the store", Duration::from_secs(30))
        .await;
    let (status, body) = support::probes::get(&addr, "/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("misconfigured") && body.contains("cannot write to the store"),
        "{body}"
    );
    assert_eq!(
        support::probes::get(&addr, "/livez").map(|a| a.0),
        Some(200)
    );
    // Fixed: the bucket is created; the same process takes the jobs.
    let config = taskhost::store::s3::S3Config {
        bucket: bucket.clone(),
        ..servers.s3.config("")
    };
    assert!(
        taskhost::store::s3::S3Store::new(config)
            .unwrap()
            .ensure_bucket()
            .await
            .unwrap()
    );
    let module = cli.push_guest("step_counter").await;
    cli.submit_file(
        &module,
        "jobs.jsonl",
        "{\"job_id\":\"late-1\",\"steps\":3}\n",
    )
    .await
    .success();
    worker
        .wait_for_log("job done", Duration::from_secs(60))
        .await;
    worker.assert_running();
    let log = worker.log();
    assert!(
        log.contains("the misconfiguration is fixed: starting"),
        "{log}"
    );
    // Said once, not once per recheck (the next time would be a minute later).
    assert_eq!(log.matches("cannot write to the store").count(), 1, "{log}");
    assert_eq!(
        support::probes::get(&addr, "/readyz").map(|a| a.0),
        Some(200)
    );
    worker.terminate(Duration::from_secs(15)).await;
}

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(30);
/// What a worker logs when its storage breaker opens, and when it closes.
const BREAKER_OPENS: &str = "storage is failing for every job";
const BREAKER_CLOSES: &str = "storage answers again: taking jobs";
/// What a worker logs when a pull fails.
const PULLS_FAIL: &str = "cannot pull; taking no jobs until the queue answers";

/// The jobs of `ids` that worker `a` or `b` has in flight, by their logs.
fn in_flight_on(ids: &[String], a: &Proc, b: &Proc) -> Vec<String> {
    let mut jobs = in_flight(&a.log(), ids);
    jobs.extend(in_flight(&b.log(), ids));
    jobs
}

/// Waits until worker `a` or `b` has a job of `ids` in flight.
async fn wait_in_flight(ids: &[String], a: &Proc, b: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_flight_on(ids, a, b).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no job in flight within 60 s:\n{}{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `worker`'s log contains `needle`.
async fn wait_log(worker: &Proc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !worker.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}:\n{}",
            worker.name(),
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_outages_of_storage_then_of_pubsub_lose_no_job() {
    let (p, module) = Private::start("outage", 10).await;
    // 12 jobs of 6 s on 4 slots: about 18 s of work, so that jobs are still in flight when
    // the queue freezes after the storage outage.
    let work = jobs("outage", 12, 60);
    p.submit(&module, &work).await;
    let cli = p.cli.set("WORKER_SLOTS", "2");
    let mut a = cli.spawn("worker-a", &["worker"]);
    let mut b = cli.spawn("worker-b", &["worker"]);
    let ids: Vec<String> = work.iter().map(|(id, _)| id.clone()).collect();
    let logs = |a: &Proc, b: &Proc| a.log() + &b.log();

    // Storage goes away with jobs in flight. A frozen server accepts connections and answers
    // nothing, so each request hangs for the S3 client's attempt timeout (120 s), longer
    // than the outage: the jobs wait rather than fail, and the storage breaker, which counts
    // failures, need not open. A breaker that did open must close once storage answers.
    wait_in_flight(&ids, &a, &b).await;
    p.s3.freeze(true);
    let frozen = in_flight_on(&ids, &a, &b);
    assert!(!frozen.is_empty(), "no job in flight when storage froze");
    eprintln!("storage frozen with {frozen:?} in flight");
    tokio::time::sleep(OUTAGE).await; // the outage's length: the scenario
    let opened: Vec<&Proc> = [&a, &b]
        .into_iter()
        .filter(|w| w.log().contains(BREAKER_OPENS))
        .collect();
    p.s3.freeze(false);
    eprintln!("{} storage breakers opened during the outage", opened.len());
    for w in &opened {
        wait_log(w, BREAKER_CLOSES).await;
    }

    // Then the queue goes away with jobs in flight: pulls fail and resume.
    wait_in_flight(&ids, &a, &b).await;
    p.emulator.freeze(true);
    let frozen = in_flight_on(&ids, &a, &b);
    assert!(!frozen.is_empty(), "no job in flight when the queue froze");
    eprintln!("queue frozen with {frozen:?} in flight");
    tokio::time::sleep(OUTAGE).await; // the outage's length: the scenario
    assert!(
        logs(&a, &b).contains(PULLS_FAIL),
        "no pull failed during the queue outage:\n{}",
        logs(&a, &b)
    );
    p.emulator.freeze(false);

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

/// Issue 18: a `DEFAULT_MODULE` tag that does not exist yet keeps the worker up and not
/// ready (no crash loop); once the module is pushed with that tag, the jobs that name no
/// module run it. `--exit-on-misconfig` keeps the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_its_default_module_tag() {
    use taskhost::queue::OutgoingMessage;
    let port = support::pubsub::free_port();
    let addr = format!("127.0.0.1:{port}");
    let cli = CliEnv::embedded("late-tag")
        .set("DEFAULT_MODULE", "late:v1")
        .set("ACK_DEADLINE_SECONDS", "10");
    let exited = cli.run(&["worker", "--exit-on-misconfig"]).await.failure();
    assert!(
        exited.stderr.contains("no module is tagged late:v1"),
        "{exited}"
    );
    let mut worker = cli.set("METRICS_ADDR", &addr).spawn("worker", &["worker"]);
    worker
        .wait_for_log("no module is tagged late:v1", Duration::from_secs(30))
        .await;
    let (status, body) = support::probes::get(&addr, "/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("DEFAULT_MODULE late:v1"), "{body}");
    // Jobs that name no module, published while the worker waits.
    let queue = taskhost::queue::local::LocalQueue::open(cli.var("QUEUE_FILE"))
        .await
        .unwrap();
    let messages = (1..=2)
        .map(|n| OutgoingMessage {
            data: format!(r#"{{"job_id":"late-tag-{n}","steps":3}}"#).into_bytes(),
            attributes: Default::default(),
        })
        .collect();
    Queue::Local(queue)
        .publish("late-tag", messages)
        .await
        .unwrap();
    // Fixed: the module is pushed with the tag; the same process takes the jobs.
    let wasm = support::guests::wasm("step_counter");
    let pushed = cli
        .run(&["module", "push", wasm.to_str().unwrap(), "--tag", "late:v1"])
        .await
        .success();
    let module = pushed.last_line().to_string();
    worker
        .wait_for_log(
            "the misconfiguration is fixed: starting",
            Duration::from_secs(60),
        )
        .await;
    let ids: Vec<String> = (1..=2).map(|n| format!("late-tag-{n}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut args = vec!["status", "--json"];
        args.extend(ids.iter().map(String::as_str));
        let out = cli.run(&args).await.success();
        let done: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|s| s["state"] == "done")
            .collect();
        if done.len() == ids.len() {
            for s in done {
                let result: Value = serde_json::from_str(s["result"].as_str().unwrap()).unwrap();
                assert_eq!(result["sum"], 6, "{s}");
            }
            break;
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "not done: {out}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    worker.assert_running();
    let log = worker.log();
    assert!(
        log.contains(&module),
        "the tag resolved to the pushed hash: {log}"
    );
    assert_eq!(
        log.matches("no module is tagged late:v1").count(),
        1,
        "{log}"
    );
    worker.terminate(Duration::from_secs(15)).await;
}

/// On the embedded default, a queue that cannot be set up (here the worker's subscription
/// exists on another topic: `TOPIC_ID` changed under it) is a misconfiguration like the
/// others, never an exit 1 that a restart policy turns into a crash loop: one sentence; with
/// `--exit-on-misconfig` exit 7; by default the worker stays up, not ready (`/readyz` gives
/// the sentence), and a SIGTERM ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_queue_that_cannot_be_set_up_is_waited_for() {
    let addr = format!("127.0.0.1:{}", support::pubsub::free_port());
    let cli = CliEnv::embedded("emb-setup");
    cli.run(&["setup"]).await.success();
    let moved = cli.set("TOPIC_ID", "emb-setup-other");
    let says = "cannot set up the embedded queue";
    let exited = moved
        .run(&["worker", "--exit-on-misconfig"])
        .await
        .failure();
    assert_eq!(exited.status.code(), Some(7), "{exited}");
    assert!(exited.stderr.contains(says), "{exited}");
    assert!(exited.stderr.contains("emb-setup-sub"), "{exited}");
    let mut worker = moved
        .set("METRICS_ADDR", &addr)
        .spawn("worker", &["worker"]);
    worker.wait_for_log(says, Duration::from_secs(30)).await;
    let (status, body) = support::probes::get(&addr, "/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(says), "{body}");
    let (status, _) = support::probes::get(&addr, "/livez").expect("/livez answers");
    assert_eq!(status, 200);
    worker.assert_running();
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(support::stack::WORKER_STOP).await;
    assert!(status.success(), "{status}: {}", worker.log());
}
