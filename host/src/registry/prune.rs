//! Which modules `module prune` deletes: a pure function of the list, the usage and the
//! rules ([`plan`]), table-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ModuleEntry;
use super::usage::JobCounts;
use crate::ids::ModuleHash;

/// What `module prune` keeps besides every module a job needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep every module a tag names.
    pub keep_tagged: bool,
    /// Keep modules pushed less than this long ago (and modules whose push time is
    /// unknown: they have no record).
    pub older_than: Option<Duration>,
    /// Now, ms since the Unix epoch.
    pub now_ms: u64,
}

/// Why a module stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// A queued, running or waiting job names it (never deleted).
    Needed,
    /// A tag names it (`keep_tagged`).
    Tagged,
    /// Pushed too recently, or when is unknown (`older_than`).
    Recent,
}

/// Whether `entry` may be deleted under `rules`: `Ok(())`, or why it stays.
pub fn verdict(entry: &ModuleEntry, jobs: Option<&JobCounts>, rules: &Rules) -> Result<(), Kept> {
    if jobs.is_some_and(JobCounts::needed) {
        return Err(Kept::Needed);
    }
    if rules.keep_tagged && !entry.tags.is_empty() {
        return Err(Kept::Tagged);
    }
    if let Some(age) = rules.older_than {
        let old = entry
            .record
            .as_ref()
            .is_some_and(|r| rules.now_ms.saturating_sub(r.pushed.at_ms) >= age.as_millis() as u64);
        if !old {
            return Err(Kept::Recent);
        }
    }
    Ok(())
}

/// The modules to delete, in list order.
pub fn plan(
    entries: &[ModuleEntry],
    usage: &BTreeMap<ModuleHash, JobCounts>,
    rules: &Rules,
) -> Vec<ModuleHash> {
    entries
        .iter()
        .filter(|e| verdict(e, usage.get(&e.hash), rules).is_ok())
        .map(|e| e.hash)
        .collect()
}

/// A duration as `prune --older-than` takes it: a number and a unit, `s`, `m`, `h` or `d`
/// (`30d`, `12h`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not an age like 30d, 12h, 45m or 90s");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(err()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Description, ModuleRecord, Stamp};

    const DAY: u64 = 86_400_000;

    fn entry(n: u8, tagged: bool, pushed_days_ago: Option<u64>, now: u64) -> ModuleEntry {
        let hash = ModuleHash::of(&[n]);
        ModuleEntry {
            module: hash.to_string(),
            size: 1,
            tags: if tagged {
                vec![format!("m:{n}")]
            } else {
                vec![]
            },
            record: pushed_days_ago.map(|d| ModuleRecord {
                size: 1,
                pushed: Stamp {
                    host: "h".into(),
                    at_ms: now - d * DAY,
                },
                description: Description::default(),
            }),
            hash,
        }
    }

    #[test]
    fn verdicts() {
        let now = 1000 * DAY;
        let jobs = |running, waiting, done| JobCounts {
            running,
            waiting,
            done,
            ..JobCounts::default()
        };
        let keep_tagged_30d = Rules {
            keep_tagged: true,
            older_than: Some(Duration::from_millis(30 * DAY)),
            now_ms: now,
        };
        let everything = Rules {
            now_ms: now,
            ..Rules::default()
        };
        // (entry, jobs naming it, rules, verdict)
        let cases = [
            (
                entry(1, false, Some(40), now),
                None,
                keep_tagged_30d,
                Ok(()),
            ),
            (
                entry(2, false, Some(40), now),
                Some(jobs(0, 0, 5)),
                keep_tagged_30d,
                Ok(()),
            ),
            (
                entry(3, false, Some(40), now),
                Some(jobs(1, 0, 0)),
                keep_tagged_30d,
                Err(Kept::Needed),
            ),
            (
                entry(4, false, Some(40), now),
                Some(jobs(0, 1, 0)),
                everything,
                Err(Kept::Needed),
            ),
            (
                entry(5, true, Some(40), now),
                None,
                keep_tagged_30d,
                Err(Kept::Tagged),
            ),
            (entry(6, true, Some(40), now), None, everything, Ok(())),
            (
                entry(7, false, Some(29), now),
                None,
                keep_tagged_30d,
                Err(Kept::Recent),
            ),
            (
                entry(8, false, Some(30), now),
                None,
                keep_tagged_30d,
                Ok(()),
            ),
            (
                entry(9, false, None, now),
                None,
                keep_tagged_30d,
                Err(Kept::Recent),
            ),
            (entry(10, false, None, now), None, everything, Ok(())),
            (
                entry(11, true, Some(1), now),
                Some(jobs(2, 0, 0)),
                everything,
                Err(Kept::Needed),
            ),
        ];
        for (i, (e, j, rules, want)) in cases.iter().enumerate() {
            assert_eq!(verdict(e, j.as_ref(), rules), *want, "case {i}: {e:?}");
        }
        let entries: Vec<ModuleEntry> = cases.iter().map(|c| c.0.clone()).collect();
        let usage: BTreeMap<_, _> = cases
            .iter()
            .filter_map(|c| Some((c.0.hash, c.1?)))
            .collect();
        let planned = plan(&entries, &usage, &keep_tagged_30d);
        let want: Vec<_> = [0, 1, 7].iter().map(|&i| entries[i].hash).collect();
        assert_eq!(planned, want);
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        for bad in ["", "30", "d", "30x", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
