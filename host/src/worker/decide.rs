//! What happens to a message once its job has ended: a pure function, tested by a table.

use std::time::Duration;

use super::{FIRST_RETRY_DELAY, MAX_RETRY_DELAY};
use crate::exec::JobEnd;

/// What to do with a message once its job has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Done for good: acknowledge.
    Ack,
    /// Hand back after this delay (zero: at once, for another worker).
    HandBack(Duration),
    /// Publish to the dead-letter topic with this reason, then acknowledge.
    DeadLetter(String),
}

/// The message's fate for a job end: a pure function of the end, the delivery attempt (1 for
/// the first), the failure limit and the ack deadline.
pub fn decide(end: &JobEnd, attempt: u32, max_failures: u32, ack_deadline: Duration) -> Decision {
    match end {
        JobEnd::Done { .. } | JobEnd::AlreadyDone | JobEnd::Stopped(_) => Decision::Ack,
        JobEnd::TaskFailed(msg) => Decision::DeadLetter(format!("the task failed: {msg}")),
        JobEnd::Trapped {
            kind,
            message,
            failures,
        } if *failures >= max_failures => Decision::DeadLetter(format!(
            "failed {failures} times (limit {max_failures}); last: {kind:?}: {message}"
        )),
        JobEnd::Trapped { .. }
        | JobEnd::Storage(_)
        | JobEnd::HostFault(_)
        | JobEnd::HostPanic(_) => Decision::HandBack(retry_delay(attempt)),
        JobEnd::Busy { .. } => Decision::HandBack(busy_delay(attempt, ack_deadline)),
        // The job is someone else's now, or ours is over: hand back at once (a no-op when
        // the lease has lapsed, as it has by then).
        JobEnd::Conflict | JobEnd::LeaseLost | JobEnd::Cancelled => {
            Decision::HandBack(Duration::ZERO)
        }
        JobEnd::Unreadable(msg) => {
            Decision::DeadLetter(format!("the job's checkpoint cannot be used: {msg}"))
        }
        JobEnd::OtherWork(msg) => Decision::DeadLetter(msg.clone()),
        JobEnd::Crashed { crashes, last } => Decision::DeadLetter(format!(
            "its last {crashes} runs ended without a clean end (the worker was killed, ran out \
             of memory or crashed) and saved nothing between (MAX_CRASHES); last failure: {last}"
        )),
        JobEnd::StorageRepeated { runs, last } => Decision::DeadLetter(format!(
            "the store failed this job's own input or artifact calls in {runs} runs in a row \
             while it answered the rest; last: {last}"
        )),
    }
}

/// [`FIRST_RETRY_DELAY`] doubled per delivery attempt, capped at [`MAX_RETRY_DELAY`].
pub fn retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (FIRST_RETRY_DELAY * (1u32 << doublings)).min(MAX_RETRY_DELAY)
}

/// A busy job's message comes back after at least one lease period, doubling per attempt.
pub fn busy_delay(attempt: u32, ack_deadline: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (ack_deadline * (1u32 << doublings)).clamp(ack_deadline, MAX_RETRY_DELAY.max(ack_deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TrapKind;

    #[test]
    fn decisions() {
        let d = Duration::from_secs(10);
        let trapped = |failures| JobEnd::Trapped {
            kind: TrapKind::Panic,
            message: "boom".into(),
            failures,
        };
        let cases: Vec<(JobEnd, u32, Decision)> = vec![
            (
                JobEnd::Done {
                    result: "r".into(),
                    attempt: 1,
                },
                1,
                Decision::Ack,
            ),
            (JobEnd::AlreadyDone, 7, Decision::Ack),
            (
                JobEnd::TaskFailed("bad input".into()),
                1,
                Decision::DeadLetter("the task failed: bad input".into()),
            ),
            (trapped(1), 1, Decision::HandBack(Duration::from_secs(10))),
            (trapped(2), 2, Decision::HandBack(Duration::from_secs(20))),
            (
                trapped(3),
                3,
                Decision::DeadLetter("failed 3 times (limit 3); last: Panic: boom".into()),
            ),
            (
                JobEnd::Storage("down".into()),
                1,
                Decision::HandBack(Duration::from_secs(10)),
            ),
            (
                JobEnd::Storage("down".into()),
                4,
                Decision::HandBack(Duration::from_secs(80)),
            ),
            (
                JobEnd::Storage("down".into()),
                99,
                Decision::HandBack(MAX_RETRY_DELAY),
            ),
            (
                JobEnd::Busy {
                    owner: "w".into(),
                    until_ms: 0,
                },
                1,
                Decision::HandBack(Duration::from_secs(10)),
            ),
            (
                JobEnd::Busy {
                    owner: "w".into(),
                    until_ms: 0,
                },
                3,
                Decision::HandBack(Duration::from_secs(40)),
            ),
            (
                JobEnd::HostFault("pool".into()),
                2,
                Decision::HandBack(Duration::from_secs(20)),
            ),
            (
                JobEnd::OtherWork("stored for other work".into()),
                1,
                Decision::DeadLetter("stored for other work".into()),
            ),
            (
                JobEnd::Crashed {
                    crashes: 3,
                    last: "none recorded".into(),
                },
                4,
                Decision::DeadLetter(
                    "its last 3 runs ended without a clean end (the worker was killed, ran out \
                     of memory or crashed) and saved nothing between (MAX_CRASHES); last \
                     failure: none recorded"
                        .into(),
                ),
            ),
            (
                JobEnd::StorageRepeated {
                    runs: 5,
                    last: "no such upload".into(),
                },
                5,
                Decision::DeadLetter(
                    "the store failed this job's own input or artifact calls in 5 runs in a \
                     row while it answered the rest; last: no such upload"
                        .into(),
                ),
            ),
            (JobEnd::Conflict, 1, Decision::HandBack(Duration::ZERO)),
            (JobEnd::LeaseLost, 1, Decision::HandBack(Duration::ZERO)),
            (
                JobEnd::Stopped(crate::checkpoint::Control {
                    action: crate::checkpoint::Action::Cancel,
                    by: "me".into(),
                    at_ms: 1,
                }),
                9,
                Decision::Ack,
            ),
            (JobEnd::Cancelled, 1, Decision::HandBack(Duration::ZERO)),
            (
                JobEnd::Unreadable("format 9".into()),
                1,
                Decision::DeadLetter("the job's checkpoint cannot be used: format 9".into()),
            ),
        ];
        for (end, attempt, want) in cases {
            assert_eq!(
                decide(&end, attempt, 3, d),
                want,
                "{end:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn busy_delay_is_at_least_one_lease_even_beyond_the_cap() {
        let long = Duration::from_secs(900);
        assert_eq!(busy_delay(1, long), long);
        assert_eq!(busy_delay(50, Duration::from_secs(60)), MAX_RETRY_DELAY);
    }
}
