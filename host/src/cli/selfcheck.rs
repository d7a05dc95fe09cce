//! The node's own startup checks, run once before the first job: the module cache directory
//! can be written, and compiling works (not refused for want of memory or by a system call)
//! and takes about what it takes on any machine. What they find
//! is either the node's problem (its disk fails, its CPU is far too slow: on SaladCloud the
//! worker asks for another node) or one every node shares (a cache directory the image or
//! the settings make unwritable: never a reason to reallocate; the worker runs without the
//! disk cache and says so).

use std::path::Path;
use std::time::Duration;

use taskhost::runtime::{COMPILE_CHECK_NORM, ModuleError, Runtime};

/// The default limit of the compile check (`REALLOCATE_AFTER_COMPILE_SECONDS`): 30 s, some
/// 150 times what an ordinary machine takes ([`COMPILE_CHECK_NORM`]).
pub const DEFAULT_COMPILE_LIMIT: Duration = Duration::from_secs(30);
/// Times the compile check is run before it counts as failed (each over the limit).
const COMPILE_TRIES: u32 = 3;
/// The pause between two tries.
const COMPILE_RETRY: Duration = Duration::from_secs(1);

/// The node's problem: on SaladCloud, a reason to ask for another node.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeProblem(pub String);

/// Runs the checks; `Some`: the node failed one. A problem every node would share is logged
/// here and not returned.
pub async fn run(
    runtime: &Runtime,
    cache_dir: Option<&Path>,
    compile_limit: Option<Duration>,
) -> Option<NodeProblem> {
    if let Err(e) = runtime.check_cache_dir() {
        let dir = cache_dir.map_or_else(String::new, |d| d.display().to_string());
        if node_disk_fault(&e) {
            return Some(NodeProblem(format!(
                "the module cache directory {dir} cannot be written: {e}"
            )));
        }
        tracing::error!(
            "the module cache directory {dir} cannot be written ({e}): compiled modules are kept \
             in memory only, and a worker restarted here cannot hand back a dead one's jobs at \
             once; set TASKHOST_CACHE_DIR (--cache-dir) to a writable directory"
        );
    }
    let limit = compile_limit?;
    let mut took = Vec::new();
    for n in 0..COMPILE_TRIES {
        if n > 0 {
            tokio::time::sleep(COMPILE_RETRY).await;
        }
        let rt = runtime.clone();
        let t = match tokio::task::spawn_blocking(move || rt.compile_check()).await {
            Ok(Ok(t)) => t,
            Ok(Err(ModuleError::NodeFault(m))) => {
                return Some(NodeProblem(format!(
                    "this node cannot compile modules, not even the check module: {m}"
                )));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the compile check's module did not compile; skipping the check");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the compile check failed; skipping it");
                return None;
            }
        };
        if t <= limit {
            tracing::debug!(ms = t.as_millis() as u64, "compile check");
            return None;
        }
        took.push(t);
    }
    let took: Vec<_> = took
        .iter()
        .map(|t| format!("{:.1} s", t.as_secs_f64()))
        .collect();
    Some(NodeProblem(format!(
        "compiling the check module took {} ({COMPILE_TRIES} tries), over the limit of {:.1} s \
         (REALLOCATE_AFTER_COMPILE_SECONDS; about {:.1} s on an ordinary machine)",
        took.join(", "),
        limit.as_secs_f64(),
        COMPILE_CHECK_NORM.as_secs_f64()
    )))
}

/// An error of the disk itself (I/O error, a damaged filesystem), which no setting causes.
/// A full disk, a refused permission or a read-only mount may be the image's or the
/// settings' doing, the same on every node: not the node's.
fn node_disk_fault(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EUCLEAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_disk_is_the_nodes_fault() {
        use std::io::Error;
        let os = Error::from_raw_os_error;
        // (error, the node's)
        let table = [
            (os(libc::EIO), true),
            (os(libc::EUCLEAN), true),
            (os(libc::ENOSPC), false),
            (os(libc::EDQUOT), false),
            (os(libc::EACCES), false),
            (os(libc::EROFS), false),
            (os(libc::ENOTDIR), false),
            (os(libc::ENOENT), false),
            (Error::other("x"), false),
        ];
        for (e, want) in table {
            assert_eq!(node_disk_fault(&e), want, "{e}");
        }
    }
}
