//! In process, on the directory store: predictions against native ONNX Runtime, the graph
//! cache, and a worker without ONNX Runtime.

use crate::support;
use support::exec::{executor, live_lease, run};

use taskhost::exec::JobEnd;
use taskhost::files::FileLimits;
use taskhost::ids::JobId;
use taskhost::keys;
use taskhost::nn::NnConfig;
use taskhost::runtime::{Prepared, Runtime};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

use super::{classifier, native, parse_predictions, records, runtime, with_ort};

pub async fn module(rt: &Runtime, name: &str) -> Prepared {
    rt.prepare(support::guests::bytes(name), None)
        .await
        .unwrap()
}

/// A directory store (and the directory) with the files `(key, path)` put in it.
pub async fn store_with(files: &[(&str, &std::path::Path)]) -> (AnyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::Dir(DirStore::open(dir.path().join("store")).unwrap());
    for (key, path) in files {
        store
            .put(key, std::fs::read(path).unwrap(), Precondition::None)
            .await
            .unwrap();
    }
    (store, dir)
}

/// Runs `job` of `m` with `input` and inputs `(name, key)` to its end.
pub async fn run_job(
    store: &AnyStore,
    rt: &Runtime,
    m: &Prepared,
    job: &str,
    input: &str,
    inputs: &[(&str, &str)],
) -> JobEnd {
    let ex = executor(store.clone(), rt.clone(), FileLimits::default());
    run(
        &ex,
        m,
        job,
        input,
        inputs,
        live_lease(),
        CancellationToken::new(),
    )
    .await
}

/// The result of a job that must have finished.
pub fn done(end: JobEnd) -> serde_json::Value {
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    serde_json::from_str(&result).unwrap()
}

#[tokio::test]
async fn classify_predicts_what_onnx_runtime_predicts_natively() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 6, 4, 1);
    let recs = records(tmp.path(), 300, 6, 2);
    let (store, _dir) = store_with(&[("in/model", &model), ("in/records", &recs)]).await;
    let rt = runtime(with_ort());
    let m = module(&rt, "classify").await;
    let input = r#"{"job_id":"cls","batch":32}"#;
    let inputs = [("model", "in/model"), ("records", "in/records")];
    let r = done(run_job(&store, &rt, &m, "cls", input, &inputs).await);
    assert_eq!(r["records"], 300, "{r}");
    assert_eq!(r["batches"], 10, "{r}");
    assert_eq!(r["classes"], 4, "{r}");

    let key = keys::artifact(&"cls".parse::<JobId>().unwrap(), "predictions.csv");
    let text = store.get(&key).await.unwrap().expect("predictions.csv");
    let got = parse_predictions(std::str::from_utf8(&text.bytes).unwrap());
    let want = native(&model, &recs, 32);
    assert_eq!(got.len(), 300);
    // The same ONNX Runtime on the same batches: the same bits, not just close.
    assert_eq!(
        got, want,
        "the task's predictions differ from native ONNX Runtime's"
    );
    assert!(
        want.iter()
            .map(|(l, _)| *l)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "a classifier that predicts one class proves little"
    );
}

#[tokio::test]
async fn the_graph_cache_loads_a_model_once_for_many_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = classifier(tmp.path(), 4, 3, 7);
    let b = classifier(tmp.path(), 4, 3, 8);
    // The same model under two keys: the cache goes by content, not by name.
    let (store, _dir) = store_with(&[("m/a", &a), ("m/a2", &a), ("m/b", &b)]).await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    let input = r#"{"dims":[2,4]}"#;
    for (job, key) in [("j1", "m/a"), ("j2", "m/a2"), ("j3", "m/a")] {
        let r = done(run_job(&store, &rt, &m, job, input, &[("model", key)]).await);
        assert_eq!(r["stage"], "done", "{r}");
        assert_eq!(
            r["outputs"]["probs"]["dims"],
            serde_json::json!([2, 3]),
            "{r}"
        );
    }
    let s = rt.nn().stats();
    assert_eq!((s.built, s.cache_hits, s.cached), (1, 2, 1), "{s:?}");
    done(run_job(&store, &rt, &m, "j4", input, &[("model", "m/b")]).await);
    let s = rt.nn().stats();
    assert_eq!((s.built, s.cache_hits, s.cached), (2, 2, 2), "{s:?}");

    // Without a cache every job loads its model again.
    let rt = runtime(NnConfig {
        cache_bytes: 0,
        ..with_ort()
    });
    let m = module(&rt, "nn_probe").await;
    for job in ["k1", "k2"] {
        done(run_job(&store, &rt, &m, job, input, &[("model", "m/a")]).await);
    }
    let s = rt.nn().stats();
    assert_eq!(
        (s.built, s.cache_hits, s.cached, s.worker_bytes),
        (2, 0, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn without_onnx_runtime_a_load_fails_and_other_tasks_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) = store_with(&[("m/a", &model)]).await;
    let rt = runtime(NnConfig::default());
    assert!(!rt.nn().available());
    let m = module(&rt, "nn_probe").await;
    let r = done(run_job(&store, &rt, &m, "none", "{}", &[("model", "m/a")]).await);
    assert_eq!(r["stage"], "load", "{r}");
    assert_eq!(r["kind"], "UnsupportedOperation", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("ORT_DYLIB_PATH"),
        "{r}"
    );
    // A library that does not load: the same, and the worker runs on.
    let rt = runtime(NnConfig {
        ort_dylib: Some(tmp.path().join("no-such-lib.so")),
        ..NnConfig::default()
    });
    let m = module(&rt, "nn_probe").await;
    let r = done(run_job(&store, &rt, &m, "bad", "{}", &[("model", "m/a")]).await);
    assert_eq!(r["kind"], "UnsupportedOperation", "{r}");
    let step = module(&rt, "step_counter").await;
    let r = done(run_job(&store, &rt, &step, "steps", r#"{"steps":3}"#, &[]).await);
    assert_eq!(r["sum"], 6, "{r}");
}
