//! `cargo bench -p taskhost --bench nn`: model inference through wasi-nn in a task vs native
//! ONNX Runtime (the same library, model, batch and thread count), side by side in one run, and
//! the graph cache's effect on a second job with the same model.
//!
//! Two models: a tiny classifier (a [64, 512] batch, 512x256: ~0.16 ms, so its ratio is the
//! host's fixed cost per call) and a realistic MLP (a [128, 1024] batch through three
//! 1024-wide ReLU layers to 256 classes: ~9 ms, where that fixed cost is amortised). Then the
//! pieces of the fixed cost measured alone: the hop to the thread ONNX Runtime runs on and the
//! tensor copies.
//!
//! Needs the task modules (tests/build-guests.sh); installs ONNX Runtime itself
//! (tests/nn/setup-ort.sh) and builds its models with tests/nn/models.py.
//!
//! Per inference: the task runs `nn_probe` with `repeat` R and with 1 on a cached graph; the
//! difference over R - 1 is one inference as the task sees it (the tensor's copies into and out
//! of the host included). Native: the `ort` crate on the same session settings, R runs of the
//! same tensor; and ONNX Runtime's Python API (`models.py bench-batch`), for reference. Each
//! round runs the task and native Rust back to back, alternating which goes first; the
//! medians over the rounds are printed, in wall time and in the process's CPU time (user +
//! system of every thread: the runtime's, the inference thread's, ONNX Runtime's), with the
//! load average before and after.

/// The allocator the `taskhost` binary runs with (its main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::Digest;
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

#[path = "nn/measure.rs"]
mod measure;
use measure::{Cost, load_average, median, pieces, since, spread, start};

/// Inferences per timed task run of the tiny model, of the MLP; interleaved rounds of the
/// inference benchmark (medians printed); rounds of the cache benchmark; the size of its model
/// in MiB; calls per measured piece. `cargo test` (CI) runs benches once without `--bench`:
/// then a small smoke version of the same steps.
const FULL: Sizes = Sizes {
    repeat: 200,
    mlp_repeat: 30,
    rounds: 15,
    cache_rounds: 3,
    big_mib: 64,
    calls: 20_000,
};
const SMOKE: Sizes = Sizes {
    repeat: 10,
    mlp_repeat: 2,
    rounds: 1,
    cache_rounds: 1,
    big_mib: 4,
    calls: 100,
};
/// The tiny model: a BATCH x FEATURES batch, CLASSES classes.
const BATCH: u32 = 64;
const FEATURES: u32 = 512;
const CLASSES: u32 = 256;
/// The MLP: an MLP_BATCH x MLP_FEATURES batch, MLP_LAYERS hidden layers of MLP_WIDTH, CLASSES
/// classes.
const MLP_BATCH: u32 = 128;
const MLP_FEATURES: u32 = 1024;
const MLP_WIDTH: u32 = 1024;
const MLP_LAYERS: u32 = 3;

struct Sizes {
    repeat: u32,
    mlp_repeat: u32,
    rounds: usize,
    cache_rounds: usize,
    big_mib: u32,
    calls: u32,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The standard output of `program` running the project's script `script` with `args`
/// (panicking with its standard error when it fails).
fn stdout_of(program: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .arg(root().join(script))
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

fn script(args: &[&str]) -> String {
    stdout_of("bash", "tests/nn/setup-ort.sh", args)
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

fn models(python: &str, args: &[&str]) -> String {
    stdout_of(python, "tests/nn/models.py", args)
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

/// Runs nn_probe once as job `job` on the model under `key`; its cost.
async fn probe(
    store: &AnyStore,
    rt: &Runtime,
    m: &Prepared,
    job: &str,
    key: &str,
    input: &str,
) -> Cost {
    let binding = JobBinding {
        work: taskhost::job::Work::of(&taskhost::ids::ModuleHash::of(b"nn_probe"), input),
        on_other_work: OtherWork::Refuse,
        inputs: BTreeMap::from([("model".parse().unwrap(), key.to_owned())]),
        deletion_cost: None,
    };
    let lease = taskhost::queue::lease::LeaseView::detached(Duration::from_secs(600)).0;
    let job: JobId = job.parse().unwrap();
    let began = start();
    let end = executor(store, rt)
        .execute(&job, m, input, &binding, lease, CancellationToken::new())
        .await;
    let took = since(began);
    let JobEnd::Done { result, .. } = end else {
        panic!("{end:?}")
    };
    assert!(result.contains("\"stage\":\"done\""), "{result}");
    took
}

/// A native session like the worker's (1 thread, CPU) and the benchmark's batch.
struct Native {
    session: ort::session::Session,
    x: ort::value::Tensor<f32>,
}

impl Native {
    fn new(lib: &str, model: &Path, batch: u32, features: u32) -> Native {
        // ONNX Runtime allows one environment per process: the runtime's.
        let env = taskhost::nn::engine::environment(Path::new(lib)).unwrap();
        let session = ort::session::Session::builder(&env)
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .commit_from_file(model)
            .unwrap();
        let data: Vec<f32> = (0..batch * features).map(|i| i as f32 / 8.0).collect();
        let x =
            ort::value::Tensor::from_array((vec![batch as i64, features as i64], data)).unwrap();
        let mut n = Native { session, x };
        n.infer();
        n
    }

    /// One inference, its scores copied out (as the task gets them).
    fn infer(&mut self) {
        let out = self.session.run(ort::inputs!["x" => &self.x]).unwrap();
        let (_, scores) = out["probs"].try_extract_tensor::<f32>().unwrap();
        std::hint::black_box(scores.to_vec());
    }

    /// The cost of one of `repeat` inferences.
    fn per_inference(&mut self, repeat: u32) -> Cost {
        let began = start();
        for _ in 0..repeat {
            self.infer();
        }
        since(began).per(repeat)
    }
}

/// One model of the inference benchmark and what its rounds measured.
struct Case {
    name: &'static str,
    label: String,
    path: PathBuf,
    key: &'static str,
    batch: u32,
    features: u32,
    repeat: u32,
    native: Native,
    task: Vec<Cost>,
    nat: Vec<Cost>,
    python: Vec<Duration>,
}

impl Case {
    fn job(&self, repeat: u32) -> String {
        format!(
            r#"{{"dims":[{},{}],"repeat":{repeat}}}"#,
            self.batch, self.features
        )
    }

    /// One round: the task (a job of `repeat` inferences minus a job of one) and native Rust
    /// back to back, `task_first` or not; every fifth round ONNX Runtime's Python API too.
    async fn round(
        &mut self,
        (store, rt, m): (&AnyStore, &Runtime, &Prepared),
        python: &str,
        round: usize,
        task_first: bool,
    ) {
        let repeat = self.repeat;
        if !task_first {
            self.nat.push(self.native.per_inference(repeat));
        }
        let a = probe(
            store,
            rt,
            m,
            &format!("{}-one-{round}", self.name),
            self.key,
            &self.job(1),
        )
        .await;
        let b = probe(
            store,
            rt,
            m,
            &format!("{}-many-{round}", self.name),
            self.key,
            &self.job(repeat),
        )
        .await;
        self.task.push(b.minus(a).per(repeat - 1));
        if task_first {
            self.nat.push(self.native.per_inference(repeat));
        }
        if round.is_multiple_of(5) {
            let secs: f64 = models(
                python,
                &[
                    "bench-batch",
                    self.path.to_str().unwrap(),
                    &self.batch.to_string(),
                    &self.features.to_string(),
                    &repeat.to_string(),
                ],
            )
            .trim()
            .parse()
            .unwrap();
            self.python
                .push(Duration::from_secs_f64(secs / f64::from(repeat)));
        }
    }

    fn print(&self) {
        let wall = |v: &[Cost]| v.iter().map(|c| c.wall).collect::<Vec<_>>();
        let cpu = |v: &[Cost]| v.iter().map(|c| c.cpu).collect::<Vec<_>>();
        println!("{} ({} per run):", self.label, self.repeat);
        println!("                          wall                      CPU");
        println!(
            "  native ort (Rust)       {:<25} {}",
            spread(&wall(&self.nat), 3),
            spread(&cpu(&self.nat), 3)
        );
        println!(
            "  wasi-nn in a task       {:<25} {}",
            spread(&wall(&self.task), 3),
            spread(&cpu(&self.task), 3)
        );
        println!("  native onnxruntime (py) {}", spread(&self.python, 3));
        let ratio = |f: &dyn Fn(&[Cost]) -> Vec<Duration>| {
            median(f(&self.task)).as_secs_f64() / median(f(&self.nat)).as_secs_f64()
        };
        println!(
            "  task / native Rust: {:.2}x wall, {:.2}x CPU (medians)",
            ratio(&wall),
            ratio(&cpu)
        );
    }

    /// "overhead µs, ratio" in CPU time: the task's median minus native's, and their ratio.
    fn summary(&self) -> String {
        let cpu = |v: &[Cost]| median(v.iter().map(|c| c.cpu).collect());
        let (t, n) = (cpu(&self.task).as_secs_f64(), cpu(&self.nat).as_secs_f64());
        format!(
            "{:>8.3} {:>8.3} {:>+9.1} {:>7.3}x",
            n * 1e3,
            t * 1e3,
            (t - n) * 1e6,
            t / n
        )
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full { FULL } else { SMOKE };
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
    let mlp = tmp.path().join("mlp.onnx");
    models(
        &python,
        &[
            "mlp",
            mlp.to_str().unwrap(),
            &MLP_FEATURES.to_string(),
            &MLP_WIDTH.to_string(),
            &MLP_LAYERS.to_string(),
            &CLASSES.to_string(),
            "1",
        ],
    );
    let big = tmp.path().join("big.onnx");
    // A classifier of big_mib MiB of weights (4096 features x side classes, f32).
    let side = ((u64::from(sizes.big_mib) << 20) / 4 / 4096).to_string();
    models(
        &python,
        &["classifier", big.to_str().unwrap(), "4096", &side, "2"],
    );
    let store = AnyStore::Dir(DirStore::open(tmp.path().join("store")).unwrap());
    let big_bytes = std::fs::read(&big).unwrap();
    // The big model under a plain key and content-addressed, as `submit --input` stores it.
    let big_sha = taskhost::keys::input(&hex::encode(sha2::Sha256::digest(&big_bytes)));
    for (key, bytes) in [
        ("m/bench", std::fs::read(&model).unwrap()),
        ("m/mlp", std::fs::read(&mlp).unwrap()),
        ("m/big", big_bytes.clone()),
        (&big_sha, big_bytes),
    ] {
        store.put(key, bytes, Precondition::None).await.unwrap();
    }
    let nn = NnConfig {
        ort_dylib: Some(PathBuf::from(&lib)),
        ..NnConfig::default()
    };
    let runtime = |nn: NnConfig| {
        Runtime::new(RuntimeConfig {
            cache_dir: None,
            nn,
            ..Default::default()
        })
        .unwrap()
    };
    let rt = runtime(nn.clone());
    let m = rt.prepare(wasm("nn_probe"), None).await.unwrap();

    let mut cases = [
        (
            "tiny",
            format!("tiny: a [{BATCH}, {FEATURES}] batch, {FEATURES}x{CLASSES} classifier"),
            model,
            "m/bench",
            BATCH,
            FEATURES,
            sizes.repeat,
        ),
        (
            "MLP",
            format!(
                "MLP: a [{MLP_BATCH}, {MLP_FEATURES}] batch, {MLP_LAYERS} x {MLP_WIDTH} ReLU \
                 layers, {CLASSES} classes"
            ),
            mlp,
            "m/mlp",
            MLP_BATCH,
            MLP_FEATURES,
            sizes.mlp_repeat,
        ),
    ]
    .map(|(name, label, path, key, batch, features, repeat)| Case {
        name,
        native: Native::new(&lib, &path, batch, features),
        label,
        path,
        key,
        batch,
        features,
        repeat,
        task: Vec::new(),
        nat: Vec::new(),
        python: Vec::new(),
    });
    for case in &cases {
        // Loads and caches the graph.
        probe(
            &store,
            &rt,
            &m,
            &format!("warm-{}", case.name),
            case.key,
            &case.job(1),
        )
        .await;
    }
    let load_before = load_average();
    for round in 0..sizes.rounds {
        for case in &mut cases {
            case.round((&store, &rt, &m), &python, round, round.is_multiple_of(2))
                .await;
        }
    }
    let load_after = load_average();
    println!(
        "inference, 1 thread, median (min to max) of {} alternating rounds, ms per inference; \
         load average {load_before} before, {load_after} after:",
        sizes.rounds
    );
    for case in &cases {
        case.print();
    }
    println!("both models, CPU time, medians:   native ms  task ms  overhead µs  task/native");
    for case in &cases {
        println!("  {:<30} {}", case.name, case.summary());
    }
    pieces(sizes.calls).await;

    // The graph cache: on a fresh worker, the first job with the big model reads and loads
    // it; a second job naming it by its sha256 (`inputs/<sha256>`) finds it without reading
    // it; one naming it by a plain key reads it to hash it, then finds it. Without a cache
    // every job reads and loads it.
    let (mut first, mut by_sha, mut by_key, mut no_cache) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let load_before = load_average();
    for round in 0..sizes.cache_rounds {
        let rt = runtime(nn.clone());
        let m = rt.prepare(wasm("nn_probe"), None).await.unwrap();
        let job = |n: &str| format!("big-{n}-{round}");
        first.push(
            probe(&store, &rt, &m, &job("first"), &big_sha, "{}")
                .await
                .wall,
        );
        by_sha.push(
            probe(&store, &rt, &m, &job("sha"), &big_sha, "{}")
                .await
                .wall,
        );
        by_key.push(
            probe(&store, &rt, &m, &job("key"), "m/big", "{}")
                .await
                .wall,
        );
        let uncached = runtime(NnConfig {
            cache_bytes: 0,
            ..nn.clone()
        });
        let mu = uncached.prepare(wasm("nn_probe"), None).await.unwrap();
        no_cache.push(
            probe(&store, &uncached, &mu, &job("none"), &big_sha, "{}")
                .await
                .wall,
        );
    }
    println!(
        "a job loading a {} MiB model (reading it from the store included), median (min \
         to max) of {} fresh workers, ms; load average {load_before} before, {} after:",
        sizes.big_mib,
        sizes.cache_rounds,
        load_average()
    );
    println!(
        "  first job (reads and loads it)        {}",
        spread(&first, 1)
    );
    println!(
        "  second job, by sha256 (not read)      {}",
        spread(&by_sha, 1)
    );
    println!(
        "  second job, plain key (read, hashed)  {}",
        spread(&by_key, 1)
    );
    println!(
        "  a job without a cache                 {}",
        spread(&no_cache, 1)
    );
}
