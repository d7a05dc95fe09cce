//! The autoscaling decision of `taskhost autoscale`: how many replicas a container group needs
//! for the backlog, as a pure function ([`decide`]) of the policy, the backlog, the group's
//! state and what earlier rounds remembered ([`Memory`]), table-tested.
//!
//! The rules:
//! - **Need:** `ceil(backlog / slots_per_replica)`, between `min` and `max`; the backlog is the
//!   jobs that want a slot (queued, running, and waiting: a job with a checkpoint whose lease
//!   lapsed, which comes back to a worker).
//! - **Up at once:** a need above the replicas is set in this round; a stopped group with a
//!   need is started with that many replicas.
//! - **Down after a quiet period:** a need below the replicas must last `quiet` before the
//!   group shrinks, and then to the highest need seen meanwhile (a dip does not shed replicas
//!   a burst needs a minute later). Scale-ins remove the instances with the lowest deletion
//!   cost first, which the worker keeps at 0 while idle.
//! - **Stopped at zero:** a need of 0 (only with `min` 0) after the quiet period stops the
//!   group: stopped, it costs nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most replicas SaladCloud's API accepts for a container group.
pub const MAX_REPLICAS: u32 = 500;
/// `AUTOSCALE_QUIET_SECONDS`'s default: 10 minutes.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(600);
/// `AUTOSCALE_PERIOD_SECONDS`'s default: 5 minutes (Kelpie's period).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

/// The settings of the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Jobs one replica runs at once (`WORKER_SLOTS` of the workers), at least 1.
    pub slots_per_replica: u32,
    /// Fewest replicas (0: the group may be stopped).
    pub min: u32,
    /// Most replicas, `min..=`[`MAX_REPLICAS`].
    pub max: u32,
    /// How long a lower need must last before the group shrinks.
    pub quiet: Duration,
}

impl Policy {
    /// `Err`: the sentence saying which setting is out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.slots_per_replica == 0 {
            return Err("--slots-per-replica must be at least 1".into());
        }
        if self.max == 0 || self.max > MAX_REPLICAS {
            return Err(format!(
                "--max must be 1..={MAX_REPLICAS} (SaladCloud's limit), not {}",
                self.max
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "--min ({}) must not exceed --max ({})",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

/// The jobs that want a slot, by state (taskhost's own records: `status::scan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Submitted, never started.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Started, not running now (its lease lapsed or it was handed back): comes back.
    pub waiting: u64,
}

impl Backlog {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.waiting
    }
}

/// The container group as SaladCloud reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its replica count.
    pub replicas: u32,
    /// Started (running, pending or deploying); `false`: stopped (or ended).
    pub started: bool,
}

/// What the decision remembers from one round to the next (kept in a state file by
/// `taskhost autoscale`, so `--once` from cron keeps the quiet period too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Since when (ms since the Unix epoch) the need has stayed below the replicas.
    pub below_since_ms: Option<u64>,
    /// The highest need seen since then.
    pub peak: u32,
}

/// What to do to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Hold,
    /// Set the replica count of the started group.
    Scale {
        /// The replicas now.
        from: u32,
        /// The replicas wanted.
        to: u32,
    },
    /// Set the replica count, then start the stopped group.
    Start {
        /// The replicas wanted.
        replicas: u32,
    },
    /// Stop the group (the need was 0 for the quiet period).
    Stop,
}

/// One round's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The replicas the backlog needs now (between `min` and `max`).
    pub need: u32,
    /// What to do.
    pub action: Action,
    /// What the next round must remember (keep it only once the action succeeded).
    pub memory: Memory,
    /// Why, in a few words (for the log line and `--dry-run`).
    pub why: String,
}

/// The replicas `backlog` needs under `policy`: `ceil(total / slots)` between `min` and `max`.
pub fn need(policy: &Policy, backlog: &Backlog) -> u32 {
    let slots = u64::from(policy.slots_per_replica.max(1));
    let replicas = backlog.total().div_ceil(slots);
    u32::try_from(replicas)
        .unwrap_or(u32::MAX)
        .clamp(policy.min, policy.max.max(policy.min))
}

/// The round's decision at `now_ms` (ms since the Unix epoch), given what the previous round
/// remembered (`Memory::default()` the first time). Pure.
pub fn decide(
    policy: &Policy,
    backlog: &Backlog,
    group: &Group,
    memory: &Memory,
    now_ms: u64,
) -> Decision {
    let need = need(policy, backlog);
    let done = |action, why: String| Decision {
        need,
        action,
        memory: Memory::default(),
        why,
    };
    if !group.started {
        return if need == 0 {
            done(Action::Hold, "stopped, and no job wants a slot".into())
        } else {
            done(
                Action::Start { replicas: need },
                format!("stopped, and {} job(s) want a slot", backlog.total()),
            )
        };
    }
    let current = group.replicas;
    if need > current {
        return done(
            Action::Scale {
                from: current,
                to: need,
            },
            format!("{} job(s) want a slot", backlog.total()),
        );
    }
    if need == current {
        return done(Action::Hold, "the replicas match the backlog".into());
    }
    // Fewer needed: only after the quiet period, and to the highest need meanwhile.
    let since = memory.below_since_ms.unwrap_or(now_ms).min(now_ms);
    let peak = if memory.below_since_ms.is_some() {
        memory.peak.max(need)
    } else {
        need
    };
    let quiet_ms = u64::try_from(policy.quiet.as_millis()).unwrap_or(u64::MAX);
    let waited = now_ms - since;
    if waited < quiet_ms {
        return Decision {
            need,
            action: Action::Hold,
            memory: Memory {
                below_since_ms: Some(since),
                peak,
            },
            why: format!(
                "fewer needed for {} s of the {} s quiet period",
                waited / 1000,
                quiet_ms / 1000
            ),
        };
    }
    let target = peak.min(current);
    let why = format!("fewer needed for {} s", waited / 1000);
    match target {
        0 => done(Action::Stop, why),
        t if t == current => done(Action::Hold, "the replicas match the backlog".into()),
        t => done(
            Action::Scale {
                from: current,
                to: t,
            },
            why,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = 600_000;

    fn policy(min: u32, max: u32) -> Policy {
        Policy {
            slots_per_replica: 4,
            min,
            max,
            quiet: Duration::from_millis(Q),
        }
    }

    fn jobs(queued: u64, running: u64) -> Backlog {
        Backlog {
            queued,
            running,
            waiting: 0,
        }
    }

    fn started(replicas: u32) -> Group {
        Group {
            replicas,
            started: true,
        }
    }

    const STOPPED: Group = Group {
        replicas: 3,
        started: false,
    };

    fn below(since: u64, peak: u32) -> Memory {
        Memory {
            below_since_ms: Some(since),
            peak,
        }
    }

    #[test]
    fn need_is_the_backlog_over_the_slots_within_the_bounds() {
        let p = policy(0, 10);
        for (backlog, want) in [
            (jobs(0, 0), 0),
            (jobs(1, 0), 1),
            (jobs(3, 1), 1),
            (jobs(4, 1), 2),
            (
                Backlog {
                    queued: 0,
                    running: 0,
                    waiting: 5,
                },
                2,
            ),
            (jobs(1000, 0), 10),
            (jobs(u64::MAX / 2, u64::MAX / 2), 10),
        ] {
            assert_eq!(need(&p, &backlog), want, "{backlog:?}");
        }
        assert_eq!(need(&policy(2, 10), &jobs(0, 0)), 2);
        assert_eq!(need(&policy(2, 10), &jobs(1, 0)), 2);
    }

    /// A row: name, (policy, backlog, group, memory, now) → (action, memory kept).
    type Case = (
        &'static str,
        Policy,
        Backlog,
        Group,
        Memory,
        u64,
        Action,
        Memory,
    );

    /// One round: (policy, backlog, group, memory, now) → (action, memory kept).
    #[test]
    fn the_decision_table() {
        let t = 10_000_000;
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("stopped, nothing to do",
             policy(0, 10), jobs(0, 0), STOPPED, Memory::default(), t,
             Action::Hold, Memory::default()),
            ("stopped, jobs appear: start with what they need",
             policy(0, 10), jobs(9, 0), STOPPED, Memory::default(), t,
             Action::Start { replicas: 3 }, Memory::default()),
            ("stopped, min 1, no jobs: start at the minimum",
             policy(1, 10), jobs(0, 0), STOPPED, Memory::default(), t,
             Action::Start { replicas: 1 }, Memory::default()),
            ("up at once",
             policy(0, 10), jobs(20, 4), started(2), Memory::default(), t,
             Action::Scale { from: 2, to: 6 }, Memory::default()),
            ("up at once, capped at max",
             policy(0, 5), jobs(200, 0), started(2), Memory::default(), t,
             Action::Scale { from: 2, to: 5 }, Memory::default()),
            ("up clears a pending scale-down",
             policy(0, 10), jobs(20, 0), started(2), below(t - 1000, 1), t,
             Action::Scale { from: 2, to: 5 }, Memory::default()),
            ("matching: hold, forget",
             policy(0, 10), jobs(6, 2), started(2), below(t - 1000, 1), t,
             Action::Hold, Memory::default()),
            ("fewer needed: the quiet period starts",
             policy(0, 10), jobs(0, 4), started(3), Memory::default(), t,
             Action::Hold, below(t, 1)),
            ("fewer needed, within the quiet period: hold, keep the peak",
             policy(0, 10), jobs(0, 1), started(3), below(t - Q + 1, 2), t,
             Action::Hold, below(t - Q + 1, 2)),
            ("fewer needed for the quiet period: down to the peak",
             policy(0, 10), jobs(0, 1), started(3), below(t - Q, 2), t,
             Action::Scale { from: 3, to: 2 }, Memory::default()),
            ("fewer needed for the quiet period, no higher peak: down to the need",
             policy(0, 10), jobs(0, 4), started(3), below(t - Q, 1), t,
             Action::Scale { from: 3, to: 1 }, Memory::default()),
            ("nothing for the quiet period: stop",
             policy(0, 10), jobs(0, 0), started(3), below(t - Q, 0), t,
             Action::Stop, Memory::default()),
            ("nothing, but min 1: down to 1, never stopped",
             policy(1, 10), jobs(0, 0), started(3), below(t - Q, 0), t,
             Action::Scale { from: 3, to: 1 }, Memory::default()),
            ("nothing for less than the quiet period: not stopped yet",
             policy(0, 10), jobs(0, 0), started(3), below(t - 5000, 0), t,
             Action::Hold, below(t - 5000, 0)),
            ("a clock that went back: the quiet period starts again, never negative",
             policy(0, 10), jobs(0, 0), started(3), below(t + 5000, 0), t,
             Action::Hold, below(t, 0)),
            ("running with 0 replicas and no jobs: nothing to do",
             policy(0, 10), jobs(0, 0), started(0), Memory::default(), t,
             Action::Hold, Memory::default()),
        ];
        for (name, p, backlog, group, memory, now, action, kept) in cases {
            let d = decide(&p, &backlog, &group, &memory, now);
            assert_eq!(d.action, action, "{name}: {d:?}");
            assert_eq!(d.memory, kept, "{name}: {d:?}");
            assert!(!d.why.is_empty(), "{name}");
        }
    }

    /// Rounds in a row: a burst, a dip within the quiet period, then quiet: the group never
    /// shrinks before the period, shrinks to the highest need of the period, then stops.
    #[test]
    fn a_day_of_rounds() {
        let p = policy(0, 10);
        let mut group = started(0);
        let mut memory = Memory::default();
        let mut log = Vec::new();
        let minute = 60_000;
        let backlog_at = |m: u64| match m {
            0..=9 => jobs(30, 10), // 10 replicas
            10..=12 => jobs(0, 8), // 2
            13 => jobs(10, 8),     // 5: a burst inside the quiet period
            14..=30 => jobs(0, 4), // 1
            _ => jobs(0, 0),       // 0
        };
        for m in 0..60 {
            let d = decide(&p, &backlog_at(m), &group, &memory, m * minute);
            match d.action {
                Action::Hold => {}
                Action::Scale { to, .. } => group.replicas = to,
                Action::Start { replicas } => {
                    group = started(replicas);
                }
                Action::Stop => group.started = false,
            }
            memory = d.memory;
            if d.action != Action::Hold {
                log.push((m, d.action));
            }
        }
        assert_eq!(
            log,
            [
                (0, Action::Scale { from: 0, to: 10 }),
                // Below 10 from minute 10; the burst at 13 (5) is the period's peak.
                (20, Action::Scale { from: 10, to: 5 }),
                // Below 5 from minute 21 (the need is 1, then 0 at 31).
                (31, Action::Scale { from: 5, to: 1 }),
                // Below 1 from minute 32.
                (42, Action::Stop),
            ]
        );
    }

    #[test]
    fn the_policy_checks_its_ranges() {
        assert!(policy(0, 10).check().is_ok());
        assert!(policy(0, MAX_REPLICAS).check().is_ok());
        for bad in [
            Policy {
                slots_per_replica: 0,
                ..policy(0, 10)
            },
            policy(0, 0),
            policy(0, MAX_REPLICAS + 1),
            policy(11, 10),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
