//! The demo's last step: every result verified, and what the kill cost, as lines of text.

use std::time::Duration;

use taskhost::ids::{JobId, JobState};
use taskhost::inert::Inert;

use super::{Cancelled, Watched};

/// The summary's lines, and whether every result is right.
pub struct Summary {
    pub lines: Vec<String>,
    pub ok: bool,
}

/// Verifies each job's result (`jobs`: id and steps, in the order of `watched.statuses`) and
/// says what happened: how many results are right, the time, the killed worker's jobs and
/// the work each lost, the failed jobs, and each wrong or missing result.
pub fn summarize(
    jobs: &[(JobId, u64)],
    watched: &Watched,
    step_ms: u64,
    elapsed: Duration,
) -> Summary {
    let wrong: Vec<String> = jobs
        .iter()
        .zip(&watched.statuses)
        .filter_map(|((id, steps), s)| check_result(id.as_str(), *steps, s.result.as_deref()))
        .collect();
    let ok = jobs.len() - wrong.len();
    let mut lines = vec![
        String::new(),
        "== summary".to_owned(),
        format!(
            "jobs      {ok}/{} results verified (sum of 1..=steps)",
            jobs.len()
        ),
        format!("time      {:.1} s", elapsed.as_secs_f64()),
    ];
    match &watched.kill {
        None => lines
            .push("kill      none: every job finished before one had progress to lose".to_owned()),
        Some(kill) => {
            lines.push(format!(
                "kill      worker pid {} was SIGKILLed while running {} job(s)",
                kill.pid,
                kill.held.len()
            ));
            for (job, (step, since_ms)) in &kill.held {
                let how = match watched.resumed.get(job) {
                    Some(_) => format!("resumed on another worker from step {step}"),
                    None => "finished (resume not observed)".into(),
                };
                lines.push(format!(
                    "          {job}: {how}; work lost: {} ms since its last checkpoint (~{} steps)",
                    since_ms,
                    since_ms / step_ms.max(1)
                ));
            }
        }
    }
    lines.push(format!(
        "resumes   {} of {} killed job(s)",
        watched.resumed.len(),
        watched.kill.as_ref().map_or(0, |k| k.held.len())
    ));
    let cancel_ok = match &watched.cancel {
        None => {
            lines.push("cancel    none: the job to cancel never ran".to_owned());
            true
        }
        Some(c) => {
            let (line, ok) = cancel_line(c);
            lines.push(line);
            ok
        }
    };
    for f in watched
        .statuses
        .iter()
        .filter(|s| s.state == JobState::Failed)
    {
        lines.push(format!(
            "failed    {}: {}",
            f.job_id,
            Inert(f.error.as_deref().unwrap_or("?"))
        ));
    }
    for w in &wrong {
        lines.push(format!("WRONG     {w}"));
    }
    if wrong.is_empty() && cancel_ok {
        lines.push("demo ok".to_owned());
    } else if wrong.is_empty() {
        lines.push("demo FAILED: the cancelled job did not end as it should".to_owned());
    } else {
        lines.push(format!(
            "demo FAILED: {} of {} results wrong or missing",
            wrong.len(),
            jobs.len()
        ));
    }
    Summary {
        lines,
        ok: wrong.is_empty() && cancel_ok,
    }
}

/// The cancel's line, and whether the job ended as it may: cancelled without a result, or
/// done with the right one (it finished before its worker learned of the cancel: a result
/// wins).
fn cancel_line(c: &Cancelled) -> (String, bool) {
    let id = c.job.as_str();
    match c.last.state {
        JobState::Cancelled if c.last.result.is_none() => {
            let stopped = c.last.progress.map_or(c.at_step, |(done, _)| done);
            (
                format!(
                    "cancel    {id}: cancelled at step {} of {} by {}; stopped at step {stopped}, no result",
                    c.at_step,
                    c.steps,
                    c.last.control.as_ref().map_or("?", |r| r.by.as_str())
                ),
                true,
            )
        }
        JobState::Done => match check_result(id, c.steps, c.last.result.as_deref()) {
            None => (
                format!("cancel    {id}: finished before the cancel reached it (a result wins)"),
                true,
            ),
            Some(wrong) => (format!("WRONG     {wrong}"), false),
        },
        other => (
            format!("cancel    {id}: ended {other}, not cancelled"),
            false,
        ),
    }
}

/// A wrong or missing result, as a sentence; `None` if the result is right.
pub fn check_result(job: &str, steps: u64, result: Option<&str>) -> Option<String> {
    let Some(text) = result else {
        return Some(format!("{job}: no result"));
    };
    let want = serde_json::json!({"job_id": job, "steps": steps, "sum": steps * (steps + 1) / 2});
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v == want => None,
        _ => Some(format!(
            "{job}: wrong result {} (expected {want})",
            Inert(text)
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::decide::Kill;
    use super::*;
    use crate::cli::status::JobStatus;

    #[test]
    fn results_are_checked() {
        assert_eq!(
            check_result("a", 3, Some(r#"{"job_id":"a","steps":3,"sum":6}"#)),
            None
        );
        for bad in [
            Some(r#"{"job_id":"a","steps":3,"sum":7}"#),
            Some(r#"{"job_id":"b","steps":3,"sum":6}"#),
            Some("nonsense"),
            None,
        ] {
            assert!(check_result("a", 3, bad).is_some(), "{bad:?}");
        }
    }

    fn status(job: &str, state: JobState, result: Option<&str>) -> JobStatus {
        JobStatus {
            job_id: job.into(),
            state,
            progress: None,
            attempts: 1,
            failures: 0,
            result: result.map(str::to_owned),
            error: None,
            artifacts: None,
            control: None,
            accounting: Default::default(),
        }
    }

    #[test]
    fn the_summary_says_what_the_kill_cost_and_fails_on_a_wrong_result() {
        let jobs: Vec<(JobId, u64)> = ["a", "b"].iter().map(|j| (j.parse().unwrap(), 3)).collect();
        let watched = Watched {
            statuses: vec![
                status(
                    "a",
                    JobState::Done,
                    Some(r#"{"job_id":"a","steps":3,"sum":6}"#),
                ),
                status(
                    "b",
                    JobState::Done,
                    Some(r#"{"job_id":"b","steps":3,"sum":7}"#),
                ),
            ],
            kill: Some(Kill {
                pid: 42,
                held: BTreeMap::from([("a".into(), (1, 400)), ("b".into(), (2, 50))]),
            }),
            resumed: BTreeMap::from([("a".into(), 1)]),
            cancel: Some(Cancelled {
                job: "c".parse().unwrap(),
                steps: 100,
                at_step: 10,
                last: JobStatus {
                    progress: Some((12, 100)),
                    control: Some(taskhost::checkpoint::Control {
                        action: taskhost::checkpoint::Action::Cancel,
                        by: "demo".into(),
                        at_ms: 1,
                    }),
                    ..status("c", JobState::Cancelled, None)
                },
            }),
        };
        let s = summarize(&jobs, &watched, 20, Duration::from_secs(3));
        let text = s.lines.join("\n");
        assert!(!s.ok, "{text}");
        for want in [
            "jobs      1/2 results verified",
            "kill      worker pid 42 was SIGKILLed while running 2 job(s)",
            "a: resumed on another worker from step 1; work lost: 400 ms since its last checkpoint (~20 steps)",
            "b: finished (resume not observed)",
            "resumes   1 of 2 killed job(s)",
            "cancel    c: cancelled at step 10 of 100 by demo; stopped at step 12, no result",
            "WRONG     b: wrong result",
            "demo FAILED: 1 of 2 results wrong or missing",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(!text.contains("demo ok"), "{text}");
    }
}
