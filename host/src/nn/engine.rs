//! ONNX Runtime itself: the library loaded once from the configured path, sessions built from
//! model bytes, and one inference run. Everything here blocks: the runtime calls it on
//! inference threads ([`super::thread`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::{RunOptions, Session};

use super::Provider;
use super::tensor::{FromValueError, Outlet, TensorData, from_value, input_value};

/// ONNX Runtime, loaded, with the worker's execution provider and thread count.
pub struct Ort {
    env: Environment,
    provider: Provider,
    threads: usize,
    /// An empty private directory: where ONNX Runtime looks for a model's external data.
    confine: tempfile::TempDir,
}

/// ONNX Runtime's session setting for where a model loaded from memory finds its external
/// data. A model may name files for its weights (`data_location: EXTERNAL`); with no model
/// path, ONNX Runtime would resolve them against the worker's working directory and read,
/// say, its key file into a tensor the task gets back. Pointed at an empty private directory,
/// every such name resolves to nothing there (ONNX Runtime refuses absolute paths and paths
/// leaving that directory, symbolic links included), so the load fails.
const EXTERNAL_DATA_DIR: &str = "session.model_external_initializers_file_folder_path";

/// Loads ONNX Runtime from `path` (once per process: a later call must name the same library).
pub fn load(path: &Path, provider: Provider, threads: usize) -> Result<Ort, String> {
    let env = environment(path)?;
    let confine = tempfile::Builder::new()
        .prefix("taskhost-nn-")
        .tempdir()
        .map_err(|e| format!("cannot create the directory for models' external data: {e}"))?;
    Ok(Ort {
        env,
        provider,
        threads,
        confine,
    })
}

/// The symbol every ONNX Runtime library exports: the entry point `ort` loads it by.
const ENTRY_POINT: &[u8] = b"OrtGetApiBase\0";

/// Checks, without loading it, that `path` looks like ONNX Runtime's library: a readable
/// file, a shared object (ELF, on Linux) naming ONNX Runtime's entry point among its
/// symbols. What a worker's start can tell of a wrong `ORT_DYLIB_PATH` without mapping the
/// library; a wrong version or a broken library is found by [`load`], at the first graph load.
pub fn check_library(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let fail = |why: &str| format!("ORT_DYLIB_PATH {}: {why}", path.display());
    if !path.is_file() {
        return Err(fail("not a file"));
    }
    let mut file = std::fs::File::open(path).map_err(|e| fail(&e.to_string()))?;
    // Read in chunks (the library is tens of MB): each chunk begins with the end of the
    // previous one, so a name across the boundary is found.
    let keep = ENTRY_POINT.len() - 1;
    let mut buf = vec![0u8; 1 << 20];
    let (mut have, mut first) = (0, true);
    loop {
        let n = file
            .read(&mut buf[have..])
            .map_err(|e| fail(&e.to_string()))?;
        if first && cfg!(target_os = "linux") && !buf[..have + n].starts_with(b"\x7fELF") {
            return Err(fail("not a shared library (no ELF header)"));
        }
        first = false;
        have += n;
        if buf[..have]
            .windows(ENTRY_POINT.len())
            .any(|w| w == ENTRY_POINT)
        {
            return Ok(());
        }
        if n == 0 {
            return Err(fail(
                "not ONNX Runtime's library (it does not name `OrtGetApiBase`)",
            ));
        }
        if have > keep {
            buf.copy_within(have - keep..have, 0);
            have = keep;
        }
    }
}

/// The process's ONNX Runtime environment, loading the library from `path` the first time.
/// ONNX Runtime allows one environment per process: it is made once (serialized: runtimes
/// made at once, as the tests do, would race) and shared; a later `path` must name the same
/// library. Public for the benchmark's native twin, which must share it.
pub fn environment(path: &Path) -> Result<Environment, String> {
    static LOADED: Mutex<Option<(std::path::PathBuf, Environment)>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((first, env)) = loaded.as_ref() {
        return if first == path {
            Ok(env.clone())
        } else {
            Err(format!(
                "ONNX Runtime was loaded from {} in this process already, not {}",
                first.display(),
                path.display()
            ))
        };
    }
    // Checked first: ONNX Runtime's loader is once per process, so a path that fails later
    // might be served by a library an earlier call loaded.
    if !path.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let env = ort::init_from(path)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
        .with_name("taskhost")
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
    *loaded = Some((path.to_owned(), env.clone()));
    Ok(env)
}

/// A model loaded into an ONNX Runtime session, with its inputs and outputs.
pub struct Model {
    session: Mutex<Session>,
    /// The graph's inputs, in the model's order.
    pub inputs: Vec<Outlet>,
    /// The graph's outputs, in the model's order.
    pub outputs: Vec<Outlet>,
}

impl Ort {
    /// A session for the ONNX model `bytes` on the worker's execution provider. A malformed
    /// model is an `Err` with ONNX Runtime's message.
    pub fn build(&self, bytes: &[u8]) -> Result<Model, String> {
        let ep = match self.provider {
            Provider::Cpu => ort::ep::CPU::default().build(),
            Provider::Cuda => ort::ep::CUDA::default().build().error_on_failure(),
        };
        let fail = |e: ort::Error<_>| format!("{e}");
        let mut builder = Session::builder(&self.env)
            .map_err(|e| format!("{e}"))?
            .with_execution_providers([ep])
            .map_err(fail)?
            .with_intra_threads(self.threads.max(1))
            .map_err(fail)?
            .with_config_entry(EXTERNAL_DATA_DIR, self.confine.path().to_string_lossy())
            .map_err(fail)?;
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| format!("ONNX Runtime cannot load the model: {e}"))?;
        let inputs = session.inputs().iter().map(Outlet::of).collect();
        let outputs = session.outputs().iter().map(Outlet::of).collect();
        Ok(Model {
            session: Mutex::new(session),
            inputs,
            outputs,
        })
    }
}

/// Why a run failed.
#[derive(Debug)]
pub enum RunError {
    /// The outputs need more bytes than the room left (the bytes they need).
    TooLarge(u64),
    /// ONNX Runtime failed, or an output is of a type the host does not serve.
    Failed(String),
}

impl Model {
    /// Runs the model on `inputs` (one per graph input, in order, each checked against it
    /// already), returning every output, if they fit in `room` bytes. `stop` ends the run
    /// early when it is terminated from another thread.
    pub fn run(
        &self,
        inputs: &[TensorData],
        room: u64,
        stop: &Arc<RunOptions>,
    ) -> Result<Vec<(String, TensorData)>, RunError> {
        // In the model's order, as a slice: ONNX Runtime takes them by position.
        let values = inputs
            .iter()
            .map(input_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RunError::Failed)?;
        // A panic poisons the lock only if ONNX Runtime's wrapper panicked mid-run: the
        // session itself is still whole.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run_with_options(&values[..], &**stop)
            .map_err(|e| RunError::Failed(format!("inference failed: {e}")))?;
        let mut out = Vec::with_capacity(outputs.len());
        let mut left = room;
        for (name, value) in outputs {
            let t = from_value(name, value, left).map_err(|e| match e {
                FromValueError::TooLarge(n) => RunError::TooLarge((room - left).saturating_add(n)),
                FromValueError::Unsupported(m) => RunError::Failed(m),
            })?;
            left -= t.data.len() as u64;
            out.push((name.to_owned(), t));
        }
        Ok(out)
    }
}
