//! The CPU time a start costs: the calling thread's CPU clock around the store's creation
//! and around each poll of the instantiation (`RunReport::startup_cpu`). Counted per poll,
//! so what other tasks do on the thread between two polls, or a move to another worker
//! thread, never counts; on a shared, loaded machine wall time is mostly the others' load.

use std::future::Future;
use std::time::Duration;

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
#[allow(unsafe_code)]
pub(super) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `fut`'s output and the CPU time its polls took, added to `spent`.
pub(super) async fn metered<F: Future>(fut: F, spent: &mut Duration) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let t = thread_cpu();
        let r = fut.as_mut().poll(cx);
        *spent += thread_cpu().saturating_sub(t);
        r
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_polls_own_work() {
        let mut spent = Duration::ZERO;
        let busy = async {
            let t = thread_cpu();
            while thread_cpu() - t < Duration::from_millis(5) {}
        };
        futures_util::FutureExt::now_or_never(metered(busy, &mut spent)).unwrap();
        assert!(spent >= Duration::from_millis(5), "{spent:?}");
        assert!(spent < Duration::from_secs(1), "{spent:?}");
    }
}
