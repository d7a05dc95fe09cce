//! The ownership rule, in one place (docs/design.md §5, "Ownership in the checkpoint
//! header"): what a lease recorded in a checkpoint header means to a reader whose clock may
//! differ from the writer's by up to [`CLOCK_SKEW_ALLOWANCE`].
//!
//! - A reader takes a recorded lease as [`Recorded::Live`] while it ends more than one skew
//!   allowance ahead of the reader's clock, as [`Recorded::Ended`] once it does not (released
//!   leases are 0), and as [`Recorded::Skewed`] when it ends further ahead than an owner whose
//!   clock agrees could have written (a whole lease period plus the allowance).
//! - The owner may write for the job ([`writable_for`]) while its recorded lease ends more
//!   than twice the allowance ahead: then no reader within one allowance of its clock can
//!   take the lease as ended.
//!
//! Used by the claim (take over or not), the end of a job and the artifact fence (may still
//! write), `status` and `job reset` (is someone running it).

use std::time::Duration;

/// How far apart two machines' clocks may be: a claim treats an owner's lease as expired
/// this long before its recorded end, and a finishing owner needs at least twice this much of
/// its lease left to write the result. 2 s, or a fifth of the owner's lease period if that is
/// shorter (see [`skew_allowance_ms`]).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(2);

/// The longest lease an owner records (Pub/Sub's longest ack deadline): the period assumed
/// when a header does not say.
const LONGEST_PERIOD_MS: u64 = crate::queue::MAX_ACK_DEADLINE_SECS as u64 * 1000;

/// The clock-skew allowance for a lease of `period_ms` (0: unknown): at most a fifth of the
/// period. An owner refreshes its lease every half period, so it always has more than twice
/// the allowance left: it is never taken over, and it can finish.
pub fn skew_allowance_ms(period_ms: u64) -> u64 {
    let max = CLOCK_SKEW_ALLOWANCE.as_millis() as u64;
    if period_ms == 0 {
        max
    } else {
        max.min(period_ms / 5)
    }
}

/// What a reader makes of the lease a checkpoint records, by its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The owner holds the job: a claim turns away; `status` says running.
    Live,
    /// Released (0), or ends within one skew allowance: a claim takes over.
    Ended,
    /// Ends further ahead than an owner whose clock agrees with ours could have written (a
    /// whole lease period plus [`CLOCK_SKEW_ALLOWANCE`]): the owner's clock is ahead, so the
    /// record says nothing about it: a claim takes over (with a warning).
    Skewed,
}

/// The lease rule: a recorded lease of `period_ms` (0: unknown, taken as the longest, 600 s;
/// no owner's is longer, so a longer one, a damaged header's, counts as the longest too) that
/// ends at `until_ms` has ended once `until_ms <= now + skew allowance`, and is skewed when
/// `until_ms > now + period + CLOCK_SKEW_ALLOWANCE`.
pub fn recorded(until_ms: u64, period_ms: u64, now_ms: u64) -> Recorded {
    let period = match period_ms {
        0 => LONGEST_PERIOD_MS,
        p => p.min(LONGEST_PERIOD_MS),
    };
    let allowance = CLOCK_SKEW_ALLOWANCE.as_millis() as u64;
    if until_ms <= now_ms.saturating_add(skew_allowance_ms(period_ms)) {
        Recorded::Ended
    } else if until_ms > now_ms.saturating_add(period).saturating_add(allowance) {
        Recorded::Skewed
    } else {
        Recorded::Live
    }
}

/// How long an owner whose last checkpoint write recorded `until_ms` (for a lease of
/// `period_ms`) may still write for the job at `now_ms`: its lease less twice the skew
/// allowance. `None` once no time is left.
pub fn writable_for(until_ms: u64, period_ms: u64, now_ms: u64) -> Option<Duration> {
    let margin = 2 * skew_allowance_ms(period_ms);
    let left = until_ms.checked_sub(now_ms.saturating_add(margin))?;
    (left > 0).then(|| Duration::from_millis(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_reader_makes_of_a_recorded_lease() {
        let now = 1_000_000_000;
        let s = 1000;
        // (until, period, what it means): skew allowance 2 s, or a fifth of the period;
        // skewed past a period (600 s when unknown) plus 2 s.
        let table = [
            (0, 60 * s, Recorded::Ended),
            (now - s, 60 * s, Recorded::Ended),
            (now + 2 * s, 60 * s, Recorded::Ended),
            (now + 2 * s + 1, 60 * s, Recorded::Live),
            (now + 60 * s, 60 * s, Recorded::Live),
            (now + 62 * s, 60 * s, Recorded::Live),
            (now + 62 * s + 1, 60 * s, Recorded::Skewed),
            (now + 3600 * s, 60 * s, Recorded::Skewed),
            (now + 200, s, Recorded::Ended),
            (now + 201, s, Recorded::Live),
            (now + 3 * s, s, Recorded::Live),
            (now + 3 * s + 1, s, Recorded::Skewed),
            (now + 602 * s, 0, Recorded::Live),
            (now + 602 * s + 1, 0, Recorded::Skewed),
            // A period no owner has (a damaged header's): the longest, never a lease that
            // holds the job for ever.
            (now + 602 * s, u64::MAX / 2, Recorded::Live),
            (now + 602 * s + 1, u64::MAX / 2, Recorded::Skewed),
            (now + 100_000_000 * s, 1_000_000_000 * s, Recorded::Skewed),
            (u64::MAX, 60 * s, Recorded::Skewed),
        ];
        for (until, period, want) in table {
            assert_eq!(
                recorded(until, period, now),
                want,
                "until now{:+} ms, period {period} ms",
                until as i128 - now as i128
            );
        }
    }

    #[test]
    fn how_long_an_owner_may_still_write() {
        let now = 1_000_000_000;
        let s = 1000;
        // (until, period, time left): twice the allowance is kept back.
        let table = [
            (0, 60 * s, None),
            (now, 60 * s, None),
            (now + 4 * s, 60 * s, None),
            (now + 4 * s + 1, 60 * s, Some(1)),
            (now + 30 * s, 60 * s, Some(26 * s)),
            (now + 30 * s, 0, Some(26 * s)),
            (now + 5 * s, 10 * s, Some(s)),
            (now + 400, s, None),
            (now + 401, s, Some(1)),
            (u64::MAX, 60 * s, Some(u64::MAX - now - 4 * s)),
        ];
        for (until, period, want) in table {
            assert_eq!(
                writable_for(until, period, now),
                want.map(Duration::from_millis),
                "until now{:+} ms, period {period} ms",
                until as i128 - now as i128
            );
        }
        // The owner may write only while every reader within one allowance sees it live.
        // (An owner records at most one lease period ahead of its clock.)
        for period in [0, s, 10 * s, 60 * s, 600 * s] {
            let longest = if period == 0 { 600 * s } else { period };
            for ahead in (0..=longest).step_by(97) {
                let until = now + ahead;
                if writable_for(until, period, now).is_some() {
                    let skew = skew_allowance_ms(period);
                    assert_eq!(recorded(until, period, now + skew), Recorded::Live);
                }
            }
        }
    }
}
