//! `taskhost status [JOB_ID...]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::config::StoreArgs;
use taskhost::checkpoint::{self, Header};
use taskhost::ids::{JobId, JobState};
use taskhost::inert::{self, Inert};
use taskhost::status::{
    self,
    page::{Accounting, ArtifactCount, Selection},
};
use taskhost::store::ObjectStore;
use taskhost::store::any::AnyStore;

/// Show per job: state (queued / running / waiting / done / failed), progress, attempts,
/// failures, and the result or error.
///
/// With no JOB_ID: the counts per state of every job (from listings: queued jobs are known
/// from the batches `submit` recorded, dead-lettered ones from their error), then one page
/// of jobs (`--state`, `--page`, `--page-size`; `--all` for every job). "waiting" means the
/// job has a checkpoint that no worker has written for a while: it will resume when a
/// worker gets its message. `--workers` lists the workers' heartbeats, live and recently
/// dead; `--serve ADDR` serves a live status page.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Jobs to show; default: the overview.
    pub jobs: Vec<String>,
    /// JSON for scripts: one document per named job, one per line; without JOB_ID, the
    /// overview as one document.
    #[arg(long)]
    pub json: bool,
    /// Only jobs in this state (queued, running, waiting, done, failed, cancelled, paused).
    #[arg(long)]
    pub state: Option<JobState>,
    /// The page of jobs to show (0 is the first).
    #[arg(long, default_value_t = 0)]
    pub page: usize,
    /// Jobs per page (each costs one or two reads).
    #[arg(long, default_value_t = taskhost::status::page::DEFAULT_PAGE_SIZE)]
    pub page_size: usize,
    /// Every job (in the state asked for), not one page: reads each one's objects.
    #[arg(long, conflicts_with_all = ["page", "page_size"])]
    pub all: bool,
    /// List the workers' heartbeats (live, and recently dead: not written for 2.5 of their
    /// intervals and 2 s) instead of jobs.
    #[arg(long, conflicts_with_all = ["jobs", "watch", "serve"])]
    pub workers: bool,
    /// Serve the live status page on this address (e.g. 127.0.0.1:8080) until Ctrl-C.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["jobs", "watch", "json"])]
    pub serve: Option<std::net::SocketAddr>,
    /// In the counts, a checkpoint written within this many seconds is a running job's (its
    /// owner rewrites it every half ACK_DEADLINE_SECONDS).
    #[arg(long, env = "ACK_DEADLINE_SECONDS", default_value_t = taskhost::queue::DEFAULT_ACK_DEADLINE_SECS)]
    pub ack_deadline_seconds: u32,
    /// Redraw every 2 s with progress bars until every job is done or failed.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct JobStatus {
    pub job_id: String,
    pub state: JobState,
    pub progress: Option<(u64, u64)>,
    pub attempts: u32,
    pub failures: u32,
    pub result: Option<String>,
    pub error: Option<String>,
    /// A done job's artifacts: how many, and their bytes together.
    pub artifacts: Option<ArtifactCount>,
    /// A user's cancel or pause: what, who and when.
    pub control: Option<checkpoint::Control>,
    /// What the job cost (docs/design.md §4).
    pub accounting: Accounting,
}

pub async fn job_status(store: &AnyStore, job: &JobId) -> anyhow::Result<JobStatus> {
    Ok(read_job(store, job).await?.0)
}

/// A job's status and its checkpoint header (default when it has none), read once.
pub async fn read_job(store: &AnyStore, job: &JobId) -> anyhow::Result<(JobStatus, Header)> {
    let text = |o: Option<taskhost::store::Object>| {
        o.map(|o| String::from_utf8_lossy(&o.bytes).into_owned())
    };
    let (result, note) = match store.get(&taskhost::keys::result(job)).await? {
        Some(o) => (Some(String::from_utf8_lossy(&o.bytes).into_owned()), o.note),
        None => (None, None),
    };
    let mut error = text(store.get(&taskhost::keys::error(job)).await?);
    let header: Option<Header> = checkpoint::peek(store, job).await?;
    if result.is_none() && error.is_none() && header.is_none() {
        // Nothing stored: a message naming it may have been dead-lettered at parse time.
        let prefix = format!("{}{job}/", taskhost::keys::POISON_JOBS_PREFIX);
        if let Some(key) = store.list(&prefix).await?.pop() {
            error = text(store.get(&key).await?)
                .map(|reason| status::page::poison_reason(&key, &reason));
        }
    }
    let state = status::page::state(
        result.is_some(),
        error.is_some(),
        header.as_ref(),
        taskhost::time::now_ms(),
    );
    let artifacts = match state {
        JobState::Done => {
            let m = taskhost::files::Manifest::read(store, job).await?;
            (!m.artifacts.is_empty()).then(|| ArtifactCount {
                count: m.artifacts.len(),
                bytes: m.total_bytes(),
            })
        }
        _ => None,
    };
    let view = status::page::view(job, state, header.clone(), result, note, error, artifacts);
    Ok((from_view(&view), header.unwrap_or_default()))
}

async fn all_jobs(store: &AnyStore, named: &[String]) -> anyhow::Result<Vec<JobId>> {
    if !named.is_empty() {
        return named
            .iter()
            .map(|s| s.parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}")))
            .collect();
    }
    let mut ids: Vec<JobId> = store
        .list(taskhost::keys::JOBS_PREFIX)
        .await?
        .iter()
        .filter_map(|k| {
            k.strip_prefix(taskhost::keys::JOBS_PREFIX)?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ids.dedup();
    Ok(ids)
}

pub async fn main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let window = status::running_window(args.ack_deadline_seconds);
    if let Some(addr) = args.serve {
        return serve(store, addr, window).await;
    }
    if args.workers {
        return workers(&store, args.json).await;
    }
    if args.jobs.is_empty() && !args.watch {
        return overview(&store, &args, window).await;
    }
    let ids = all_jobs(&store, &args.jobs).await?;
    if args.watch {
        return watch(&store, &ids).await;
    }
    for id in &ids {
        let s = job_status(&store, id).await?;
        if args.json {
            println!("{}", inert::json(&serde_json::to_string(&s)?));
        } else {
            println!("{}", line(&s));
        }
    }
    if ids.is_empty() && !args.json {
        eprintln!("no jobs in the store yet");
    }
    Ok(ExitCode::SUCCESS)
}

async fn overview(
    store: &AnyStore,
    args: &StatusArgs,
    window: Duration,
) -> anyhow::Result<ExitCode> {
    let scan = status::scan(store).await?;
    let selection = Selection {
        filter: args.state,
        page: if args.all { 0 } else { args.page },
        page_size: if args.all { usize::MAX } else { args.page_size },
        window,
    };
    let o = status::page::overview(store, &scan, selection).await?;
    if args.json {
        println!("{}", inert::json(&serde_json::to_string(&o)?));
        return Ok(ExitCode::SUCCESS);
    }
    let c = &o.counts;
    println!(
        "{} jobs: {} queued, {} running, {} waiting, {} done, {} failed{}",
        c.total,
        c.queued,
        c.running,
        c.waiting,
        c.done,
        c.failed,
        if c.cancelled + c.paused > 0 {
            format!(", {} cancelled, {} paused", c.cancelled, c.paused)
        } else {
            String::new()
        }
    );
    for v in &o.jobs {
        println!("{}", line(&from_view(v)));
    }
    if !o.jobs.is_empty() {
        println!("{}", totals_line(o.jobs.len(), &o.totals));
    }
    if o.poison_messages > 0 {
        println!(
            "{} messages without a valid job id dead-lettered at parse time (poison); the newest:",
            o.poison_messages
        );
        for p in &o.poison {
            println!("  message {} error {}", Inert(&p.message), Inert(&p.reason));
        }
    }
    let first = o.page * o.page_size;
    if o.matching > first + o.jobs.len() {
        eprintln!(
            "showing {}..{} of {}; --page {} for more, --all for every one",
            first + 1,
            first + o.jobs.len(),
            o.matching,
            o.page + 1
        );
    }
    if c.total == 0 {
        eprintln!("no jobs in the store yet");
    }
    Ok(ExitCode::SUCCESS)
}

fn from_view(v: &status::page::JobView) -> JobStatus {
    JobStatus {
        job_id: v.job_id.clone(),
        state: v.state,
        progress: v.progress,
        attempts: v.attempts,
        failures: v.failures,
        result: v.result.clone(),
        error: v.error.clone(),
        artifacts: v.artifacts.clone(),
        control: v.control.clone().filter(|_| v.state != JobState::Done),
        accounting: v.accounting.clone(),
    }
}

/// A job's accounting in short: fuel, wall time, bytes in / out ("-" where unknown).
fn costs(a: &Accounting) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let bytes = |b: Option<u64>| or_dash(b.map(|b| indicatif::HumanBytes(b).to_string()));
    format!(
        "fuel {} wall {} in {} out {} ckpt {} crashes {}",
        or_dash(a.fuel.map(|f| f.to_string())),
        or_dash(a.wall_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0))),
        bytes(a.input_bytes),
        bytes(a.artifact_bytes),
        bytes(a.checkpoint_bytes),
        or_dash(a.crashes.map(|c| c.to_string())),
    )
}

/// The totals line under a page of jobs.
fn totals_line(jobs: usize, totals: &Accounting) -> String {
    format!(
        "total of these {jobs}: attempts {} {}",
        totals.attempts.unwrap_or(0),
        costs(totals)
    )
}

async fn workers(store: &AnyStore, json: bool) -> anyhow::Result<ExitCode> {
    let now_ms = match store.clock(taskhost::keys::WORKERS_PREFIX).await? {
        Some(c) => c.store_ms,
        None => taskhost::time::now_ms(),
    };
    let all = status::workers::read_all(store, now_ms).await?;
    for w in &all {
        if json {
            println!("{}", inert::json(&serde_json::to_string(w)?));
            continue;
        }
        let h = &w.heartbeat;
        let counters: Vec<String> = h
            .counters
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "{:<32} {:<4} machine {} slots {} running {}{} {} (v{}, heartbeat {} s ago)",
            Inert(&h.worker_id),
            if w.live { "live" } else { "dead" },
            Inert(&h.machine),
            h.slots,
            h.running,
            if h.committing > 0 {
                format!(" committing {}", h.committing)
            } else {
                String::new()
            },
            counters.join(", "),
            Inert(&h.version),
            w.age_ms / 1000
        );
    }
    if all.is_empty() && !json {
        eprintln!("no worker heartbeats in the store");
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    store: AnyStore,
    addr: std::net::SocketAddr,
    window: Duration,
) -> anyhow::Result<ExitCode> {
    let stop = super::shutdown_token();
    let app = std::sync::Arc::new(status::serve::App::new(store, window));
    status::serve::serve(
        app,
        addr,
        |bound| println!("status page on http://{bound}/"),
        stop,
    )
    .await
    .with_context(|| format!("cannot serve on {addr}"))?;
    Ok(ExitCode::SUCCESS)
}

fn line(s: &JobStatus) -> String {
    let progress = match s.progress {
        Some((d, t)) if t > 0 => format!("{d}/{t} ({:.0}%)", d as f64 * 100.0 / t as f64),
        Some((d, _)) => d.to_string(),
        None => "-".into(),
    };
    let artifacts = match &s.artifacts {
        Some(a) => format!(
            "artifacts {} ({}) ",
            a.count,
            indicatif::HumanBytes(a.bytes)
        ),
        None => String::new(),
    };
    // The result and the error are the task's text: shown escaped, on this one line.
    let tail = match (&s.result, &s.error) {
        (Some(r), _) => format!("{artifacts}result {}", Inert(r)),
        (None, Some(e)) => format!("error {}", Inert(e)),
        _ => match &s.control {
            Some(c) => format!(
                "{} by {} at {} ms",
                c.action.as_str(),
                Inert(&c.by),
                c.at_ms
            ),
            None => String::new(),
        },
    };
    format!(
        "{:<24} {:<8} {:<18} attempts {:<3} failures {:<3} {} {tail}",
        s.job_id,
        s.state,
        progress,
        s.attempts,
        s.failures,
        costs(&s.accounting)
    )
}

async fn watch(store: &AnyStore, ids: &[JobId]) -> anyhow::Result<ExitCode> {
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:<24} {bar:30} {pos}/{len} {msg}")
        .expect("valid template");
    let bars: Vec<_> = ids
        .iter()
        .map(|id| {
            let b = multi.add(indicatif::ProgressBar::new(1).with_style(style.clone()));
            b.set_prefix(id.to_string());
            b
        })
        .collect();
    loop {
        let mut open = 0;
        for (id, bar) in ids.iter().zip(&bars) {
            let s = job_status(store, id).await?;
            if let Some((d, t)) = s.progress {
                bar.set_length(t.max(1));
                bar.set_position(d);
            }
            bar.set_message(format!(
                "{} (attempts {}, failures {})",
                s.state, s.attempts, s.failures
            ));
            if !s.state.is_final() {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for b in bars {
        b.finish();
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(result: Option<&str>, error: Option<&str>) -> JobStatus {
        JobStatus {
            job_id: "j".into(),
            state: if result.is_some() {
                JobState::Done
            } else {
                JobState::Failed
            },
            progress: None,
            attempts: 1,
            failures: 0,
            result: result.map(Into::into),
            error: error.map(Into::into),
            artifacts: None,
            control: None,
            accounting: Accounting::default(),
        }
    }

    #[test]
    fn results_and_errors_are_shown_on_their_own_line_escaped() {
        let forged = "ok\nj2   done   result {\"sum\":1}\r\x1b[2K\x1b[31mred\u{9b}";
        for s in [status(Some(forged), None), status(None, Some(forged))] {
            let text = line(&s);
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.contains(r"ok\nj2   done"), "{text}");
            assert!(text.contains(r"\r\u{1b}[2K\u{1b}[31mred\u{9b}"), "{text}");
            let json = inert::json(&serde_json::to_string(&s).unwrap());
            assert!(!json.chars().any(char::is_control), "{json:?}");
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(
                back[if s.result.is_some() {
                    "result"
                } else {
                    "error"
                }],
                forged
            );
        }
    }
}
