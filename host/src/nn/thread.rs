//! Inference threads: where ONNX Runtime builds graphs and runs inference. Each is a
//! long-lived thread with a large stack of its own, fed one call at a time through a channel;
//! a job takes one for its run from the worker's [`Pool`] (an idle one, or a new one) and hands
//! it back when the run ends. A run stopped mid-call drops its thread, which ends once the call
//! returns (a graph build cannot be terminated); the pool counts it until then and makes no
//! thread past its bound.
//!
//! Why not the async threads, the task's fiber or tokio's blocking threads: an inference
//! takes as long as the model makes it, so it must not hold an async thread; ONNX Runtime
//! recurses over a model's nested subgraphs, so a hostile model's depth must meet a stack far
//! larger than a fiber's (or a blocking thread's 2 MiB) before its guard page; and a thread
//! kept per job costs one channel send and one wake per call instead of `spawn_blocking`'s
//! task allocation and queue.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};

/// The stack of an inference thread. Reserved address space, not memory: only the pages a
/// call touches are backed.
pub const STACK_BYTES: usize = 64 << 20;

type Call = Box<dyn FnOnce() + Send>;

/// A long-lived thread running calls one at a time, in the order given. Dropping it ends the
/// thread once its call in progress (if any) returns.
pub struct InferenceThread {
    calls: mpsc::Sender<Call>,
}

/// Why a [`Pool`] gave no thread.
#[derive(Debug)]
pub enum NoThread {
    /// As many threads as the pool's bound are alive (most of them finishing calls of stopped
    /// runs).
    Busy(usize),
    /// The system would not make one.
    Spawn(std::io::Error),
}

impl std::fmt::Display for NoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoThread::Busy(n) => write!(
                f,
                "inference threads busy: the worker's {n} are all in use (calls of stopped runs \
                 still finishing); the job may succeed on a later run"
            ),
            NoThread::Spawn(e) => write!(f, "the host cannot start an inference thread: {e}"),
        }
    }
}

/// The worker's inference threads: the idle ones kept for the next jobs, and the count of
/// those alive (idle, a job's, or finishing a stopped run's call), never more than a bound.
pub struct Pool {
    idle: Mutex<Vec<InferenceThread>>,
    max_idle: usize,
    live: Arc<Live>,
    max_live: usize,
}

/// Threads alive, changed under its lock (a thread is made at most once per job).
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One thread's place in [`Live`]'s count, given back when dropped: when its thread's loop
/// ends, or with the thread's closure when the thread could not be made.
struct Counted(Arc<Live>);

impl Drop for Counted {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.changed.notify_all();
    }
}

impl Pool {
    /// A pool keeping up to `max_idle` idle threads, with at most `max_live` alive at once.
    pub fn new(max_idle: usize, max_live: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            live: Arc::default(),
            max_live,
        }
    }

    /// An idle thread, or a new one if fewer than the bound are alive.
    pub fn take(&self) -> Result<InferenceThread, NoThread> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(t) = idle {
            return Ok(t);
        }
        let counted = {
            let mut live = self.live.lock();
            if *live >= self.max_live {
                return Err(NoThread::Busy(*live));
            }
            *live += 1;
            Counted(self.live.clone())
        };
        InferenceThread::spawn(counted).map_err(NoThread::Spawn)
    }

    /// Keeps an ended job's idle thread for the next job, or ends it past `max_idle`.
    pub fn give_back(&self, t: InferenceThread) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(t);
        }
    }

    /// Threads alive now.
    pub fn live(&self) -> usize {
        *self.live.lock()
    }

    /// Waits until at most `n` threads are alive.
    #[cfg(test)]
    pub(crate) fn wait_live(&self, n: usize) {
        let mut live = self.live.lock();
        while *live > n {
            live = self
                .live
                .changed
                .wait(live)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A call that panicked (logged with its message); the thread lives on.
#[derive(Debug)]
pub struct Panicked;

impl InferenceThread {
    /// A new thread holding `counted` until its loop ends, or the error that kept the system
    /// from making it (`counted` dropped).
    fn spawn(counted: Counted) -> std::io::Result<InferenceThread> {
        let (calls, queue) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("taskhost-nn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let _counted = counted;
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
        let t = Pool::new(1, 1).take().unwrap();
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

    #[tokio::test]
    async fn the_pool_makes_no_thread_past_its_bound_and_a_thread_that_ends_frees_its_place() {
        let pool = Pool::new(1, 2);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!(pool.live(), 2);
        assert!(
            matches!(pool.take(), Err(NoThread::Busy(2))),
            "past the bound"
        );
        // An idle thread is reused, past the bound or not.
        pool.give_back(a);
        let a = pool.take().unwrap();
        assert_eq!(pool.live(), 2);
        // A thread dropped mid-call (its run stopped) keeps its place until the call returns.
        let (release, blocked) = mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let call = tokio::spawn(async move {
            b.run(move || {
                let _ = started_tx.send(());
                let _ = blocked.recv();
            })
            .await
        });
        started.await.unwrap();
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(
            matches!(pool.take(), Err(NoThread::Busy(2))),
            "still running"
        );
        release.send(()).unwrap();
        pool.wait_live(1);
        let b = pool.take().expect("a place freed");
        // Past `max_idle`, a thread given back ends.
        pool.give_back(a);
        pool.give_back(b);
        pool.wait_live(1);
        let _c = pool.take().unwrap();
        assert_eq!(pool.live(), 1, "the idle one taken, no new one made");
    }
}
