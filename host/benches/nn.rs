//! `cargo bench -p taskhost --bench nn`: model inference through wasi-nn in a task vs native
//! ONNX Runtime (the same library, model, batch and thread count), side by side in one run, and
//! the graph cache's effect on a second job with the same model.
//!
//! Needs the task modules (tests/build-guests.sh); installs ONNX Runtime itself
//! (tests/nn/setup-ort.sh) and builds its models with tests/nn/models.py.
//!
//! Per inference: the task runs `nn_probe` with `repeat` R and with 1 on a cached graph; the
//! difference over R - 1 is one inference as the task sees it (the tensor's copies into and out
//! of the host included). Native: the `ort` crate on the same session settings, R runs of the
//! same tensor; and ONNX Runtime's Python API (`models.py bench-batch`), for reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use taskhost::checkpoint::{Limits, OtherWork};
use taskhost::exec::{DEFAULT_MAX_CRASHES, Executor, JobBinding, JobEnd};
use taskhost::files::FileLimits;
use taskhost::ids::JobId;
use taskhost::nn::NnConfig;
use taskhost::runtime::{JobLimits, Prepared, Runtime, RuntimeConfig};
use taskhost::store::any::AnyStore;
use taskhost::store::dir::DirStore;
use taskhost::store::{ObjectStore, Precondition};
use tokio_util::sync::CancellationToken;

/// Inferences per timed task run, and interleaved rounds (the best of each is printed); the
/// size of the cache benchmark's model in MiB. `cargo test` (CI) runs benches once without
/// `--bench`: then a small smoke version of the same steps.
const FULL: (u32, usize, u32) = (200, 3, 64);
const SMOKE: (u32, usize, u32) = (10, 1, 4);
/// The benchmark's batch: BATCH records of FEATURES features, CLASSES classes.
const BATCH: u32 = 64;
const FEATURES: u32 = 512;
const CLASSES: u32 = 256;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("tests/nn/setup-ort.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

fn models(python: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(root().join("tests/nn/models.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wasm(name: &str) -> Vec<u8> {
    let dir = match std::env::var_os("GUEST_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => root().join("guest-tasks/target"),
    };
    let path = dir.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run tests/build-guests.sh", path.display()))
}

fn executor(store: &AnyStore, rt: &Runtime) -> Executor<AnyStore> {
    Executor {
        store: store.clone(),
        runtime: rt.clone(),
        worker_id: "bench".into(),
        limits: JobLimits::default(),
        checkpoint_limits: Limits::default(),
        file_limits: FileLimits::default(),
        max_crashes: DEFAULT_MAX_CRASHES,
    }
}

/// Runs nn_probe once as job `job` on the model under `key`; its wall time.
async fn probe(
    store: &AnyStore,
    rt: &Runtime,
    m: &Prepared,
    job: &str,
    key: &str,
    input: &str,
) -> Duration {
    let binding = JobBinding {
        work: taskhost::job::Work::of(&taskhost::ids::ModuleHash::of(b"nn_probe"), input),
        on_other_work: OtherWork::Refuse,
        inputs: BTreeMap::from([("model".parse().unwrap(), key.to_owned())]),
        deletion_cost: None,
    };
    let lease = taskhost::queue::lease::LeaseView::detached(Duration::from_secs(600)).0;
    let job: JobId = job.parse().unwrap();
    let started = Instant::now();
    let end = executor(store, rt)
        .execute(&job, m, input, &binding, lease, CancellationToken::new())
        .await;
    let took = started.elapsed();
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    assert!(result.contains("\"stage\":\"done\""), "{result}");
    took
}

/// One native inference: the `ort` crate on a session like the worker's (1 thread, CPU).
fn native_per_inference(lib: &str, model: &Path, repeat: u32) -> Duration {
    // ONNX Runtime allows one environment per process: the runtime's.
    let env = taskhost::nn::engine::environment(Path::new(lib)).unwrap();
    let mut session = ort::session::Session::builder(&env)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_file(model)
        .unwrap();
    let data: Vec<f32> = (0..BATCH * FEATURES).map(|i| i as f32 / 8.0).collect();
    let x = ort::value::Tensor::from_array((vec![BATCH as i64, FEATURES as i64], data)).unwrap();
    session.run(ort::inputs!["x" => &x]).unwrap();
    let started = Instant::now();
    for _ in 0..repeat {
        let out = session.run(ort::inputs!["x" => &x]).unwrap();
        let (_, scores) = out["probs"].try_extract_tensor::<f32>().unwrap();
        std::hint::black_box(scores.to_vec());
    }
    started.elapsed() / repeat
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (repeat, rounds, big_mib) = if full { FULL } else { SMOKE };
    let lib = script(&[]);
    let python = script(&["--python"]);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bench.onnx");
    models(
        &python,
        &[
            "classifier",
            model.to_str().unwrap(),
            &FEATURES.to_string(),
            &CLASSES.to_string(),
            "1",
        ],
    );
    let big = tmp.path().join("big.onnx");
    // A classifier of big_mib MiB of weights (4096 features x side classes, f32).
    let side = ((u64::from(big_mib) << 20) / 4 / 4096).to_string();
    models(
        &python,
        &["classifier", big.to_str().unwrap(), "4096", &side, "2"],
    );
    let store = AnyStore::Dir(DirStore::open(tmp.path().join("store")).unwrap());
    for (key, path) in [("m/bench", &model), ("m/big", &big)] {
        store
            .put(key, std::fs::read(path).unwrap(), Precondition::None)
            .await
            .unwrap();
    }
    let nn = NnConfig {
        ort_dylib: Some(PathBuf::from(&lib)),
        ..NnConfig::default()
    };
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: None,
        nn: nn.clone(),
        ..Default::default()
    })
    .unwrap();
    let m = rt.prepare(wasm("nn_probe"), None).await.unwrap();

    let once = format!(r#"{{"dims":[{BATCH},{FEATURES}],"repeat":1}}"#);
    let many = format!(r#"{{"dims":[{BATCH},{FEATURES}],"repeat":{repeat}}}"#);
    probe(&store, &rt, &m, "warm", "m/bench", &once).await;
    let (mut task, mut native, mut python_native) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let a = probe(&store, &rt, &m, &format!("one-{round}"), "m/bench", &once).await;
        let b = probe(&store, &rt, &m, &format!("many-{round}"), "m/bench", &many).await;
        task = task.min(b.saturating_sub(a) / (repeat - 1));
        native = native.min(native_per_inference(&lib, &model, repeat));
        let secs: f64 = models(
            &python,
            &[
                "bench-batch",
                model.to_str().unwrap(),
                &BATCH.to_string(),
                &FEATURES.to_string(),
                &repeat.to_string(),
            ],
        )
        .trim()
        .parse()
        .unwrap();
        python_native = python_native.min(Duration::from_secs_f64(secs / f64::from(repeat)));
    }
    println!(
        "inference of a [{BATCH}, {FEATURES}] batch, {FEATURES}x{CLASSES} classifier, 1 thread, best of {rounds}:"
    );
    println!("  native ort (Rust)      {:8.3} ms", ms(native));
    println!("  native onnxruntime (py){:8.3} ms", ms(python_native));
    println!(
        "  wasi-nn in a task      {:8.3} ms   ({:.2}x native Rust)",
        ms(task),
        task.as_secs_f64() / native.as_secs_f64()
    );

    // The graph cache: the first job with the big model loads it, the second finds it.
    let first = probe(&store, &rt, &m, "big-1", "m/big", "{}").await;
    let second = probe(&store, &rt, &m, "big-2", "m/big", "{}").await;
    let uncached = Runtime::new(RuntimeConfig {
        cache_dir: None,
        nn: NnConfig {
            cache_bytes: 0,
            ..nn
        },
        ..Default::default()
    })
    .unwrap();
    let mu = uncached.prepare(wasm("nn_probe"), None).await.unwrap();
    let no_cache = probe(&store, &uncached, &mu, "big-3", "m/big", "{}").await;
    println!("a job loading a {big_mib} MiB model (reading it from the store included):");
    println!("  first job (loads it)   {:8.1} ms", ms(first));
    println!("  second job (cached)    {:8.1} ms", ms(second));
    println!("  a job without a cache  {:8.1} ms", ms(no_cache));
}
