//! The real `taskhost` binary on the embedded queue and the directory store, ONNX Runtime from
//! `ORT_DYLIB_PATH`: a worker SIGKILLed in the middle of a classify job, and a second worker
//! that resumes it, give the predictions ONNX Runtime gives natively; the job's accounting
//! shows the host compute.

use crate::support;

use std::time::{Duration, Instant};

use support::cli::{CliEnv, Proc};
use taskhost::checkpoint;
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::store::ObjectStore;
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;

use super::{classifier, native, ort_lib, parse_predictions, records};

/// How long the job may take end to end in the debug build.
const JOB_TIMEOUT: Duration = Duration::from_secs(180);

fn worker(cli: &CliEnv, name: &str) -> Proc {
    cli.set("WORKER_SLOTS", "1")
        .set("ORT_DYLIB_PATH", ort_lib().display().to_string())
        .spawn(name, &["worker"])
}

async fn wait_result(store: &AnyStore, job: &str, worker: &mut Proc) -> serde_json::Value {
    let key = keys::result(&job.parse().unwrap());
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(r) = store.get(&key).await.unwrap() {
            return serde_json::from_slice(&r.bytes).unwrap();
        }
        worker.assert_running();
        assert!(
            Instant::now() < deadline,
            "job {job} not done; log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killed_mid_job_and_resumed_it_predicts_what_onnx_runtime_predicts() {
    let cli = CliEnv::embedded("nnkill").set("ACK_DEADLINE_SECONDS", "4");
    let store = AnyStore::Dir(DirStore::open(cli.var("STORE_DIR")).unwrap());
    let model = classifier(cli.dir(), 5, 3, 11);
    // Enough predictions (~13 MB) that a part of them (8 MiB) is durable before the kill, so
    // the resumed run continues the artifact instead of writing it again.
    let recs = records(cli.dir(), 300_000, 5, 12);
    let module = cli.push_guest("classify").await;
    let jobs = cli.write_file(
        "jobs.jsonl",
        "{\"job_id\":\"nnkill\",\"batch\":1000,\"batch_ms\":30}\n",
    );
    let (m, r) = (
        format!("model={}", model.display()),
        format!("records={}", recs.display()),
    );
    cli.run(&[
        "submit",
        "--quiet",
        "--module",
        &module,
        "--input",
        &m,
        "--input",
        &r,
        jobs.to_str().unwrap(),
    ])
    .await
    .success();

    // Kill the first worker once its checkpoint records a part of the predictions as durable
    // (300 batches in all).
    let mut w1 = worker(&cli, "w1");
    let job: JobId = "nnkill".parse().unwrap();
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        if let Some(h) = checkpoint::peek(&store, &job).await.unwrap()
            && h.artifacts
                .iter()
                .any(|a| a.name == "predictions.csv" && a.size > 0)
        {
            break;
        }
        w1.assert_running();
        assert!(Instant::now() < deadline, "no progress; log:\n{}", w1.log());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    w1.kill9();
    assert!(
        !store.exists("jobs/nnkill/result").await.unwrap(),
        "the job finished before the kill; slow it down"
    );

    let mut w2 = worker(&cli, "w2");
    let result = wait_result(&store, "nnkill", &mut w2).await;
    assert_eq!(result["records"], 300_000, "{result}");
    let log = w2.log();
    let from = log
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("classifying from record ")? + 24..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no start line in w2's log:\n{log}"));
    assert!(from > 0, "w2 started again from record 0; log:\n{log}");
    let key = keys::artifact(&job, "predictions.csv");
    let text = store.get(&key).await.unwrap().expect("predictions.csv");
    let got = parse_predictions(std::str::from_utf8(&text.bytes).unwrap());
    assert_eq!(got.len(), 300_000);
    assert!(
        got == native(&model, &recs, 1000),
        "the resumed job's predictions differ from native ONNX Runtime's"
    );

    // The accounting shows inference as host compute, within the wall-clock time.
    let status = cli.run(&["status", "nnkill", "--json"]).await.success();
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let a = &status["accounting"];
    let host = a["host_compute_ms"].as_u64().expect("host_compute_ms");
    assert!(
        host > 0 && host <= a["wall_ms"].as_u64().unwrap(),
        "host compute not counted within the wall-clock time: {status:#}"
    );
    w2.terminate(Duration::from_secs(20)).await;
}
