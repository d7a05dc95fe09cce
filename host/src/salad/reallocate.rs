//! Reallocation: asking SaladCloud (IMDS `POST /v1/reallocate`) to move this instance to
//! another node when the node itself is the problem. SaladCloud keeps the node from the
//! workload for a long time (48 h), so the thresholds are conservative settings and a
//! misconfiguration shared by every node never reallocates (the startup checks wait instead).
//!
//! The node is taken to be the problem when it fails a startup self-check (the binary's
//! `selfcheck`: its disk cannot be written, compiling takes far beyond the norm), after [`ReallocateConfig::after_host_faults`] host
//! faults in a row (a job's run failed for a reason that is not the task's, with no job done
//! between), or when its clock has disagreed with the store's for
//! [`ReallocateConfig::after_clock_off`]. The decision is [`reason`], a pure function; the
//! [`Reallocator`] records the events and asks at most once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::imds::Imds;

/// Default host faults in a row after which the node is given up: 3 (Kelpie's choice).
pub const DEFAULT_AFTER_HOST_FAULTS: u32 = 3;
/// Default time the node's clock may disagree with the store's before the node is given up:
/// 15 min (time synchronisation usually fixes a clock within minutes).
pub const DEFAULT_AFTER_CLOCK_OFF: Duration = Duration::from_secs(15 * 60);

/// When to give the node up; a zero disables that reason.
#[derive(Clone, Copy, Debug)]
pub struct ReallocateConfig {
    /// `REALLOCATE_AFTER_HOST_FAULTS`: host faults in a row (0: never).
    pub after_host_faults: u32,
    /// `REALLOCATE_AFTER_CLOCK_OFF_SECONDS`: how long the clock may stay off (0: never).
    pub after_clock_off: Duration,
}

impl Default for ReallocateConfig {
    fn default() -> Self {
        ReallocateConfig {
            after_host_faults: DEFAULT_AFTER_HOST_FAULTS,
            after_clock_off: DEFAULT_AFTER_CLOCK_OFF,
        }
    }
}

/// What the node has shown so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Host faults since the last job done (or the start).
    pub host_faults_in_a_row: u32,
    /// The last host fault's message.
    pub last_fault: Option<String>,
    /// How long the clock has disagreed with the store's, if it does now.
    pub clock_off_for: Option<Duration>,
}

/// Why the node should be given up, or `None` to stay.
pub fn reason(state: &NodeState, config: &ReallocateConfig) -> Option<String> {
    let faults = state.host_faults_in_a_row;
    if config.after_host_faults > 0 && faults >= config.after_host_faults {
        let last = state.last_fault.as_deref().unwrap_or("unknown");
        return Some(format!(
            "taskhost: {faults} host faults in a row on this node (the last: {last})"
        ));
    }
    match state.clock_off_for {
        Some(off) if !config.after_clock_off.is_zero() && off >= config.after_clock_off => {
            Some(format!(
                "taskhost: this node's clock has disagreed with the object store's for {} s",
                off.as_secs()
            ))
        }
        _ => None,
    }
}

/// Records the node's events and asks IMDS to reallocate once [`reason`] says so (once per
/// process; a failed request is logged and asked again at the next event).
#[derive(Debug)]
pub struct Reallocator {
    imds: Imds,
    config: ReallocateConfig,
    faults: Mutex<(u32, Option<String>)>,
    clock_off_since: Mutex<Option<Instant>>,
    asked: AtomicBool,
    /// Held while a request is made: events at once (host faults of several slots) wait for
    /// it and then find it asked, so the request is made once.
    asking: tokio::sync::Mutex<()>,
}

impl Reallocator {
    /// A reallocator that asks `imds` as `config` says.
    pub fn new(imds: Imds, config: ReallocateConfig) -> Reallocator {
        Reallocator {
            imds,
            config,
            faults: Mutex::default(),
            clock_off_since: Mutex::default(),
            asked: AtomicBool::new(false),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// A job's run ended in a host fault (`message`: what failed).
    pub async fn host_fault(&self, message: &str) {
        {
            let mut f = self.faults.lock().expect("never poisoned");
            f.0 = f.0.saturating_add(1);
            f.1 = Some(cut(message));
        }
        self.consider().await;
    }

    /// A job was done on this node: the faults so far were not the node's.
    pub fn job_done(&self) {
        *self.faults.lock().expect("never poisoned") = (0, None);
    }

    /// The clock check's latest finding: `off` or agreeing.
    pub async fn clock(&self, off: bool) {
        {
            let mut since = self.clock_off_since.lock().expect("never poisoned");
            *since = match (off, *since) {
                (true, None) => Some(Instant::now()),
                (true, s) => s,
                (false, _) => None,
            };
        }
        self.consider().await;
    }

    /// The node failed a startup self-check (`what`: which, and how): asks for another node
    /// at once. `true`: asked (or asked before); `false`: the request failed (logged).
    pub async fn self_check_failed(&self, what: &str) -> bool {
        let _asking = self.asking.lock().await;
        if self.asked.load(Ordering::Relaxed) {
            return true;
        }
        let why = format!(
            "taskhost: this node failed the startup self-check: {}",
            cut(what)
        );
        tracing::error!(reason = %why, "this node is the problem: asking SaladCloud to reallocate the instance");
        match self.imds.reallocate(&why).await {
            Ok(()) => {
                self.asked.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask for a reallocation; working on this node");
                false
            }
        }
    }

    /// What the node has shown so far.
    pub fn state(&self) -> NodeState {
        let (faults, last) = self.faults.lock().expect("never poisoned").clone();
        let since = *self.clock_off_since.lock().expect("never poisoned");
        NodeState {
            host_faults_in_a_row: faults,
            last_fault: last,
            clock_off_for: since.map(|s| s.elapsed()),
        }
    }

    async fn consider(&self) {
        let _asking = self.asking.lock().await;
        if self.asked.load(Ordering::Relaxed) {
            return;
        }
        let Some(why) = reason(&self.state(), &self.config) else {
            return;
        };
        tracing::error!(reason = %why, "this node is the problem: asking SaladCloud to reallocate the instance");
        match self.imds.reallocate(&why).await {
            Ok(()) => self.asked.store(true, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask for a reallocation; asking again at the next event")
            }
        }
    }
}

/// A fault message as a reason may quote it: at most 300 characters.
fn cut(message: &str) -> String {
    message.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision() {
        let c = ReallocateConfig::default();
        let never = ReallocateConfig {
            after_host_faults: 0,
            after_clock_off: Duration::ZERO,
        };
        let m = Duration::from_secs(60);
        let state = |faults, off: Option<Duration>| NodeState {
            host_faults_in_a_row: faults,
            last_fault: Some("instantiate failed".into()),
            clock_off_for: off,
        };
        // (state, config, reallocates)
        let table = [
            (state(0, None), c, false),
            (state(2, None), c, false),
            (state(3, None), c, true),
            (state(9, None), never, false),
            (state(0, Some(14 * m)), c, false),
            (state(0, Some(15 * m)), c, true),
            (state(0, Some(600 * m)), never, false),
        ];
        for (s, config, want) in table {
            assert_eq!(reason(&s, &config).is_some(), want, "{s:?} {config:?}");
        }
        let why = reason(&state(3, None), &c).unwrap();
        assert!(
            why.contains("3 host faults") && why.contains("instantiate failed"),
            "{why}"
        );
    }
}
