//! The receive loop's pacing: backoff, idle waits, the breaker.

use super::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn an_empty_pull_waits_50_ms_doubling_to_500_ms_and_work_starts_it_over() {
    // (event, the wait after it if the pull was empty)
    let table: &[(&str, Option<u64>)] = &[
        ("empty", Some(50)),
        ("empty", Some(100)),
        ("empty", Some(200)),
        ("empty", Some(400)),
        ("empty", Some(500)),
        ("empty", Some(500)),
        ("work", None),
        ("empty", Some(50)),
        ("empty", Some(100)),
        ("work", None),
        ("work", None),
        ("empty", Some(50)),
    ];
    let mut idle = IdleBackoff::default();
    for (i, (event, want)) in table.iter().enumerate() {
        let got = match *event {
            "empty" => Some(idle.empty()),
            _ => {
                idle.work();
                None
            }
        };
        assert_eq!(got, want.map(MS), "step {i} ({event})");
    }
    assert_eq!(FIRST_IDLE_WAIT, MS(50));
    assert_eq!(MAX_IDLE_WAIT, MS(500));
}

#[test]
fn a_backoff_doubles_to_its_cap_and_starts_over() {
    let mut b = Backoff::new(PULL_FAILURE_BACKOFF);
    let waits: Vec<u64> = (0..8).map(|_| b.next_wait().as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    b.reset();
    assert_eq!(b.next_wait(), Duration::from_secs(1));
}

/// One step of the breaker's table: what happens, and what it must say.
enum Step {
    /// A free slot with this many storage failures in a row: pull or probe?
    Admit(u32, Admit),
    /// The probe's answer (None: it worked; else the error's kind), and the wait before the next (None: closed).
    Probed(Option<ErrorKind>, Option<u64>),
}

fn check(steps: &[(Step, BreakerState)]) {
    let mut b = Breaker::new(3);
    assert_eq!(b.state(), BreakerState::Closed);
    for (i, (step, state)) in steps.iter().enumerate() {
        match step {
            Step::Admit(n, want) => assert_eq!(b.admit(*n), *want, "step {i}"),
            Step::Probed(answer, want) => {
                let error = answer.map(|kind| StoreError::new(kind, anyhow::anyhow!("down")));
                assert_eq!(
                    b.probed(error.as_ref().map_or(Ok(()), Err)),
                    want.map(Duration::from_secs),
                    "step {i}"
                )
            }
        }
        assert_eq!(b.state(), *state, "state after step {i}");
    }
}

#[test]
fn the_breaker_stays_closed_below_the_threshold() {
    use BreakerState::*;
    check(&[
        (Step::Admit(0, Admit::Pull), Closed),
        (Step::Admit(1, Admit::Pull), Closed),
        (Step::Admit(2, Admit::Pull), Closed),
        (Step::Admit(0, Admit::Pull), Closed),
    ]);
}

#[test]
fn the_breaker_opens_at_the_threshold_and_stays_open_while_probes_fail() {
    use BreakerState::*;
    let down = Some(ErrorKind::Transient);
    check(&[
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(1)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(2)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(Some(ErrorKind::AccessDenied), Some(4)), Open),
        (Step::Admit(7, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(8)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(16)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(30)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(30)), Open),
    ]);
}

#[test]
fn a_probe_that_answers_closes_the_breaker_and_its_backoff_starts_over() {
    use BreakerState::*;
    let down = Some(ErrorKind::Throttled);
    check(&[
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(1)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(2)), Open),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(None, None), Closed),
        // The loop resets the count on a good probe.
        (Step::Admit(0, Admit::Pull), Closed),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(down, Some(1)), Open),
    ]);
}

#[test]
fn a_job_that_succeeds_while_the_breaker_is_open_closes_it() {
    use BreakerState::*;
    check(&[
        (Step::Admit(4, Admit::Probe), HalfOpen),
        (Step::Probed(Some(ErrorKind::Transient), Some(1)), Open),
        // A job still running then wrote its result: the count went back to 0.
        (Step::Admit(0, Admit::Pull), Closed),
        (Step::Admit(3, Admit::Probe), HalfOpen),
        (Step::Probed(Some(ErrorKind::Transient), Some(1)), Open),
    ]);
}

#[test]
fn the_failure_count_is_shared_and_reset_by_any_answer() {
    let f = StorageFailures::default();
    let b = Breaker::new(BREAKER_THRESHOLD);
    for _ in 0..BREAKER_THRESHOLD - 1 {
        f.failed();
    }
    assert!(!b.tripped(f.in_a_row()));
    f.failed();
    assert!(b.tripped(f.in_a_row()));
    f.answered();
    assert_eq!(f.in_a_row(), 0);
    assert!(!b.tripped(f.in_a_row()));
}

#[test]
fn an_idle_worker_gives_memory_back_once_per_spell_after_10_s() {
    // (seconds since the start, event: "empty" with N running, or "work"; release now?)
    let table: &[(u64, &str, usize, bool)] = &[
        (0, "empty", 0, false), // the spell starts
        (9, "empty", 0, false),
        (10, "empty", 0, true),
        (11, "empty", 0, false), // once per spell
        (60, "empty", 0, false),
        (61, "work", 0, false),
        (62, "empty", 1, false), // a job runs: not idle
        (80, "empty", 1, false),
        (81, "empty", 0, false), // the job ended: a new spell starts here
        (90, "empty", 0, false),
        (91, "empty", 0, true),
        (92, "work", 0, false),
        (93, "empty", 0, false),
        (95, "empty", 2, false), // jobs again, before 10 s: the spell starts over
        (96, "empty", 0, false),
        (105, "empty", 0, false),
        (106, "empty", 0, true),
    ];
    let start = Instant::now();
    let mut release = IdleRelease::default();
    for (i, &(at, event, running, want)) in table.iter().enumerate() {
        let now = start + Duration::from_secs(at);
        let got = match event {
            "empty" => release.empty(now, running),
            _ => {
                release.work();
                false
            }
        };
        assert_eq!(
            got, want,
            "step {i} (at {at} s, {event}, {running} running)"
        );
    }
    assert_eq!(IDLE_RELEASE_AFTER, Duration::from_secs(10));
}
