//! wasi-nn (issue 21) against the real ONNX Runtime (the `onnxruntime` wheel, installed by
//! tests/nn/setup-ort.sh) on the CPU provider, with models built by tests/nn/models.py: the
//! classify task's predictions equal ONNX Runtime's run natively in Python; the graph cache;
//! a worker without ONNX Runtime; malformed models and hostile tensors as task errors; the
//! job's and the worker's memory caps; the wall-clock limit stopping an inference; host
//! compute in the job's accounting; a worker SIGKILLed mid-job resumed with the same
//! predictions (`e2e`); a cached model named by its sha256 not read again, ONNX Runtime
//! loaded at the first graph load, a wrong library (`loading`); models and copies charged
//! before the host makes them (`charges`).

mod charges;
mod e2e;
mod inference;
mod limits;
mod loading;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use taskhost::nn::NnConfig;
use taskhost::runtime::{Runtime, RuntimeConfig};

/// ONNX Runtime's library and the venv's python, from `setup-ort.sh` (run once per process).
fn setup() -> &'static (PathBuf, PathBuf) {
    static SETUP: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SETUP.get_or_init(|| (setup_ort(&[]), setup_ort(&["--python"])))
}

/// The path `tests/nn/setup-ort.sh args` prints last.
fn setup_ort(args: &[&str]) -> PathBuf {
    let script = repo_root().join("tests/nn/setup-ort.sh");
    let text = stdout_of(Command::new("bash").arg(script).args(args));
    PathBuf::from(text.lines().last().unwrap().trim())
}

/// What `cmd` printed, once it exited 0 (else a panic with what it said on stderr).
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// ONNX Runtime's shared library.
pub fn ort_lib() -> PathBuf {
    setup().0.clone()
}

/// The library of an ONNX Runtime release older than the oldest the worker loads
/// (`setup-ort.sh --old`).
pub fn old_ort_lib() -> PathBuf {
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    OLD.get_or_init(|| setup_ort(&["--old"])).clone()
}

/// Runs tests/nn/models.py with `args`; returns its stdout.
pub fn models(args: &[&str]) -> String {
    let script = repo_root().join("tests/nn/models.py");
    stdout_of(Command::new(&setup().1).arg(script).args(args))
}

/// Wasi-nn settings with ONNX Runtime.
pub fn with_ort() -> NnConfig {
    NnConfig {
        ort_dylib: Some(ort_lib()),
        ..NnConfig::default()
    }
}

/// A runtime (no disk cache) with the wasi-nn settings `nn`.
pub fn runtime(nn: NnConfig) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        nn,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// A classifier of `features` features and `classes` classes written to `dir`; its path.
pub fn classifier(dir: &Path, features: u32, classes: u32, seed: u32) -> PathBuf {
    let path = dir.join(format!("classifier-{features}-{classes}-{seed}.onnx"));
    models(&[
        "classifier",
        path.to_str().unwrap(),
        &features.to_string(),
        &classes.to_string(),
        &seed.to_string(),
    ]);
    path
}

/// `n` records of `features` features written to `dir`; their path.
pub fn records(dir: &Path, n: u32, features: u32, seed: u32) -> PathBuf {
    let path = dir.join(format!("records-{n}-{features}-{seed}.csv"));
    models(&[
        "records",
        path.to_str().unwrap(),
        &n.to_string(),
        &features.to_string(),
        &seed.to_string(),
    ]);
    path
}

/// One prediction: the label and the scores.
pub type Prediction = (u32, Vec<f32>);

/// ONNX Runtime's predictions in Python for `model` on `records` in batches of `batch`.
pub fn native(model: &Path, records: &Path, batch: u32) -> Vec<Prediction> {
    let out = model.with_extension(format!("native-{batch}.txt"));
    models(&[
        "native",
        model.to_str().unwrap(),
        records.to_str().unwrap(),
        &batch.to_string(),
        out.to_str().unwrap(),
    ]);
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split(',');
            let label = f.next().unwrap().parse().unwrap();
            let scores = f.map(|b| f32::from_bits(b.parse().unwrap())).collect();
            (label, scores)
        })
        .collect()
}

/// The classify task's `predictions.csv`, parsed; asserts its records are numbered 0, 1, ...
pub fn parse_predictions(text: &str) -> Vec<Prediction> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let mut f = l.split(',');
            assert_eq!(f.next().unwrap().parse::<usize>().unwrap(), i, "{l}");
            let label = f.next().unwrap().parse().unwrap();
            let scores = f.map(|s| s.parse::<f32>().unwrap()).collect();
            (label, scores)
        })
        .collect()
}
