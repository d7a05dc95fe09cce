//! How models and ONNX Runtime come to be loaded: a model named by its sha256 that the worker
//! has loaded is not read again; ONNX Runtime itself loads at the first graph load, not at
//! the worker's start; a library that cannot be ONNX Runtime is found at start, and one that
//! does not load is a task error at its first graph load.

use sha2::Digest;
use taskhost::keys;
use taskhost::nn::NnConfig;
use taskhost::store::{ObjectStore, Precondition};

use super::inference::{done, module, run_job, store_with};
use super::{classifier, old_ort_lib, ort_lib, runtime, with_ort};
use crate::support;

/// The error kind of a probe whose graph load failed.
fn load_error(r: &serde_json::Value) -> Option<&str> {
    (r["stage"] == "load").then(|| r["kind"].as_str())?
}

/// A job whose model input is content-addressed (`inputs/<sha256>`, as `submit --input`
/// stores it) and loaded on the worker gets the graph without the object being read: the
/// object deleted after the first job, the second still loads it. Bytes that are not what
/// their key names are an error for the task.
#[tokio::test]
async fn a_loaded_model_named_by_its_sha256_is_not_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let a = classifier(tmp.path(), 4, 3, 7);
    let b = classifier(tmp.path(), 4, 3, 8);
    let key = keys::input(&hex::encode(sha2::Sha256::digest(
        std::fs::read(&a).unwrap(),
    )));
    let (store, _dir) = store_with(&[(&key, &a), ("m/a", &a)]).await;
    let rt = runtime(with_ort());
    let m = module(&rt, "nn_probe").await;
    let input = r#"{"dims":[2,4]}"#;
    let first = done(run_job(&store, &rt, &m, "s1", input, &[("model", &key)]).await);
    assert_eq!(first["stage"], "done", "{first}");

    store.delete(&key).await.unwrap();
    let second = done(run_job(&store, &rt, &m, "s2", input, &[("model", &key)]).await);
    assert_eq!(
        second, first,
        "the cached graph, not read from the deleted object"
    );
    let s = rt.nn().stats();
    assert_eq!((s.built, s.cache_hits), (1, 1), "{s:?}");
    // A plain key is read (and hashed) every time: deleted, it is not found.
    store.delete("m/a").await.unwrap();
    let r = done(run_job(&store, &rt, &m, "s3", input, &[("model", "m/a")]).await);
    assert_eq!(load_error(&r), Some("NotFound"), "{r}");

    // Another model's bytes under the key: on a worker that has not loaded the model the key
    // names, they are read, hashed and refused.
    store
        .put(&key, std::fs::read(&b).unwrap(), Precondition::None)
        .await
        .unwrap();
    let fresh = runtime(with_ort());
    let m = module(&fresh, "nn_probe").await;
    let r = done(run_job(&store, &fresh, &m, "s4", input, &[("model", &key)]).await);
    assert_eq!(load_error(&r), Some("InvalidArgument"), "{r}");
    assert!(r["message"].as_str().unwrap().contains("sha256"), "{r}");
    assert_eq!(fresh.nn().stats().built, 0);
}

/// A worker with ONNX Runtime configured does not load it until a task loads a graph: tasks
/// without inference never do.
#[tokio::test]
async fn onnx_runtime_loads_at_the_first_graph_load() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) = store_with(&[("m/a", &model)]).await;
    let rt = runtime(with_ort());
    assert!(rt.nn().available() && !rt.nn().loaded());
    let step = module(&rt, "step_counter").await;
    let r = done(run_job(&store, &rt, &step, "steps", r#"{"steps":3}"#, &[]).await);
    assert_eq!(r["sum"], 6, "{r}");
    assert!(!rt.nn().loaded(), "loaded by a task that runs no inference");
    let m = module(&rt, "nn_probe").await;
    let r = done(
        run_job(
            &store,
            &rt,
            &m,
            "nn",
            r#"{"dims":[1,4]}"#,
            &[("model", "m/a")],
        )
        .await,
    );
    assert_eq!(r["stage"], "done", "{r}");
    assert!(rt.nn().loaded());
}

/// `ORT_DYLIB_PATH` naming something that cannot be ONNX Runtime's library is found when the
/// worker starts (no inference served; the task's load gets `unsupported-operation`); one
/// that passes that check but does not load fails the first graph load the same way, and
/// every one after it. Other tasks run throughout.
#[tokio::test]
async fn a_wrong_onnx_runtime_library_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 4, 3, 1);
    let (store, _dir) = store_with(&[("m/a", &model)]).await;
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a library").unwrap();
    // An ELF file naming the entry point, but no library: it passes the start-up check.
    let fake = tmp.path().join("libonnxruntime.so.0");
    std::fs::write(
        &fake,
        b"\x7fELF\x02\x01\x01\0 OrtGetApiBase\0 and nothing else",
    )
    .unwrap();
    for (i, (lib, found_at_start)) in [
        (text, true),
        (std::path::PathBuf::from("/bin/sh"), true),
        (fake, false),
    ]
    .into_iter()
    .enumerate()
    {
        let rt = runtime(NnConfig {
            ort_dylib: Some(lib.clone()),
            ..NnConfig::default()
        });
        assert_eq!(rt.nn().available(), !found_at_start, "{}", lib.display());
        let m = module(&rt, "nn_probe").await;
        for job in ["n1", "n2"] {
            let job = format!("{job}-{i}");
            let r = done(run_job(&store, &rt, &m, &job, "{}", &[("model", "m/a")]).await);
            assert_eq!(load_error(&r), Some("UnsupportedOperation"), "{r}");
            assert!(
                r["message"].as_str().unwrap().contains("ONNX Runtime"),
                "{r}"
            );
        }
        assert!(!rt.nn().available() && !rt.nn().loaded());
        let step = module(&rt, "step_counter").await;
        let job = format!("steps-{i}");
        let r = done(run_job(&store, &rt, &step, &job, r#"{"steps":3}"#, &[]).await);
        assert_eq!(r["sum"], 6, "{r}");
    }
}

/// An ONNX Runtime older than the oldest the worker loads (`nn::engine::MIN_VERSION`, 1.27:
/// older releases let a model read the worker's files and memory through its external data)
/// is refused at the first graph load, before ONNX Runtime is started: the task's load gets
/// `unsupported-operation` and the log says why. The same job with the pinned release runs:
/// the refusal is the version's. Each in a process of its own (`taskhost run`): ONNX Runtime
/// is loaded once per process.
#[tokio::test]
async fn an_onnx_runtime_older_than_the_oldest_supported_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = classifier(tmp.path(), 4, 3, 1);
    let (_store, dir) = store_with(&[("m/a", &model)]).await;
    let wasm = support::guests::wasm("nn_probe");
    let run = |lib: &std::path::Path, job: &str| {
        let out = std::process::Command::new(support::cli::BIN)
            .arg("run")
            .arg(&wasm)
            .args(["--job-id", job, "--input"])
            .arg(r#"{"inputs":{"model":"m/a"},"dims":[1,4]}"#)
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("ORT_DYLIB_PATH", lib)
            .env("TASKHOST_CACHE_DIR", tmp.path().join("cache"))
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        let doc: serde_json::Value = serde_json::from_str(&last).expect(&stdout);
        (doc, format!("{stdout}{stderr}"))
    };
    let old = old_ort_lib();
    let (r, log) = run(&old, "old");
    assert_eq!(load_error(&r), Some("UnsupportedOperation"), "{r}");
    assert!(
        log.contains("older than 1.27") && log.contains("external data"),
        "{log}"
    );
    let (r, _) = run(&ort_lib(), "pinned");
    assert_eq!(r["stage"], "done", "{r}");
}
