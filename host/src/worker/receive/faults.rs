//! Lanes whose pulls fail for good: a subscription deleted (and perhaps recreated), a
//! permission refused, credentials the server refuses, an embedded queue whose file cannot
//! be written. Each is a misconfiguration of its lane, waited for as docs/design.md §6 says
//! ([`Misconfig`]): the lane is not pulled until its recheck is due (a pull is the recheck),
//! the other lanes are pulled as usual and the running jobs run on; `/readyz` names every
//! such lane. Transient failures are not faults: the loop backs off from them as a whole.

use std::time::Instant;

use crate::queue::QueueError;
use crate::worker::misconfig::Misconfig;

/// One lane's fault, while it lasts.
#[derive(Debug)]
struct Fault {
    sentence: String,
    recheck_at: Instant,
}

/// Each lane's fault (by the lane's index), and how each is waited for.
#[derive(Debug)]
pub(super) struct LaneFaults {
    faults: Vec<Option<Fault>>,
    waits: Vec<Misconfig>,
}

impl LaneFaults {
    /// `lanes` lanes, none faulty; `exit_on_misconfig`: a fault ends the loop.
    pub(super) fn new(lanes: usize, exit_on_misconfig: bool) -> LaneFaults {
        LaneFaults {
            faults: (0..lanes).map(|_| None).collect(),
            waits: (0..lanes)
                .map(|_| Misconfig::new(exit_on_misconfig))
                .collect(),
        }
    }

    /// Which lanes a pull starting `now` asks (by index): those without a fault, and those
    /// whose recheck is due.
    pub(super) fn to_ask(&self, now: Instant) -> Vec<bool> {
        self.faults
            .iter()
            .map(|f| f.as_ref().is_none_or(|f| f.recheck_at <= now))
            .collect()
    }

    /// The first recheck due, when every lane is faulty (nothing to pull until then).
    pub(super) fn all_faulty_until(&self) -> Option<Instant> {
        self.faults
            .iter()
            .map(|f| f.as_ref().map(|f| f.recheck_at))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    /// Lane `lane`'s pull from `subscription` failed for good with `e`. `Err(the
    /// sentence)`: the worker is to exit (`exit_on_misconfig`).
    pub(super) fn failed(
        &mut self,
        lane: usize,
        subscription: &str,
        e: &QueueError,
    ) -> Result<(), String> {
        let hint = if e.is_not_found() {
            " (it does not exist: run `taskhost setup`)"
        } else {
            ""
        };
        let sentence = format!(
            "cannot pull from the subscription `{subscription}`, so its jobs wait: {e}{hint}"
        );
        let wait = self.waits[lane].found(&sentence)?;
        self.faults[lane] = Some(Fault {
            sentence,
            recheck_at: Instant::now() + wait,
        });
        Ok(())
    }

    /// Lane `lane`'s pull from `subscription` went through: its fault, if any, is over.
    pub(super) fn answered(&mut self, lane: usize, subscription: &str) {
        if self.faults[lane].take().is_some() || self.waits[lane].waiting() {
            self.waits[lane].fixed(&format!("pulling from `{subscription}` again"));
        }
    }

    /// What `/readyz` says: every faulty lane's sentence, or `None`.
    pub(super) fn sentence(&self) -> Option<String> {
        let all: Vec<&str> = self
            .faults
            .iter()
            .flatten()
            .map(|f| f.sentence.as_str())
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A faulty lane is passed over until its recheck, the others are asked; a pull that
    /// goes through ends the fault; `/readyz`'s sentence names every faulty subscription.
    #[test]
    fn a_faulty_lane_waits_for_its_recheck_and_the_others_are_asked() {
        let e = QueueError::timeout(Duration::from_secs(1));
        let mut f = LaneFaults::new(3, false);
        let now = Instant::now();
        assert_eq!(f.to_ask(now), [true, true, true]);
        assert_eq!(f.sentence(), None);
        f.failed(0, "urgent-sub", &e).unwrap();
        assert_eq!(f.to_ask(now), [false, true, true]);
        assert_eq!(f.all_faulty_until(), None);
        // Rechecked once due (the first recheck: 1 s).
        let due = now + Duration::from_secs(2);
        assert_eq!(f.to_ask(due), [true, true, true]);
        f.failed(1, "sub", &e).unwrap();
        f.failed(2, "bulk-sub", &e).unwrap();
        let sentence = f.sentence().unwrap();
        for sub in ["`urgent-sub`", "`sub`", "`bulk-sub`"] {
            assert!(sentence.contains(sub), "{sentence}");
        }
        assert!(f.all_faulty_until().is_some());
        f.answered(1, "sub");
        assert_eq!(f.all_faulty_until(), None);
        assert!(!f.sentence().unwrap().contains("`sub`"));
        // With exit_on_misconfig the sentence is the exit.
        let mut exits = LaneFaults::new(1, true);
        let sentence = exits.failed(0, "sub", &e).unwrap_err();
        assert!(sentence.contains("`sub`"), "{sentence}");
    }
}
