//! Where a message being handled is counted, in the worker's [`Stats`] (the heartbeat) and
//! the metrics' gauges: running while it holds a slot, then, on a store with group commits,
//! committing while it holds a commit place ([`Hold`]), then nowhere. A job moves from
//! one count to the other (one down, then the other up), never in both at once, so "running"
//! never exceeds the slots nor "committing" the commit places.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Stats;
use crate::observe::Metrics;
use crate::observe::metrics::Holding;

/// A message's place in the counts, from its handler's start until it is settled (or its
/// commit place is given back, whichever comes first).
pub(super) struct Counted {
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    phase: Mutex<Phase>,
}

/// In the order a job goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Committing,
    Ended,
}

impl Counted {
    /// A message being handled, holding a slot: counted as running.
    pub(super) fn start(stats: &Arc<Stats>, metrics: &Arc<Metrics>) -> Arc<Counted> {
        stats.running.fetch_add(1, Ordering::Relaxed);
        metrics.holding(Holding::Slot, 1);
        Arc::new(Counted {
            stats: Arc::clone(stats),
            metrics: Arc::clone(metrics),
            phase: Mutex::new(Phase::Running),
        })
    }

    /// Moves the count on to `to` (never back: a no-op unless `to` comes later).
    fn enter(&self, to: Phase) {
        let mut phase = self.phase.lock().expect("never poisoned");
        let from = *phase;
        if to <= from {
            return;
        }
        *phase = to;
        match from {
            Phase::Running => {
                self.stats.running.fetch_sub(1, Ordering::Relaxed);
                self.metrics.holding(Holding::Slot, -1);
            }
            Phase::Committing => {
                self.stats.committing.fetch_sub(1, Ordering::Relaxed);
                self.metrics.holding(Holding::CommitPlace, -1);
            }
            Phase::Ended => unreachable!("returned above"),
        }
        if to == Phase::Committing {
            let now = self.stats.committing.fetch_add(1, Ordering::Relaxed) + 1;
            self.stats.committing_peak.fetch_max(now, Ordering::Relaxed);
            self.metrics.holding(Holding::CommitPlace, 1);
        }
    }
}

/// The count ends with its last holder.
impl Drop for Counted {
    fn drop(&mut self) {
        self.enter(Phase::Ended);
    }
}

/// What a job whose run ended holds, counted while held: its slot (still running), or a
/// commit place taken for it (committing). Dropped, it ends the job's count before it gives
/// the slot or place back (fields drop after `drop`), so the permit's next holder is never
/// counted beside it.
pub(super) struct Hold {
    count: Arc<Counted>,
    _permit: OwnedSemaphorePermit,
}

impl Hold {
    /// Keeps the job's `slot`: it stays counted as running.
    pub(super) fn slot(slot: OwnedSemaphorePermit, count: Arc<Counted>) -> Hold {
        Hold {
            count,
            _permit: slot,
        }
    }

    /// Waits for one of `places` (never closed), then counts the job as committing: before
    /// the caller gives its slot back, so it is never counted in neither while another
    /// takes it.
    pub(super) async fn place(places: Arc<Semaphore>, count: Arc<Counted>) -> Hold {
        let place = places.acquire_owned().await.expect("never closed");
        count.enter(Phase::Committing);
        Hold {
            count,
            _permit: place,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.count.enter(Phase::Ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(stats: &Stats, metrics: &Metrics) -> (u64, u64, String) {
        let text = metrics.encode();
        (
            stats.running.load(Ordering::Relaxed),
            stats.committing.load(Ordering::Relaxed),
            text,
        )
    }

    fn gauge(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    #[tokio::test]
    async fn a_job_counts_as_running_then_committing_then_nowhere() {
        let (stats, metrics) = (Arc::new(Stats::default()), Arc::new(Metrics::default()));
        let places = Arc::new(Semaphore::new(1));
        let count = Counted::start(&stats, &metrics);
        let (running, committing, text) = counts(&stats, &metrics);
        assert_eq!((running, committing), (1, 0));
        assert_eq!(gauge(&text, "taskhost_jobs_running"), 1.0);

        let place = Hold::place(Arc::clone(&places), Arc::clone(&count)).await;
        let (running, committing, text) = counts(&stats, &metrics);
        assert_eq!((running, committing), (0, 1));
        assert_eq!(gauge(&text, "taskhost_jobs_running"), 0.0);
        assert_eq!(gauge(&text, "taskhost_jobs_committing"), 1.0);

        // The place given back ends the count, though the handler still holds it.
        drop(place);
        assert_eq!(places.available_permits(), 1);
        let (running, committing, text) = counts(&stats, &metrics);
        assert_eq!((running, committing), (0, 0));
        assert_eq!(gauge(&text, "taskhost_jobs_committing"), 0.0);
        drop(count);
        let (running, committing, text) = counts(&stats, &metrics);
        assert_eq!((running, committing), (0, 0));
        assert_eq!(gauge(&text, "taskhost_jobs_running"), 0.0);
        assert_eq!(stats.committing_peak.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_kept_slot_ends_the_count_before_it_is_freed() {
        let (stats, metrics) = (Arc::new(Stats::default()), Arc::new(Metrics::default()));
        let slots = Arc::new(Semaphore::new(1));
        let count = Counted::start(&stats, &metrics);
        let slot = Arc::clone(&slots).try_acquire_owned().unwrap();
        let held = Hold::slot(slot, Arc::clone(&count));
        assert_eq!(stats.running.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(slots.available_permits(), 1);
        assert_eq!(stats.running.load(Ordering::Relaxed), 0);
        assert_eq!(stats.committing_peak.load(Ordering::Relaxed), 0);
        drop(count);
        assert_eq!(gauge(&metrics.encode(), "taskhost_jobs_running"), 0.0);
    }

    #[test]
    fn a_job_that_never_commits_stops_counting_with_its_handler() {
        let (stats, metrics) = (Arc::new(Stats::default()), Arc::new(Metrics::default()));
        let count = Counted::start(&stats, &metrics);
        drop(count);
        let (running, committing, text) = counts(&stats, &metrics);
        assert_eq!((running, committing), (0, 0));
        assert_eq!(gauge(&text, "taskhost_jobs_running"), 0.0);
        assert_eq!(gauge(&text, "taskhost_jobs_committing"), 0.0);
    }
}
