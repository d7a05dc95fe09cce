//! How the worker waits for a misconfiguration: the one rule of docs/design.md §6, used by
//! the startup checks (`cli/preflight.rs`: a setting out of range, a missing bucket,
//! subscription or dead-letter topic, a refused permission) and by the receive loop (a lane
//! whose pulls fail for good, `receive/faults.rs`).
//!
//! By default the worker stays up and not ready (its caller puts the sentence in `/readyz`),
//! logs the sentence when it is found and then at most once every [`LOG_INTERVAL`] while it
//! persists, rechecks with backoff ([`FIRST_RECHECK`] doubling to [`MAX_RECHECK`]) and goes
//! on by itself once it is fixed. On SaladCloud an exit would be a crash loop that burns
//! nodes (a node where the container exited non-zero is not given to the workload again),
//! and the fleet would recover from the fix only by being redeployed. With
//! `exit_on_misconfig` the worker exits with the sentence instead (code 7; for scripts).

use std::time::{Duration, Instant};

use super::receive::Backoff;

/// The first recheck of a misconfiguration: 1 s after it was found.
pub const FIRST_RECHECK: Duration = Duration::from_secs(1);
/// The longest wait between rechecks of a misconfiguration: 30 s.
pub const MAX_RECHECK: Duration = Duration::from_secs(30);
/// How often a misconfiguration that persists is logged again: once a minute.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One misconfiguration being waited for (or none): the recheck's backoff and what was
/// logged when.
#[derive(Debug)]
pub struct Misconfig {
    exit: bool,
    recheck: Backoff,
    logged: Option<(String, Instant)>,
}

impl Misconfig {
    /// Nothing waited for yet; `exit_on_misconfig`: a misconfiguration found is an exit.
    pub fn new(exit_on_misconfig: bool) -> Misconfig {
        Misconfig {
            exit: exit_on_misconfig,
            recheck: Backoff::new((FIRST_RECHECK, MAX_RECHECK)),
            logged: None,
        }
    }

    /// A check found `sentence` (again). `Err(sentence)`: exit now (`exit_on_misconfig`).
    /// `Ok(wait)`: the wait before the next recheck; the sentence was logged if it is new
    /// or was last logged [`LOG_INTERVAL`] ago.
    pub fn found(&mut self, sentence: &str) -> Result<Duration, String> {
        if self.exit {
            return Err(sentence.to_owned());
        }
        let due = self
            .logged
            .as_ref()
            .is_none_or(|(last, at)| last != sentence || at.elapsed() >= LOG_INTERVAL);
        if due {
            tracing::error!(
                "{sentence} (not ready; rechecking, and going on by itself once fixed)"
            );
            self.logged = Some((sentence.to_owned(), Instant::now()));
        }
        Ok(self.recheck.next_wait())
    }

    /// The check passed: if a misconfiguration was waited for, says that it is fixed and
    /// what the worker does now (`now`); the next one starts over.
    pub fn fixed(&mut self, now: &str) {
        if self.logged.take().is_some() {
            tracing::info!("the misconfiguration is fixed: {now}");
        }
        self.recheck.reset();
    }

    /// Whether a misconfiguration is waited for.
    pub fn waiting(&self) -> bool {
        self.logged.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits double from 1 s to 30 s; a fix starts them over; with `exit_on_misconfig` the
    /// sentence is the exit.
    #[test]
    fn rechecks_back_off_and_start_over_once_fixed() {
        let mut m = Misconfig::new(false);
        assert!(!m.waiting());
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                m.found("the subscription `s` does not exist")
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert!(m.waiting());
        m.fixed("starting");
        assert!(!m.waiting());
        assert_eq!(m.found("again").unwrap(), FIRST_RECHECK);
        let mut exits = Misconfig::new(true);
        assert_eq!(exits.found("bad"), Err("bad".to_owned()));
    }
}
