//! The CPU time a start costs (`RunReport::startup_cpu`): the calling thread's CPU clock,
//! read where the start begins and at the start and end of each poll of the instantiation,
//! so what other tasks do on the thread between two polls, or a move to another worker
//! thread, never counts. On a shared, loaded machine wall time is mostly the others' load.
//! A start that completes in one poll reads the clock twice.

use std::future::Future;
use std::time::Duration;

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`); zero if it cannot be read.
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

/// `fut`'s output; `spent` gets the CPU time from `since` (a [`thread_cpu`] reading on this
/// thread, in the same poll as the first poll of `fut`) to the end of `fut`'s last poll,
/// without the time between polls.
pub(super) async fn metered<F: Future>(fut: F, since: Duration, spent: &mut Duration) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut since = Some(since);
    std::future::poll_fn(|cx| {
        let t = since.take().unwrap_or_else(thread_cpu);
        let r = fut.as_mut().poll(cx);
        *spent += thread_cpu().saturating_sub(t);
        r
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polls' own work counts; the time between polls does not.
    #[test]
    fn counts_the_polls_own_work() {
        let burn = |d: Duration| {
            let t = thread_cpu();
            while thread_cpu() - t < d {}
        };
        let mut spent = Duration::ZERO;
        let mut yielded = false;
        let work = std::future::poll_fn(|cx| {
            burn(Duration::from_millis(5));
            if yielded {
                return std::task::Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        });
        {
            let since = thread_cpu();
            let mut fut = std::pin::pin!(metered(work, since, &mut spent));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            burn(Duration::from_millis(50)); // between polls: not counted
            assert!(fut.as_mut().poll(&mut cx).is_ready());
        }
        assert!(spent >= Duration::from_millis(10), "{spent:?}");
        assert!(spent < Duration::from_millis(50), "{spent:?}");
    }
}
