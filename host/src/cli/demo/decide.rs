//! The demo's one decision, pure: which worker to kill, and which of its jobs were seen
//! resuming on another worker. Tested by a table; the supervision loop (`super::supervise`)
//! only reads the store, applies the decision and draws.

use std::collections::BTreeMap;

use taskhost::ids::JobState;

/// The jobs a killed worker held: job id -> (durable step, ms since that checkpoint).
pub type Held = BTreeMap<String, (u64, u64)>;

/// One job as one poll read it: the part of its status and checkpoint header the decision
/// needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub job: String,
    pub state: JobState,
    /// Durable progress (done, total), from the checkpoint.
    pub progress: Option<(u64, u64)>,
    pub attempts: u32,
    /// The process id in the checkpoint's owner, if the owner is a worker id.
    pub owner_pid: Option<u32>,
    /// When the checkpoint was last written, in ms since the epoch.
    pub updated_ms: u64,
}

/// The kill: the worker's pid and the jobs it held then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    pub pid: u32,
    pub held: Held,
}

/// What to do after one poll.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kill this worker now (only while none has been killed).
    pub kill: Option<Kill>,
    /// Killed jobs now running or run elsewhere: job id -> the step it resumed from.
    pub resumed: Vec<(String, u64)>,
}

/// Decides from one poll (`seen`, in job order), the kill made so far (`killed`), the pids
/// of the demo's own workers (`ours`) and the time (`now_ms`):
///
/// - while no worker has been killed: the owner of the first running job whose durable
///   progress is at least 10% and not complete is killed, if it is one of `ours` (else
///   nobody, this poll); it held every job of that owner that is not done, each with its
///   durable step and the ms since its checkpoint (the work the kill loses);
/// - once one has: a job it held is resumed when it is on its second attempt or later and
///   its checkpoint's owner is no longer the killed worker.
pub fn decide(seen: &[Seen], killed: Option<&Kill>, ours: &[u32], now_ms: u64) -> Decision {
    match killed {
        Some(kill) => Decision {
            kill: None,
            resumed: seen
                .iter()
                .filter(|s| s.attempts >= 2 && s.owner_pid != Some(kill.pid))
                .filter_map(|s| Some((s.job.clone(), kill.held.get(&s.job)?.0)))
                .collect(),
        },
        None => Decision {
            kill: victim(seen, ours).map(|pid| Kill {
                pid,
                held: seen
                    .iter()
                    .filter(|s| s.owner_pid == Some(pid) && s.state != JobState::Done)
                    .map(|s| {
                        let step = s.progress.map_or(0, |p| p.0);
                        (s.job.clone(), (step, now_ms.saturating_sub(s.updated_ms)))
                    })
                    .collect(),
            }),
            resumed: Vec::new(),
        },
    }
}

/// The owner of the first running job with durable progress past 10%, if it is ours.
fn victim(seen: &[Seen], ours: &[u32]) -> Option<u32> {
    seen.iter()
        .find_map(|s| {
            let (done, total) = s.progress?;
            (s.state == JobState::Running && done.saturating_mul(10) >= total && done < total)
                .then_some(s.owner_pid)
                .flatten()
        })
        .filter(|pid| ours.contains(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::{Done, Queued, Running, Waiting};

    const NOW: u64 = 10_000;

    fn seen(job: &str, state: JobState, progress: Option<(u64, u64)>, owner: Option<u32>) -> Seen {
        Seen {
            job: job.into(),
            state,
            progress,
            attempts: 1,
            owner_pid: owner,
            updated_ms: NOW - 300,
        }
    }

    fn again(s: Seen) -> Seen {
        Seen { attempts: 2, ..s }
    }

    fn kill(pid: u32, held: &[(&str, u64)]) -> Kill {
        Kill {
            pid,
            held: held
                .iter()
                .map(|(j, step)| (j.to_string(), (*step, 300)))
                .collect(),
        }
    }

    /// Progress is the task's to report: numbers near `u64::MAX` neither wrap (release) nor
    /// panic (debug) in the 10% test.
    #[test]
    fn huge_progress_does_not_overflow() {
        let half = u64::MAX / 2;
        let big = [seen("a", Running, Some((half, u64::MAX)), Some(7))];
        assert_eq!(victim(&big, &[7]), Some(7));
        let small = [seen("a", Running, Some((1, u64::MAX)), Some(7))];
        assert_eq!(victim(&small, &[7]), None);
    }

    #[test]
    fn the_victim_and_the_resumed_jobs() {
        struct Case {
            name: &'static str,
            seen: Vec<Seen>,
            killed: Option<Kill>,
            want: Decision,
        }
        let ours = [7, 8];
        let resumed = |jobs: &[(&str, u64)]| Decision {
            kill: None,
            resumed: jobs.iter().map(|(j, s)| (j.to_string(), *s)).collect(),
        };
        let kills = |k: Kill| Decision {
            kill: Some(k),
            resumed: Vec::new(),
        };
        let cases = [
            Case {
                name: "nothing runs yet",
                seen: vec![seen("a", Queued, None, None)],
                killed: None,
                want: Decision::default(),
            },
            Case {
                name: "below 10%: too early",
                seen: vec![seen("a", Running, Some((9, 100)), Some(7))],
                killed: None,
                want: Decision::default(),
            },
            Case {
                name: "at 10%: its owner dies with every job it holds that is not done",
                seen: vec![
                    seen("a", Running, Some((10, 100)), Some(7)),
                    seen("b", Waiting, Some((3, 100)), Some(7)),
                    seen("c", Done, Some((100, 100)), Some(7)),
                    seen("d", Running, Some((50, 100)), Some(8)),
                    seen("e", Running, None, Some(7)),
                ],
                killed: None,
                want: kills(kill(7, &[("a", 10), ("b", 3), ("e", 0)])),
            },
            Case {
                name: "complete progress is not mid-job",
                seen: vec![seen("a", Running, Some((100, 100)), Some(7))],
                killed: None,
                want: Decision::default(),
            },
            Case {
                name: "a waiting job is not running",
                seen: vec![seen("a", Waiting, Some((50, 100)), Some(7))],
                killed: None,
                want: Decision::default(),
            },
            Case {
                name: "an owner that is no worker id is passed over",
                seen: vec![
                    seen("a", Running, Some((50, 100)), None),
                    seen("b", Running, Some((50, 100)), Some(8)),
                ],
                killed: None,
                want: kills(kill(8, &[("b", 50)])),
            },
            Case {
                name: "the first candidate is not ours: nobody this poll",
                seen: vec![
                    seen("a", Running, Some((50, 100)), Some(99)),
                    seen("b", Running, Some((50, 100)), Some(8)),
                ],
                killed: None,
                want: Decision::default(),
            },
            Case {
                name: "one kill only",
                seen: vec![seen("d", Running, Some((50, 100)), Some(8))],
                killed: Some(kill(7, &[("a", 10)])),
                want: Decision::default(),
            },
            Case {
                name: "resumed: held, a later attempt, another owner (or none yet)",
                seen: vec![
                    again(seen("a", Running, Some((12, 100)), Some(8))),
                    again(seen("b", Done, Some((100, 100)), None)),
                    again(seen("c", Running, Some((40, 100)), Some(7))),
                    seen("e", Running, Some((1, 100)), Some(8)),
                    again(seen("f", Running, Some((60, 100)), Some(8))),
                ],
                killed: Some(kill(7, &[("a", 10), ("b", 3), ("c", 30), ("e", 0)])),
                want: resumed(&[("a", 10), ("b", 3)]),
            },
        ];
        for case in cases {
            let got = decide(&case.seen, case.killed.as_ref(), &ours, NOW);
            assert_eq!(got, case.want, "{}", case.name);
        }
    }
}
