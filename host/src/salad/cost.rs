//! The instance's deletion cost kept current: on a voluntary scale-in SaladCloud removes the
//! instances with the lowest cost first, so an idle worker says 0, a busy one more the longer
//! its jobs have run, and one writing a finished job's outputs says [`MAX_DELETION_COST`].
//!
//! The value is a pure function of the load ([`deletion_cost`], table-tested); the hooks
//! ([`DeletionCost::job`], [`DeletionCost::uploading`]) only record events, and one background
//! task ([`DeletionCost::spawn`]) sends the value to IMDS when it changes (and re-evaluates it
//! every [`REFRESH_INTERVAL`], as the jobs age). A hook never waits for IMDS and an IMDS
//! failure is logged, never fatal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::imds::{Imds, MAX_DELETION_COST};

/// How often the cost is re-evaluated while nothing happens (the jobs' ages grow): 30 s.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The deletion cost for a worker with `running` jobs of the given ages, `uploading` of
/// them writing their outputs: 0 when idle; [`MAX_DELETION_COST`] while any job's outputs
/// are written; otherwise one per running job plus the seconds they have run together
/// (so idle and young instances go first), at most one below the maximum.
pub fn deletion_cost(running: &[Duration], uploading: usize) -> i32 {
    if uploading > 0 {
        return MAX_DELETION_COST;
    }
    let total: u64 = running
        .iter()
        .map(|age| age.as_secs().saturating_add(1))
        .fold(0, u64::saturating_add);
    total.min((MAX_DELETION_COST - 1) as u64) as i32
}

#[derive(Debug, Default)]
struct Load {
    /// Start of each running job, by a token of its guard.
    running: Vec<(u64, Instant)>,
    next: u64,
    uploading: usize,
}

impl Load {
    fn cost(&self, now: Instant) -> i32 {
        let ages: Vec<Duration> = self
            .running
            .iter()
            .map(|(_, start)| now.saturating_duration_since(*start))
            .collect();
        deletion_cost(&ages, self.uploading)
    }
}

/// The handle the worker's hooks use (cheap to clone). Without [`DeletionCost::spawn`]'s task
/// (not on SaladCloud) the hooks only count.
#[derive(Clone, Debug)]
pub struct DeletionCost {
    load: Arc<Mutex<Load>>,
    changed: Arc<watch::Sender<()>>,
}

impl Default for DeletionCost {
    fn default() -> Self {
        DeletionCost {
            load: Arc::default(),
            changed: Arc::new(watch::channel(()).0),
        }
    }
}

impl DeletionCost {
    /// A handle whose value is sent to `imds` (at once, then on every change and every
    /// [`REFRESH_INTERVAL`]) until `shutdown`.
    pub fn spawn(imds: Imds, shutdown: CancellationToken) -> DeletionCost {
        let cost = DeletionCost::default();
        tokio::spawn(cost.clone().push(imds, shutdown));
        cost
    }

    /// The value now.
    pub fn current(&self) -> i32 {
        self.load
            .lock()
            .expect("never poisoned")
            .cost(Instant::now())
    }

    /// A job starts running; it counts until the guard is dropped.
    pub fn job(&self) -> JobGuard {
        let token = self.update(|load| {
            load.next += 1;
            load.running.push((load.next, Instant::now()));
            load.next
        });
        JobGuard {
            cost: self.clone(),
            token,
        }
    }

    /// A job's outputs (its artifacts' manifest, its result) are being written: the maximum
    /// until the guard is dropped.
    pub fn uploading(&self) -> UploadGuard {
        self.update(|load| load.uploading += 1);
        UploadGuard { cost: self.clone() }
    }

    fn update<T>(&self, change: impl FnOnce(&mut Load) -> T) -> T {
        let out = change(&mut self.load.lock().expect("never poisoned"));
        self.changed.send_replace(());
        out
    }

    async fn push(self, imds: Imds, shutdown: CancellationToken) {
        let mut changed = self.changed.subscribe();
        let mut sent: Option<i32> = None;
        let mut failing = false;
        loop {
            changed.mark_unchanged();
            let value = self.current();
            if sent != Some(value) {
                match imds.set_deletion_cost(value).await {
                    Ok(()) => {
                        tracing::debug!(deletion_cost = value, "deletion cost set");
                        sent = Some(value);
                        failing = false;
                    }
                    Err(e) => {
                        // Once per run of failures; retried at the next change or refresh.
                        if !failing {
                            tracing::warn!(error = %e, "cannot set the deletion cost; retrying");
                        }
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
        }
    }
}

/// A running job, counted in the cost until dropped.
#[derive(Debug)]
pub struct JobGuard {
    cost: DeletionCost,
    token: u64,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let token = self.token;
        self.cost
            .update(|load| load.running.retain(|(t, _)| *t != token));
    }
}

/// A job's outputs being written: the maximum cost until dropped.
#[derive(Debug)]
pub struct UploadGuard {
    cost: DeletionCost,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.cost
            .update(|load| load.uploading = load.uploading.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_follows_the_load() {
        let s = Duration::from_secs;
        let cases: &[(&[Duration], usize, i32)] = &[
            (&[], 0, 0),
            (&[s(0)], 0, 1),
            (&[s(59)], 0, 60),
            (&[s(10), s(20)], 0, 32),
            (&[s(10)], 1, MAX_DELETION_COST),
            // Uploading wins whatever else runs; an absurd age stays below the maximum.
            (&[s(10), s(20)], 1, MAX_DELETION_COST),
            (&[Duration::MAX], 0, MAX_DELETION_COST - 1),
            (&[Duration::MAX, Duration::MAX], 0, MAX_DELETION_COST - 1),
        ];
        for (running, uploading, want) in cases {
            assert_eq!(
                deletion_cost(running, *uploading),
                *want,
                "{running:?} uploading {uploading}"
            );
        }
    }

    #[test]
    fn guards_count_until_dropped() {
        let cost = DeletionCost::default();
        assert_eq!(cost.current(), 0);
        let a = cost.job();
        let b = cost.job();
        assert_eq!(cost.current(), 2);
        let up = cost.uploading();
        assert_eq!(cost.current(), MAX_DELETION_COST);
        drop(up);
        drop(a);
        assert_eq!(cost.current(), 1);
        drop(b);
        assert_eq!(cost.current(), 0);
    }
}
