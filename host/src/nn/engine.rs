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
    // One file for the version check and the load: `ort` resolves a relative path against
    // its executable's directory first, and a bare name would be searched for; the path as
    // checked here (relative to the working directory) is the one made absolute.
    let file = std::fs::canonicalize(path)
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    // Before `ort` takes the library (once per process): one too old is refused and leaves
    // the process free to load another.
    check_version(&library_version(&file)?)
        .map_err(|e| format!("ONNX Runtime at {}: {e}", path.display()))?;
    let env = ort::init_from(&file)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
        .with_name("taskhost")
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
    *loaded = Some((path.to_owned(), env.clone()));
    Ok(env)
}

/// The oldest ONNX Runtime the worker loads (major, minor). Older releases let a model's
/// external data name what the task must never read, and a task reads it back as a tensor:
/// through 1.23, any file of the worker (an absolute path, or one escaping the empty
/// directory `EXTERNAL_DATA_DIR` points at) and any address of its memory (the location
/// `*/_ORT_MEM_ADDR_/*` takes the offset as a pointer); through 1.26 still all of these
/// through a sparse initializer's values. Measured on the `onnxruntime` wheels 1.22.0 to
/// 1.31.1 with `tests/nn/models.py external` (README, "Model inference").
pub const MIN_VERSION: (u32, u32) = (1, 27);

/// ONNX Runtime's version (`OrtGetApiBase()->GetVersionString()`, e.g. `1.31.1`) from the
/// library at `path` (absolute), which this loads into the process (as `ort` loads the same
/// file next) for good: ONNX Runtime is never unloaded.
// Loading a library and calling into it is unsafe: see the SAFETY comments.
#[allow(unsafe_code)]
fn library_version(path: &Path) -> Result<String, String> {
    use std::ffi::{CStr, c_char};
    let fail = |why: String| format!("cannot load ONNX Runtime from {}: {why}", path.display());
    // SAFETY: `path` is the library the operator configured as ONNX Runtime's (checked at
    // start for its entry point), made absolute; loading it runs its initialisers, as
    // `ort::init_from`, which loads this same absolute path next, would.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| fail(e.to_string()))?;
    // SAFETY: ONNX Runtime's C API declares `const OrtApiBase* OrtGetApiBase(void)`, and
    // `OrtApiBase.GetVersionString` as `const char* (void)` returning a static string.
    let version = unsafe {
        let get_base = lib
            .get::<unsafe extern "system" fn() -> *const ort::sys::OrtApiBase>(ENTRY_POINT)
            .map_err(|e| fail(e.to_string()))?;
        let base = get_base();
        if base.is_null() {
            return Err(fail("OrtGetApiBase returned nothing".to_owned()));
        }
        let text: *const c_char = ((*base).GetVersionString)();
        if text.is_null() {
            return Err(fail("it gives no version".to_owned()));
        }
        CStr::from_ptr(text).to_string_lossy().into_owned()
    };
    // Kept loaded: unloading ONNX Runtime while `ort` may load it again is not supported.
    std::mem::forget(lib);
    Ok(version)
}

/// `Ok` if `version` (`MAJOR.MINOR.PATCH`) is [`MIN_VERSION`] or newer.
fn check_version(version: &str) -> Result<(), String> {
    let (min_major, min_minor) = MIN_VERSION;
    let mut parts = version.split('.').map(str::parse::<u32>);
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(format!(
            "cannot tell its version from {:?}",
            crate::inert::cut(version, 64)
        ));
    };
    if (major, minor) < MIN_VERSION {
        return Err(format!(
            "version {major}.{minor} is older than {min_major}.{min_minor}, the oldest the \
             worker loads: older releases let a model read the worker's files and memory \
             through its external data (use the onnxruntime or onnxruntime-gpu wheel \
             {min_major}.{min_minor} or newer)"
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn releases_before_the_oldest_supported_are_refused() {
        for old in ["1.22.0", "1.23.2", "1.26.0", "1.26.99", "0.99.0"] {
            let e = check_version(old).expect_err(old);
            assert!(e.contains("older than 1.27"), "{old}: {e}");
        }
        for ok in ["1.27.0", "1.31.1", "1.40.0-dev", "2.0.0", "1.27"] {
            assert_eq!(check_version(ok), Ok(()), "{ok}");
        }
        for bad in ["", "one.two", "1", "1.x.0", "v1.31.1"] {
            let e = check_version(bad).expect_err(bad);
            assert!(e.contains("cannot tell its version"), "{bad}: {e}");
        }
    }
}
