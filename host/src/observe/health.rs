//! What the probes answer, designed for SaladCloud, where a failed startup or liveness probe
//! reallocates the instance to another node (docs/saladcloud.md has the settings):
//!
//! - **live** whenever the process and its async runtime answer (the probe's handler runs on
//!   that runtime). Never failed for a misconfiguration or an outage: another node would
//!   have the same problem.
//! - **started** once the node-local parts are up (the runtime, its caches): what another
//!   node could do better. Not the store or the queue, which the worker waits for.
//! - **ready** while the queue and the store answer, the breaker is closed, the node's
//!   clock agrees with the store's and the worker is not draining; otherwise the reason.
//!
//! The worker and the store's observer report into a [`Health`]; [`watch_store`] asks the
//! store when nothing else has for a while, so a store that stops answering is noticed
//! within [`STORE_CHECK_INTERVAL`] plus [`STORE_CHECK_TIMEOUT`] even when no job runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::ObjectStore;
use crate::time::now_ms;

/// How long the store may go without a successful call before [`watch_store`] asks it:
/// 5 s. An idle worker costs one HEAD request per interval (17,280 a day).
pub const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long that request may take before the store counts as not answering: 5 s.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's state as the probes see it. Shared (`Arc<Health>`); every setter is cheap.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    /// The receive loop runs (the startup checks passed).
    receiving: AtomicBool,
    draining: AtomicBool,
    breaker_open: AtomicBool,
    clock_off: AtomicBool,
    /// When a store call last succeeded (ms since the epoch).
    store_ok_ms: AtomicU64,
    /// Why the store is taken as not answering, if it is.
    store_down: Mutex<Option<String>>,
    /// Why the queue is taken as not answering, if it is.
    queue_down: Mutex<Option<String>>,
    /// The misconfiguration the startup checks found, while they wait for it to be fixed.
    misconfigured: Mutex<Option<String>>,
    /// Why this node was given up (a failed self-check, reallocation asked), if it was.
    node_failed: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// Not started, otherwise healthy.
    pub fn new() -> Health {
        Health::default()
    }

    /// The node-local parts are up.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// `Ok` once [`Health::set_started`] was called, else why not.
    pub fn started(&self) -> Result<(), &'static str> {
        if self.started.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the worker is starting")
        }
    }

    /// The worker's receive loop started: it takes jobs.
    pub fn set_receiving(&self) {
        self.receiving.store(true, Ordering::Relaxed);
    }

    /// The worker takes no new jobs any more (shutdown).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The breaker opened (`true`) or closed.
    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.store(open, Ordering::Relaxed);
    }

    /// The node's clock is off the store's (`true`) or agrees again.
    pub fn set_clock_off(&self, off: bool) {
        self.clock_off.store(off, Ordering::Relaxed);
    }

    /// A store call succeeded.
    pub fn store_answered(&self) {
        self.store_ok_ms.store(now_ms(), Ordering::Relaxed);
        let mut down = lock(&self.store_down);
        if down.is_some() {
            *down = None;
        }
    }

    /// The store did not answer a check: `why`.
    pub fn store_failed(&self, why: String) {
        *lock(&self.store_down) = Some(why);
    }

    /// The startup checks found a misconfiguration (`Some(the sentence)`), or it is fixed.
    pub fn set_misconfigured(&self, why: Option<String>) {
        *lock(&self.misconfigured) = why;
    }

    /// The node failed its self-check and the worker asked for another node (`why`): it
    /// takes no job here.
    pub fn set_node_failed(&self, why: String) {
        *lock(&self.node_failed) = Some(why);
    }

    /// A pull went through (`Ok`) or failed (`Err(why)`).
    pub fn queue_answered(&self, result: Result<(), String>) {
        *lock(&self.queue_down) = result.err();
    }

    /// `Ok` while the worker should be sent work, else every reason why not.
    pub fn ready(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if let Err(e) = self.started() {
            why.push(e.to_owned());
        }
        if self.draining.load(Ordering::Relaxed) {
            why.push("the worker is shutting down".to_owned());
        } else if !self.receiving.load(Ordering::Relaxed) {
            why.push("the worker is not taking jobs yet (startup checks)".to_owned());
        }
        if let Some(e) = &*lock(&self.misconfigured) {
            why.push(format!("misconfigured: {e}"));
        }
        if let Some(e) = &*lock(&self.node_failed) {
            why.push(format!("this node failed its self-check: {e}"));
        }
        if let Some(e) = &*lock(&self.store_down) {
            why.push(format!("the store does not answer: {e}"));
        }
        if self.breaker_open.load(Ordering::Relaxed) {
            why.push("the breaker is open: storage failed for every job".to_owned());
        }
        if let Some(e) = &*lock(&self.queue_down) {
            why.push(format!("the queue does not answer: {e}"));
        }
        if self.clock_off.load(Ordering::Relaxed) {
            why.push("this node's clock is off the store's".to_owned());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// Until `shutdown`: whenever the store has not answered a call for [`STORE_CHECK_INTERVAL`],
/// asks it (a HEAD of `key`, bounded by [`STORE_CHECK_TIMEOUT`]) and reports the answer to
/// `health`. `store` should report its own successes too (`store::any::Observed`), so a
/// busy worker sends no extra request.
pub async fn watch_store<S: ObjectStore>(
    health: std::sync::Arc<Health>,
    store: S,
    key: String,
    shutdown: CancellationToken,
) {
    loop {
        let since = now_ms().saturating_sub(health.store_ok_ms.load(Ordering::Relaxed));
        let wait = STORE_CHECK_INTERVAL.saturating_sub(Duration::from_millis(since));
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            asked = tokio::time::timeout(STORE_CHECK_TIMEOUT, store.head(&key)) => asked,
        };
        match asked {
            Ok(Ok(_)) => health.store_answered(),
            Ok(Err(e)) => {
                health.store_failed(e.to_string());
                // Checked again one interval from now, not at once.
                health.store_ok_ms.store(now_ms(), Ordering::Relaxed);
            }
            Err(_) => {
                health.store_failed(format!(
                    "no answer within {} s",
                    STORE_CHECK_TIMEOUT.as_secs()
                ));
                health.store_ok_ms.store(now_ms(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_names_every_reason_and_clears_them() {
        let h = Health::new();
        assert!(h.started().is_err());
        assert!(h.ready().unwrap_err().contains("starting"));
        h.set_started();
        assert!(h.ready().unwrap_err().contains("not taking jobs yet"));
        h.set_receiving();
        assert_eq!(h.ready(), Ok(()));
        h.store_failed("no answer within 5 s".into());
        h.queue_answered(Err("unavailable".into()));
        h.set_breaker_open(true);
        let why = h.ready().unwrap_err();
        for part in [
            "store does not answer",
            "5 s",
            "queue",
            "unavailable",
            "breaker",
        ] {
            assert!(why.contains(part), "{why}");
        }
        h.store_answered();
        h.queue_answered(Ok(()));
        h.set_breaker_open(false);
        assert_eq!(h.ready(), Ok(()));
        h.set_draining();
        assert!(h.ready().unwrap_err().contains("shutting down"));
        assert_eq!(h.started(), Ok(()));
    }
}
