//! The worker's clock check: the lease rule holds only while clocks agree within
//! [`CLOCK_SKEW_ALLOWANCE`], so at startup and every [`CLOCK_CHECK_INTERVAL`] the worker
//! reads the store's clock ([`ObjectStore::clock`]), and while its own is off by more than
//! the allowance it takes no new jobs (its running jobs go on).
//!
//! The store's clock comes from an HTTP `Date` header, in whole seconds, read somewhere
//! within the request's round trip: the decision ([`skew_ms`]) counts as skewed only a
//! reading that no offset within the allowance explains, resolution and round trip
//! included.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::checkpoint::CLOCK_SKEW_ALLOWANCE;
use crate::store::{ClockReading, ObjectStore};

/// How often a worker compares its clock with the store's.
pub const CLOCK_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How often while its clock is off (it takes no jobs until it agrees again).
pub const CLOCK_RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The skew decision: `Some(offset)` (the store's clock minus ours, ms: of the offsets the
/// reading allows, the one nearest zero) when every offset the reading allows is beyond
/// [`CLOCK_SKEW_ALLOWANCE`]; `None` when the clocks may agree.
pub fn skew_ms(reading: &ClockReading) -> Option<i64> {
    let allowance = CLOCK_SKEW_ALLOWANCE.as_millis() as i64;
    let (least, most) = reading.offset_bounds_ms();
    if least > allowance {
        Some(least)
    } else if most < -allowance {
        Some(most)
    } else {
        None
    }
}

/// Whether this worker's clock is known to be off: set and cleared by [`watch`].
#[derive(Clone, Debug, Default)]
pub(super) struct Skewed(Arc<AtomicBool>);

impl Skewed {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Reads the store's clock (the answer to a HEAD of `key`) and records the decision,
    /// logging one sentence when it changes. A store that fails or does not say its time
    /// changes nothing (the circuit breaker deals with a failing store).
    pub(super) async fn check<S: ObjectStore>(&self, store: &S, key: &str) {
        let reading = match store.clock(key).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::debug!("the store does not say its time; the clock is not checked");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the store's clock; checking again later");
                return;
            }
        };
        let skew = skew_ms(&reading);
        let was = self.0.swap(skew.is_some(), Ordering::Relaxed);
        match skew {
            Some(offset_ms) if !was => tracing::error!(
                offset_ms,
                "this node's clock is off the store's by more than the {} s allowance, so \
                 leases cannot be trusted: taking no new jobs until it agrees (check the \
                 node's time synchronisation)",
                CLOCK_SKEW_ALLOWANCE.as_secs()
            ),
            None if was => {
                tracing::warn!("this node's clock agrees with the store's again: taking jobs")
            }
            _ => {}
        }
    }

    /// [`check`](Self::check) every [`CLOCK_CHECK_INTERVAL`] ([`CLOCK_RECHECK_INTERVAL`]
    /// while skewed) until `stop`.
    pub(super) async fn watch<S: ObjectStore>(
        self,
        store: S,
        key: String,
        stop: CancellationToken,
    ) {
        loop {
            let wait = if self.get() {
                CLOCK_RECHECK_INTERVAL
            } else {
                CLOCK_CHECK_INTERVAL
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => self.check(&store, &key).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_decision() {
        let t = 1_700_000_000_000;
        // (the store's Date in ms, its resolution, sent and received by our clock, decision)
        let table: [(u64, u64, u64, u64, Option<i64>); 14] = [
            // The local clock: exact.
            (t, 0, t, t, None),
            (t + 2000, 0, t, t, None),
            (t + 2001, 0, t, t, Some(2001)),
            (t - 2000, 0, t, t, None),
            (t - 2001, 0, t, t, Some(-2001)),
            // A Date header: the store's time is anywhere in [date, date + 1 s).
            (t, 1000, t, t, None),
            (t + 2000, 1000, t, t, None),
            (t + 3000, 1000, t, t, Some(3000)),
            // Behind: date 3 s behind still allows 2 s behind (its second was not over).
            (t - 3000, 1000, t, t, None),
            (t - 3001, 1000, t, t, Some(-2001)),
            // The round trip widens what a reading allows.
            (t + 2500, 1000, t, t + 600, None),
            (t + 2700, 1000, t, t + 600, Some(2100)),
            // Minutes off either way.
            (t + 300_000, 1000, t, t + 50, Some(299_950)),
            (t - 300_000, 1000, t, t + 50, Some(-299_000)),
        ];
        for (store_ms, resolution_ms, sent_ms, received_ms, want) in table {
            let reading = ClockReading {
                store_ms,
                resolution_ms,
                sent_ms,
                received_ms,
            };
            assert_eq!(skew_ms(&reading), want, "{reading:?}");
        }
        assert_eq!(skew_ms(&ClockReading::local()), None);
    }

    #[tokio::test]
    async fn a_directory_store_has_our_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::dir::DirStore::open(dir.path()).unwrap();
        let skewed = Skewed::default();
        skewed.0.store(true, Ordering::Relaxed);
        skewed.check(&store, &crate::keys::probe("w")).await;
        assert!(!skewed.get());
    }
}
