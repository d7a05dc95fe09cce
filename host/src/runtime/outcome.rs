//! How a run ends and why a module is refused: the types [`Runtime::run`] and
//! [`Runtime::prepare`] report, and the classification of wasmtime's errors into them.
//!
//! [`Runtime::run`]: super::Runtime::run
//! [`Runtime::prepare`]: super::Runtime::prepare

use std::time::Duration;

use wasmtime::Trap;

use super::sandbox::MAX_RESOURCES_PER_TASK;
use super::{MAX_CALL_BYTES, SUPPORTED_WORLDS};
use crate::ids::ModuleHash;

/// Why a file is not a usable task module, or (`NodeFault`) why this node could not make it
/// ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleError {
    /// The bytes are not WebAssembly at all.
    NotWasm,
    /// A core module, not a component (build with `--target wasm32-wasip2`).
    CoreModule,
    /// A component that does not compile.
    Invalid(String),
    /// More bytes than a task module may have ([`crate::modules::MAX_MODULE_BYTES`]).
    TooLarge {
        /// Its size in bytes, where known (a fetch refused from the store's answer knows
        /// only that it is larger).
        bytes: Option<u64>,
    },
    /// A component of another world (missing export or unknown imports).
    WrongWorld(String),
    /// The node, not the module: compiling it failed for want of memory or a system call
    /// refused (an mmap's ENOMEM on a sick node): `is_node_compile_fault`. Another node,
    /// or this one later, may compile it.
    NodeFault(String),
    /// The bytes fetched do not hash to the module's name.
    HashMismatch {
        /// The hash the module was asked for by (its name in the store).
        expected: ModuleHash,
        /// The sha256 of the bytes fetched.
        actual: ModuleHash,
    },
}

impl std::fmt::Display for ModuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleError::NotWasm => f.write_str("not a WebAssembly file"),
            ModuleError::CoreModule => f.write_str(
                "a core WebAssembly module, not a component: build task modules with --target wasm32-wasip2",
            ),
            ModuleError::Invalid(m) => write!(f, "not a valid WebAssembly component: {m}"),
            ModuleError::TooLarge { bytes } => {
                if let Some(b) = bytes {
                    write!(f, "{b} bytes, ")?;
                }
                write!(
                    f,
                    "larger than the {} bytes a task module may have",
                    crate::modules::MAX_MODULE_BYTES
                )
            }
            ModuleError::WrongWorld(m) => write!(
                f,
                "a component of another world, not of {}: {m}",
                SUPPORTED_WORLDS.join(" or ")
            ),
            ModuleError::NodeFault(m) => {
                write!(f, "this node could not compile it (not the module's doing): {m}")
            }
            ModuleError::HashMismatch { expected, actual } => {
                write!(f, "module bytes hash to {actual}, not {expected} (corrupted or tampered with)")
            }
        }
    }
}

impl std::error::Error for ModuleError {}

/// How a trap is classified (each is a failure counted against the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The run's fuel budget ran out.
    Fuel,
    /// A linear memory hit the memory limit.
    Memory,
    /// Wasm stack overflow.
    Stack,
    /// The wall-clock limit passed.
    Timeout,
    /// The task panicked (Rust aborts through `unreachable`).
    Panic,
    /// Any other trap (out-of-bounds access, division by zero, ...).
    Other,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `run` returned ok: the result document.
    Finished(String),
    /// `run` returned err: a permanent failure reported by the task.
    TaskError(String),
    /// The task trapped or hit a limit.
    Trapped {
        /// Which limit or fault.
        kind: TrapKind,
        /// What happened, for the job's error record: the trap's cause, or for a panic the
        /// task's last stderr line.
        message: String,
    },
    /// Another worker owns the job now; whatever the task returned is discarded.
    Conflict,
    /// The host could not start the task (instance pool exhausted, instantiation failed for
    /// a reason of the host's): not the task's fault, never counted against the job.
    HostFault(String),
    /// A host function panicked while serving the task (a bug of ours that the task's
    /// calls reached): caught, it ends this job only. Never counted as the task's failure,
    /// but counted as a crash of the job (`exec`), so a task that keeps reaching it is
    /// bounded.
    HostPanic(String),
    /// Cancelled by the host (shutdown, lost lease) at a yield point.
    Cancelled,
}

/// What [`Runtime::run`](super::Runtime::run) reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// Fuel this run consumed.
    pub fuel_used: u64,
    /// The first progress the task reported in this run, if any.
    pub first_progress: Option<(u64, u64)>,
    /// From the call to [`Runtime::run`](super::Runtime::run) until the task's `run` was entered (store created,
    /// component instantiated).
    pub startup: Duration,
    /// The CPU time of that startup: the thread's CPU clock around the store's creation and
    /// around each poll of the instantiation (what other tasks ran between polls is not
    /// counted). Zero if the clock cannot be read.
    pub startup_cpu: Duration,
    /// From the call to [`Runtime::run`](super::Runtime::run) until it returned (startup included).
    pub elapsed: Duration,
    /// Output bytes dropped because the task wrote more than the log keeps.
    pub output_dropped: u64,
    /// Host compute the task asked for and fuel does not see: `wasi:nn` graph loads and
    /// inference (within `elapsed`).
    pub host_compute: Duration,
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// An instantiation error that is the host's doing, not the task's: the pool had no free
/// slot, or anything but the task's own limits and what its code did.
pub(super) fn is_host_fault(e: &wasmtime::Error, memory_hit: bool) -> bool {
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return true;
    }
    // The task's own doing: over its memory, or over its memories / instances / tables
    // ("resource limit exceeded: memory count too high"), or anything that ended its start
    // function: a trap, or an error an import returned to it (`exit`, a full resource
    // table, an argument past `MAX_CALL_BYTES`), which wasmtime marks with the task's
    // backtrace.
    let own = memory_hit
        || e.downcast_ref::<Trap>().is_some()
        || e.downcast_ref::<wasmtime::WasmBacktrace>().is_some()
        || format!("{e:#}").contains("resource limit exceeded");
    !own
}

/// A compile error as a [`ModuleError`]: the node's ([`ModuleError::NodeFault`]) or the
/// module's ([`ModuleError::Invalid`]).
pub(super) fn compile_error(e: &wasmtime::Error) -> ModuleError {
    if is_node_compile_fault(e) {
        ModuleError::NodeFault(format!("{e:#}"))
    } else {
        ModuleError::Invalid(format!("{e:#}"))
    }
}

/// Whether a compile error is the node's doing rather than the module's: wasmtime ran out
/// of memory, or a system call (an mmap for the code, a file) was refused. What the module
/// is (invalid bytes, a function Cranelift refuses) fails the same way on every node.
pub(super) fn is_node_compile_fault(e: &wasmtime::Error) -> bool {
    e.is::<wasmtime::OutOfMemory>() || e.is::<rustix::io::Errno>() || e.is::<std::io::Error>()
}

/// Whether `e` is the store's resource table refusing one more entry.
fn table_full(e: &wasmtime::Error) -> bool {
    use wasmtime::component::ResourceTableError;
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    })
}

pub(super) fn classify_trap(
    e: &wasmtime::Error,
    memory_hit: bool,
    last_stderr: Option<String>,
) -> Outcome {
    // One line, the cause first: the full chain ends with a wasm backtrace.
    let cause = e.root_cause().to_string();
    let cause = cause.lines().next().unwrap_or_default().to_owned();
    let (kind, message) = if memory_hit {
        (TrapKind::Memory, cause)
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => (TrapKind::Fuel, "fuel budget exhausted".to_owned()),
            Some(Trap::StackOverflow) => (TrapKind::Stack, "wasm stack overflow".to_owned()),
            Some(Trap::UnreachableCodeReached) => (
                TrapKind::Panic,
                match last_stderr {
                    Some(line) => format!("task panicked: {line}"),
                    None => "task aborted (unreachable)".to_owned(),
                },
            ),
            _ if cause.contains("fuel allocated for hostcalls") => (
                TrapKind::Other,
                format!(
                    "an import call passed more than {MAX_CALL_BYTES} bytes to the host (MAX_CALL_BYTES)"
                ),
            ),
            _ if table_full(e) => (
                TrapKind::Other,
                format!(
                    "the task held more than {MAX_RESOURCES_PER_TASK} host resources at once (MAX_RESOURCES_PER_TASK)"
                ),
            ),
            _ => (TrapKind::Other, cause),
        }
    };
    Outcome::Trapped { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_error_is_the_nodes_only_when_memory_or_a_system_call_failed() {
        let enomem = wasmtime::Error::from(rustix::io::Errno::NOMEM).context("mapping the code");
        assert!(is_node_compile_fault(&enomem));
        let oom = wasmtime::Error::from(wasmtime::OutOfMemory::new(1 << 30));
        assert!(is_node_compile_fault(&oom));
        let io = wasmtime::Error::from(std::io::Error::from(std::io::ErrorKind::OutOfMemory))
            .context("failed to open file");
        assert!(is_node_compile_fault(&io));
        // What the module is: the same on every node.
        let engine = wasmtime::Engine::default();
        for bytes in [
            &b"\0asm\x0d\0\x01\0garbage"[..],
            b"\0asm\x0d\0\x01\0\x01\x05",
        ] {
            let invalid = wasmtime::component::Component::new(&engine, bytes)
                .err()
                .unwrap();
            assert!(!is_node_compile_fault(&invalid), "{invalid:#}");
        }
        assert!(!is_node_compile_fault(&wasmtime::Error::msg(
            "function too large"
        )));
    }
}
