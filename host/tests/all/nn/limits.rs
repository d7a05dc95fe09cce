//! The sandbox's rules for inference: malformed models and hostile tensors are errors for the
//! task, host memory is capped per job and per worker (and given back), host compute is
//! counted, and the wall-clock limit stops an inference mid-run.

use super::inference::{done, module, run_job, store_with};
use super::{classifier, models, runtime, with_ort};

use std::time::{Duration, Instant};

use crate::support::exec::{executor_on, live_lease, run};
use taskhost::exec::JobEnd;
use taskhost::files::FileLimits;
use taskhost::nn::NnConfig;
use taskhost::runtime::{JobLimits, TrapKind};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn malformed_models_are_errors_for_the_task_and_the_worker_runs_on() {
    let tmp = tempfile::tempdir().unwrap();
    let good = classifier(tmp.path(), 4, 3, 1);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.onnx");
    std::fs::write(
        &garbage,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let empty = tmp.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    // A protobuf that parses but names an operator that does not exist.
    let bogus = tmp.path().join("bogus.onnx");
    std::fs::write(&bogus, bytes_replaced(&bytes, b"Softmax", b"Softmaz")).unwrap();
    // Weights named as "external data" in a file: relative to the worker's working directory
    // (the tests run in host/, where Cargo.toml is), and absolute. ONNX Runtime would read
    // them into a tensor the task gets back.
    let external = tmp.path().join("external.onnx");
    models(&["external", external.to_str().unwrap(), "Cargo.toml"]);
    assert!(
        std::path::Path::new("Cargo.toml").exists(),
        "the test runs in host/"
    );
    let absolute = tmp.path().join("absolute.onnx");
    let secret = tmp.path().join("secret.bin");
    std::fs::write(&secret, b"SECRETSECRETSECR").unwrap();
    models(&[
        "external",
        absolute.to_str().unwrap(),
        secret.to_str().unwrap(),
    ]);
    // The same through a sparse initializer's values, and ONNX Runtime's in-memory marker
    // (its offset read as a pointer), dense and sparse: read by releases before 1.27, which
    // the worker does not load (`an_onnx_runtime_older_than_the_oldest_supported_is_refused`).
    let sparse = tmp.path().join("sparse.onnx");
    models(&[
        "external",
        sparse.to_str().unwrap(),
        secret.to_str().unwrap(),
        "sparse",
    ]);
    let address = tmp.path().join("address.onnx");
    models(&["external", address.to_str().unwrap(), "address:65536"]);
    let sparse_address = tmp.path().join("sparse_address.onnx");
    models(&[
        "external",
        sparse_address.to_str().unwrap(),
        "address:65536",
        "sparse",
    ]);
    let (store, _dir) = store_with(&[
        ("m/sparse", &sparse),
        ("m/address", &address),
        ("m/sparse_address", &sparse_address),
        ("m/external", &external),
        ("m/absolute", &absolute),
        ("m/good", &good),
        ("m/truncated", &truncated),
        ("m/garbage", &garbage),
        ("m/empty", &empty),
        ("m/bogus", &bogus),
    ])
    .await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    for bad in [
        "truncated",
        "garbage",
        "empty",
        "bogus",
        "external",
        "absolute",
        "sparse",
        "address",
        "sparse_address",
    ] {
        let key = format!("m/{bad}");
        let r = done(
            run_job(
                &store,
                &rt,
                &m,
                bad,
                r#"{"dims":[1,4]}"#,
                &[("model", key.as_str())],
            )
            .await,
        );
        assert_eq!(r["stage"], "load", "{bad}: {r}"); // never "done" with the file's bytes
        assert_eq!(r["kind"], "InvalidEncoding", "{bad}: {r}");
    }
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "ok",
            r#"{"dims":[1,4]}"#,
            &[("model", "m/good")],
        )
        .await,
    );
    assert_eq!(r["stage"], "done", "{r}");
    // No graph of a failed load is held.
    let s = rt.nn().stats();
    assert_eq!((s.built, s.cached), (1, 1), "{s:?}");
}

/// Models nesting subgraphs (`If` branches): ONNX Runtime recurses over them as it loads a
/// model, on the job's inference thread. One nested about as deep as its parser takes loads
/// (and the run after it reuses the job's thread); one nested far deeper (a hostile file) is
/// an error for the task, and the worker runs the next job.
#[tokio::test]
async fn deeply_nested_models_load_or_fail_on_the_inference_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("deep.onnx");
    models(&["nested", deep.to_str().unwrap(), "30"]);
    let hostile = tmp.path().join("hostile.onnx");
    models(&["nested", hostile.to_str().unwrap(), "1000"]);
    let good = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) = store_with(&[
        ("m/deep", &deep),
        ("m/hostile", &hostile),
        ("m/good", &good),
    ])
    .await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    let r = done(run_job(&store, &rt, &m, "deep", "{}", &[("model", "m/deep")]).await);
    assert_eq!(r["stage"], "done", "{r}");
    let r = done(run_job(&store, &rt, &m, "hostile", "{}", &[("model", "m/hostile")]).await);
    assert_eq!(r["stage"], "load", "{r}");
    assert_eq!(r["kind"], "InvalidEncoding", "{r}");
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "after",
            r#"{"dims":[1,4]}"#,
            &[("model", "m/good")],
        )
        .await,
    );
    assert_eq!(r["stage"], "done", "{r}");
    assert_eq!(rt.nn().stats().built, 2, "the deep model and the good one");
}

fn bytes_replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = out.windows(from.len()).position(|w| w == from).unwrap();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[tokio::test]
async fn hostile_tensors_are_errors_for_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) = store_with(&[("m/a", &model)]).await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    let max = u32::MAX;
    let cases = [
        ("dims", r#"{"dims":[2,5]}"#.to_owned()),
        ("rank", r#"{"dims":[8]}"#.to_owned()),
        (
            "type",
            r#"{"dims":[2,4],"type":"i64","data_bytes":64}"#.to_owned(),
        ),
        ("name", r#"{"dims":[2,4],"input":"nope"}"#.to_owned()),
        ("index", r#"{"dims":[2,4],"input":"7"}"#.to_owned()),
        (
            "zero-and-huge",
            format!(r#"{{"dims":[0,{max}],"data_bytes":0}}"#),
        ),
    ];
    for (what, input) in cases {
        let r = done(run_job(&store, &rt, &m, what, &input, &[("model", "m/a")]).await);
        assert_eq!(r["stage"], "compute", "{what}: {r}");
        assert_eq!(r["kind"], "InvalidArgument", "{what}: {r}");
    }
    // No tensor at all: data of another length than its dimensions need, or more dimensions
    // than any model takes (each would be host memory charged nothing). The constructor
    // cannot fail: it traps.
    let deep = vec![1u32; 33];
    let traps = [
        ("short", r#"{"dims":[2,4],"data_bytes":31}"#.to_owned()),
        ("long", r#"{"dims":[2,4],"data_bytes":36}"#.to_owned()),
        (
            "overflow",
            format!(r#"{{"dims":[{max},{max},{max},4],"data_bytes":16}}"#),
        ),
        (
            "too-deep",
            serde_json::json!({"dims": deep, "data_bytes": 4}).to_string(),
        ),
    ];
    for (what, input) in traps {
        let end = run_job(&store, &rt, &m, what, &input, &[("model", "m/a")]).await;
        let JobEnd::Trapped { message, .. } = end else {
            panic!("{what}: {end:?}")
        };
        assert!(
            message.contains("wasi-nn tensor: a tensor"),
            "{what}: {message}"
        );
    }
    // Names the task passes are quoted short in the errors it gets (each is kept until the
    // task drops it): a graph input, a model's input.
    let long = "n".repeat(1 << 20);
    for (what, input, stage, kind) in [
        (
            "long-input",
            serde_json::json!({"dims": [2, 4], "input": long}),
            "compute",
            "InvalidArgument",
        ),
        (
            "long-model",
            serde_json::json!({"model": long}),
            "load",
            "NotFound",
        ),
    ] {
        let r = done(
            run_job(
                &store,
                &rt,
                &m,
                what,
                &input.to_string(),
                &[("model", "m/a")],
            )
            .await,
        );
        assert_eq!(
            (r["stage"].as_str(), r["kind"].as_str()),
            (Some(stage), Some(kind)),
            "{what}"
        );
        let message = r["message"].as_str().unwrap();
        assert!(
            message.len() < 512 && message.contains("`nnn"),
            "{what}: {} bytes",
            message.len()
        );
    }
    // The index of an input names it as well as its name.
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "by-index",
            r#"{"dims":[2,4],"input":"0"}"#,
            &[("model", "m/a")],
        )
        .await,
    );
    assert_eq!(r["stage"], "done", "{r}");
    // Tensors are released with their jobs: only the cached graph is held.
    let s = rt.nn().stats();
    assert_eq!(s.cached, 1);
    assert_eq!(
        s.worker_bytes,
        2 * std::fs::metadata(&model).unwrap().len(),
        "{s:?}"
    );
}

#[tokio::test]
async fn host_memory_is_capped_per_job_and_per_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.onnx");
    models(&["big", big.to_str().unwrap(), "3"]); // ~3 MiB: ~6 MiB loaded
    let wide = tmp.path().join("wide.onnx");
    models(&["wide", wide.to_str().unwrap(), "4", "262144"]); // 4 MiB weights, 1 MiB a row out
    let small = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) =
        store_with(&[("m/big", &big), ("m/wide", &wide), ("m/small", &small)]).await;
    let mib = 1u64 << 20;

    // The job's cap: a graph past it, outputs past it, a tensor past it (a trap: the WIT
    // constructor cannot fail).
    let rt = runtime(NnConfig {
        job_memory: 12 * mib,
        ..with_ort()
    });
    let m = module(&rt, "nn_probe").await;
    let r = done(run_job(&store, &rt, &m, "g", "{}", &[("model", "m/small")]).await);
    assert_eq!(r["stage"], "done", "{r}");
    let rt_small = runtime(NnConfig {
        job_memory: 4 * mib,
        ..with_ort()
    });
    let m_small = module(&rt_small, "nn_probe").await;
    let r = done(
        run_job(
            &store,
            &rt_small,
            &m_small,
            "big",
            "{}",
            &[("model", "m/big")],
        )
        .await,
    );
    assert_eq!(
        (r["stage"].as_str(), r["kind"].as_str()),
        (Some("load"), Some("TooLarge")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("job"), "{r}");
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "out",
            r#"{"dims":[8,4]}"#,
            &[("model", "m/wide")],
        )
        .await,
    );
    assert_eq!(
        (r["stage"].as_str(), r["kind"].as_str()),
        (Some("compute"), Some("TooLarge")),
        "{r}"
    );
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "fits",
            r#"{"dims":[1,4]}"#,
            &[("model", "m/wide")],
        )
        .await,
    );
    assert_eq!(
        r["outputs"]["y"]["dims"],
        serde_json::json!([1, 262144]),
        "{r}"
    );
    // Two rows out fit the job's cap (~8 MiB of graph, 2 MiB of output), but not with the
    // copy of them the task's read makes: that copy is charged too (a trap: the WIT function
    // cannot fail).
    let end = run_job(
        &store,
        &rt,
        &m,
        "copy",
        r#"{"dims":[2,4]}"#,
        &[("model", "m/wide")],
    )
    .await;
    let JobEnd::Trapped { message, .. } = end else {
        panic!("{end:?}")
    };
    assert!(
        message.contains("wasi-nn tensor data") && message.contains("job"),
        "{message}"
    );
    let end = run_job(
        &store,
        &rt,
        &m,
        "tensor",
        r#"{"dims":[4,1048576]}"#,
        &[("model", "m/small")],
    )
    .await;
    let JobEnd::Trapped { message, .. } = end else {
        panic!("{end:?}")
    };
    assert!(
        message.contains("wasi-nn tensor") && message.contains("cap"),
        "{message}"
    );

    // A graph stays charged to the job while an execution context of it lives, its graph
    // resource dropped or not: two of the big graph (~6 MiB each) are past a 10 MiB cap
    // either way, and one fits.
    let rt = runtime(NnConfig {
        job_memory: 10 * mib,
        ..with_ort()
    });
    let m = module(&rt, "nn_probe").await;
    let big = [("model", "m/big")];
    let r = done(run_job(&store, &rt, &m, "one", "{}", &big).await);
    assert_eq!(r["stage"], "done", "{r}");
    for (job, input) in [
        ("graph", r#"{"first":"model"}"#),
        ("context", r#"{"first":"model","first_context":true}"#),
    ] {
        let r = done(run_job(&store, &rt, &m, job, input, &big).await);
        assert_eq!(
            (r["stage"].as_str(), r["kind"].as_str()),
            (Some("load"), Some("TooLarge")),
            "{job}: {r}"
        );
        assert!(r["message"].as_str().unwrap().contains("job"), "{job}: {r}");
    }

    // The worker's cap, shared by its jobs: a graph past what is left is refused, with a
    // message that says it is the worker's.
    let rt = runtime(NnConfig {
        job_memory: 64 * mib,
        worker_memory: 4 * mib,
        ..with_ort()
    });
    let m = module(&rt, "nn_probe").await;
    let r = done(run_job(&store, &rt, &m, "w", "{}", &[("model", "m/big")]).await);
    assert_eq!(r["kind"], "TooLarge", "{r}");
    assert!(r["message"].as_str().unwrap().contains("worker"), "{r}");
    // What the failed jobs held came back.
    assert_eq!(rt.nn().stats().worker_bytes, 0);
}

/// The wall-clock limit stops an inference mid-run: the run ends at its limit as a timeout,
/// and ONNX Runtime stops computing; so does a cancelled run (the worker shutting down). The
/// graph's session is shared through the cache and runs one inference at a time, so a
/// one-record inference right after waits for nothing: its time in ONNX Runtime (the job's
/// host compute, which counts from the call, so it holds no start-up of the run, and holds
/// the wait for the session that a stopped inference still runs in) is a small
/// part of a whole inference, where it would be most of one behind an inference that ran on.
///
/// Timings taken at different moments under a changing load: a whole inference is timed
/// twice (before the stopped runs and after them) and the faster is the yardstick, so that a
/// load that eases between the timings cannot make the limit outlast a whole inference, and
/// a load that grows cannot make a prompt next inference look slow (it is compared with
/// half of the faster whole one; a 1/256 inference needs a load far past that to reach it).
#[tokio::test]
async fn the_wall_clock_limit_stops_an_inference_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("deep.onnx");
    // 150 x ([256,1024] x [1024,1024]): ~0.6 s on a quiet machine of this kind (60 layers took
    // 0.22 s on a fast one, under the 300 ms this test needs).
    models(&["deep", deep.to_str().unwrap(), "1024", "150"]);
    let (store, _dir) = store_with(&[("m/deep", &deep)]).await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    let model = [("model", "m/deep")];
    let input = r#"{"dims":[256,1024]}"#;
    let one_record = r#"{"dims":[1,1024]}"#;
    // Load (and cache) the graph, then time one whole inference, twice.
    assert_eq!(
        done(run_job(&store, &rt, &m, "load", "{}", &model).await)["stage"],
        "done"
    );
    let whole = |job: &'static str| {
        let (store, rt, m) = (store.clone(), rt.clone(), m.clone());
        async move {
            let started = Instant::now();
            let r = done(run_job(&store, &rt, &m, job, input, &model).await);
            assert_eq!(r["stage"], "done", "{r}");
            started.elapsed()
        }
    };
    let full = whole("full").await;
    let full_again = whole("full-again").await;
    let full = full.min(full_again);
    assert!(
        full >= Duration::from_millis(300),
        "an inference long enough to stop midway: {full:?}"
    );

    let limited = executor_on(
        store.clone(),
        rt.clone(),
        JobLimits {
            timeout: Some(full / 5),
            ..JobLimits::default()
        },
        FileLimits::default(),
    );
    let started = Instant::now();
    let end = run(
        &limited,
        &m,
        "cut",
        input,
        &model,
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(
            end,
            JobEnd::Trapped {
                kind: TrapKind::Timeout,
                ..
            }
        ),
        "{end:?}"
    );
    let cut = started.elapsed();
    let r = done(run_job(&store, &rt, &m, "after", one_record, &model).await);
    assert_eq!(r["stage"], "done", "{r}");
    let after = host_compute(&store, "after").await;

    // Cancelled a fifth of the way into a whole inference (the stimulus is a timer; what is
    // asserted is that the run ends as cancelled and the inference stops).
    let cancel = CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(full / 5).await;
            cancel.cancel();
        })
    };
    let unlimited = executor_on(
        store.clone(),
        rt.clone(),
        JobLimits::default(),
        FileLimits::default(),
    );
    let started = Instant::now();
    let end = run(
        &unlimited,
        &m,
        "cancelled",
        input,
        &model,
        live_lease(),
        cancel,
    )
    .await;
    let cancelled = started.elapsed();
    stopper.await.unwrap();
    assert!(matches!(end, JobEnd::Cancelled), "{end:?}");
    let r = done(run_job(&store, &rt, &m, "after-cancel", one_record, &model).await);
    assert_eq!(r["stage"], "done", "{r}");
    let after_cancel = host_compute(&store, "after-cancel").await;

    // The yardstick: the faster of the whole inferences timed before and after.
    let full = full.min(whole("full-last").await);
    // The figure the checks read counts inference at all (else they would check nothing).
    let whole_compute = host_compute(&store, "full").await;
    assert!(
        whole_compute > Duration::ZERO,
        "a whole inference counts no host compute"
    );
    eprintln!(
        "a whole inference {full:?} ({whole_compute:?} in ONNX Runtime); after the cut {after:?} (cut run {cut:?}), after the \
         cancel {after_cancel:?} (cancelled run {cancelled:?})"
    );
    // One record: 1/256 of the compute. Behind an inference that ran on, it would wait for
    // the rest of it (about 4/5 of a whole one).
    for (after, stopped) in [(after, cut), (after_cancel, cancelled)] {
        assert!(
            after < full / 2,
            "the stopped inference went on: the next spent {after:?} in ONNX Runtime (a whole \
             one takes {full:?}, the stopped run took {stopped:?})"
        );
    }
}

/// The host compute (time in ONNX Runtime) of done job `job`'s runs, as the accounting note
/// of its result counts it (whole milliseconds).
async fn host_compute(store: &taskhost::store::any::AnyStore, job: &str) -> Duration {
    use taskhost::store::ObjectStore;
    let result = store
        .get(&taskhost::keys::result(&job.parse().unwrap()))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{job}: no result"));
    let note = result
        .note
        .unwrap_or_else(|| panic!("{job}: no accounting note"));
    let usage: taskhost::checkpoint::Usage = serde_json::from_str(&note).unwrap();
    Duration::from_millis(usage.host_compute_ms)
}
