//! What the host copies or reads for a task is charged before it is made: a model read by
//! name, before a byte of it is read; a tensor's data handed back, refused past what the
//! task's memory could take; a tensor's dimensions, refused past a small rank.

use super::inference::{done, module, run_job, store_with};
use super::{classifier, models, runtime, with_ort};

use crate::support::exec::{executor_on, live_lease, run};
use taskhost::exec::JobEnd;
use taskhost::files::FileLimits;
use taskhost::nn::NnConfig;
use taskhost::runtime::JobLimits;
use tokio_util::sync::CancellationToken;

/// A model read by name is charged to the job and the worker for its size before a byte of it
/// is read: a job holding one graph, whose cap leaves no room for a second, gets `too-large`
/// for it without the host reading the object (the run's input bytes count the first model
/// only). A tensor's data handed back is refused past the task's memory limit (it could never
/// take it) before the host copies it.
#[tokio::test]
async fn models_and_copies_are_charged_before_the_host_makes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.onnx");
    models(&["big", big.to_str().unwrap(), "3"]); // ~3 MiB
    let wide = tmp.path().join("wide.onnx");
    models(&["wide", wide.to_str().unwrap(), "4", "262144"]); // 1 MiB a row out
    let small = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) =
        store_with(&[("m/big", &big), ("m/wide", &wide), ("m/small", &small)]).await;
    let big_size = std::fs::metadata(&big).unwrap().len();
    let small_size = std::fs::metadata(&small).unwrap().len();
    let rt = runtime(NnConfig {
        job_memory: 2 * big_size,
        ..with_ort()
    });
    let m = module(&rt, "nn_probe").await;
    let read = |rt: &taskhost::runtime::Runtime| {
        let text = rt.metrics().encode();
        text.lines()
            .find_map(|l| l.strip_prefix("taskhost_input_read_bytes_total "))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    // Alone, the big model fits the job's cap: it loads.
    let r = done(run_job(&store, &rt, &m, "alone", "{}", &[("model", "m/big")]).await);
    assert_eq!(r["stage"], "done", "{r}");
    assert_eq!(read(&rt), big_size);
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "second",
            r#"{"first":"small"}"#,
            &[("model", "m/big"), ("small", "m/small")],
        )
        .await,
    );
    assert_eq!(
        (r["stage"].as_str(), r["kind"].as_str()),
        (Some("load"), Some("TooLarge")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("job"), "{r}");
    assert_eq!(
        read(&rt),
        big_size + small_size,
        "the big model not read again"
    );

    // 80 rows out: 80 MiB, more than a task of 64 MiB could take.
    let rt = runtime(with_ort());
    let limited = executor_on(
        store.clone(),
        rt.clone(),
        JobLimits {
            memory_bytes: 64 << 20,
            ..JobLimits::default()
        },
        FileLimits::default(),
    );
    let end = run(
        &limited,
        &module(&rt, "nn_probe").await,
        "huge-out",
        r#"{"dims":[80,4]}"#,
        &[("model", "m/wide")],
        live_lease(),
        CancellationToken::new(),
    )
    .await;
    let JobEnd::Trapped { message, .. } = end else {
        panic!("{end:?}")
    };
    assert!(
        message.contains("wasi-nn tensor data") && message.contains("memory limit"),
        "{message}"
    );
    assert_eq!(
        rt.nn().stats().worker_bytes,
        2 * std::fs::metadata(&wide).unwrap().len()
    );
}

/// Tensors' dimensions are host memory too: a task making tensors of 4 M dimensions (16 MiB
/// each, one element) and keeping them would hold 16 MiB of the worker's per call, charged
/// nothing (24 calls: 384 MiB; 30 of 128 MiB calls: 4 GiB). The first such tensor traps it,
/// and the `taskhost run` process's peak resident memory stays at what one call needs.
#[test]
fn tensors_of_a_huge_rank_trap_and_keep_host_memory_bounded() {
    const DIMS_BYTES: u64 = 16 << 20;
    const TENSORS: u64 = 24;
    // The process's own (engine, compiled module, runtime: 64 MiB), the guest's dimensions,
    // the call's copy of them, and as much again of slack.
    const HELD: u64 = (64 << 20) + 3 * DIMS_BYTES;
    // Halfway from that to a host that kept every tensor's dimensions.
    const BOUND: u64 = HELD + TENSORS * DIMS_BYTES / 2;
    let tmp = tempfile::tempdir().unwrap();
    let wasm = crate::support::guests::wasm("hostile");
    let (out, err) = (tmp.path().join("out"), tmp.path().join("err"));
    let input = serde_json::json!({
        "job_id": "dims",
        "mode": "nn_dims",
        "rank": DIMS_BYTES / 4,
        "tensors": TENSORS,
    });
    let child = std::process::Command::new(crate::support::cli::BIN)
        .args(["run", wasm.to_str().unwrap(), "--store"])
        .arg(tmp.path().join("store"))
        .args(["--memory-mb", "256", "--input", &input.to_string()])
        .env("TASKHOST_CACHE_DIR", tmp.path().join("cache"))
        // As huge_artifact_writes_keep_host_memory_bounded: freed buffers leave the RSS.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let (status, peak) = crate::support::cli::wait_with_peak_rss(child);
    eprintln!("peak RSS of taskhost run: {} MiB", peak >> 20);
    let stderr = std::fs::read_to_string(&err).unwrap();
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert_ne!(status, 0, "{stdout}");
    assert!(stderr.contains("at most 32 dimensions"), "{stderr}");
    assert!(
        peak < BOUND,
        "peak RSS {} MiB (bound {} MiB)",
        peak >> 20,
        BOUND >> 20
    );
}
