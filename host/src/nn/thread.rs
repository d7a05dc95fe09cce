//! Inference threads: where ONNX Runtime builds graphs and runs inference. Each is a
//! long-lived thread with a large stack of its own, fed one call at a time through a channel;
//! a job takes one for its run (from the worker's idle ones, or a new one) and hands it back
//! when the run ends.
//!
//! Why not the async threads, the task's fiber or tokio's blocking threads: an inference
//! takes as long as the model makes it, so it must not hold an async thread; ONNX Runtime
//! recurses over a model's nested subgraphs, so a hostile model's depth must meet a stack far
//! larger than a fiber's (or a blocking thread's 2 MiB) before its guard page; and a thread
//! kept per job costs one channel send and one wake per call instead of `spawn_blocking`'s
//! task allocation and queue.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

/// The stack of an inference thread. Reserved address space, not memory: only the pages a
/// call touches are backed.
pub const STACK_BYTES: usize = 64 << 20;

type Call = Box<dyn FnOnce() + Send>;

/// A long-lived thread running calls one at a time, in the order given. Dropping it ends the
/// thread once its call in progress (if any) returns.
pub struct InferenceThread {
    calls: mpsc::Sender<Call>,
}

/// A call that panicked (logged with its message); the thread lives on.
#[derive(Debug)]
pub struct Panicked;

impl InferenceThread {
    /// A new thread, or the error that kept the system from making it.
    pub fn spawn() -> std::io::Result<InferenceThread> {
        let (calls, queue) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("taskhost-nn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                for call in queue {
                    call();
                }
            })?;
        Ok(InferenceThread { calls })
    }

    /// `f`'s result, run on this thread; `Err` when it panicked (the thread lives on) or the
    /// thread has ended. Dropping the future leaves `f` to run to its end, its result unused.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let (done, result) = tokio::sync::oneshot::channel();
        let call: Call = Box::new(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "a call on an inference thread panicked");
                Panicked
            });
            let _ = done.send(r);
        });
        self.calls.send(call).map_err(|_| Panicked)?;
        result.await.map_err(|_| Panicked)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_on_one_thread_with_a_large_stack_and_a_panic_is_an_error() {
        let t = InferenceThread::spawn().unwrap();
        let first = t.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(
            first,
            std::thread::current().id(),
            "not the caller's thread"
        );
        assert!(t.run(|| panic!("boom")).await.is_err());
        // The same thread after the panic.
        assert_eq!(t.run(|| std::thread::current().id()).await.unwrap(), first);
        // Recursion a 2 MiB stack could not take (~8 MiB of frames) runs to its end.
        fn deep(n: u32) -> u32 {
            let pad = std::hint::black_box([n as u8; 4096]);
            if n == 0 {
                0
            } else {
                deep(n - 1) + u32::from(pad[7] & 1)
            }
        }
        assert_eq!(t.run(|| deep(2000)).await.unwrap(), 1000);
    }
}
