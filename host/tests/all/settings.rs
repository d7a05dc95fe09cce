//! Settings the worker cannot run with, the same on every node, where an exit would be a
//! crash loop: a value out of range, one from the environment that does not parse, a queue
//! that cannot be connected to. Each is waited for (up, live and started, not ready,
//! `/readyz` saying why; SIGTERM ends it with 0), or an exit 7 with `--exit-on-misconfig`
//! (docs/design.md §6).

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::cli::{CliEnv, Proc};

/// A worker of `cli` that waits for a misconfiguration: `/readyz` 503 naming it (`says`),
/// `/livez` and `/startupz` 200, the process up. Returns it and its metrics address.
async fn waiting_not_ready(cli: &CliEnv, says: &str) -> (Proc, String) {
    let addr = support::probes::metrics_addr();
    let mut worker = cli.set("METRICS_ADDR", &addr).spawn("worker", &["worker"]);
    let (_, body) = support::probes::until(
        &addr,
        "/readyz",
        Duration::from_secs(30),
        &mut worker,
        |(code, body)| *code == 503 && body.contains("misconfigured"),
    )
    .await;
    assert!(body.contains(says), "{body}");
    for path in ["/livez", "/startupz"] {
        let answer = support::probes::fetch(&addr, path).await;
        assert_eq!(answer.map(|a| a.0), Some(200), "{path}");
    }
    worker.assert_running();
    (worker, addr)
}

/// A setting out of range is a misconfiguration like the others (the same on every node): by
/// default the worker stays up, live and started but not ready (`/readyz` names the setting),
/// and SIGTERM ends it with 0; with `--exit-on-misconfig` it exits 7 with the sentence. Each
/// sentence names the setting and its value. Checked before the store, so a worker never
/// first waits out an outage to exit then (the bucket named here does not even answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_out_of_range_is_waited_for_not_a_crash_loop() {
    let cli = CliEnv::embedded("bad-setting");
    let cases = [
        ("TASK_MEMORY_MB", "8192", "4096 MiB"),
        ("ACK_DEADLINE_SECONDS", "900", "1..=600"),
        ("WORKER_SLOTS", "0", "from 1 to"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "-1", "non-negative"),
        ("TASK_ARTIFACT_MB", "0", "from 1 byte"),
        ("TASK_TIMEOUT_SECONDS", "inf", "number of seconds"),
    ];
    for (name, value, range) in cases {
        let out = cli
            .set(name, value)
            .run(&["worker", "--exit-on-misconfig"])
            .await;
        assert_eq!(out.status.code(), Some(7), "{name}={value}: {out}");
        let said = format!("{name}={value}");
        assert!(
            out.stderr.contains(&said) && out.stderr.contains(range),
            "{name}={value}: {out}"
        );
    }
    // R2_BUCKET_NAME without the rest: said before the store is asked anything.
    let out = cli
        .set("R2_BUCKET_NAME", "a-bucket")
        .run(&["worker", "--exit-on-misconfig"])
        .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert!(out.stderr.contains("R2_S3_ENDPOINT_URL"), "{out}");
    // The same code with JSON logs (SaladCloud's), the sentence in the last line.
    let out = cli
        .set("WORKER_SLOTS", "0")
        .set("LOG_FORMAT", "json")
        .run(&["worker", "--exit-on-misconfig"])
        .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("WORKER_SLOTS=0"), "{out}");

    for (name, value) in [("TASK_MEMORY_MB", "8192"), ("ACK_DEADLINE_SECONDS", "900")] {
        let said = format!("{name}={value}");
        let (mut worker, _) = waiting_not_ready(&cli.set(name, value), &said).await;
        let status = worker.terminate(Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(0), "{}", worker.log());
        assert_eq!(worker.log().matches(name).count(), 1, "{}", worker.log());
    }
}

/// A setting from the environment that does not parse (the same on every node) is waited for
/// like one out of range, never clap's exit 2: up, live and started but not ready (`/readyz`
/// names the variable and its value), SIGTERM ends it with 0; with `EXIT_ON_MISCONFIG` (from
/// the environment too) it exits 7 naming each one, in valid JSON lines with `LOG_FORMAT=json`.
/// A value typed as a flag is still clap's usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_does_not_parse_is_waited_for_not_a_crash_loop() {
    let cli = CliEnv::embedded("unparsed-setting");
    let exits = cli.set("EXIT_ON_MISCONFIG", "true");
    // LOG_FORMAT itself does not parse: text logs, and it is named too.
    let out = exits
        .set("WORKER_SLOTS", "eight")
        .set("LOG_FORMAT", "xml")
        .run(&["worker"])
        .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    for said in ["WORKER_SLOTS=eight", "LOG_FORMAT=xml", "json"] {
        assert!(out.stderr.contains(said), "{said}: {out}");
    }
    let out = exits
        .set("TASK_MEMORY_MB", "lots")
        .set("LOG_FORMAT", "json")
        .run(&["worker"])
        .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    for line in out.stderr.lines() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}: {out}");
    }
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("TASK_MEMORY_MB=lots"), "{out}");

    let out = cli.run(&["worker", "--slots", "eight"]).await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("invalid value 'eight'"), "{out}");

    let slots = cli.set("WORKER_SLOTS", "eight");
    let (mut worker, _) = waiting_not_ready(&slots, "WORKER_SLOTS=eight").await;
    let status = worker.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", worker.log());
    assert_eq!(
        worker.log().matches("WORKER_SLOTS").count(),
        1,
        "{}",
        worker.log()
    );
}

/// A queue the worker cannot connect to (here the embedded queue's file under a regular file;
/// on Pub/Sub, a credentials file that cannot be read) is waited for like any
/// misconfiguration, and the worker connects and goes on by itself once it mends; with
/// `--exit-on-misconfig` it exits 7 saying so. Before, it exited 7 on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_cannot_be_connected_to_is_waited_for() {
    let cli = CliEnv::embedded("no-queue");
    let blocker = cli.write_file("blocker", String::new());
    let queue_file = blocker.join("queue.db");
    let cli = cli.set("QUEUE_FILE", queue_file.to_str().unwrap());
    let out = cli.run(&["worker", "--exit-on-misconfig"]).await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert!(out.stderr.contains("cannot connect to the queue"), "{out}");
    let pubsub = CliEnv::embedded("no-credentials")
        .set("PROJECT_ID", "a-project")
        .set("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/keys.json");
    let out = pubsub.run(&["worker", "--exit-on-misconfig"]).await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    assert!(out.stderr.contains("cannot connect to the queue"), "{out}");

    let (mut worker, addr) = waiting_not_ready(&cli, "cannot connect to the queue").await;
    // Mended: the file's directory exists now.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    support::probes::until(
        &addr,
        "/readyz",
        Duration::from_secs(60),
        &mut worker,
        |(code, _)| *code == 200,
    )
    .await;
    assert!(queue_file.exists(), "the queue was opened");
    let status = worker.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", worker.log());
}
