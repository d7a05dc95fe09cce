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
//! store only when the worker's own calls do not say whether it answers ([`next_check`],
//! the rule of docs/design.md §10): a call that waits for an answer is checked after
//! [`STORE_CHECK_INTERVAL`], an idle worker's store after [`STORE_QUIET_PERIOD`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::ObjectStore;
use crate::time::now_ms;

/// How long a store call may wait without any call succeeding before [`watch_store`] asks
/// the store (and how often it asks again while the store does not answer): 5 s. Costs a
/// request only when the worker's own calls go unanswered.
pub const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long the store may go unused (no call started since the last success) before
/// [`watch_store`] asks it anyway: 2 min, longer than the default heartbeat interval
/// (`worker::heartbeat::DEFAULT_INTERVAL`, 60 s), whose writes prove the store as any call
/// does. An idle worker without a heartbeat costs one HEAD request per period (720 a day;
/// every 5 s it was 17,280); with one, none.
pub const STORE_QUIET_PERIOD: Duration = Duration::from_secs(120);
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
    /// When the oldest call started since that success (ms since the epoch; not after
    /// `store_ok_ms`: no call waits).
    store_used_ms: AtomicU64,
    /// When [`watch_store`] last asked the store and got no answer (ms since the epoch).
    store_checked_ms: AtomicU64,
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

    /// A store call starts (cheap: one atomic read, a write only for the first call since
    /// the last success).
    pub fn store_called(&self) {
        if self.store_used_ms.load(Ordering::Relaxed) <= self.store_ok_ms.load(Ordering::Relaxed) {
            self.store_used_ms.store(now_ms(), Ordering::Relaxed);
        }
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
        self.store_checked_ms.store(now_ms(), Ordering::Relaxed);
        *lock(&self.store_down) = Some(why);
    }

    /// What the watcher knows of the store now.
    fn store_seen(&self) -> StoreSeen {
        StoreSeen {
            ok_ms: self.store_ok_ms.load(Ordering::Relaxed),
            used_ms: self.store_used_ms.load(Ordering::Relaxed),
            checked_ms: self.store_checked_ms.load(Ordering::Relaxed),
            down: lock(&self.store_down).is_some(),
        }
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

/// What [`next_check`] decides from (times in ms since the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSeen {
    /// When a store call last succeeded (0: never).
    pub ok_ms: u64,
    /// When the oldest call started since then; not after `ok_ms` when no call waits.
    pub used_ms: u64,
    /// When the last check got no answer.
    pub checked_ms: u64,
    /// Whether the store is taken as not answering.
    pub down: bool,
}

/// When the store is next asked (ms since the epoch), the one rule of the store's probe
/// (docs/design.md §10): any successful call proves that the store answers, so
///
/// - while the store is taken as not answering: [`STORE_CHECK_INTERVAL`] after the last
///   check (any success clears it sooner);
/// - while a call waits and none succeeded since it started (a store that hangs answers
///   neither way for minutes, through the client's retries): [`STORE_CHECK_INTERVAL`]
///   after it started;
/// - otherwise (idle, or every call answered): [`STORE_QUIET_PERIOD`] after the last
///   success. A busy worker's calls keep pushing that back: it sends no check.
pub fn next_check(seen: StoreSeen) -> u64 {
    let interval = STORE_CHECK_INTERVAL.as_millis() as u64;
    if seen.down {
        seen.checked_ms + interval
    } else if seen.used_ms > seen.ok_ms {
        seen.used_ms.max(seen.checked_ms) + interval
    } else {
        seen.ok_ms.max(seen.checked_ms) + STORE_QUIET_PERIOD.as_millis() as u64
    }
}

/// Until `shutdown`: asks the store (a HEAD of `key`, bounded by [`STORE_CHECK_TIMEOUT`])
/// when [`next_check`] says so, and reports the answer to `health`. `store` must report its
/// own calls' starts and successes (`store::any::Observed`): they are what spares the
/// requests.
pub async fn watch_store<S: ObjectStore>(
    health: std::sync::Arc<Health>,
    store: S,
    key: String,
    shutdown: CancellationToken,
) {
    loop {
        let due = next_check(health.store_seen());
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        if !wait.is_zero() {
            // Woken at least every interval: a call that starts meanwhile may move the
            // check earlier.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait.min(STORE_CHECK_INTERVAL)) => continue,
            }
        }
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            asked = tokio::time::timeout(STORE_CHECK_TIMEOUT, store.head(&key)) => asked,
        };
        match asked {
            Ok(Ok(_)) => health.store_answered(),
            Ok(Err(e)) => health.store_failed(e.to_string()),
            Err(_) => health.store_failed(format!(
                "no answer within {} s",
                STORE_CHECK_TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const INTERVAL: u64 = STORE_CHECK_INTERVAL.as_secs() * S;
    const QUIET: u64 = STORE_QUIET_PERIOD.as_secs() * S;

    #[test]
    fn the_store_is_asked_only_when_its_calls_do_not_tell() {
        let seen = |ok_ms, used_ms, checked_ms, down| StoreSeen {
            ok_ms,
            used_ms,
            checked_ms,
            down,
        };
        let cases = [
            // Idle since the last success: asked a quiet period later.
            (seen(100 * S, 90 * S, 0, false), 100 * S + QUIET),
            // A check that failed long ago does not hold back the quiet period.
            (seen(100 * S, 100 * S, 50 * S, false), 100 * S + QUIET),
            // A call waits since 200 s: asked an interval after it started.
            (seen(100 * S, 200 * S, 0, false), 200 * S + INTERVAL),
            // ... and an interval after a check that came later.
            (seen(100 * S, 200 * S, 203 * S, false), 203 * S + INTERVAL),
            // Not answering: asked again an interval after the last check, calls or not.
            (seen(100 * S, 200 * S, 210 * S, true), 210 * S + INTERVAL),
            (seen(100 * S, 100 * S, 210 * S, true), 210 * S + INTERVAL),
            // Never answered yet (start): asked at once.
            (seen(0, 0, 0, false), QUIET),
        ];
        for (seen, due) in cases {
            assert_eq!(next_check(seen), due, "{seen:?}");
        }
    }

    /// Runs the watcher's rule over `minutes` of simulated time in 100 ms steps: every
    /// `call_every` (if any) the worker makes a call answered `call_ms` later; the store
    /// answers checks unless `down_after` has passed. Returns the checks sent and when the
    /// store was first taken as not answering.
    fn simulate(
        minutes: u64,
        call_every: Option<u64>,
        call_ms: u64,
        down_after: Option<u64>,
    ) -> (u64, Option<u64>) {
        let mut seen = StoreSeen::default();
        let (mut checks, mut noticed) = (0, None);
        let mut answer_at = None;
        let start = 1_000_000 * S;
        for now in (start..start + minutes * 60 * S).step_by(100) {
            let dead = down_after.is_some_and(|d| now >= start + d);
            if call_every.is_some_and(|every| (now - start).is_multiple_of(every)) {
                if seen.used_ms <= seen.ok_ms {
                    seen.used_ms = now;
                }
                answer_at = (!dead).then_some(now + call_ms);
            }
            if answer_at.is_some_and(|at| now >= at) {
                seen.ok_ms = now;
                seen.down = false;
                answer_at = None;
            }
            if now >= next_check(seen) {
                checks += 1;
                if dead {
                    let timed_out = now + STORE_CHECK_TIMEOUT.as_secs() * S;
                    seen.checked_ms = timed_out;
                    seen.down = true;
                    noticed.get_or_insert(timed_out - start);
                } else {
                    seen.ok_ms = now;
                    seen.down = false;
                }
            }
        }
        (checks, noticed)
    }

    #[test]
    fn an_idle_workers_checks_per_minute_are_bounded() {
        let hour = 60;
        // No call at all (no heartbeat): one check per quiet period, the first at start.
        let (checks, _) = simulate(hour, None, 0, None);
        let bound = hour * 60 * S / QUIET + 1;
        assert!(
            checks <= bound,
            "{checks} checks in an hour (bound {bound})"
        );
        assert!(checks as f64 / hour as f64 <= 0.5 + 1.0 / hour as f64);
        // A heartbeat every minute (the default) proves the store: no check.
        let (checks, _) = simulate(hour, Some(60 * S), 50, None);
        assert_eq!(checks, 0);
        // Nor for a busy worker (a call every second).
        let (checks, _) = simulate(hour, Some(S), 80, None);
        assert_eq!(checks, 0);
    }

    #[test]
    fn a_store_that_stops_answering_is_noticed_within_its_bounds() {
        let (timeout, after) = (STORE_CHECK_TIMEOUT.as_secs() * S, 600 * S);
        // Idle, no heartbeat: within a quiet period and a check.
        let (_, noticed) = simulate(20, None, 0, Some(after));
        let noticed = noticed.expect("noticed");
        assert!(noticed <= after + QUIET + timeout, "{noticed}");
        // A heartbeat every minute: its unanswered write is checked after an interval.
        let (_, noticed) = simulate(20, Some(60 * S), 50, Some(after));
        let noticed = noticed.expect("noticed");
        assert!(noticed <= after + 60 * S + INTERVAL + timeout, "{noticed}");
        // Busy: within an interval and a check.
        let (_, noticed) = simulate(20, Some(S), 80, Some(after));
        let noticed = noticed.expect("noticed");
        assert!(noticed <= after + S + INTERVAL + timeout, "{noticed}");
        // While it does not answer: a check an interval after each timed-out one.
        let (checks, _) = simulate(20, None, 0, Some(0));
        assert!(checks <= 20 * 60 * S / (INTERVAL + timeout) + 1, "{checks}");
    }

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
